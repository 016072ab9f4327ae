"""Subspaces across kernel offsets (qcnn.pq.taps): the rewrite computes the same convolution, the
quantized layer runs on every kernel, error correction and the cost model see it, files keep it."""
import numpy as np
import pytest

from qcnn.graph import Graph, Node
from qcnn.layers import Conv2D, Dense, Flatten, GlobalAvgPool, Patches
from qcnn.models import Model
from qcnn.pq.cost import SettingCosts, cost_report
from qcnn.pq.engine import with_kernel
from qcnn.pq.layer import PQLayer, PQSetting
from qcnn.pq.modelfile import load_model_file, save_model
from qcnn.pq.quantize import quantize_model, reconstructed
from qcnn.pq.settings import QuantSettings, settings_from_metadata
from qcnn.pq.taps import PATCHES_SUFFIX, as_pointwise, expand_taps
from qcnn.preprocess import Preprocess

RNG = np.random.default_rng(3)


def w(*shape):
    return (RNG.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))).astype(np.float32)


def stem_graph():
    """A 7x7/2 stem on 3 channels (as ResNet's), a 1x1, pooling and an FC layer."""
    return Graph([
        Node("stem", Conv2D(w(7, 7, 3, 32), w(1, 32)[0], (2, 2), (3, 3, 3, 3), 1, "relu"), ("input",)),
        Node("pw", Conv2D(w(1, 1, 32, 16), None, (1, 1), (0, 0, 0, 0), 1, "relu"), ("stem",)),
        Node("pool", GlobalAvgPool(), ("pw",)),
        Node("flatten", Flatten(), ("pool",)),
        Node("fc", Dense(w(16, 10), None), ("flatten",)),
    ])


TAPS = PQSetting(21, 16, taps=True)          # one kernel row (7 taps x 3 channels) per subspace


def test_patches_then_pointwise_is_the_convolution():
    for pads, stride in (((3, 3, 3, 3), (2, 2)), ("same", (2, 2)), ((0, 1, 2, 0), (1, 3))):
        conv = Conv2D(w(7, 5, 3, 8), w(1, 8)[0], stride, pads, 1, "relu")
        x = RNG.standard_normal((2, 23, 19, 3)).astype(np.float32)
        y = as_pointwise(conv)(Patches(conv.kernel, conv.stride, conv.pads)(x))
        np.testing.assert_allclose(y, conv(x), rtol=1e-5, atol=1e-5)


