from PIL import Image
from PySide6.QtCore import Qt
import pytest

from app.window import MainWindow, main


def gradient_bmp(path):
    image = Image.new("RGB", (64, 48))
    image.putdata([(4 * x, 5 * y, 128) for y in range(48) for x in range(64)])
    image.save(path, format="BMP")
    return path


def shown_probs(window):
    items = [window.results.item(i) for i in range(window.results.count())]
    return [item.data(Qt.ItemDataRole.UserRole) for item in items]


@pytest.fixture
def window(qtbot):
    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    return w


def test_open_bmp_shows_top5(window, tmp_path):
    window.open_image(gradient_bmp(tmp_path / "gradient.bmp"))
    probs = shown_probs(window)
    assert len(probs) == 5
    assert all(0 < p <= 1 for p in probs)
    assert sum(probs) <= 1 + 1e-6
    assert "ms" in window.latency_label.text()
    assert not window.image_label.pixmap().isNull()


def test_corrupt_file_shows_error_and_window_keeps_working(window, tmp_path):
    bad = tmp_path / "x.bmp"
    bad.write_bytes(b"\x00not a bitmap\xff" * 20)
    assert window.open_image(bad) is None
    assert "x.bmp" in window.status.text()
    assert window.results.count() == 0

    window.open_image(gradient_bmp(tmp_path / "gradient.bmp"))
    assert len(shown_probs(window)) == 5
    assert "x.bmp" not in window.status.text()


def test_screenshot_mode(qapp, tmp_path):
    shot = tmp_path / "window.png"
    assert main([str(gradient_bmp(tmp_path / "g.bmp")), "--screenshot", str(shot)]) == 0
    assert Image.open(shot).size[0] > 0
