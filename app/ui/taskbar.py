"""Progress of a background task (loading, quantizing, evaluating): what it does, how far it is,
about how long is left, and its Cancel button."""
from __future__ import annotations

import time

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QBoxLayout, QHBoxLayout, QLabel, QProgressBar, QPushButton, QSizePolicy, QWidget


def human_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


class Eta:
    """Time left from the progress so far, per stage (the text before the first ':', e.g.
    "k-means"), since the stages of one task run at different speeds."""

    MIN_SECONDS = 1.5          # too early to tell before this much of a stage has run
    MIN_FRACTION = 0.01

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.stage, self.t0, self.f0 = None, time.monotonic(), 0.0

    def update(self, text: str, fraction: float) -> str:
        """"about 40 s left" (or "" while it is too early to tell)."""
        stage = text.split(":")[0]
        now = time.monotonic()
        if stage != self.stage or fraction < self.f0:
            self.stage, self.t0, self.f0 = stage, now, fraction
            return ""
        done, spent = fraction - self.f0, now - self.t0
        if spent < self.MIN_SECONDS or done < self.MIN_FRACTION:
            return ""
        return f"about {human_seconds(spent * (1.0 - fraction) / done)} left"


class TaskBar(QWidget):
    """`vertical`: the label above the bar and the button, for the narrow side panel."""

    cancel_requested = Signal()

    def __init__(self, vertical: bool = False, parent=None):
        super().__init__(parent)
        self.title = ""
        self.eta = Eta()
        self.label = QLabel("")
        self.label.setWordWrap(vertical)
        self.label.setTextFormat(Qt.TextFormat.PlainText)
        # The text changes with every report: it must never widen the window.
        self.label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.label.setMinimumWidth(120)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(True)
        self.progress.setMinimumWidth(90)
        if not vertical:
            self.progress.setMaximumWidth(200)
        self.cancel = QPushButton("Cancel")
        self.cancel.clicked.connect(self.cancel_requested.emit)
        if vertical:
            layout = QBoxLayout(QBoxLayout.Direction.TopToBottom, self)
            layout.addWidget(self.label)
            row = QHBoxLayout()
            row.addWidget(self.progress, 1)
            row.addWidget(self.cancel)
            layout.addLayout(row)
        else:
            layout = QHBoxLayout(self)
            layout.addWidget(self.label, 1)
            layout.addWidget(self.progress)
            layout.addWidget(self.cancel)
        layout.setContentsMargins(0, 0, 0, 0)
        self.setVisible(False)

    def start(self, title: str, cancellable: bool = True) -> None:
        self.title = title
        self.eta.reset()
        self._set_label(title)
        self.progress.setRange(0, 0)          # busy until the first progress report
        self.cancel.setEnabled(cancellable)
        self.cancel.setText("Cancel")
        self.setVisible(True)

    def report(self, text: str, fraction: float) -> str:
        """Show progress; returns the time-left text ("" while unknown)."""
        fraction = max(0.0, min(1.0, fraction))
        left = self.eta.update(text, fraction)
        self.progress.setRange(0, 1000)
        self.progress.setValue(int(1000 * fraction))
        self.progress.setFormat(f"{100 * fraction:.0f} %")
        self._set_label(" — ".join(t for t in (self.title, text, left) if t))
        return left

    def _set_label(self, text: str) -> None:
        self.label.setText(text)
        self.label.setToolTip(text)

    def cancelling(self) -> None:
        self.cancel.setEnabled(False)
        self.cancel.setText("Cancelling…")

    def finish(self) -> None:
        self.setVisible(False)
