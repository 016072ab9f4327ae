"""One settings type end to end, and a quantization cache that can be trusted: keys over every
field, the same key in every process, presets meaning one model everywhere, every field of a
config surviving CLI -> quantizer -> file -> app, and faults that lose nothing (damaged or
foreign cache entries, an unwritable cache, killed or failing saves, two processes at once).
A mini AlexNet (ONNX) keeps every quantization to a fraction of a second."""
import dataclasses
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from onnx_models import mini_alexnet
from qcnn import cli
from qcnn import workbench as wb
from qcnn.models import load_model
from qcnn.pq import quantize as Q
from qcnn.pq.layer import PQLayer, PQSetting
from qcnn.pq.modelfile import load_model_file
from qcnn.pq.settings import DEFAULT_CALIB_COUNT, QUANTIZER_VERSION, QuantSettings, quantizable_layers

SAMPLES = Path(__file__).resolve().parent.parent / "assets" / "samples"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QCNN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return mini_alexnet(tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.fixture
def tiny(tiny_path):
    return load_model(tiny_path)


def layer_names(model):
    return [q.name for q in quantizable_layers(model)]


def fast_settings(model, **changes):
    names = layer_names(model)
    return QuantSettings(layers={names[1]: PQSetting(4, 16), names[2]: PQSetting(4, 16)},
                         **{"error_correction": False, **changes})


def calib_folder(tmp_path, n=3):
    folder = tmp_path / "calib"
    folder.mkdir(parents=True, exist_ok=True)
    for p in sorted(SAMPLES.iterdir())[:n]:
        (folder / p.name).write_bytes(p.read_bytes())
    return folder


# ----------------------------------------------------------------------------- keys

def test_cache_key_changes_with_every_field(tiny, tmp_path):
    other = calib_folder(tmp_path / "a")
    base = QuantSettings(conv=PQSetting(2, 16), fc=PQSetting(2, 16), layers={layer_names(tiny)[0]: None},
                         error_correction=True, iterations=3, max_rows=500, kmeans_init=1, shrinkage=1.0, seed=0,
                         calib_folder=None, calib_count=8)
    changes = {"conv": PQSetting(4, 16), "fc": PQSetting(4, 8), "layers": {layer_names(tiny)[0]: PQSetting(3, 4)},
               "error_correction": False, "iterations": 2, "max_rows": 400, "kmeans_init": 2, "shrinkage": 0.5,
               "seed": 1, "calib_folder": str(other), "calib_count": 9}
    fields = {f.name for f in dataclasses.fields(QuantSettings)}
    assert set(changes) == fields, "a new settings field needs a line here (and in the cache key)"
    key = wb.cache_key(tiny, base)
    keys = {name: wb.cache_key(tiny, base.replace(**{name: value})) for name, value in changes.items()}
    assert all(k != key for k in keys.values()), [n for n, k in keys.items() if k == key]
    assert len(set(keys.values())) == len(keys)
    # without error correction its options and images make no difference, everything else does
    plain = base.replace(error_correction=False)
    for name, value in changes.items():
        same = wb.cache_key(tiny, plain.replace(**{name: value})) == wb.cache_key(tiny, plain)
        assert same == (name in ("iterations", "max_rows", "shrinkage", "calib_folder", "calib_count",
                                 "error_correction")), name


def test_cache_key_changes_with_the_weights_the_images_and_the_quantizer_version(tiny, tmp_path, monkeypatch,
                                                                                  tiny_path):
    folder = calib_folder(tmp_path)
    s = fast_settings(tiny, error_correction=True, calib_folder=str(folder), calib_count=4)
    key = wb.cache_key(tiny, s)
    (folder / "extra.png").write_bytes((SAMPLES / sorted(os.listdir(SAMPLES))[-1]).read_bytes())
    assert wb.cache_key(tiny, s) != key                      # another image: another model
    other = load_model(mini_alexnet(tmp_path / "other.onnx"))  # the builder's random weights differ
    assert wb.cache_key(other, s) != wb.cache_key(tiny, s)
    key = wb.cache_key(tiny, s)
    monkeypatch.setattr(wb, "QUANTIZER_VERSION", QUANTIZER_VERSION + 1)
    assert wb.cache_key(tiny, s) != key


def test_the_same_model_is_one_key(tiny):
    names = layer_names(tiny)
    uniform = QuantSettings(conv=PQSetting(4, 16), fc=None, error_correction=False)
    spelled_out = QuantSettings(layers={n: PQSetting(4, 16) for n in names[:2]}, error_correction=False)
    assert uniform.plan(tiny) == spelled_out.plan(tiny)
    assert wb.cache_key(tiny, uniform) == wb.cache_key(tiny, spelled_out)


def test_the_same_key_in_every_process(tiny, tiny_path):
    s = fast_settings(tiny, seed=5, error_correction=True, calib_count=3)
    code = ("import json, sys; from qcnn import workbench as wb; from qcnn.models import load_model; "
            "from qcnn.pq.settings import QuantSettings; "
            "print(wb.cache_key(load_model(sys.argv[1]), QuantSettings.from_dict(json.loads(sys.argv[2]))))")
    for hashseed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code, str(tiny_path), json.dumps(s.to_dict())], check=True,
                             capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": hashseed})
        assert out.stdout.strip() == wb.cache_key(tiny, s)


