"""The kernel plan "auto" follows (qcnn.pq.engine.kernel_plan): uint8 kernels (fast-scan,
wide-scan) only within the error budget, the same kernels at every load (cached, or stored in the
.qcnn file), checked before use."""
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
    # span two orders of magnitude (error large), a K = 32 FC (wide-scan, not fast-scan)
    return Graph([Node("wide", layer("conv", 3, 64, 3, 3, 16, 0, (1, 1, 1, 1)), ("input",)),
                  Node("narrow", layer("conv", 64, 16, 1, 1, 16, 1), ("wide",)),
                  Node("fc", layer("fc", 8 * 8 * 16, 10, 1, 4, 32, 2), ("narrow",))])


def calib(n=2):
    return np.random.default_rng(5).standard_normal((n, 8, 8, 3)).astype(np.float32)


UINT8 = {"wide": "fastscan", "narrow": "fastscan", "fc": "widescan"}


def test_plan_admits_uint8_kernels_only_within_the_output_budget_and_says_why():
    g, x = graph(), calib()
    plan = engine.kernel_plan(g, x)
    assert plan["isa"] == dense_kernels.isa() and plan["budget"] == engine.FASTSCAN_BUDGET
    assert set(plan["layers"]) == set(UINT8)
    assert set(plan["layers"]["fc"]["ms"]) == {"exact", "reconstructed", "widescan"} and plan["layers"]["fc"]["error"] > 0
    # K <= 16: two-pass fast-scan is timed too, as one of the kernels that keep the model
    assert set(plan["layers"]["wide"]["ms"]) == {"exact", "reconstructed", "fastscan", "fastscan2"}
    assert plan["output_error"] <= plan["budget"]
    for name, entry in plan["layers"].items():
        lossless = min((k for k in engine.LOSSLESS if k in entry["ms"]), key=lambda k: (entry["ms"][k], k))
        assert entry["kernel"] in (lossless, UINT8[name]), (name, entry)
        if entry["kernel"] == UINT8[name]:
            assert entry["ms"][UINT8[name]] < entry["ms"][lossless], (name, entry)
    # the output error the plan reports is what running it does to the network's output
    ran = engine.with_kernel(g, "auto", plan=plan)(x)
    assert engine.relative_error(ran, engine.with_kernel(g, "reconstructed")(x)) == \
        pytest.approx(plan["output_error"], rel=1e-3, abs=1e-6)
    # a budget of zero never admits a uint8 kernel; a huge one admits it wherever it was faster
    assert all(e["kernel"] in engine.LOSSLESS for e in engine.kernel_plan(g, x, budget=0.0)["layers"].values())
    loose = engine.kernel_plan(g, x, budget=10.0)["layers"]
    for name, entry in loose.items():
        faster = entry["ms"][UINT8[name]] < min(v for k, v in entry["ms"].items() if k in engine.LOSSLESS)
        assert (entry["kernel"] == UINT8[name]) == faster, (name, entry)


def test_admission_takes_the_best_savings_per_error_first_and_stops_at_the_budget():
    layers = {"a": {"kernel": "reconstructed", "error": 0.05, "ms": {"exact": 9, "reconstructed": 4, "fastscan": 1}},
              "b": {"kernel": "exact", "error": 0.01, "ms": {"exact": 2, "reconstructed": 3, "fastscan": 1}},
              "c": {"kernel": "reconstructed", "error": 0.001, "ms": {"exact": 9, "reconstructed": 1, "fastscan": 2}},
              "d": {"kernel": "reconstructed", "error": None, "ms": {"exact": 9, "reconstructed": 1}},
              "e": {"kernel": "exact", "error": 0.04, "ms": {"exact": 5, "reconstructed": 6, "widescan": 1}},
              "f": {"kernel": "exact", "error": 0.02, "ms": {"exact": 1.1, "reconstructed": 2, "fastscan": 1}}}
    asked = []

    def output_error(names):           # errors adding in quadrature, as independent ones do
        asked.append(list(names))
        return float(np.sqrt(sum(layers[n]["error"] ** 2 for n in names)))
    # b saves 1 ms at 1 %, e (wide-scan) 4 ms at 4 %, a 3 ms at 5 %, f 0.1 ms at 2 %: b, e, a, f;
    # c is slower with fast-scan, d cannot run a uint8 kernel
    assert engine.admit_uint8(layers, output_error, budget=1.0) == (["b", "e", "a", "f"], pytest.approx(0.068, abs=1e-3))
    # the prefix stops before a (or e); f, last in the order, still fits behind it
    assert engine.admit_uint8(layers, output_error, budget=0.05) == (["b", "e", "f"], pytest.approx(0.0458, abs=1e-3))
    assert engine.admit_uint8(layers, output_error, budget=0.03) == (["b", "f"], pytest.approx(0.0224, abs=1e-3))
    assert engine.admit_uint8(layers, output_error, budget=0.0) == ([], 0.0)
    assert all(set(names) <= {"a", "b", "e", "f"} for names in asked)
    # a layer that alone breaks the budget is never admitted by the fill
    assert engine.admit_uint8(layers, output_error, budget=0.015) == (["b"], pytest.approx(0.01))


