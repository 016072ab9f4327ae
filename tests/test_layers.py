"""Dense layers against direct-loop definitions on small shapes."""
import numpy as np
import pytest

from qcnn import layers as L
from qcnn.graph import Graph, Node

rng = np.random.default_rng(0)


def naive_conv(x, w, b, stride, pads, groups):
    n, h, wd, c = x.shape
    kh, kw, cin_g, cout = w.shape
    top, bottom, left, right = pads
    xp = np.zeros((n, h + top + bottom, wd + left + right, c), np.float64)
    xp[:, top:top + h, left:left + wd] = x
    oh = (h + top + bottom - kh) // stride[0] + 1
    ow = (wd + left + right - kw) // stride[1] + 1
    y = np.zeros((n, oh, ow, cout))
    cout_g = cout // groups
    for o in range(cout):
        g = o // cout_g
        for i in range(oh):
            for j in range(ow):
                patch = xp[:, i * stride[0]:i * stride[0] + kh, j * stride[1]:j * stride[1] + kw,
                           g * cin_g:(g + 1) * cin_g]
                y[:, i, j, o] = (patch * w[..., o]).sum(axis=(1, 2, 3))
    return y + (0 if b is None else b)


@pytest.mark.parametrize("hw,k,cin,cout,stride,pads,groups", [
    ((7, 9), 3, 4, 6, (1, 1), (1, 1, 1, 1), 1),
    ((8, 8), 3, 4, 6, (2, 2), "same", 2),          # even size: SAME pads 0 before, 1 after
    ((9, 7), 5, 3, 5, (2, 1), "same", 1),
    ((6, 6), 1, 8, 4, (2, 2), (0, 0, 0, 0), 1),    # strided 1x1
    ((5, 5), 1, 8, 4, (1, 1), (0, 0, 0, 0), 4),    # grouped 1x1
    ((7, 6), 3, 6, 6, (1, 1), (0, 2, 1, 0), 6),    # depthwise, asymmetric pads
    ((10, 11), 5, 5, 5, (2, 2), "same", 5),        # depthwise 5x5 stride 2
    ((1, 1), 3, 3, 3, (1, 1), "same", 3),          # 1-pixel map
])
@pytest.mark.parametrize("act", [None, "relu6"])
def test_conv_matches_direct_loops(hw, k, cin, cout, stride, pads, groups, act):
    x = rng.standard_normal((2, *hw, cin)).astype(np.float32)
    w = rng.standard_normal((k, k, cin // groups, cout)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    layer = L.Conv2D(w, b, stride, pads, groups, act)
    resolved = L.resolve_pads(pads, *hw, k, k, *stride)
    want = naive_conv(x, w, b, stride, resolved, groups)
    if act == "relu6":
        want = np.clip(want, 0, 6)
    got = layer(x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_same_pads_follow_tensorflow():
    assert L.same_pads(224, 3, 2) == (0, 1)     # odd pixel of padding goes after
    assert L.same_pads(225, 3, 2) == (1, 1)
    assert L.same_pads(14, 5, 1) == (2, 2)
    assert L.same_pads(7, 1, 1) == (0, 0)


def test_dense_and_flatten_channel_major():
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    flat = L.Flatten()(x)
    np.testing.assert_array_equal(flat, x.transpose(0, 3, 1, 2).reshape(2, -1))
    w = rng.standard_normal((60, 7)).astype(np.float32)
    np.testing.assert_allclose(L.Dense(w, None, "relu")(flat), np.maximum(flat @ w, 0), rtol=1e-5, atol=1e-5)


def naive_pool(x, mode, k, s, pads, ceil_mode, include_pad):
    n, h, w, c = x.shape
    top, bottom, left, right = pads

    def out(size, lo, hi):
        span = size + lo + hi - k
        o = (-(-span // s) if ceil_mode else span // s) + 1
        return o - 1 if ceil_mode and (o - 1) * s >= size + lo else o

    oh, ow = out(h, top, bottom), out(w, left, right)
    y = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * s - top, j * s - left
            r1, c1 = r0 + k, c0 + k
            win = x[:, max(r0, 0):min(r1, h), max(c0, 0):min(c1, w)]
            if mode == "max":
                y[:, i, j] = win.max(axis=(1, 2))
            else:
                count = win.shape[1] * win.shape[2]
                if include_pad:
                    count = (min(r1, h + bottom) - r0) * (min(c1, w + right) - c0)
                y[:, i, j] = win.sum(axis=(1, 2)) / count
    return y


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("hw,k,s,pads,ceil_mode,include_pad", [
    ((13, 13), 3, 2, (0, 0, 0, 0), True, False),
    ((8, 9), 3, 2, (0, 0, 0, 0), True, False),      # ceil mode adds a clipped last window
    ((7, 7), 3, 1, (1, 1, 1, 1), False, True),
    ((7, 7), 3, 1, (1, 1, 1, 1), False, False),
    ((6, 5), 2, 2, (0, 1, 0, 1), True, True),
])
def test_pooling_matches_direct_loops(mode, hw, k, s, pads, ceil_mode, include_pad):
    x = rng.standard_normal((2, *hw, 3)).astype(np.float32)
    layer = L.Pool2D(mode, (k, k), (s, s), pads, ceil_mode, include_pad)
    want = naive_pool(x, mode, k, s, pads, ceil_mode, include_pad)
    np.testing.assert_allclose(layer(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size,beta", [(5, 0.75), (3, 0.5), (4, 0.75)])
def test_lrn_matches_caffe_formula(size, beta):
    x = rng.standard_normal((1, 3, 2, 9)).astype(np.float32) * 10
    alpha, k = 1e-2, 2.0
    want = np.empty_like(x, dtype=np.float64)
    for c in range(9):
        lo, hi = max(0, c - (size - 1) // 2), min(9, c + size // 2 + 1)
        s = (x[..., lo:hi].astype(np.float64) ** 2).sum(axis=-1)
        want[..., c] = x[..., c] / (k + alpha / size * s) ** beta
    np.testing.assert_allclose(L.LRN(size, alpha, beta, k)(x), want, rtol=1e-5)


def test_global_pool_softmax_add_concat():
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(L.GlobalAvgPool()(x)[:, 0, 0], x.mean(axis=(1, 2)), rtol=1e-6)
    p = L.Softmax()(x.reshape(2, -1))
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(L.Concat()(x, x[..., :2]).shape, (2, 3, 4, 7))
    np.testing.assert_array_equal(L.Add()(x, x), 2 * x)


def test_fold_batch_norm_equals_conv_then_bn():
    x = rng.standard_normal((1, 5, 5, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    gamma, beta, mean = (rng.standard_normal(4).astype(np.float32) for _ in range(3))
    var = rng.random(4).astype(np.float32) + 0.5
    y = L.Conv2D(w, None, (1, 1), "same")(x)
    want = gamma * (y - mean) / np.sqrt(var + 1e-3) + beta
    wf, bf = L.fold_batch_norm(w, None, gamma, beta, mean, var, 1e-3)
    np.testing.assert_allclose(L.Conv2D(wf, bf, (1, 1), "same")(x), want, rtol=1e-4, atol=1e-5)


def test_graph_residual_profiling_and_fusion():
    w = rng.standard_normal((1, 1, 4, 4)).astype(np.float32)
    nodes = [Node("c1", L.Conv2D(w), ("input",)), Node("r1", L.Activation("relu"), ("c1",)),
             Node("c2", L.Conv2D(w), ("r1",)), Node("sum", L.Add(), ("c2", "input"))]
    g = Graph(nodes)
    x = rng.standard_normal((1, 3, 3, 4)).astype(np.float32)
    want = np.maximum(x @ w[0, 0], 0) @ w[0, 0] + x
    seen = []
    np.testing.assert_allclose(g.forward(x, on_layer=lambda n, s: seen.append((n.name, s))), want, rtol=1e-5)
    assert [n for n, _ in seen] == ["c1", "r1", "c2", "sum"] and all(s >= 0 for _, s in seen)
    fused = g.fuse_activations()
    assert [n.name for n in fused] == ["c1", "c2", "sum"] and fused["c2"].inputs == ("c1",)
    np.testing.assert_allclose(fused.forward(x), want, rtol=1e-5)
    np.testing.assert_allclose(g.forward(x, until="c1"), x @ w[0, 0], rtol=1e-5)


def test_graph_rejects_bad_wiring():
    with pytest.raises(ValueError, match="reads"):
        Graph([Node("a", L.Add(), ("input", "b")), Node("b", L.Add(), ("input", "input"))])
    with pytest.raises(ValueError, match="duplicate"):
        Graph([Node("a", L.Softmax(), ("input",)), Node("a", L.Softmax(), ("input",))])


def test_conv_rejects_wrong_channels():
    layer = L.Conv2D(np.zeros((3, 3, 4, 2), np.float32))
    with pytest.raises(ValueError, match="input channels"):
        layer(np.zeros((1, 5, 5, 3), np.float32))
