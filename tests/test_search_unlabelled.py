"""`qcnn search` without labels: an imported ONNX model, a folder of photos, settings that the
other commands accept, progress, cancel and bad photos."""
import contextlib
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx_models
import pytest
from onnx_models import Builder

from qcnn import cli
from qcnn.models import load_model
from qcnn.paths import SAMPLES
from qcnn.pq.layer import PQSetting
from qcnn.pq.quantize import Cancelled
from qcnn.pq.search import Budget, find_settings, split_folder

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def seeded(seed):
    """onnx_models draws weights from one module-wide generator: these models get the same weights
    whichever test makes them first (the app's cache then knows them), and the others' draws stay."""
    old, onnx_models.RNG = onnx_models.RNG, np.random.default_rng(seed)
    try:
        yield
    finally:
        onnx_models.RNG = old


def small_cnn(path):
    """Two 3x3 convolutions and two FC layers at 32x32: a search of a second or two."""
    with seeded(11):
        return _small_cnn(path)


def slow_cnn(path):
    """An 8192 -> 512 FC layer: its k-means takes seconds, time to interrupt the search."""
    with seeded(12):
        return _slow_cnn(path)


def _small_cnn(path):
    b = Builder()
    x = b.op("Relu", [b.conv("data", 3, 16, 3, pads=[1, 1, 1, 1], strides=[2, 2])])      # 32 -> 16
    x = b.op("Relu", [b.conv(x, 16, 32, 3, pads=[1, 1, 1, 1], strides=[2, 2])])          # 16 -> 8
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    x = b.op("Relu", [b.gemm(x, 32, 256, transB=1)])
    return b.save(path, b.gemm(x, 256, 1000, transB=1))


def _slow_cnn(path):
    b = Builder()
    x = b.op("Relu", [b.conv("data", 3, 32, 3, pads=[1, 1, 1, 1], strides=[2, 2])])
    x = b.op("Flatten", [b.op("Relu", [b.conv(x, 32, 32, 3, pads=[1, 1, 1, 1])])])
    x = b.op("Relu", [b.gemm(x, 8192, 512, transB=1)])
    return b.save(path, b.gemm(x, 512, 100, transB=1))