def test_one_preset_name_is_one_model_in_the_app_and_the_command_line():
    from qcnn.pq.presets import preset
    lite0 = load_model("efficientnet-lite0")
    app = wb.presets(lite0)
    for name in ("accurate", "fast"):
        args = cli.build_parser().parse_args(["eval", "--images", ".", "--labels", "x", "--preset", name])
        from_cli = cli._settings(args, lite0)
        assert app[name] == preset("efficientnet-lite0", name) == from_cli
        assert wb.cache_key(lite0, app[name]) == wb.cache_key(lite0, from_cli)
        assert from_cli.correcting and from_cli.calib_folder is None and from_cli.calib_count == DEFAULT_CALIB_COUNT


# ----------------------------------------------------------------------------- one type end to end

def test_every_field_of_a_config_survives_cli_quantizer_file_and_app(tiny, tiny_path, tmp_path, cache,
                                                                    monkeypatch, capsys):
    names = layer_names(tiny)
    folder = calib_folder(tmp_path)
    settings = QuantSettings(conv=PQSetting(4, 8), fc=PQSetting(2, 16),
                             layers={names[0]: None, names[3]: PQSetting(4, 4)}, error_correction=True,
                             iterations=2, max_rows=77, kmeans_init=2, shrinkage=0.25, seed=7,
                             calib_folder=str(folder), calib_count=5)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(settings.to_dict()))
    seen_layers, seen_calib = [], []
    real_layer, real_calib = Q.quantize_layer, Q.calibration_batch

    def spy_layer(layer, setting, *args, **kwargs):
        seen_layers.append((setting, kwargs))           # in network order
        return real_layer(layer, setting, *args, **kwargs)

    def spy_calib(model, folder=None, count=128, seed=0, files=None):
        seen_calib.append((folder, count, seed))
        return real_calib(model, folder=folder, count=count, seed=seed, files=files)

    monkeypatch.setattr(Q, "quantize_layer", spy_layer)
    monkeypatch.setattr(Q, "calibration_batch", spy_calib)
    out = tmp_path / "out.qcnn"
    assert cli.main(["quantize", "--model", str(tiny_path), "--config", str(config), "-o", str(out)]) == 0
    # the quantizer got every field
    assert seen_calib == [(str(folder), 5, 7)]
    assert [setting for setting, _ in seen_layers] == [PQSetting(4, 8), PQSetting(2, 16), PQSetting(4, 4)]
    for _, kwargs in seen_layers:
        assert {k: kwargs[k] for k in ("error_correction", "iterations", "max_rows", "kmeans_init", "shrinkage",
                                       "seed")} == {"error_correction": True, "iterations": 2, "max_rows": 77,
                                                    "kmeans_init": 2, "shrinkage": 0.25, "seed": 7}
    # the file and the app read it back as it was
    model, metadata = load_model_file(out)
    assert QuantSettings.from_dict(metadata["settings"]) == settings
    assert metadata["quantizer_version"] == QUANTIZER_VERSION
    _, _, quantized, note = wb.Workbench().open_model_file(out)
    assert quantized.settings == settings and note == ""
    kinds = {n.name: n.layer.kind for n in model.graph}
    assert [kinds[n] for n in names] == ["conv", "pq", "pq", "pq"]


