"""One engine's result: the picture as classified, its top-5 with bars, latency and agreement."""
from __future__ import annotations

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QFont, QPainter, QPixmap
from PySide6.QtWidgets import QFrame, QGridLayout, QHBoxLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

from .style import AGREE_COLOR, DISAGREE_COLOR, ENGINE_COLORS, ENGINE_TITLES

IMAGE_SIDE = 208


class ProbabilityBar(QWidget):
    """A horizontal bar filled to `value` (0..1) in the engine's colour."""

    def __init__(self, color: str, parent=None):
        super().__init__(parent)
        self.value = 0.0
        self.color = QColor(color)
        self.setMinimumWidth(48)
        self.setFixedHeight(14)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def set_value(self, value: float) -> None:
        self.value = max(0.0, min(1.0, float(value)))
        self.update()

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        r = QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(self.palette().alternateBase())
        p.drawRoundedRect(r, 3, 3)
        if self.value > 0:
            p.setBrush(self.color)
            p.drawRoundedRect(QRectF(r.x(), r.y(), max(3.0, r.width() * self.value), r.height()), 3, 3)


class Badge(QLabel):
    """Top-1 agreement of the two engines on this frame."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.state: bool | None = None
        self.set_state(None)

    def set_state(self, agree: bool | None) -> None:
        self.state = agree
        if agree is None:
            self.setText("")
            self.setStyleSheet("")
            self.setVisible(False)
            return
        color = AGREE_COLOR if agree else DISAGREE_COLOR
        self.setText("✔ top-1 agrees" if agree else "✘ top-1 differs")
        self.setToolTip("Both engines give the same most likely class for this frame" if agree
                        else "The engines disagree on the most likely class for this frame")
        self.setStyleSheet(f"QLabel {{ color: white; background: {color}; border-radius: 8px;"
                           f" padding: 2px 8px; font-weight: bold; }}")
        self.setVisible(True)


class ResultPanel(QFrame):
    """Dense or quantized: image, top-5, latency, badge.  `show_run` fills it from an EngineRun."""

    ROWS = 5

    def __init__(self, engine: str, parent=None):
        super().__init__(parent)
        self.engine = engine
        self.run = None
        color = ENGINE_COLORS[engine]
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setObjectName(f"panel-{engine}")
        self.setStyleSheet(f"QFrame#panel-{engine} {{ border-top: 4px solid {color}; }}")

        self.title = QLabel(ENGINE_TITLES[engine])
        font = self.title.font()
        font.setPointSizeF(font.pointSizeF() * 1.25)
        font.setBold(True)
        self.title.setFont(font)
        self.title.setStyleSheet(f"color: {color};")
        self.subtitle = QLabel("")
        self.subtitle.setStyleSheet("color: palette(mid);")
        self.subtitle.setWordWrap(True)
        # Always two lines high, so both panels' pictures line up whatever the subtitles say.
        self.subtitle.setFixedHeight(2 * self.subtitle.fontMetrics().lineSpacing() + 2)
        self.subtitle.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.subtitle.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.badge = Badge()

        self.image = QLabel("no picture yet")
        self.image.setObjectName("image")
        self.image.setFixedSize(IMAGE_SIDE, IMAGE_SIDE)
        self.image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.image.setStyleSheet("QLabel#image { background: palette(alternate-base); color: palette(mid); }")

        self.latency = QLabel("— ms")
        lf = QFont(self.latency.font())
        lf.setPointSizeF(lf.pointSizeF() * 1.6)
        lf.setBold(True)
        self.latency.setFont(lf)
        self.latency.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.latency.setToolTip("Forward pass of this frame (preprocessing excluded)")
        self.latency.setMinimumWidth(self.latency.fontMetrics().horizontalAdvance("00000.0 ms"))
        self.status = QLabel("")
        # One line that never changes the layout: it changes with every video frame, and a
        # relayout would repaint the plots below.
        self.status.setFixedHeight(self.status.fontMetrics().height() + 2)
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.status.setStyleSheet("color: palette(mid);")

        self.names, self.bars, self.percents = [], [], []
        grid = QGridLayout()
        grid.setHorizontalSpacing(8)
        grid.setVerticalSpacing(4)
        for i in range(self.ROWS):
            name = QLabel("")
            name.setMinimumWidth(96)
            bar = ProbabilityBar(color)
            pct = QLabel("")
            pct.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            pct.setMinimumWidth(48)
            grid.addWidget(QLabel(f"{i + 1}."), i, 0)
            grid.addWidget(name, i, 1)
            grid.addWidget(bar, i, 2)
            grid.addWidget(pct, i, 3)
            self.names.append(name)
            self.bars.append(bar)
            self.percents.append(pct)
        grid.setColumnStretch(2, 1)

        head = QHBoxLayout()
        head.addWidget(self.title)
        head.addStretch(1)
        head.addWidget(self.badge)

        right = QVBoxLayout()
        right.addLayout(grid)
        right.addStretch(1)
        right.addWidget(self.latency)

        body = QHBoxLayout()
        body.addWidget(self.image, 0, Qt.AlignmentFlag.AlignTop)
        body.addLayout(right, 1)

        layout = QVBoxLayout(self)
        layout.addLayout(head)
        layout.addWidget(self.subtitle)
        layout.addLayout(body)
        layout.addWidget(self.status)

    # ---- filling in
    def set_subtitle(self, text: str) -> None:
        self.subtitle.setText(text)
        self.subtitle.setToolTip(text)

    def set_status(self, text: str) -> None:
        self.status.setText(text)

    def show_run(self, run, pixmap: QPixmap | None) -> None:
        self.run = run
        if pixmap is not None:
            self.image.setPixmap(pixmap.scaled(IMAGE_SIDE, IMAGE_SIDE, Qt.AspectRatioMode.KeepAspectRatio,
                                               Qt.TransformationMode.SmoothTransformation))
        for i in range(self.ROWS):
            if i < len(run.top):
                p = run.top[i]
                self.names[i].setText(_elide(p.label, 28))
                self.names[i].setToolTip(f"{p.label} [class {p.index}]")
                self.bars[i].set_value(p.prob)
                self.percents[i].setText(f"{100 * p.prob:.1f} %")
            else:
                self.names[i].setText("")
                self.bars[i].set_value(0)
                self.percents[i].setText("")
        self.latency.setText(f"{run.latency_ms:.1f} ms")
        self.status.setText(f"{run.frame}")

    def clear(self, text: str = "") -> None:
        self.run = None
        self.image.clear()
        self.image.setText(text or "no picture yet")
        for i in range(self.ROWS):
            self.names[i].setText("")
            self.bars[i].set_value(0)
            self.percents[i].setText("")
        self.latency.setText("— ms")
        self.badge.set_state(None)

    def predictions(self) -> list[tuple[str, float]]:
        """(label, probability) rows shown now (for tests and the screenshot check)."""
        if self.run is None:
            return []
        return [(p.label, p.prob) for p in self.run.top]


def _elide(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
