"""Commands that work bare (issue 15 item 4): `qcnn bench` with no flags, default presets, presets in
--help, progress on stderr when piped, "faster"/"slower" worded right, errors without tracebacks
or Python class names."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from onnx_models import mini_alexnet
from qcnn import bench as B
from qcnn.cli import main
from qcnn.models import load_model
from qcnn.pq.presets import DEFAULT_PRESET, PRESETS, preset_names
from qcnn.pq.settings import quantizable_layers

SAMPLES = Path(__file__).resolve().parent.parent / "assets" / "samples"
CLASS_NAME = re.compile(r"\b[A-Z][a-zA-Z]*(Error|Exception|Warning)\b|Traceback")


@pytest.fixture
def bench_cache(request, monkeypatch):
    """AlexNet fast4 takes a minute or more to quantize: keep it in pytest's cache between runs
    (a fresh clone, as in CI, quantizes it once)."""
    monkeypatch.setenv("QCNN_CACHE_DIR", str(request.config.cache.mkdir("qcnn-cache")))


def test_bench_with_no_flags_runs_the_papers_speed_test(bench_cache, capsys):
    assert main(["bench", "--runs", "1", "--images-per-run", "2"]) == 0
    out, err = capsys.readouterr()
    assert "alexnet: quantized with preset fast4" in out
    assert "speed test only" in out and "avg" in out and "per layer" in out
    assert re.search(r"quantized vs dense: \d+\.\d\dx (faster|slower)", out)
    layers = {line.split()[0]: line.split()[1] for line in out.splitlines() if re.match(r"(conv|fc)\d ", line)}
    assert layers["conv1"] == "dense" and all(layers[n] != "dense" for n in ("conv2", "conv5", "fc6", "fc8"))
    assert "error correction off" in err
    images = B.default_images()
    assert f"images: {images}" in err and images.is_dir()
    assert not CLASS_NAME.search(err)
    # the same, as JSON: the quantized model now comes from the cache
    assert main(["bench", "--runs", "1", "--images-per-run", "2", "--layer-repeats", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "alexnet" and report["setting"].startswith("preset fast4: cached ")
    assert report["images"] == str(images) and len(report["runs"]) == 1 and report["images_per_run"] == 2


def test_default_images_are_the_shared_sample_or_the_bundled_photos(monkeypatch, tmp_path):
    assert B.default_images() in (SAMPLES, (Path(B.__file__).resolve().parent.parent / B.SHARED_SAMPLE).resolve())
    monkeypatch.setattr(B, "SHARED_SAMPLE", Path("no-such-folder"))
    monkeypatch.chdir(tmp_path)
    assert B.default_images() == SAMPLES


def test_every_model_with_presets_has_a_default_one():
    assert set(DEFAULT_PRESET) == set(PRESETS)
    assert all(DEFAULT_PRESET[m] in PRESETS[m] for m in PRESETS)
    assert DEFAULT_PRESET["alexnet"] == "fast4"
    assert DEFAULT_PRESET["resnet18"] == DEFAULT_PRESET["resnet50"] == "fast"     # the demo's speed-up


def test_cost_and_quantize_use_the_default_preset(capsys):
    assert main(["cost", "--model", "alexnet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["setting"] == "fast4"


@pytest.mark.parametrize("command", [[], ["bench"], ["eval"], ["quantize"], ["cost"]])
def test_help_lists_every_preset_and_marks_the_default(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for model in PRESETS:
        names = [n + "*" * (n == DEFAULT_PRESET.get(model)) for n in preset_names(model)]
        assert f"{model}: {', '.join(names)}" in text
    assert "alexnet: fast4*, fast4-conv1, paper" in text
    assert "resnet18: accurate, fast*" in text and "resnet50: accurate, fast*" in text


@pytest.mark.parametrize("ratio, words", [(1.52, "1.52x faster"), (1 / 1.52, "1.52x slower"), (1.0, "1.00x faster"),
                                          (0.5, "2.00x slower"), (0.0, "not measured"), (float("nan"), "not measured")])
def test_ratios_are_worded_as_faster_or_slower(ratio, words):
    assert B.ratio_words(ratio) == words


def test_the_report_says_slower_when_it_is():
    test = B.SpeedTest(["dense", "quantized", "onnxruntime fp32"],
                       [{"dense": 10.0, "quantized": 15.0, "onnxruntime fp32": 7.5}], 2)
    text = B.BenchReport("m", "preset p", "auto", test, [], {}, {}, "photos").format()
    assert "quantized vs dense: 1.50x slower" in text
    assert "quantized vs onnxruntime fp32: 2.00x slower" in text
    assert "0.50x faster" not in text and "0.67x faster" not in text


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("QCNN_CACHE_DIR", str(tmp_path / "cache"))
    path = mini_alexnet(tmp_path / "tiny.onnx")
    names = [layer.name for layer in quantizable_layers(load_model(path).graph)]
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"layers": {names[2]: {"dsub": 4, "ksub": 16}}, "error_correction": False}))
    labels = tmp_path / "labels.csv"
    labels.write_text("file,class_index\ncoffee.jpg,967\ncat.bmp,282\nflower.jpg,985\n")
    return path, config, labels


def _progress_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if re.match(r"\s*\d+\.\d%  ", line)]


def test_progress_is_printed_as_lines_when_stderr_is_piped(tiny, tmp_path, capsys):
    """capsys stands in for a pipe (not a terminal): plain lines, no carriage-return bars."""
    path, config, labels = tiny
    assert main(["eval", "--model", str(path), "--config", str(config), "--images", str(SAMPLES),
                 "--labels", str(labels)]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and _progress_lines(err)[-1].strip().startswith("100.0%  3/3 images")
    assert main(["quantize", "--model", str(path), "--config", str(config), "--no-cache", "-o",
                 str(tmp_path / "t.qcnn")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and _progress_lines(err) and "t.qcnn" in err.splitlines()[-1]
    assert main(["bench", "--model", str(path), "--config", str(config), "--runs", "2", "--images-per-run", "5",
                 "--layer-repeats", "1", "--json"]) == 0
    out, err = capsys.readouterr()
    json.loads(out)                                   # progress never reaches stdout
    lines = _progress_lines(err)
    assert "\r" not in err and lines[-1].strip() == "100.0%  10/10 images" and len(lines) <= 11
    assert "speed test: 2 runs x 5 images" in err


def test_errors_name_the_problem_without_tracebacks_or_class_names(tiny, tmp_path, capsys):
    path, config, labels = tiny
    bad_config = tmp_path / "bad.json"
    bad_config.write_text('{"layers": {"x": {}}}')
    broken = tmp_path / "broken.qcnn"
    broken.write_bytes(b"QCNN\x00\r\n\x1a" + b"\x00" * 50)
    cases = [
        (["classify", str(tmp_path / "missing.jpg")], "missing.jpg"),
        (["eval", "--model", str(broken), "--images", str(SAMPLES), "--labels", str(labels)], "broken.qcnn"),
        (["cost", "--model", str(path), "--config", str(bad_config)], "bad.json"),
        (["eval", "--images", str(SAMPLES), "--labels", str(tmp_path / "nope.csv")], "nope.csv"),
        (["bench", "--model", str(path), "--config", str(config), "--images", str(tmp_path)], str(tmp_path)),
        (["--threads", "0", "classify", "x.jpg"], "--threads"),
    ]
    for argv, name in cases:
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
        err = capsys.readouterr().err
        assert rc in (1, 2), argv
        assert name in err and not CLASS_NAME.search(err), err


def test_an_unexpected_error_is_reported_as_a_bug_in_one_line(monkeypatch, capsys):
    from qcnn import cli
    monkeypatch.delenv("QCNN_DEBUG", raising=False)
    monkeypatch.setattr(cli, "cmd_classify", lambda args: {}["boom"])
    assert main(["classify", "x.jpg"]) == 3
    err = capsys.readouterr().err
    assert "internal error" in err and "QCNN_DEBUG=1" in err and not CLASS_NAME.search(err)
    monkeypatch.setenv("QCNN_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["classify", "x.jpg"])