def test_rewrite_keeps_names_and_function():
    g = stem_graph()
    expanded, plan = expand_taps(g, {"stem": TAPS, "pw": PQSetting(4, 16)})
    assert [n.name for n in expanded] == ["stem" + PATCHES_SUFFIX, "stem", "pw", "pool", "flatten", "fc"]
    assert plan == {"stem": PQSetting(21, 16), "pw": PQSetting(4, 16)}
    x = RNG.standard_normal((1, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(expanded(x), g(x), rtol=1e-4, atol=1e-5)
    assert expand_taps(g, {"pw": PQSetting(4, 16)})[0] is g


@pytest.mark.parametrize("bad", [{"pw": TAPS}, {"fc": TAPS}, {"stem": PQSetting(148, 16, taps=True)}])
def test_taps_refused_where_it_means_nothing(bad):
    with pytest.raises(ValueError, match="across kernel offsets|exceeds"):
        QuantSettings(layers=bad).plan(stem_graph())


def test_taps_is_per_layer_and_part_of_the_settings():
    with pytest.raises(ValueError, match="per layer"):
        QuantSettings(conv=TAPS)
    s = QuantSettings(layers={"stem": TAPS}, error_correction=False)
    d = s.to_dict()
    assert d["layers"]["stem"] == {"dsub": 21, "ksub": 16, "taps": True}
    assert QuantSettings.from_dict(d) == s
    plain = QuantSettings(layers={"stem": PQSetting(21, 16)}, error_correction=False)
    assert "taps" not in plain.to_dict()["layers"]["stem"] and plain != s
    assert "across taps" in s.describe() or "one by one" in s.describe()


def test_quantized_stem_runs_on_every_kernel_and_corrects():
    g = stem_graph()
    calib = RNG.standard_normal((4, 32, 32, 3)).astype(np.float32)
    kmeans_only = quantize_model(g, QuantSettings(layers={"stem": TAPS}, error_correction=False))
    corrected = quantize_model(g, QuantSettings(layers={"stem": TAPS}, iterations=3), calib)
    layer = corrected["stem"].layer
    assert isinstance(layer, PQLayer) and layer.kernel == (1, 1) and layer.M == 7 and layer.in_channels == 147
    assert isinstance(corrected["stem" + PATCHES_SUFFIX].layer, Patches)
    # error correction lowers the stem's response error on its calibration inputs (by 3-4 % on these
    # random weights and inputs, which leave it little structure to use; no correction: 0 %)
    target = g.forward(calib, until="stem")
    errors = [np.linalg.norm(q.forward(calib, until="stem") - target) for q in (kmeans_only, corrected)]
    assert errors[1] < 0.985 * errors[0]
    x = calib[:1]
    ref = corrected.forward(x)
    for kernel in ("exact", "reconstructed", "fastscan"):
        y = with_kernel(corrected, kernel)(x)
        tol = 5e-2 if kernel == "fastscan" else 1e-4        # fast-scan: uint8 tables
        np.testing.assert_allclose(y, ref, rtol=tol, atol=tol * np.abs(ref).max())
    np.testing.assert_allclose(reconstructed(corrected)(x), ref, rtol=1e-4, atol=1e-4)


def test_cost_of_a_taps_setting_equals_the_quantized_graph():
    g = stem_graph()
    planned = SettingCosts(g, (32, 32)).layer("stem", TAPS)
    q = quantize_model(g, QuantSettings(layers={"stem": TAPS}, error_correction=False))
    built = next(c for c in cost_report(q, (32, 32), dense_graph=g).layers if c.name == "stem")
    oh = ow = 16
    assert planned.table_macs == built.table_macs == oh * ow * 7 * 16 * 21
    assert planned.lookup_adds == built.lookup_adds == oh * ow * 32 * 7
    assert planned.dense_macs == built.dense_macs == oh * ow * 32 * 7 * 7 * 3
    assert planned.setting == built.setting == TAPS


def test_model_file_keeps_the_patches_node_and_the_setting(tmp_path):
    g = stem_graph()
    model = Model("stem-test", g, Preprocess(resize=32, crop=32), tuple(f"c{i}" for i in range(10)))
    settings = QuantSettings(layers={"stem": TAPS}, error_correction=False)
    q = quantize_model(g, settings)
    path = tmp_path / "stem.qcnn"
    save_model(path, model, q, {"settings": settings.to_dict()})
    loaded, meta = load_model_file(path)
    x = RNG.standard_normal((1, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.graph(x), q(x), rtol=1e-5, atol=1e-6)
    assert isinstance(loaded.graph["stem" + PATCHES_SUFFIX].layer, Patches)
    assert settings_from_metadata(meta, loaded.graph) == (settings, True)


@pytest.mark.parametrize("pads,stride,hw", [((3, 3, 3, 3), (2, 2), (32, 32)), ((0, 0, 0, 0), (4, 4), (39, 27)),
                                            ((0, 2, 1, 0), (1, 3), (17, 22))])
def test_fastscan_reads_the_windows_in_place_with_the_same_result(pads, stride, hw):
    """with_kernel lets the fast-scan stem read its windows from the image (no im2col copy): the
    same vectors give the same tables, bit for bit, on every SIMD level; tables fill odd bands
    (16, 13 and 6 output columns: groups of four pixels and leftovers)."""
    from qcnn import kernels as dense_kernels
    from qcnn.pq import kernels as K
    from qcnn.pq.taps import WindowsReadInPlace
    g = stem_graph()
    g.nodes[0].layer = Conv2D(g.nodes[0].layer.weight, g.nodes[0].layer.bias, stride, pads, 1, "relu")
    q = quantize_model(g, QuantSettings(layers={"stem": TAPS}, error_correction=False))
    x = RNG.standard_normal((2, *hw, 3)).astype(np.float32)
    patches = q["stem" + PATCHES_SUFFIX].layer(x)
    best = dense_kernels.isa()
    try:
        for isa in dict.fromkeys(dense_kernels.set_isa(i) for i in dense_kernels.ISA_NAMES.values()):
            dense_kernels.set_isa(isa)
            run = with_kernel(q, "fastscan")
            assert isinstance(run["stem" + PATCHES_SUFFIX].layer, WindowsReadInPlace)
            got = run.forward(x, until="stem")
            want = K.PreparedPQ(q["stem"].layer, "fastscan")(patches)
            np.testing.assert_array_equal(got, want, err_msg=isa)
    finally:
        dense_kernels.set_isa(best)
    # the other kernels keep the copy; the cost model sees the same layers either way
    assert isinstance(with_kernel(q, "exact")["stem" + PATCHES_SUFFIX].layer, Patches)
    costs = [[(c.name, c.dense_macs, c.table_macs, c.setting) for c in cost_report(graph, hw, dense_graph=g).layers]
             for graph in (q, with_kernel(q, "fastscan"))]
    assert costs[0] == costs[1]
    # a graph re-targeted again follows its new kernels: windows in place for fast-scan only
    again = with_kernel(with_kernel(q, "fastscan"), "exact")
    assert isinstance(again["stem" + PATCHES_SUFFIX].layer, Patches)
    np.testing.assert_allclose(again.forward(x, until="stem"), with_kernel(q, "exact").forward(x, until="stem"))
    twice = with_kernel(with_kernel(q, "fastscan"), "fastscan")
    np.testing.assert_array_equal(twice.forward(x, until="stem"), want)
