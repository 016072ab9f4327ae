"""Placeholder main window: open a photo, show the dense model's top-5.

Classification runs in the GUI thread for now.
"""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from qcnn.imageio import ImageLoadError, load_image
from qcnn.models import load_model

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SAMPLES = ASSETS / "samples"
DEFAULT_MODEL = "efficientnet-lite0"
IMAGE_SUFFIXES = {".bmp", ".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
FILE_FILTERS = ";;".join([
    "BMP images (*.bmp)",
    "Images (" + " ".join(f"*{s}" for s in sorted(IMAGE_SUFFIXES)) + ")",
    "All files (*)",
])
PREVIEW_SIZE = (480, 400)


@functools.lru_cache(maxsize=None)
def _model(name: str):
    """Load a model once per process."""
    return load_model(name)


def first_sample() -> Path | None:
    """The first bundled sample photo, by name, or None."""
    if not SAMPLES.is_dir():
        return None
    photos = sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return photos[0] if photos else None


def to_pixmap(image) -> QPixmap:
    """PIL RGB image -> QPixmap (deep copy, so `image` may go away)."""
    data = image.tobytes()
    qimage = QImage(data, image.width, image.height, 3 * image.width, QImage.Format.Format_RGB888)
    return QPixmap.fromImage(qimage.copy())


class MainWindow(QMainWindow):
    def __init__(self, model_name: str = DEFAULT_MODEL):
        super().__init__()
        self.model_name = model_name
        self.last_result = None
        self.setWindowTitle("qcnn — Quantized-CNN")
        self.resize(900, 520)

        self.open_button = QPushButton("Open image…")
        self.open_button.clicked.connect(self.choose_image)

        self.image_label = QLabel("No image")
        self.image_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.image_label.setMinimumSize(*PREVIEW_SIZE)

        self.model_label = QLabel(f"Dense model: {model_name}")
        self.results = QListWidget()
        self.latency_label = QLabel("")
        self.status = QLabel("Open a photo to classify it.")
        self.status.setWordWrap(True)

        side = QVBoxLayout()
        side.addWidget(self.open_button)
        side.addWidget(self.model_label)
        side.addWidget(self.results, 1)
        side.addWidget(self.latency_label)
        side.addWidget(self.status)

        layout = QHBoxLayout()
        layout.addWidget(self.image_label, 1)
        layout.addLayout(side)
        central = QWidget()
        central.setLayout(layout)
        self.setCentralWidget(central)

    def choose_image(self) -> None:
        start = str(SAMPLES if SAMPLES.is_dir() else Path.home())
        path, _ = QFileDialog.getOpenFileName(self, "Open image", start, FILE_FILTERS)
        if path:
            self.open_image(path)

    def open_image(self, path):
        """Show and classify the image at `path`; return the Classification or None.

        Errors are shown in the status label, never raised.
        """
        path = Path(path)
        self.results.clear()
        self.latency_label.setText("")
        self.last_result = None
        try:
            image = load_image(path)
        except Exception as err:  # the GUI must survive anything a file does
            reason = err.reason if isinstance(err, ImageLoadError) else err
            self.image_label.clear()
            self.image_label.setText("No image")
            self._fail(f"Could not open {path.name}: {reason}")
            return None

        pixmap = to_pixmap(image)
        if pixmap.width() > PREVIEW_SIZE[0] or pixmap.height() > PREVIEW_SIZE[1]:
            pixmap = pixmap.scaled(*PREVIEW_SIZE, Qt.AspectRatioMode.KeepAspectRatio,
                                   Qt.TransformationMode.SmoothTransformation)
        self.image_label.setPixmap(pixmap)

        try:
            model = _model(self.model_name)
            result = model.classify(image, top=5)
        except Exception as err:
            self._fail(f"Could not classify {path.name}: {err}")
            return None

        self.model_label.setText(f"Dense model: {model.name} — {model.description}")
        for p in result.top:
            item = QListWidgetItem(f"{p.label}   {100 * p.prob:.1f} %")
            item.setData(Qt.ItemDataRole.UserRole, float(p.prob))
            self.results.addItem(item)
        self.latency_label.setText(f"Latency: {result.latency_ms:.1f} ms")
        self.status.setText(path.name)
        self.last_result = result
        return result

    def _fail(self, message: str) -> None:
        self.status.setText(message)
        print(message, file=sys.stderr)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="qcnn-app", description="Classify photos with qcnn.")
    parser.add_argument("image", nargs="?", help="image to classify at start (default: the first bundled sample)")
    parser.add_argument("--screenshot", metavar="FILE",
                        help="classify the image, save a picture of the window to FILE and exit")
    args = parser.parse_args(argv)

    app = QApplication.instance() or QApplication([sys.argv[0]])
    window = MainWindow()
    window.show()
    image = args.image or first_sample()

    if args.screenshot:
        ok = image is None or window.open_image(image) is not None
        app.processEvents()
        saved = window.grab().save(args.screenshot)
        if not saved:
            print(f"could not save {args.screenshot}", file=sys.stderr)
        window.close()
        return 0 if ok and saved else 1

    if image is not None:
        QTimer.singleShot(0, lambda: window.open_image(image))
    return app.exec()


if __name__ == "__main__":
    raise SystemExit(main())