@pytest.fixture
def photos(tmp_path):
    """The bundled photos (one re-saved as PNG: any supported format) and a broken 'photo'."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sorted(SAMPLES.iterdir()):
        if p.suffix.lower() in (".jpg", ".bmp"):
            shutil.copy(p, folder / p.name)
    from PIL import Image
    Image.open(folder / "cat.bmp").convert("RGB").resize((120, 90)).save(folder / "small-cat.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return folder


def test_cli_search_without_labels_writes_settings_that_eval_and_quantize_reproduce(tmp_path, photos, capsys):
    model = small_cnn(tmp_path / "small.onnx")
    out = tmp_path / "found.json"
    rc = cli.main(["search", "--model", str(model), "--images", str(photos), "--out", str(out), "--iterations", "1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "broken.jpg" in captured.err and "skipped" in captured.err     # the bad photo, by name
    report = json.loads(out.read_text())
    assert report == json.loads(captured.out)
    assert [s for s in report["skipped"] if "broken.jpg" in s] and len(report["skipped"]) == 1
    # 7 readable photos: a calibration half of 3, the other 4 measure agreement
    assert report["calibration_photos"] == 3 and report["probe_photos"] == 4
    assert report["budget"] == {"max_kl": None, "min_agree": 0.9, "min_keep5": 0.97}
    assert report["config"]["calib_folder"] == str(photos) and report["config"]["calib_count"] == 3
    assert report["probe_metrics"]["agree"] >= 0.9 and report["probe_metrics"]["keep5"] >= 0.97
    assert report["compression"] > 1.5 and report["config"]["layers"]     # something was quantized
    assert set(report["probe_files"]).isdisjoint({"broken.jpg"}) and len(report["probe_files"]) == 4

    # eval --config quantizes with exactly the calibration the search measured with: on the probe
    # photos (labelled arbitrarily) its agreement and KL are the search's
    labels = tmp_path / "labels.csv"
    labels.write_text("file,class_index\n" + "".join(f"{name},{i}\n" for i, name in enumerate(report["probe_files"])))
    rc = cli.main(["eval", "--model", str(model), "--config", str(out), "--images", str(photos), "--labels",
                   str(labels), "--kernel", "reconstructed", "--no-cache", "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    ev = json.loads(captured.out)
    assert ev["images"] == 4 and ev["agreement"] == report["probe_metrics"]["agree"]
    assert ev["mean_kl"] == pytest.approx(report["probe_metrics"]["kl"], rel=1e-3, abs=1e-6)

    rc = cli.main(["quantize", "--model", str(model), "--config", str(out), "-o", str(tmp_path / "m.qcnn")])
    assert rc == 0 and (tmp_path / "m.qcnn").stat().st_size > 0


def test_find_settings_restricted_to_layers_leaves_the_others_dense(tmp_path, photos):
    model = load_model(small_cnn(tmp_path / "small.onnx"))
    fc = [n.name for n in model.graph if n.layer.kind == "fc"]
    seen = []
    found = find_settings(model, photos, "compression", Budget(max_kl=10.0), layers=fc[:1], iterations=1,
                          progress=lambda text, f: seen.append((text, f)))
    assert set(dict(found.settings.layers)) <= set(fc[:1]) and found.settings.quantized(model.graph)
    assert found.report["layers_searched"] == fc[:1]
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0     # one forward-moving bar
    stages = [t.split(":")[0] for t, _ in seen]
    assert {"reading photos", "sensitivity", "checks"} <= set(stages)
    with pytest.raises(ValueError, match="not quantizable"):
        find_settings(model, photos, layers=["no-such-layer"])


def test_the_split_is_deterministic_and_the_halves_do_not_overlap(tmp_path, photos):
    model = load_model(small_cnn(tmp_path / "small.onnx"))
    a = split_folder(model, photos, seed=3)
    b = split_folder(model, photos, seed=3)
    assert a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2] == b[2]
    from qcnn.pq.quantize import calibration_files
    calib = set(calibration_files(a[0].calib_folder, a[0].calib_count, 3))
    assert calib.isdisjoint(a[2]) and len(calib) + len(a[2]) == 8          # 8 files, one unreadable
    assert any("broken.jpg" in s and "cannot read image" in s for s in a[3])


def test_cancel_stops_the_search_at_any_stage(tmp_path, photos):
    model = load_model(small_cnn(tmp_path / "small.onnx"))
    for stage in ("reading photos", "sensitivity", "checks"):
        hit = []

        def progress(text, f, stage=stage):
            if text.startswith(stage):
                hit.append(text)

        with pytest.raises(Cancelled):
            find_settings(model, photos, iterations=1, progress=progress, cancel=lambda: bool(hit))
        assert hit


def test_too_few_readable_photos_is_a_clear_error(tmp_path, capsys):
    folder = tmp_path / "few"
    folder.mkdir()
    shutil.copy(SAMPLES / "cat.bmp", folder / "cat.bmp")
    (folder / "bad.png").write_bytes(b"not a png")
    rc = cli.main(["search", "--model", str(small_cnn(tmp_path / "s.onnx")), "--images", str(folder)])
    err = capsys.readouterr().err
    assert rc == 2 and "1 readable photos (1 unreadable)" in err and str(folder) in err
    rc = cli.main(["search", "--model", str(tmp_path / "s.onnx"), "--images", str(tmp_path / "nowhere")])
    assert rc == 2 and "not a folder" in capsys.readouterr().err


def test_interrupting_the_search_leaves_no_settings_file(tmp_path, photos):
    model = slow_cnn(tmp_path / "slow.onnx")
    out = tmp_path / "found.json"
    proc = subprocess.Popen([sys.executable, "-m", "qcnn.cli", "search", "--model", str(model), "--images",
                             str(photos), "--out", str(out)], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    lines = []
    for line in proc.stderr:                 # the photos are read: the search proper begins
        lines.append(line)
        if "calibration photos" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    proc.wait(60)
    assert proc.returncode == 130, "".join(lines) + rest
    assert f"{out} not written" in rest
    assert not out.exists() and not list(tmp_path.glob(".found.json.*"))


def test_labelled_mode_still_evaluates_on_the_even_rows(tmp_path, capsys):
    folder = tmp_path / "labelled"
    folder.mkdir()
    names = sorted(p.name for p in SAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".bmp"))
    for n in names:
        shutil.copy(SAMPLES / n, folder / n)
    (folder / "labels.csv").write_text("file,class_index\n" + "".join(f"{n},{i}\n" for i, n in enumerate(names)))
    out = tmp_path / "labelled.json"
    rc = cli.main(["search", "--model", str(small_cnn(tmp_path / "s.onnx")), "--labels", str(folder / "labels.csv"),
                   "--calib", "1", "--max-kl", "1", "--iterations", "1", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["eval_images"] == 3 and "top1" in report and "config" in report


def test_search_needs_images_or_labels(capsys):
    with pytest.raises(SystemExit):
        cli.main(["search", "--model", "alexnet"])
    assert "--images DIR" in capsys.readouterr().err


def test_the_checks_can_measure_the_kernel_that_will_run(tmp_path, photos):
    model = load_model(small_cnn(tmp_path / "small.onnx"))
    fc = [n.name for n in model.graph if n.layer.kind == "fc"]
    found = find_settings(model, photos, "speed", Budget(max_kl=10.0), layers=fc, iterations=1, kernel="fastscan",
                          ladder=[PQSetting(4, 16)])
    assert found.report["checked_with_kernel"] == "fastscan" and found.result.checks
    # the same settings run by the fast-scan kernel agree with the check's figure
    from qcnn.pq.engine import with_kernel
    from qcnn.pq.quantize import calibration_for, quantize_model
    from qcnn.pq.search import agreement
    settings, probe, _, _ = split_folder(model, photos)
    q = quantize_model(model, found.settings, calibration_for(model, found.settings))
    m = agreement(model.probabilities(model.graph.forward(probe)),
                  model.probabilities(with_kernel(q, "fastscan", (32, 32)).forward(probe)))
    assert m["kl"] == pytest.approx(found.result.metrics["kl"], rel=1e-4, abs=1e-7)