def test_a_model_made_without_error_correction_reopens_as_such(tiny_path, tmp_path, cache):
    out = tmp_path / "plain.qcnn"
    assert cli.main(["quantize", "--model", str(tiny_path), "--config", str(write_config(tmp_path, tiny_path)),
                     "--no-error-correction", "-o", str(out)]) == 0
    _, _, quantized, _ = wb.Workbench().open_model_file(out)
    assert quantized.settings.error_correction is False
    assert "error correction" not in quantized.settings.describe()


def write_config(tmp_path, tiny_path, **extra):
    names = layer_names(load_model(tiny_path))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"layers": {names[1]: {"dsub": 4, "ksub": 16}, names[2]: {"dsub": 4, "ksub": 16}},
                                  "calib_folder": str(SAMPLES), "calib_count": 4, **extra}))
    return config


def test_the_command_line_reuses_the_app_cache_and_says_so(tiny, tiny_path, tmp_path, cache, capsys):
    config = write_config(tmp_path, tiny_path)
    settings = cli._settings(cli.build_parser().parse_args(["quantize", "--config", str(config), "-o", "x"]), tiny)
    made = wb.Workbench(tiny).quantize(settings)
    assert not made.from_cache and made.path.is_file()
    capsys.readouterr()
    args = ["eval", "--model", str(tiny_path), "--config", str(config), "--images", str(SAMPLES), "--labels",
            str(write_labels(tmp_path)), "--json"]
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert f"cached {made.path}" in err and "made in" in err
    assert cli.main(args + ["--no-cache"]) == 0
    assert "quantized in" in capsys.readouterr().err
    assert made.path.stat().st_size == made.file_bytes          # --no-cache left the entry alone


