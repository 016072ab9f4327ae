"""qcnn.workbench, the app's model layer, without Qt: frames, engines, the quantized-model cache,
footprints, model files and evaluation.  Fast settings: EfficientNet-Lite0 with only its FC layer
quantized, no error correction."""
import dataclasses
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from qcnn import workbench as wb
from qcnn.models import load_model
from qcnn.pq.layer import PQLayer, PQSetting

FAST = wb.QuantSettings(conv=None, fc=PQSetting(16, 16), error_correction=False)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QCNN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet-lite0")


def photo(seed=0, size=(120, 90)):
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    return Image.fromarray(((base + rng.integers(0, 40, base.shape)) % 256).astype(np.uint8))


def test_workbench_does_not_import_qt():
    import subprocess
    code = ("import sys, qcnn.workbench; "
            "bad = [m for m in sys.modules if m.startswith(('PySide6', 'pyqtgraph', 'shiboken6'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_frame_prepares_once_and_matches_preprocess(lite0):
    calls = []
    img = photo()

    def load():
        calls.append(1)
        return img

    frame = wb.Frame(load, "p")
    a, b = frame.prepare(lite0), frame.prepare(lite0)
    assert a is b and len(calls) == 1
    np.testing.assert_allclose(a.x, lite0.preprocess(img), atol=1e-6)
    assert a.crop.size == (lite0.input_size, lite0.input_size)


def test_frame_error_names_the_file(tmp_path, lite0):
    bad = tmp_path / "broken.bmp"
    bad.write_bytes(b"BM" + b"\0" * 10)
    frame = wb.Frame.from_path(bad)
    for _ in range(2):                    # both engines get the same error
        with pytest.raises(Exception, match="broken.bmp"):
            frame.prepare(lite0)


def test_run_engine_times_every_node(lite0):
    run = wb.run_engine(lite0, lite0.graph, wb.Frame.from_image(photo(), "p", 7), "dense")
    assert [t.name for t in run.layers] == [n.name for n in lite0.graph.nodes]
    assert len(run.top) == 5 and run.serial == 7 and run.latency_ms > 0
    assert sum(t.ms for t in run.layers) <= run.latency_ms + 1e-6
    direct = lite0.classify(photo())
    assert [p.index for p in run.top] == [p.index for p in direct.top]


def test_quantize_caches_on_disk_per_settings(lite0, cache):
    bench = wb.Workbench(lite0)
    seen = []
    first = bench.quantize(FAST, progress=lambda text, f: seen.append(f))
    assert not first.from_cache and first.path.is_file() and first.path.parent.parent == cache
    assert seen and seen[-1] == pytest.approx(1.0) and seen == sorted(seen)
    again = bench.quantize(FAST)
    assert again.from_cache and again.path == first.path
    assert isinstance(again.graph["fc"].layer, PQLayer)
    np.testing.assert_array_equal(again.graph["fc"].layer.codes, first.graph["fc"].layer.codes)
    other = wb.QuantSettings(conv=None, fc=PQSetting(16, 8))
    assert wb.cache_path(lite0, other) != first.path
    # kernel and threads do not change what is computed: not part of the key
    assert wb.cache_key(lite0, FAST) == wb.cache_key(lite0, wb.QuantSettings.from_dict(FAST.to_dict()))


def test_cancelled_quantization_changes_nothing(lite0, cache):
    bench = wb.Workbench(lite0)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(wb.Cancelled):
        bench.quantize(FAST, cancel=cancel)
    assert bench.quantized is None
    assert not wb.cache_path(lite0, FAST).exists()


def test_adopt_classify_and_footprint(lite0):
    from qcnn.pq.cost import cost_report
    bench = wb.Workbench(lite0)
    q = bench.quantize(FAST)
    bench.adopt(q)
    frame = wb.Frame.from_image(photo(), "p", 1)
    dense, quant = bench.run(frame, "dense"), bench.run(frame, "quantized")
    assert quant.layers[-1].kind == "pq" or any(t.kind == "pq" for t in quant.layers)
    swapped = [dense.top[1], dense.top[0], *dense.top[2:]]          # same top-5, another top-1
    same, other = dataclasses.replace(quant, top=list(dense.top)), dataclasses.replace(quant, top=swapped)
    assert wb.agree(dense, same) is True and wb.agree(dense, other) is False
    assert wb.agree(dense, dataclasses.replace(same, serial=2)) is None and wb.agree(dense, None) is None
    bench.record(dense)
    bench.record(quant)
    assert "fc" in bench.timings.speedups()
    fp = bench.footprint()
    ref = cost_report(q.graph, (224, 224), dense_graph=lite0.graph, kernels=wb.kernel_map(bench.quant_graph))
    assert fp.report.to_json() == ref.to_json()
    assert fp.quant_file_bytes == q.path.stat().st_size
    assert fp.dense_storage_bytes == ref.dense_bits // 8
    assert fp.storage_ratio == pytest.approx(fp.dense_storage_bytes / fp.quant_file_bytes)


def test_model_file_round_trip_keeps_the_original_dense_model(lite0, tmp_path):
    bench = wb.Workbench(lite0)
    bench.adopt(bench.quantize(FAST))
    out = tmp_path / "mine.qcnn"
    assert bench.save_model_file(out) == out.stat().st_size
    model, dense_graph, q, note = wb.Workbench().open_model_file(out)
    assert model.name == "efficientnet-lite0" and note == ""
    assert q.settings == FAST
    np.testing.assert_array_equal(q.graph["fc"].layer.codes, bench.quantized.graph["fc"].layer.codes)


def test_evaluate_both_engines_on_a_labelled_folder(lite0, tmp_path):
    bench = wb.Workbench(lite0)
    bench.adopt(bench.quantize(FAST))
    rows = ["file,class_index"]
    for i in range(3):
        photo(i).save(tmp_path / f"p{i}.bmp")
        rows.append(f"p{i}.bmp,{i}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    ev = bench.evaluate(tmp_path / "labels.csv", tmp_path)
    assert ev.images == 3 and set(ev.scores) == {"dense", "quantized"}
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(wb.Cancelled):
        bench.evaluate(tmp_path / "labels.csv", tmp_path, cancel=cancel)


def test_settings_round_trip_and_per_layer_overrides(lite0):
    s = FAST.with_layer("b0.project", PQSetting(8, 4)).with_layer("head", None)
    assert wb.QuantSettings.from_dict(s.to_dict()) == s
    plan = s.plan(lite0)
    assert plan["b0.project"] == PQSetting(8, 4)
    assert plan["fc"] == PQSetting(16, 16) and plan["head"] is None
    assert s.quantized(lite0) == {"b0.project": PQSetting(8, 4), "fc": PQSetting(16, 16)}
    layers = wb.quantizable_layers(lite0)
    assert {"fc"} == {layer.name for layer in layers if layer.kind == "fc"}
    assert all(layer.kind == "conv" for layer in layers if layer.name != "fc")


def test_kernel_choices_always_offer_the_reference():
    choices = wb.kernel_choices()
    assert choices[0][:3] == ("reference", "reference (numpy)", True)
    for _name, _label, ok, why in choices:
        assert ok or why


def test_default_kernel_is_one_that_runs():
    name = wb.default_kernel()
    assert wb.kernel_problem(name) == ""
    assert any(n == name and ok for n, _l, ok, _w in wb.kernel_choices())


def test_error_correction_with_a_calibration_folder(lite0, tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(2):
        photo(10 + i, (80, 80)).save(folder / f"c{i}.png")
    settings = wb.QuantSettings(conv=None, fc=PQSetting(16, 16), error_correction=True,
                                calib_folder=str(folder), calib_count=2)
    assert wb.QuantSettings().error_correction                 # the default, as the paper does
    assert wb.cache_key(lite0, settings) != wb.cache_key(lite0, FAST)
    steps = []
    q = wb.Workbench(lite0).quantize(settings, progress=lambda text, f: steps.append(text))
    assert any("correct" in s for s in steps)
    assert q.metadata["settings"]["error_correction"] is True and q.settings == settings
    photo(12, (80, 80)).save(folder / "c2.png")          # a changed folder is a different model
    assert wb.cache_key(lite0, settings) != q.metadata["cache_key"]
