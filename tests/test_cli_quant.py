"""`qcnn cost | quantize | eval | bench` end to end on a small ONNX CNN (fast), plus AlexNet's cost."""
import json
from pathlib import Path

import pytest

from onnx_models import mini_alexnet
from qcnn.cli import main
from qcnn.kernels import ISA_NAMES
from qcnn.models import load_model
from qcnn.pq.modelfile import load_model_file
from qcnn.pq.settings import quantizable_layers

SAMPLES = Path(__file__).resolve().parent.parent / "assets" / "samples"


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A mini AlexNet as ONNX, a config quantizing its second conv and both FC layers, labels."""
    monkeypatch.setenv("QCNN_CACHE_DIR", str(tmp_path / "cache"))
    path = mini_alexnet(tmp_path / "tiny.onnx")
    names = [q.name for q in quantizable_layers(load_model(path).graph)]
    config = {"layers": {names[1]: {"dsub": 4, "ksub": 16}, names[2]: {"dsub": 4, "ksub": 16},
                         names[3]: {"dsub": 2, "ksub": 32}}, "error_correction": True, "iterations": 2}
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config))
    labels = tmp_path / "labels.csv"
    labels.write_text("file,class_index\ncoffee.jpg,967\ncat.bmp,282\nflower.jpg,985\n")
    return path, cfg, labels, names


def run_json(capsys, *args):
    assert main(list(map(str, args))) == 0
    return json.loads(capsys.readouterr().out)


def test_cost_of_the_paper_preset_matches_the_paper(capsys):
    out = run_json(capsys, "cost", "--model", "alexnet", "--preset", "paper", "--json")
    assert out["theoretical_speedup"] == pytest.approx(4.15, abs=0.02)     # the paper's 4.15x
    assert out["compression"] > 15
    assert [l["name"] for l in out["layers"]] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    kernels = {l["name"]: l["kernel"] for l in out["layers"]}
    assert kernels["fc8"] == "fastscan" and kernels["conv2"] == "widescan"   # K=16 vs K=128
    assert out["layers"][1]["dense_macs"] == 223_948_800


def test_quantize_writes_a_model_file_that_loads(tiny, tmp_path, capsys):
    path, cfg, _, names = tiny
    out = tmp_path / "tiny.qcnn"
    assert main(["quantize", "--model", str(path), "--config", str(cfg), "--calib", str(SAMPLES),
                 "--calib-count", "8", "-o", str(out)]) == 0
    assert str(out.stat().st_size) in capsys.readouterr().err
    model, metadata = load_model_file(out)
    kinds = {n.name: n.layer.kind for n in model.graph}
    assert [kinds[n] for n in names] == ["conv", "pq", "pq", "pq"]
    assert metadata["settings"]["calib_count"] == 8 and metadata["settings"]["iterations"] == 2


def test_eval_reports_both_engines(tiny, capsys):
    path, cfg, labels, _ = tiny
    out = run_json(capsys, "eval", "--model", path, "--config", cfg, "--images", SAMPLES, "--labels", labels,
                   "--kernel", "fastscan", "--json")
    assert out["images"] == 3
    for key in ("dense_top1", "dense_top5", "quant_top1", "quant_top5", "agreement", "mean_kl"):
        assert 0 <= out[key] <= (1 if key != "mean_kl" else 50), key
    assert out["kernel"] == "fastscan"


def test_bench_prints_the_paper_table_and_json(tiny, capsys):
    path, cfg, _, names = tiny
    args = ["bench", "--model", str(path), "--config", str(cfg), "--runs", "2", "--images-per-run", "3",
            "--layer-repeats", "2", "--kernel", "fastscan"]
    out = run_json(capsys, *args, "--json")
    assert len(out["runs"]) == 2 and out["dense_ms"] > 0 and out["quant_ms"] > 0
    assert out["simd"] in ISA_NAMES.values()
    assert out["speedup"] == pytest.approx(out["dense_ms"] / out["quant_ms"])
    layers = {l["name"]: l for l in out["layers"]}
    assert layers[names[1]]["kernel"] == "fastscan" and layers[names[3]]["kernel"] == "exact"
    assert layers[names[1]]["table_ms"] > 0 and layers[names[1]]["lookup_ms"] > 0
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "dense ms" in text and "quantized ms" in text and "avg" in text and "tables" in text


def test_bench_isa_caps_the_kernels_and_says_so(tiny, capsys):
    from qcnn import kernels
    path, cfg, _, _ = tiny
    before = kernels.isa()
    try:
        out = run_json(capsys, "bench", "--model", path, "--config", cfg, "--runs", "1", "--images-per-run", "2",
                       "--layer-repeats", "1", "--isa", "scalar", "--json")
        assert out["simd"] == "scalar" and out["cpu_simd"] == kernels.cpu_isa()
        assert main(["bench", "--model", str(path), "--config", str(cfg), "--runs", "1", "--images-per-run", "2",
                     "--layer-repeats", "1", "--isa", "scalar"]) == 0
        head = capsys.readouterr().out.splitlines()[0]
        assert "(scalar" in head and (kernels.cpu_isa() == "scalar" or f"the CPU has {kernels.cpu_isa()}" in head)
    finally:
        kernels.set_isa(before)


def test_search_passes_its_own_options_through(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["search", "--help"])
    assert exit_.value.code == 0 and "--objective" in capsys.readouterr().out
    assert main(["search", "--labels", "/nonexistent/labels.csv", "--objective", "speed"]) == 2
    assert "/nonexistent/labels.csv" in capsys.readouterr().err
