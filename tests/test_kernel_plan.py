"""The kernel plan "auto" follows (qcnn.pq.engine.kernel_plan): fast-scan only within its error
budget, the same kernels at every load (cached, or stored in the .qcnn file), checked before use."""
import json

import numpy as np
import pytest

from qcnn import kernels as dense_kernels
from qcnn.graph import Graph, Node
from qcnn.pq import engine
from qcnn.pq.layer import PQLayer


def layer(kind, cin, cout, k, dsub, ksub, seed, pads=(0, 0, 0, 0)):
    rng = np.random.default_rng(seed)
    m = -(-cin // dsub)
    cb = rng.standard_normal((1, m, ksub, dsub)).astype(np.float32)
    codes = rng.integers(0, ksub, (k, k, m, cout)).astype(np.uint8)
    return PQLayer(kind, cb, codes, cin, rng.standard_normal(cout).astype(np.float32), (1, 1), pads, 1, None)


def graph():
    # a wide 3x3 conv (fast-scan's error small), a 1x1 with one channel per subspace whose inputs
    # span two orders of magnitude (error large), a K = 32 FC (no fast-scan)
    return Graph([Node("wide", layer("conv", 3, 64, 3, 3, 16, 0, (1, 1, 1, 1)), ("input",)),
                  Node("narrow", layer("conv", 64, 16, 1, 1, 16, 1), ("wide",)),
                  Node("fc", layer("fc", 8 * 8 * 16, 10, 1, 4, 32, 2), ("narrow",))])


def calib(n=2):
    return np.random.default_rng(5).standard_normal((n, 8, 8, 3)).astype(np.float32)


def test_plan_admits_fastscan_only_within_budget_and_says_why():
    g = graph()
    plan = engine.kernel_plan(g, calib())
    assert plan["isa"] == dense_kernels.isa() and plan["budget"] == engine.FASTSCAN_BUDGET
    assert set(plan["layers"]) == {"wide", "narrow", "fc"}
    assert plan["layers"]["fc"]["error"] is None and "fastscan" not in plan["layers"]["fc"]["ms"]
    for name, entry in plan["layers"].items():
        err = entry["error"]
        admitted = "fastscan" in entry["ms"]
        assert admitted == (err is not None and err <= engine.FASTSCAN_BUDGET), (name, entry)
        assert entry["kernel"] == min(entry["ms"], key=entry["ms"].get)
    # a budget of zero never admits fast-scan, a huge one always times it
    assert all(e["kernel"] != "fastscan" for e in engine.kernel_plan(g, calib(), budget=0.0)["layers"].values())
    loose = engine.kernel_plan(g, calib(), budget=10.0)["layers"]
    assert "fastscan" in loose["wide"]["ms"] and "fastscan" in loose["narrow"]["ms"]


def test_auto_follows_the_plan_and_refuses_a_foreign_one():
    g = graph()
    plan = engine.kernel_plan(g, calib())
    for name in ("wide", "narrow"):
        plan["layers"][name]["kernel"] = "fastscan"
    plan["layers"]["fc"]["kernel"] = "reconstructed"
    assert engine.kernel_map(engine.with_kernel(g, "auto", plan=plan)) == \
        {"wide": "fastscan", "narrow": "fastscan", "fc": "reconstructed"}
    assert set(engine.kernel_map(engine.with_kernel(g, "auto")).values()) == {"exact"}   # no plan: lossless
    for change, why in ((lambda p: p.update(isa="other"), "SIMD level"),
                        (lambda p: p.update(budget=0.5), "budget"),
                        (lambda p: p["layers"].pop("fc"), "other layers"),
                        (lambda p: p["layers"]["fc"].update(kernel="fastscan"), "cannot run")):
        bad = json.loads(json.dumps(plan))
        change(bad)
        with pytest.raises(ValueError, match=why):
            engine.with_kernel(g, "auto", plan=bad)
    text = engine.format_plan(plan)
    assert all(name in text for name in ("wide", "narrow", "fc")) and "n/a" in text


def test_fastscan_error_measure():
    y = np.arange(1.0, 5.0)
    assert engine.relative_error(y, y) == 0.0
    assert engine.relative_error(y * 1.1, y) == pytest.approx(0.1)


def test_lite0_plan_is_measured_once_then_reused(tmp_path, monkeypatch):
    """The workbench's plan: measured on calibration photos, cached per model and SIMD level, the
    same answer on the next load (never re-timed), and written into .qcnn files."""
    monkeypatch.setenv("QCNN_CACHE_DIR", str(tmp_path))
    from qcnn.models import load_model
    from qcnn.pq.modelfile import METADATA, load_model_file, save_model
    from qcnn.pq.settings import QuantSettings
    from qcnn.workbench import Workbench, auto_plan
    model = load_model("efficientnet-lite0")
    wb = Workbench()
    wb.set_model(model)
    settings = QuantSettings.from_dict({"layers": {"b15.project": {"dsub": 1, "ksub": 16},
                                                   "head": {"dsub": 2, "ksub": 16}}, "error_correction": False})
    q = wb.quantize(settings)
    first = wb.plan_for(q)
    assert first["source"].startswith("measured now") and set(first["layers"]) == {"b15.project", "head"}
    again = wb.plan_for(q)
    assert again["source"].startswith("cached") and again["layers"] == first["layers"]
    # and through a .qcnn file: the plan in its metadata is the one used
    plan = {k: v for k, v in first.items() if k != "source"}
    plan["layers"]["head"]["kernel"] = "exact" if plan["layers"]["head"]["kernel"] != "exact" else "reconstructed"
    path = tmp_path / "m.qcnn"
    save_model(path, model, q.graph, {**q.metadata, "kernel_plans": {dense_kernels.isa(): plan}})
    loaded, meta = load_model_file(path)
    from_file = auto_plan(loaded, loaded.graph, meta)
    assert from_file["source"] == "stored in the model file" and from_file["layers"] == plan["layers"]
    with pytest.raises(Exception, match="kernel"):
        METADATA["kernel_plans"]({"avx2": {**plan, "layers": {"head": {"kernel": "gpu"}}}})
