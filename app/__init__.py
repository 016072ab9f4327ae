"""qcnn desktop app (PySide6)."""
