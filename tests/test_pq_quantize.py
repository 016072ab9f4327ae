"""k-means initialisation, error correction, the model driver, cancellation, determinism, settings."""
import json
import threading

import numpy as np
import pytest

from qcnn.graph import Graph, Node
from qcnn.layers import Conv2D, Dense, Flatten, GlobalAvgPool
from qcnn.pq.correct import ConvView, correct_group, sample_rows
from qcnn.pq.kmeans import init_codebooks, kmeans
from qcnn.pq.layer import PQLayer, PQSetting
from qcnn.pq.quantize import Cancelled, calibration_batch, quantize_layer, quantize_model, reconstructed
from qcnn.pq.settings import QuantSettings, quantizable_layers


def names(layers):
    return [q.name for q in layers]


def tiny_graph(seed=0):
    """stem 3x3/2 -> grouped 3x3 -> 1x1 -> depthwise -> 1x1 stride 2 -> GAP -> FC: every kind of node."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        fan_in = np.prod(shape[:-1])
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    def b(n):
        return (0.1 * rng.standard_normal(n)).astype(np.float32)

    nodes = [
        Node("stem", Conv2D(w(3, 3, 3, 8), b(8), (2, 2), "same", 1, "relu6"), ("input",)),
        Node("grouped", Conv2D(w(3, 3, 4, 12), b(12), (1, 1), (1, 1, 1, 1), 2, "relu"), ("stem",)),
        Node("pw", Conv2D(w(1, 1, 12, 16), b(16), (1, 1), (0, 0, 0, 0), 1, "relu6"), ("grouped",)),
        Node("dw", Conv2D(w(3, 3, 1, 16), b(16), (1, 1), "same", 16, "relu6"), ("pw",)),
        Node("pw2", Conv2D(w(1, 1, 16, 24), b(24), (2, 2), (0, 0, 0, 0), 1, None), ("dw",)),
        Node("pool", GlobalAvgPool(), ("pw2",)),
        Node("flatten", Flatten(), ("pool",)),
        Node("fc", Dense(w(24, 10), b(10)), ("flatten",)),
    ]
    return Graph(nodes)


def snapshot(graph):
    return [(n.name, n.layer, n.inputs, {k: v.copy() for k, v in n.layer.params().items()}) for n in graph]


def assert_unchanged(graph, snap, x, y_before):
    assert len(graph.nodes) == len(snap)
    for node, (name, layer, inputs, params) in zip(graph, snap):
        assert node.name == name and node.layer is layer and node.inputs == inputs
        for k, v in node.layer.params().items():
            np.testing.assert_array_equal(v, params[k])
    np.testing.assert_array_equal(graph.forward(x), y_before)


SETTINGS = {"stem": PQSetting(3, 8), "grouped": PQSetting(2, 8), "pw": PQSetting(4, 8), "pw2": PQSetting(3, 16),
            "fc": PQSetting(4, 4)}


# ----------------------------------------------------------------------------- k-means

def test_exactly_representable_layer_is_recovered():
    rng = np.random.default_rng(3)
    g, cin_g, d, k = 2, 7, 3, 6      # 7 channels: subspaces of 3, 3 and 1 (+2 zero channels)
    m = -(-cin_g // d)
    books = rng.standard_normal((g, m, k, d)).astype(np.float32)
    books[:, -1, :, cin_g - (m - 1) * d:] = 0
    codes = rng.integers(0, k, (3, 3, m, 10)).astype(np.uint8)
    truth = PQLayer("conv", books, codes, g * cin_g, groups=g, pads="same")
    conv = truth.to_dense()
    pq = quantize_layer(conv, PQSetting(d, k), error_correction=False)
    np.testing.assert_array_equal(pq.reconstruct_weight(), conv.weight)
    for gi in range(g):
        cols = slice(gi * 5, (gi + 1) * 5)
        for mi in range(m):
            old, new = codes[:, :, mi, cols].ravel(), pq.codes[:, :, mi, cols].ravel()
            # codes are recovered up to a renaming of the codewords...
            mapping = {}
            for a, b in zip(old, new):
                assert mapping.setdefault(a, b) == b
            assert len(set(mapping.values())) == len(mapping)
            # ...and so are the codewords that are used
            for a, b in mapping.items():
                np.testing.assert_array_equal(pq.codebooks[gi, mi, b], books[gi, mi, a])


def test_fewer_distinct_subvectors_than_k():
    pts = np.repeat(np.array([[1.0, 2.0], [0.0, 0.0], [-3.0, 0.5]], np.float32), [5, 40, 1], axis=0)
    book, codes = kmeans(pts, 16, seed=0)
    assert book.shape == (16, 2) and codes.shape == (46,)
    np.testing.assert_array_equal(book[codes], pts)     # exact
    # spare codewords are copies of real points, not garbage
    assert {tuple(r) for r in book} == {tuple(r) for r in pts}


def test_duplicates_with_more_distinct_points_than_k():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 3)).astype(np.float32) * 10
    pts = np.concatenate([np.repeat(centres, 50, axis=0), centres[:2] + 0.01])
    book, codes = kmeans(pts, 4, seed=0)
    assert codes.min() >= 0 and codes.max() < 4
    assert np.abs(book[codes] - pts).max() < 0.02        # the four clusters are found


def test_all_zero_layer():
    books, codes = init_codebooks(np.zeros((1, 1, 8, 5), np.float32), 1, PQSetting(2, 16))
    assert not books.any() and codes.shape == (1, 1, 4, 5)


def test_kmeans_is_deterministic():
    w = np.random.default_rng(0).standard_normal((3, 3, 8, 12)).astype(np.float32)
    a = init_codebooks(w, 1, PQSetting(2, 8), seed=4)
    b = init_codebooks(w, 1, PQSetting(2, 8), seed=4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


# ----------------------------------------------------------------------------- error correction

def response_error(layer, x, target):
    pre = layer.to_dense() if isinstance(layer, PQLayer) else layer
    return float(((pre(x) - target) ** 2).sum())


@pytest.mark.parametrize("kind", ["fc", "grouped 3x3", "1x1"])
@pytest.mark.parametrize("shrinkage", [0.0, 1.0])
def test_error_correction_lowers_response_error(kind, shrinkage):
    rng = np.random.default_rng(7)
    if kind == "fc":
        layer = Dense(rng.standard_normal((32, 12)).astype(np.float32), rng.standard_normal(12).astype(np.float32))
        x_dense = rng.standard_normal((300, 32)).astype(np.float32)
    else:
        kh, cin_g, groups = (3, 4, 2) if kind == "grouped 3x3" else (1, 12, 1)
        layer = Conv2D(rng.standard_normal((kh, kh, cin_g, 10)).astype(np.float32),
                       rng.standard_normal(10).astype(np.float32), (1, 1), "same", groups)
        x_dense = rng.standard_normal((6, 8, 8, cin_g * groups)).astype(np.float32)
    # correlated inputs, and the quantized network's inputs differ from the dense ones
    mix = np.eye(x_dense.shape[-1], dtype=np.float32) + 0.5 * rng.standard_normal((x_dense.shape[-1],) * 2).astype(np.float32)
    x_dense = x_dense @ mix
    x_quant = x_dense + 0.3 * rng.standard_normal(x_dense.shape).astype(np.float32)
    target = layer(x_dense)                      # no activation: pre-activation responses
    setting = PQSetting(2, 4)
    plain = quantize_layer(layer, setting, error_correction=False)
    fixed = quantize_layer(layer, setting, x_quant, x_dense, iterations=4, shrinkage=shrinkage)
    e_plain, e_fixed = response_error(plain, x_quant, target), response_error(fixed, x_quant, target)
    assert e_fixed < 0.8 * e_plain
    np.testing.assert_array_equal(plain.reconstruct_weight().shape, fixed.reconstruct_weight().shape)


def test_correction_objective_does_not_increase():
    rng = np.random.default_rng(2)
    conv = Conv2D(rng.standard_normal((3, 3, 6, 8)).astype(np.float32), rng.standard_normal(8).astype(np.float32),
                  (2, 2), "same")
    x = rng.standard_normal((4, 9, 9, 6)).astype(np.float32)
    view = ConvView.of(conv)
    xs, y = sample_rows(view, x, x, 10_000, rng)
    books, codes = init_codebooks(conv.weight, 1, PQSetting(4, 4))
    res = correct_group(xs[0], y[0], books[0], codes.reshape(9, 2, 8), conv.weight.reshape(9, 6, 8), conv.bias,
                        iterations=5, shrinkage=0.0)
    h = res.history
    assert len(h) == 6
    assert all(b <= a * (1 + 1e-6) for a, b in zip(h, h[1:]))
    assert h[-1] < 0.9 * h[0]


def test_sampled_rows_are_bounded_and_match_the_layer():
    rng = np.random.default_rng(0)
    conv = Conv2D(rng.standard_normal((3, 3, 2, 6)).astype(np.float32), np.ones(6, np.float32), (2, 2), "same", 2)
    x = rng.standard_normal((3, 10, 10, 4)).astype(np.float32)
    xs, y = sample_rows(ConvView.of(conv), x, x, 50, np.random.default_rng(1))
    assert xs.shape == (2, 50, 9, 2) and y.shape == (2, 50, 3)
    xs, y = xs[1], y[1]
    full = conv(x).reshape(-1, 6)[:, 3:]
    # every sampled target is one of the layer's outputs
    assert all(np.abs(full - row).max(1).min() < 1e-4 for row in y)


# ----------------------------------------------------------------------------- the model driver

@pytest.fixture(scope="module")
def calib():
    return np.random.default_rng(11).standard_normal((6, 16, 16, 3)).astype(np.float32)


def test_quantize_model_builds_a_new_graph(calib):
    graph = tiny_graph()
    snap, y0 = snapshot(graph), graph.forward(calib)
    assert names(quantizable_layers(graph)) == ["stem", "grouped", "pw", "pw2", "fc"]
    assert names(quantizable_layers(graph, include_depthwise=True)) == ["stem", "grouped", "pw", "dw", "pw2", "fc"]
    seen = []
    out = quantize_model(graph, QuantSettings(layers=SETTINGS, iterations=2), calib,
                         progress=lambda name, step, f: seen.append(f))
    assert_unchanged(graph, snap, calib, y0)
    assert [n.name for n in out] == [n.name for n in graph]
    for node in out:
        assert isinstance(node.layer, PQLayer) == (node.name in SETTINGS)
        if node.name not in SETTINGS:
            assert node.layer is graph[node.name].layer
    assert seen == sorted(seen) and seen[-1] == 1.0
    y = out.forward(calib)
    np.testing.assert_allclose(y, reconstructed(out).forward(calib), atol=1e-4 * np.abs(y).max())
    assert np.abs(y - y0).mean() < np.abs(y0).mean()


def test_error_correction_helps_the_whole_model(calib):
    graph = tiny_graph(1)
    y0 = graph.forward(calib)
    settings = {k: PQSetting(4, 2) if k != "fc" else PQSetting(4, 2) for k in SETTINGS}
    plain = quantize_model(graph, QuantSettings(layers=settings, error_correction=False), calib).forward(calib)
    fixed = quantize_model(graph, QuantSettings(layers=settings, iterations=3, shrinkage=0.0), calib).forward(calib)
    assert ((fixed - y0) ** 2).sum() < ((plain - y0) ** 2).sum()


@pytest.mark.parametrize("correct", [True, False])
@pytest.mark.parametrize("at", [1, 2, 5, -2])
def test_cancel_raises_and_leaves_model_unchanged(calib, correct, at):
    graph = tiny_graph()
    snap, y0 = snapshot(graph), graph.forward(calib)
    config = QuantSettings(layers=SETTINGS, iterations=2, error_correction=correct)
    calls = []
    quantize_model(graph, config, calib, progress=lambda *a: calls.append(a))   # count the callbacks
    stop_at = at if at > 0 else len(calls) + at
    event, n = threading.Event(), [0]

    def progress(*args):
        n[0] += 1
        if n[0] == stop_at:
            event.set()

    with pytest.raises(Cancelled):
        quantize_model(graph, config, calib, progress=progress, cancel=event)
    assert_unchanged(graph, snap, calib, y0)


def test_cancel_accepts_a_callable_and_a_set_event(calib):
    graph = tiny_graph()
    with pytest.raises(Cancelled):
        quantize_model(graph, QuantSettings(layers=SETTINGS), calib, cancel=lambda: True)
    done = threading.Event()
    done.set()
    with pytest.raises(Cancelled):
        quantize_model(graph, QuantSettings(layers=SETTINGS, error_correction=False), cancel=done)


def test_same_seed_same_result(calib):
    graph = tiny_graph()
    a = quantize_model(graph, QuantSettings(layers=SETTINGS, iterations=2, seed=3), calib)
    b = quantize_model(graph, QuantSettings(layers=SETTINGS, iterations=2, seed=3), calib)
    for name in SETTINGS:
        np.testing.assert_array_equal(a[name].layer.codes, b[name].layer.codes)
        np.testing.assert_array_equal(a[name].layer.codebooks, b[name].layer.codebooks)
        np.testing.assert_array_equal(a[name].layer.bias, b[name].layer.bias)


def test_bad_settings_are_rejected(calib):
    graph = tiny_graph()
    with pytest.raises(ValueError, match="nope"):
        quantize_model(graph, QuantSettings(layers={"nope": PQSetting(2, 4)}), calib)
    with pytest.raises(ValueError, match="pool"):
        quantize_model(graph, QuantSettings(layers={"pool": PQSetting(2, 4)}), calib)
    with pytest.raises(ValueError, match="calibration"):
        quantize_model(graph, QuantSettings(layers={"pw": PQSetting(2, 4)}))      # correction without data
    for bad in ({"layers": {"pw": {"dsub": 2, "ksub": 300}}}, {"layers": {}, "typo": 1}, {"iterations": -1},
                {"max_rows": 0}, {"shrinkage": float("nan")}, {"seed": 2**32}, {"error_correction": "yes"},
                {"layers": ["pw"]}, {"conv": {"dsub": 2}}, {"calib_count": 2.5}, {"kmeans_init": 0}):
        with pytest.raises(ValueError):
            QuantSettings.from_dict(bad)


def test_settings_plan_and_round_trip_through_json():
    graph = tiny_graph()
    s = QuantSettings(conv=PQSetting(2, 16), fc=PQSetting(4, 8), layers={"stem": None}, iterations=3)
    assert s.plan(graph) == {"stem": None, "grouped": PQSetting(2, 16), "pw": PQSetting(2, 16),
                             "pw2": PQSetting(2, 16), "fc": PQSetting(4, 8)}
    assert list(s.quantized(graph)) == ["grouped", "pw", "pw2", "fc"]
    again = QuantSettings.from_dict(json.loads(json.dumps(s.to_dict())))
    assert again == s and hash(again) == hash(s)
    assert QuantSettings(conv=PQSetting(1, 4), layers={"dw": PQSetting(1, 4)}).plan(graph)["dw"] == PQSetting(1, 4)
    # the QuantConfig files of earlier versions: listed layers only, the rest dense
    old = QuantSettings.from_dict({"layers": {"pw": {"dsub": 2, "ksub": 4}}, "error_correction": False, "seed": 3})
    assert old.quantized(graph) == {"pw": PQSetting(2, 4)} and old.seed == 3 and not old.error_correction


def test_depthwise_layer_can_be_quantized(calib):
    graph = tiny_graph()
    out = quantize_model(graph, QuantSettings(layers={"dw": PQSetting(1, 8)}, iterations=2), calib)
    layer = out["dw"].layer
    assert layer.codebooks.shape == (16, 1, 8, 1)
    x = graph.forward(calib, until="pw")
    np.testing.assert_allclose(layer(x), layer.to_dense()(x), atol=1e-5 * np.abs(layer(x)).max())


class _FakeModel:
    input_size = 32

    def preprocess(self, img):
        from qcnn.preprocess import Preprocess
        return Preprocess(resize=36, crop=32)(img)


def test_calibration_batch_from_bundled_samples():
    a = calibration_batch(_FakeModel(), count=9, seed=1)
    b = calibration_batch(_FakeModel(), count=9, seed=1)
    assert a.shape == (9, 32, 32, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert len({x.tobytes() for x in a}) == 9          # augmented copies differ from the originals
    c = calibration_batch(_FakeModel(), count=3, seed=1)
    assert c.shape == (3, 32, 32, 3)
