"""Progress of the background task (quantizing, evaluating, loading) with its Cancel button."""
from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget


class TaskBar(QWidget):
    cancel_requested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.label = QLabel("")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(True)
        self.progress.setFixedWidth(220)
        self.cancel = QPushButton("Cancel")
        self.cancel.clicked.connect(self.cancel_requested.emit)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label)
        layout.addWidget(self.progress)
        layout.addWidget(self.cancel)
        self.setVisible(False)

    def start(self, title: str, cancellable: bool = True) -> None:
        self.title = title
        self.label.setText(title)
        self.progress.setRange(0, 0)          # busy until the first progress report
        self.cancel.setEnabled(cancellable)
        self.cancel.setText("Cancel")
        self.setVisible(True)

    def report(self, text: str, fraction: float) -> None:
        self.progress.setRange(0, 1000)
        self.progress.setValue(int(1000 * max(0.0, min(1.0, fraction))))
        self.progress.setFormat(f"{100 * fraction:.0f} %")
        self.label.setText(f"{self.title} — {text}" if text else self.title)

    def cancelling(self) -> None:
        self.cancel.setEnabled(False)
        self.cancel.setText("Cancelling…")

    def finish(self) -> None:
        self.setVisible(False)
