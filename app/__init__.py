"""qcnn desktop app (PySide6): a thin view over qcnn.workbench."""
import os

# QtMultimedia lists every optional library it does not find (PipeWire, VA-API) when it loads,
# before any code of ours runs: silence that category unless the user set rules of their own.
# Its FFmpeg backend also announces itself and its missing hardware decoders at info level.
os.environ.setdefault("QT_LOGGING_RULES", "qt.multimedia.symbolsresolver=false;"
                      "qt.multimedia.ffmpeg.info=false;qt.multimedia.playbackengine.codec.info=false")
