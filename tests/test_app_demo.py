"""ResNet-18 with its `fast` preset in the window: its quantized model ships in assets/quantized
(so choosing it does not mean waiting for error correction), and the quantized panel says in one
line how much faster and smaller it is and how often it agrees with the dense network."""
import re
import time

import pytest

from app.window import MainWindow
from qcnn import workbench as wb
from qcnn.models import load_model
from qcnn.paths import SAMPLES
from qcnn.pq.presets import DEFAULT_PRESET, NOTES, measured, preset

from app_fixtures import WAIT, both, cache_dir  # noqa: F401  (cache_dir: an empty cache per module)

LINE = re.compile(r"^(\d+\.\d)× (faster|slower), (\d+\.\d)× smaller, agrees with dense on (\d+) % of "
                  r"(\d+) ImageNet photos \((\d+) of (\d+) shown\)$")
# With the fast-scan kernel on some layer the preset's measured agreement (float tables) does not
# apply: only the frames shown count.
LIVE = re.compile(r"^(\d+\.\d)× (faster|slower), (\d+\.\d)× smaller, agrees with dense on (\d+) % of "
                  r"photos \((\d+) of (\d+) shown\)$")


def test_resnet18_starts_with_fast_and_its_notes_say_what_eval_measured():
    assert DEFAULT_PRESET["resnet18"] == "fast"
    notes = NOTES["resnet18"]["fast"]
    assert measured("resnet18", preset("resnet18", "fast")) is notes
    assert 0.5 < notes["agreement"] <= 1 and notes["eval_images"] == 250
    # The preset's promise: top-5 within 3 points of the float model on the evaluation rows.
    assert NOTES["resnet18"]["dense"]["top5"] - notes["top5"] <= 0.03 + 1e-9
    assert measured("resnet18", preset("resnet18", "fast").replace(seed=7)) is None


def test_the_shipped_model_is_current_and_loads_without_quantizing(tmp_path, monkeypatch):
    monkeypatch.setenv("QCNN_CACHE_DIR", str(tmp_path))         # nothing cached
    model = load_model("resnet18")
    settings = preset("resnet18", "fast")
    path = wb.shipped_path(model, settings)
    assert path.is_file(), f"{path} missing or stale: run scripts/build-shipped-models.py"
    # Codes and codebooks of the quantized layers, float32 weights of the dense ones (most of them
    # in `fast`): about a quarter of the 46.7 MB of dense weights.
    assert 1e6 < path.stat().st_size < 16e6
    assert wb.progressive_stages(model, settings) == [settings]      # no k-means-only stage first
    t0 = time.perf_counter()
    q = wb.Workbench(model).quantize(settings)
    assert q.from_cache and q.path == path and time.perf_counter() - t0 < 30
    assert q.settings == settings and q.metadata["cache_key"] == wb.cache_key(model, settings)
    # Another setting is not served by the shipped file, and a stale shipped file is never removed.
    other = settings.replace(seed=1)
    assert not wb.shipped_path(model, other).is_file()


def test_demo_line_words():
    assert wb.demo_line(None, 8.04) == "speed-up: measuring…, 8.0× smaller"
    assert wb.demo_line(0.8, 2.0, 3, 4) == "1.2× slower, 2.0× smaller, agrees with dense on 75 % of photos (3 of 4 shown)"
    assert (wb.demo_line(2.46, 9.1, 1, 1, (0.924, 250))
            == "2.5× faster, 9.1× smaller, agrees with dense on 92 % of 250 ImageNet photos (1 of 1 shown)")


@pytest.fixture(params=[None, "exact"])
def default_window(qtbot, request):
    # ResNet-18 as the model menu opens it (kernel `auto`, which may pick fast-scan layers), and
    # with the float-table kernel.
    w = MainWindow("resnet18") if request.param is None else MainWindow("resnet18", kernel=request.param)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(w.ready, timeout=WAIT)
    yield w
    w.close()


def test_resnet18_shows_the_shipped_model_at_once_and_a_line_with_measured_numbers(default_window, qtbot):
    w = default_window
    assert w.bench.model.name == "resnet18" and w.model_box.currentData() == "resnet18"
    qtbot.waitUntil(lambda: w.bench.quantized is not None and w.pipeline.ready("quantized"), timeout=WAIT)
    q = w.bench.quantized
    assert q.path.parent == wb.SHIPPED and q.settings == preset("resnet18", "fast")
    assert "shipped with qcnn" in w.panels["quantized"].subtitle.text()
    photos = sorted(SAMPLES.glob("*.jpg"))[:2]
    for photo in photos:
        with qtbot.waitSignal(w.frame_done, timeout=WAIT, check_params_cb=both):
            w.open_image(photo)
    qtbot.waitUntil(lambda: w.bench.timings.compared >= len(photos), timeout=WAIT)
    text = w.panels["quantized"].summary.text()
    fastscan = "fastscan" in w.quant_kernels.values()
    m = (LIVE if fastscan else LINE).match(text)
    assert m, text
    t, fp, notes = w.bench.timings, w.footprint.footprint, NOTES["resnet18"]["fast"]
    speedup = t.speedup()
    assert m[1] == f"{(speedup if speedup >= 1 else 1 / speedup):.1f}" and (m[2] == "faster") == (speedup >= 1)
    assert m[3] == f"{fp.storage_ratio:.1f}" and fp.storage_ratio > 3.5
    assert not (fastscan and w.bench.kernel == "exact")
    if fastscan:
        assert int(m[4]) == round(100 * t.agreed / t.compared)
        assert int(m[6]) == t.compared and int(m[5]) == t.agreed <= t.compared
    else:
        assert int(m[4]) == round(100 * notes["agreement"]) and int(m[5]) == notes["eval_images"]
        assert int(m[7]) == t.compared and int(m[6]) == t.agreed <= t.compared
    assert w.panels["dense"].summary.text() == ""
