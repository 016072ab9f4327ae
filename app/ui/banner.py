"""A coloured message line: warnings (speed-test-only model) and errors (from any worker)."""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QToolButton, QWidget

from .style import ERROR_BG, ERROR_FG, WARN_BG, WARN_FG


class Banner(QWidget):
    def __init__(self, kind: str = "error", closable: bool = True, parent=None):
        super().__init__(parent)
        bg, fg = (ERROR_BG, ERROR_FG) if kind == "error" else (WARN_BG, WARN_FG)
        self.setObjectName(f"banner-{kind}")
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        self.setStyleSheet(f"QWidget#banner-{kind} {{ background: {bg}; border: 1px solid {fg};"
                           f" border-radius: 4px; }} QLabel {{ color: {fg}; }}")
        self.label = QLabel("")
        self.label.setWordWrap(True)
        self.label.setTextFormat(Qt.TextFormat.RichText)     # callers escape what they show
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 4, 4, 4)
        layout.addWidget(self.label, 1)
        if closable:
            close = QToolButton()
            close.setText("✕")
            close.setAutoRaise(True)
            close.clicked.connect(self.clear)
            layout.addWidget(close)
        self.setVisible(False)

    def show_message(self, text: str) -> None:
        self.label.setText(text)
        self.setVisible(True)

    def text(self) -> str:
        return self.label.text() if self.isVisible() else ""

    def clear(self) -> None:
        if self.isHidden() and not self.label.text():
            return
        self.label.setText("")
        self.setVisible(False)