def write_labels(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("file,class_index\ncoffee.jpg,967\ncat.bmp,282\n")
    return labels


def test_quantization_progress_reaches_a_pipe_as_lines(tiny_path, tmp_path, cache):
    out = subprocess.run([sys.executable, "-m", "qcnn.cli", "quantize", "--model", str(tiny_path), "--config",
                          str(write_config(tmp_path, tiny_path)), "-o", str(tmp_path / "p.qcnn")],
                         capture_output=True, text=True, cwd=REPO, check=True)
    lines = out.stderr.splitlines()
    assert "\r" not in out.stderr
    assert sum("%" in line for line in lines) >= 3 and any(line.strip().startswith("100.0%") for line in lines)
    assert any(line.startswith("quantized model: config") and "quantized in" in line for line in lines)


# ----------------------------------------------------------------------------- cancel

def test_cancel_keeps_the_model_in_use(tiny, cache):
    bench = wb.Workbench(tiny)
    first = bench.quantize(fast_settings(tiny))
    bench.adopt(first)
    slow = fast_settings(tiny, error_correction=True, calib_count=4, iterations=3)
    cancel, calls = threading.Event(), []

    def progress(text, fraction):
        calls.append(fraction)
        if len(calls) == 3:
            cancel.set()

    with pytest.raises(wb.Cancelled):
        bench.quantize(slow, progress=progress, cancel=cancel)
    assert bench.quantized is first and not wb.cache_path(tiny, slow).exists()
    assert load_model_file(first.path)[1]["cache_key"] == wb.cache_key(tiny, first.settings)


# ----------------------------------------------------------------------------- faults

@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_a_damaged_cache_entry_is_removed_and_made_again(tiny, cache, damage):
    s = fast_settings(tiny)
    first = wb.Workbench(tiny).quantize(s)
    data = first.path.read_bytes()
    if damage == "truncate":
        first.path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        first.path.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    elif damage == "garbage":
        first.path.write_bytes(b"not a model at all" * 10)
    else:
        first.path.write_bytes(b"")
    again = wb.Workbench(tiny).quantize(s)
    assert not again.from_cache and "unusable" in again.note
    assert again.path == first.path and load_model_file(again.path)[1]["cache_key"] == wb.cache_key(tiny, s)
    assert wb.Workbench(tiny).quantize(s).from_cache


def test_an_entry_made_by_another_quantizer_version_is_not_reused(tiny, cache, monkeypatch):
    s = fast_settings(tiny)
    first = wb.Workbench(tiny).quantize(s)
    # an old file where the new one is looked for (same name: only its metadata says which version)
    model, metadata = load_model_file(first.path)
    from qcnn.pq.modelfile import save_model
    save_model(first.path, tiny, model.graph, {**metadata, "quantizer_version": QUANTIZER_VERSION - 1})
    again = wb.Workbench(tiny).quantize(s)
    assert not again.from_cache and "another version" in again.note
    assert load_model_file(first.path)[1]["quantizer_version"] == QUANTIZER_VERSION


def test_an_unwritable_cache_means_no_caching_and_a_message(tiny, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory would be")
    monkeypatch.setenv("QCNN_CACHE_DIR", str(blocker / "cache"))
    q = wb.Workbench(tiny).quantize(fast_settings(tiny))
    assert q.path is None and not q.from_cache and q.file_bytes > 0
    assert "not writable" in q.note and "not cached" in q.note
    assert isinstance(q.graph[layer_names(tiny)[1]].layer, PQLayer)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_cache_directory_means_no_caching(tiny, cache):
    (cache / "quantized").mkdir(parents=True)
    os.chmod(cache / "quantized", 0o500)
    try:
        q = wb.Workbench(tiny).quantize(fast_settings(tiny))
    finally:
        os.chmod(cache / "quantized", 0o700)
    assert q.path is None and "not writable" in q.note


def run_cli(args, cache_dir, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "qcnn.cli", *map(str, args)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "QCNN_CACHE_DIR": str(cache_dir)}, **kwargs)


def test_two_processes_quantizing_the_same_settings_at_once(tiny_path, tmp_path):
    config = write_config(tmp_path, tiny_path, iterations=6)
    cache_dir = tmp_path / "shared-cache"
    procs = [run_cli(["quantize", "--model", tiny_path, "--config", config, "-o", tmp_path / f"out{i}.qcnn"],
                     cache_dir) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    entries = list((cache_dir / "quantized").iterdir())
    assert len(entries) == 1 and entries[0].suffix == ".qcnn"        # one entry, no temporaries left
    model, metadata = load_model_file(entries[0])
    for i in range(2):
        assert load_model_file(tmp_path / f"out{i}.qcnn")[1]["cache_key"] == metadata["cache_key"]


def test_a_killed_quantize_leaves_the_earlier_file_and_nothing_else(tiny_path, tmp_path):
    out = tmp_path / "model.qcnn"
    out.write_bytes(b"the earlier file")
    config = write_config(tmp_path, tiny_path, iterations=200, calib_count=64)
    p = run_cli(["quantize", "--model", tiny_path, "--config", config, "--no-cache", "-o", out], tmp_path / "c")
    for line in p.stderr:                  # progress lines: it is quantizing now
        if "correct" in line:
            break
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    assert out.read_bytes() == b"the earlier file"
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_a_full_disk_keeps_the_earlier_file(tiny_path, tmp_path):
    out = tmp_path / "model.qcnn"
    out.write_bytes(b"the earlier file")
    config = write_config(tmp_path, tiny_path)

    def small_disk():                      # writes past 64 KiB fail with EFBIG, as a full disk would
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))

    p = run_cli(["quantize", "--model", tiny_path, "--config", config, "--no-cache", "-o", out], tmp_path / "c",
                preexec_fn=small_disk)
    _, err = p.communicate(timeout=300)
    assert p.returncode != 0 and str(out) in err and "Traceback" not in err
    assert out.read_bytes() == b"the earlier file"
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_stale_temporaries_of_killed_saves_are_cleared(tiny, cache):
    folder = cache / "quantized"
    folder.mkdir(parents=True)
    old, fresh = folder / ".x.qcnn.abc.tmp", folder / ".y.qcnn.def.tmp"
    old.write_bytes(b"half")
    fresh.write_bytes(b"half")
    os.utime(old, (time.time() - 2 * wb.STALE_TEMP_SECONDS,) * 2)
    wb.Workbench(tiny).quantize(fast_settings(tiny))
    assert not old.exists() and fresh.exists()               # a save may still be writing the fresh one
