"""Where pictures come from: files, drag and drop, the clipboard, the gallery, a camera, a video.

Every source produces `qcnn.workbench.Frame`s.  A Frame only knows how to load its picture; the
loading (file decoding, video frame conversion) happens in an engine thread, not here.
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path

from PIL import Image
from PySide6.QtCore import QMimeData, QObject, QUrl, Signal, Slot
from PySide6.QtGui import QImage
from PySide6.QtMultimedia import QCamera, QMediaCaptureSession, QMediaDevices, QMediaPlayer, QVideoFrame, QVideoSink

from qcnn.imageio import IMAGE_EXTENSIONS
from qcnn.workbench import Frame

_serials = itertools.count(1)

FILE_FILTERS = ";;".join([           # the first is the dialog's default: every format we read
    "Images (" + " ".join(f"*{s}" for s in sorted(IMAGE_EXTENSIONS)) + ")",
    "BMP images (*.bmp)",
    "All files (*)",
])
VIDEO_FILTERS = "Videos (*.avi *.mp4 *.mkv *.mov *.webm *.mjpeg *.m4v);;All files (*)"


def quiet_ffmpeg() -> None:
    """Keep FFmpeg's own messages (one "deprecated pixel format" line per MJPEG frame, stream
    dumps, hardware decoder probing) off the terminal: Qt only routes them through its logging
    when QT_FFMPEG_DEBUG is set, otherwise FFmpeg prints them itself.  Errors still reach us as
    QMediaPlayer errors.  Sets the level of the libavutil that PySide6 ships, when there is one."""
    if os.environ.get("QT_FFMPEG_DEBUG"):
        return
    import ctypes
    import PySide6
    root = Path(PySide6.__file__).parent
    for pattern in ("Qt/lib/libavutil.so.*", "Qt/lib/libavutil.*.dylib", "avutil-*.dll", "Qt/bin/avutil-*.dll"):
        for lib in sorted(root.glob(pattern)):
            try:
                ctypes.CDLL(str(lib)).av_log_set_level(-8)          # AV_LOG_QUIET
                return
            except (OSError, AttributeError):
                continue


def next_serial() -> int:
    return next(_serials)


# --------------------------------------------------------------------------- conversions

def qimage_to_pil(image: QImage) -> Image.Image:
    """QImage (any format) -> new PIL RGB image."""
    rgb = image.convertToFormat(QImage.Format.Format_RGB888)
    w, h, stride = rgb.width(), rgb.height(), rgb.bytesPerLine()
    data = bytes(rgb.constBits())[: stride * h]   # copy: `rgb` may go away
    return Image.frombuffer("RGB", (w, h), data, "raw", "RGB", stride, 1).copy()


def pil_to_qimage(image: Image.Image) -> QImage:
    """PIL image -> QImage owning its pixels (safe to hand to the GUI thread)."""
    rgb = image.convert("RGB")
    data = rgb.tobytes()
    return QImage(data, rgb.width, rgb.height, 3 * rgb.width, QImage.Format.Format_RGB888).copy()


# --------------------------------------------------------------------------- still pictures

def file_frame(path: str | Path) -> Frame:
    return Frame.from_path(path, next_serial())


def image_frame(image: QImage, name: str) -> Frame:
    image = image.copy()     # detach from the clipboard or the drag source
    return Frame(lambda: qimage_to_pil(image), name, next_serial())


def frames_from_mime(mime: QMimeData, what: str = "dropped image") -> list[Frame]:
    """Frames for dropped or pasted data: local files first, then image data, then a path as text."""
    frames = []
    if mime.hasUrls():
        for url in mime.urls():
            if url.isLocalFile():
                frames.append(file_frame(url.toLocalFile()))
    if frames:
        return frames
    if mime.hasImage():
        image = mime.imageData()
        if isinstance(image, QImage) and not image.isNull():
            return [image_frame(image, what)]
    for fmt in mime.formats():           # raw encoded bytes (image/bmp, image/png ...) the core decodes
        if fmt.startswith("image/"):
            data = bytes(mime.data(fmt))
            if data:
                return [Frame.from_bytes(data, f"{what} ({fmt})", next_serial())]
    if mime.hasText():
        text = mime.text().strip()
        if text.startswith("file://"):
            text = QUrl(text).toLocalFile()
        if text and "\n" not in text and Path(text).is_file():
            return [file_frame(text)]
    return []


# --------------------------------------------------------------------------- moving pictures

class VideoFrames(QObject):
    """Frames of a QVideoSink as `Frame`s; the conversion to RGB happens when an engine loads it."""

    frame = Signal(object)          # Frame
    received = Signal()             # every frame the sink shows, classified or not

    def __init__(self, label: str, parent=None):
        super().__init__(parent)
        self.label = label
        self.sink = QVideoSink(self)
        self.sink.videoFrameChanged.connect(self._on_frame)
        self.count = 0

    @Slot(QVideoFrame)
    def _on_frame(self, vframe: QVideoFrame) -> None:
        if not vframe.isValid():
            return
        self.count += 1
        self.received.emit()
        kept = QVideoFrame(vframe)       # a reference keeps the buffer alive until it is converted
        self.frame.emit(Frame(lambda: qimage_to_pil(kept.toImage()), f"{self.label} #{self.count}",
                              next_serial()))


def camera_status() -> tuple[bool, str]:
    """(a camera is there, why not)."""
    try:
        inputs = QMediaDevices.videoInputs()
    except Exception as exc:                  # no multimedia backend at all
        return False, f"camera support unavailable: {exc}"
    if not inputs:
        return False, "No camera found on this computer"
    return True, inputs[0].description()


class CameraSource(VideoFrames):
    """The default webcam through QCamera -> QMediaCaptureSession -> QVideoSink."""

    error = Signal(str)

    def __init__(self, parent=None):
        super().__init__("camera", parent)
        self.camera: QCamera | None = None
        self.session = QMediaCaptureSession(self)
        self.session.setVideoSink(self.sink)

    def available(self) -> tuple[bool, str]:
        return camera_status()

    def start(self) -> bool:
        ok, why = camera_status()
        if not ok:
            self.error.emit(why)
            return False
        if self.camera is None:
            self.camera = QCamera(QMediaDevices.defaultVideoInput(), self)
            self.camera.errorOccurred.connect(lambda _e, text: self.error.emit(f"Camera: {text}"))
            self.session.setCamera(self.camera)
        self.camera.start()
        return True

    def stop(self) -> None:
        if self.camera is not None:
            self.camera.stop()

    @property
    def active(self) -> bool:
        return self.camera is not None and self.camera.isActive()


class VideoFileSource(VideoFrames):
    """A video file through QMediaPlayer -> QVideoSink: the camera's path, testable without one."""

    error = Signal(str)
    ended = Signal()

    def __init__(self, parent=None, loop: bool = False):
        super().__init__("video", parent)
        quiet_ffmpeg()
        self.loop = loop
        self.player = QMediaPlayer(self)
        self.player.setVideoSink(self.sink)
        self.player.errorOccurred.connect(self._on_error)
        self.player.mediaStatusChanged.connect(self._on_status)

    def play(self, path: str | Path) -> None:
        self.stop()
        self.label = Path(path).name
        self.count = 0
        self.player.setSource(QUrl.fromLocalFile(str(Path(path).resolve())))
        self.player.play()

    def stop(self) -> None:
        self.player.stop()

    @property
    def active(self) -> bool:
        return self.player.playbackState() == QMediaPlayer.PlaybackState.PlayingState

    def _on_error(self, _error, text: str) -> None:
        self.error.emit(f"Video {self.label}: {text or 'cannot be played'}")

    def _on_status(self, status) -> None:
        if status == QMediaPlayer.MediaStatus.EndOfMedia:
            if self.loop:
                self.player.setPosition(0)
                self.player.play()
            else:
                self.ended.emit()
        elif status == QMediaPlayer.MediaStatus.InvalidMedia:
            self.error.emit(f"Video {self.label}: not a playable video")
