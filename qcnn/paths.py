"""Where qcnn finds its bundled files and keeps its cache."""
from __future__ import annotations

import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SAMPLES = ASSETS / "samples"          # bundled photos: the app's gallery, default calibration images


def cache_dir() -> Path:
    """Converted weights and quantized models: $QCNN_CACHE_DIR, else the user cache directory."""
    from platformdirs import user_cache_dir
    return Path(os.environ.get("QCNN_CACHE_DIR") or user_cache_dir("qcnn"))