def test_the_plan_allows_at_most_a_share_of_the_quantizations_own_error_of_the_dense_network():
    import dataclasses
    g, x = graph(), calib()
    rebuilt = engine.with_kernel(g, "reconstructed")
    nodes = list(g)
    fc = nodes[-1].layer
    # the "dense" network: the quantized one with a slightly different FC bias (a small quantization error)
    rms = float(np.sqrt(np.mean(np.square(rebuilt(x)))))
    shifted = dataclasses.replace(fc, bias=fc.bias + np.float32(0.02 * rms))
    dense = engine.with_kernel(Graph(nodes[:-1] + [Node("fc", shifted, nodes[-1].inputs)], g.input_name, g.output),
                               "reconstructed")
    q = engine.relative_error(rebuilt(x), dense(x))
    assert 1e-4 < q < 2 * engine.FASTSCAN_BUDGET
    plan = engine.kernel_plan(g, x, dense=dense)
    assert plan["quantization_error"] == pytest.approx(q, rel=1e-3)
    assert plan["limit"] == pytest.approx(min(engine.FASTSCAN_BUDGET, engine.FASTSCAN_SHARE * q), rel=1e-3)
    assert plan["output_error"] <= plan["limit"]
    assert "the quantization's own" in engine.format_plan(plan)
    # the dense network rebuilt from the codebooks themselves gives no scale: the budget alone
    alone = engine.kernel_plan(g, x, dense=rebuilt)
    assert alone["limit"] == engine.FASTSCAN_BUDGET
    assert engine.kernel_plan(g, x)["quantization_error"] is None


def test_auto_follows_the_plan_and_refuses_a_foreign_one():
    g = graph()
    plan = engine.kernel_plan(g, calib())
    for name in ("wide", "narrow"):
        plan["layers"][name]["kernel"] = "fastscan"
    plan["layers"]["fc"]["kernel"] = "widescan"
    assert engine.kernel_map(engine.with_kernel(g, "auto", plan=plan)) == \
        {"wide": "fastscan", "narrow": "fastscan", "fc": "widescan"}
    plan["layers"]["wide"]["kernel"] = "fastscan2"
    assert engine.kernel_map(engine.with_kernel(g, "auto", plan=plan))["wide"] == "fastscan2"
    plan["layers"]["fc"]["kernel"] = "reconstructed"
    assert set(engine.kernel_map(engine.with_kernel(g, "auto")).values()) == {"exact"}   # no plan: lossless
    for change, why in ((lambda p: p.update(isa="other"), "SIMD level"),
                        (lambda p: p.update(budget=0.5), "budget"),
                        (lambda p: p.update(kernels="0123456789abcdef"), "another build of the kernels"),
                        (lambda p: p.pop("kernels"), "another build of the kernels"),
                        (lambda p: p["layers"].pop("fc"), "other layers"),
                        (lambda p: p["layers"]["fc"].update(kernel="fastscan"), "cannot run"),
                        (lambda p: p["layers"]["fc"].update(kernel="fastscan2"), "cannot run"),
                        (lambda p: p["layers"]["wide"].update(kernel="widescan"), "cannot run")):
        bad = json.loads(json.dumps(plan))
        change(bad)
        with pytest.raises(ValueError, match=why):
            engine.with_kernel(g, "auto", plan=bad)
    text = engine.format_plan(plan)
    assert all(name in text for name in UINT8) and "n/a" not in text   # every layer has a uint8 kernel


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
