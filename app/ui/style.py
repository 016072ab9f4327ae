"""Colours shared by the panels and plots, so each engine looks the same everywhere."""
ENGINE_COLORS = {"dense": "#2f6fd0", "quantized": "#e07020"}
ENGINE_TITLES = {"dense": "Dense (float32)", "quantized": "Product-quantized"}
AGREE_COLOR = "#2e8b3e"
DISAGREE_COLOR = "#c0392b"
WARN_BG = "#fff3cd"
WARN_FG = "#7a5200"
ERROR_BG = "#fde2e1"
ERROR_FG = "#8a1c13"
NOTE_COLOR = "#9a5a00"          # what is being prepared (a panel's note line)
