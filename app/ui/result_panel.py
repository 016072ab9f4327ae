"""One engine's result: the picture as classified, its top-5 with bars, latency and agreement."""
from __future__ import annotations

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QPainter, QPixmap
from PySide6.QtWidgets import QFrame, QGridLayout, QHBoxLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

from .style import AGREE_COLOR, DISAGREE_COLOR, ENGINE_COLORS, ENGINE_TITLES, NOTE_COLOR

IMAGE_SIDE = 208          # the picture's side when there is room; it shrinks to MIN_IMAGE_SIDE
MIN_IMAGE_SIDE = 112
STALE_OPACITY = 0.35


class Picture(QWidget):
    """The crop the network saw, scaled to fit a square (greyed while the panel is stale)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._pixmap: QPixmap | None = None
        self._scaled: QPixmap | None = None
        self._text = "no picture yet"
        self.setMinimumSize(MIN_IMAGE_SIDE, MIN_IMAGE_SIDE)
        self.setMaximumSize(IMAGE_SIDE, IMAGE_SIDE)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)

    def sizeHint(self) -> QSize:
        return QSize(IMAGE_SIDE, IMAGE_SIDE)

    def hasHeightForWidth(self) -> bool:
        return True

    def heightForWidth(self, w: int) -> int:
        return w

    def pixmap(self) -> QPixmap | None:
        return self._pixmap

    def text(self) -> str:
        return self._text if self._pixmap is None else ""

    def set_pixmap(self, pixmap: QPixmap | None) -> None:
        self._pixmap = pixmap
        self._scaled = None
        self.update()

    def clear(self, text: str) -> None:
        self._pixmap, self._scaled, self._text = None, None, text
        self.update()

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        side = min(self.width(), self.height())
        box = QRectF((self.width() - side) / 2, 0, side, side)
        p.fillRect(box, self.palette().alternateBase())
        if not self.isEnabled():
            p.setOpacity(STALE_OPACITY)
        if self._pixmap is None or self._pixmap.isNull():
            p.setPen(self.palette().color(self.palette().ColorRole.PlaceholderText))
            p.drawText(box.adjusted(6, 6, -6, -6), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap,
                       self._text)
            return
        if self._scaled is None or max(self._scaled.width(), self._scaled.height()) != int(side):
            # Scaled once per picture and size, not in every paint (a video repaints it per frame).
            self._scaled = self._pixmap.scaled(int(side), int(side), Qt.AspectRatioMode.KeepAspectRatio,
                                               Qt.TransformationMode.SmoothTransformation)
        s = self._scaled
        p.drawPixmap(int(box.x() + (side - s.width()) / 2), int(box.y() + (side - s.height()) / 2), s)


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
            p.setBrush(self.color if self.isEnabled() else self.palette().color(self.palette().ColorRole.Mid))
            p.drawRoundedRect(QRectF(r.x(), r.y(), max(3.0, r.width() * self.value), r.height()), 3, 3)


class ElidedLabel(QLabel):
    """A one-line label that ends in "…" when its text is wider than the label (text() stays whole)."""

    def minimumSizeHint(self) -> QSize:
        return QSize(self.minimumWidth(), super().minimumSizeHint().height())

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        if not self.isEnabled():
            p.setPen(self.palette().color(self.palette().ColorRole.PlaceholderText))
        rect = self.contentsRect()
        text = self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideRight, rect.width())
        p.drawText(rect, int(self.alignment()) | Qt.AlignmentFlag.AlignVCenter, text)


class Badge(QLabel):
    """Top-1 agreement of the two engines on this frame."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.state: bool | None = None
        self.set_state(None)

    def set_state(self, agree: bool | None) -> None:
        if agree == self.state and self.text() != "" and agree is not None:
            return                      # unchanged: a style sheet change per video frame costs
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

        self.note = QLabel("")
        self.note.setObjectName("note")
        # One line, always there: what is being prepared for this panel, if anything.
        self.note.setFixedHeight(self.note.fontMetrics().height() + 2)
        self.note.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.note.setStyleSheet(f"QLabel#note {{ color: {NOTE_COLOR}; }}")

        # The quantized panel's line for an audience (faster, smaller, agreement); one line high in
        # both panels, so their pictures line up.
        self.summary = QLabel("")
        self.summary.setObjectName("summary")
        sf = QFont(self.summary.font())
        sf.setBold(True)
        self.summary.setFont(sf)
        self.summary.setFixedHeight(self.summary.fontMetrics().height() + 2)
        self.summary.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.summary.setStyleSheet(f"QLabel#summary {{ color: {color}; }}")

        self.image = Picture()
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
        grid.setHorizontalSpacing(6)
        grid.setVerticalSpacing(4)
        for i in range(self.ROWS):
            name = ElidedLabel("")
            name.setMinimumWidth(72)
            name.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
            bar = ProbabilityBar(color)
            pct = QLabel("")
            pct.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            pct.setMinimumWidth(pct.fontMetrics().horizontalAdvance("100.0 %") + 2)
            grid.addWidget(QLabel(f"{i + 1}."), i, 0)
            grid.addWidget(name, i, 1)
            grid.addWidget(bar, i, 2)
            grid.addWidget(pct, i, 3)
            self.names.append(name)
            self.bars.append(bar)
            self.percents.append(pct)
        grid.setColumnStretch(1, 3)
        grid.setColumnStretch(2, 2)

        head = QHBoxLayout()
        head.addWidget(self.title)
        head.addStretch(1)
        head.addWidget(self.badge)

        right = QVBoxLayout()
        right.addLayout(grid)
        right.addStretch(1)
        right.addWidget(self.latency)

        # Everything that shows a result: greyed as a whole while it is stale.
        self.body = QWidget()
        body = QHBoxLayout(self.body)
        body.setContentsMargins(0, 0, 0, 0)
        body.addWidget(self.image, 0, Qt.AlignmentFlag.AlignTop)
        body.addLayout(right, 1)

        layout = QVBoxLayout(self)
        layout.addLayout(head)
        layout.addWidget(self.subtitle)
        layout.addWidget(self.note)
        layout.addWidget(self.summary)
        layout.addWidget(self.body, 1)
        layout.addWidget(self.status)
        self.stale = False

    # ---- filling in
    def set_subtitle(self, text: str) -> None:
        self.subtitle.setText(text)
        self.subtitle.setToolTip(text)

    def set_status(self, text: str) -> None:
        self.status.setText(text)

    def set_note(self, text: str) -> None:
        """What is being prepared for this panel ("" when nothing)."""
        self.note.setText(text)
        self.note.setToolTip(text)

    def set_summary(self, text: str, tooltip: str = "") -> None:
        """How the quantized engine compares, in words ("" when there is nothing measured yet)."""
        if text != self.summary.text():
            self.summary.setText(text)
        self.summary.setToolTip(tooltip or text)

    def set_placeholder(self, text: str) -> None:
        """What the picture's place says while there is no result."""
        if self.run is None and self.image.text() != text:
            self.image.clear(text)

    def set_stale(self, stale: bool) -> None:
        """Grey out what is shown: it no longer belongs to the current model, settings or frame."""
        self.stale = stale
        self.body.setEnabled(not stale)
        self.badge.setEnabled(not stale)

    def show_run(self, run, pixmap: QPixmap | None) -> None:
        self.run = run
        if pixmap is not None:
            self.image.set_pixmap(pixmap)
        for i in range(self.ROWS):
            if i < len(run.top):
                p = run.top[i]
                self.names[i].setText(p.label)
                self.names[i].setToolTip(f"{p.label} [class {p.index}]")
                self.bars[i].set_value(p.prob)
                self.percents[i].setText(f"{100 * p.prob:.1f} %")
            else:
                self.names[i].setText("")
                self.bars[i].set_value(0)
                self.percents[i].setText("")
        self.latency.setText(f"{run.latency_ms:.1f} ms")
        self.status.setText(f"{run.frame}")
        self.set_stale(False)

    def clear(self, text: str = "") -> None:
        """Show nothing (`text` in the picture's place): what was shown belongs to another model."""
        self.run = None
        self.image.clear(text or "no picture yet")
        for i in range(self.ROWS):
            self.names[i].setText("")
            self.names[i].setToolTip("")
            self.bars[i].set_value(0)
            self.percents[i].setText("")
        self.latency.setText("— ms")
        self.status.setText("")
        self.badge.set_state(None)
        self.set_stale(False)

    def predictions(self) -> list[tuple[str, float]]:
        """(label, probability) rows shown now (for tests and the screenshot check)."""
        if self.run is None:
            return []
        return [(p.label, p.prob) for p in self.run.top]


