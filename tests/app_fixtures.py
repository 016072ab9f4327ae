"""What the app's window tests share: fast settings, a window that is ready, pictures, waiting for
a classified frame.  Import the fixtures into a test module to use them there."""
import os

import pytest
from PIL import Image

from app.window import MainWindow
from qcnn import workbench as wb
from qcnn.pq.layer import PQSetting

FAST = wb.QuantSettings(conv=None, fc=PQSetting(16, 16), error_correction=False)
WAIT = 60_000     # ms; generous for a loaded 2-core machine, normally a second or two


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("qcnn-cache")
    old = os.environ.get("QCNN_CACHE_DIR")
    os.environ["QCNN_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("QCNN_CACHE_DIR", None)
    else:
        os.environ["QCNN_CACHE_DIR"] = old


@pytest.fixture
def window(qtbot):
    w = MainWindow(settings=FAST)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(w.ready, timeout=WAIT)
    yield w
    w.close()


def gradient_bmp(path, size=(96, 72)):
    w, h = size
    image = Image.new("RGB", size)
    image.putdata([(255 * x // w, 255 * y // h, 128) for y in range(h) for x in range(w)])
    image.save(path, format="BMP")
    return path


def both(dense, quantized):
    return dense is not None and quantized is not None


def classify(qtbot, window, path):
    with qtbot.waitSignal(window.frame_done, timeout=WAIT, check_params_cb=both) as signal:
        window.open_image(path)
    return signal.args
