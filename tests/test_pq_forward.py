"""The reference lookup-table forward of PQLayer agrees with the dense engine on the reconstructed weights."""
import numpy as np
import pytest

from qcnn.layers import Conv2D, Dense
from qcnn.pq.layer import PQLayer, PQSetting
from qcnn.pq.quantize import quantize_layer


def random_pq(rng, kh, kw, cin, cout, groups, dsub, ksub, kind="conv", **kw_):
    m = -(-(cin // groups) // dsub)
    books = rng.standard_normal((groups, m, ksub, dsub)).astype(np.float32)
    books[:, -1, :, (cin // groups) - (m - 1) * dsub:] = 0.0  # padded channels of the last subspace
    codes = rng.integers(0, ksub, (kh, kw, m, cout)).astype(np.uint8)
    bias = rng.standard_normal(cout).astype(np.float32)
    return PQLayer(kind, books, codes, cin, bias=bias, groups=groups, **kw_)


def assert_close(y, ref):
    assert y.shape == ref.shape
    scale = max(float(np.abs(ref).max()), 1e-6)
    np.testing.assert_allclose(y, ref, rtol=0, atol=2e-5 * scale)


CONV_CASES = {
    # name: (kh, kw, cin, cout, groups, dsub, ksub, layer options, input h, w)
    "grouped 3x3": (3, 3, 8, 6, 2, 2, 16, dict(pads=(1, 1, 1, 1)), 7, 6),
    "same stride 2": (3, 3, 6, 5, 1, 3, 32, dict(stride=(2, 2), pads="same"), 9, 8),
    "asymmetric pads": (3, 2, 5, 4, 1, 2, 8, dict(stride=(2, 1), pads=(1, 0, 2, 1)), 7, 9),
    "5x5 same": (5, 5, 4, 3, 1, 4, 8, dict(pads="same"), 6, 6),
    "1x1": (1, 1, 12, 7, 1, 4, 16, {}, 5, 4),
    "1x1 stride 2": (1, 1, 6, 9, 1, 2, 16, dict(stride=(2, 2)), 7, 8),
    "dsub does not divide": (3, 3, 7, 5, 1, 3, 16, dict(pads=(1, 1, 1, 1)), 5, 5),
    "one pixel map": (3, 3, 4, 6, 1, 2, 4, dict(pads="same"), 1, 1),
    "K < 16": (3, 3, 4, 3, 1, 2, 3, dict(pads=(0, 1, 0, 1), activation="relu"), 4, 5),
    "one subspace": (3, 3, 3, 8, 1, 3, 16, dict(stride=(2, 2), pads="same", activation="relu6"), 8, 8),
    "one subspace, dsub > C_in": (1, 1, 3, 4, 1, 8, 2, {}, 3, 3),
    "grouped, padded subspaces": (3, 3, 10, 4, 2, 2, 8, dict(pads="same", stride=(1, 2)), 6, 7),
    "depthwise-like": (3, 3, 6, 6, 6, 1, 4, dict(pads="same"), 5, 5),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_lookup_forward_matches_dense(case):
    rng = np.random.default_rng(sorted(CONV_CASES).index(case))
    kh, kw, cin, cout, groups, dsub, ksub, opts, h, w = CONV_CASES[case]
    layer = random_pq(rng, kh, kw, cin, cout, groups, dsub, ksub, **opts)
    x = rng.standard_normal((2, h, w, cin)).astype(np.float32)
    dense = layer.to_dense()
    assert isinstance(dense, Conv2D)
    assert_close(layer(x), dense(x))


def test_lookup_table_shape_and_values():
    rng = np.random.default_rng(1)
    layer = random_pq(rng, 3, 3, 10, 4, 2, 3, 5, pads="same")
    x = rng.standard_normal((2, 4, 3, 10)).astype(np.float32)
    table = layer.lookup_table(x)
    assert table.shape == (2, 4, 3, 2 * 2, 5)
    # group 1, subspace 1 holds channels 8..9 of the group (5+3 .. 5+4) plus one zero channel
    sub = x[1, 2, 0, 8:10]
    np.testing.assert_allclose(table[1, 2, 0, 3], layer.codebooks[1, 1][:, :2] @ sub, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cin,dsub,ksub", [(24, 4, 16), (10, 3, 5), (6, 6, 2), (5, 1, 16)])
def test_fc_lookup_forward_matches_dense(cin, dsub, ksub):
    rng = np.random.default_rng(cin)
    layer = random_pq(rng, 1, 1, cin, 7, 1, dsub, ksub, kind="fc")
    dense = layer.to_dense()
    assert isinstance(dense, Dense)
    x = rng.standard_normal((3, cin)).astype(np.float32)
    assert_close(layer(x), dense(x))
    if cin == 24:  # a flattened (N, H, W, C) input, as after a pooling node
        x4 = rng.standard_normal((3, 1, 2, 12)).astype(np.float32)
        assert_close(layer(x4), dense(x4))


def test_quantized_real_layer_forward_matches_reconstruction():
    rng = np.random.default_rng(5)
    conv = Conv2D(rng.standard_normal((3, 3, 6, 10)).astype(np.float32), rng.standard_normal(10).astype(np.float32),
                  (2, 2), "same", 2, "relu6")
    pq = quantize_layer(conv, PQSetting(4, 8), error_correction=False)
    # C_in/g = 6 channels per group -> 2 subspaces of 4, the second half zero padding
    assert pq.codes.shape == (3, 3, 2, 10) and pq.codebooks.shape == (2, 2, 8, 4)
    x = rng.standard_normal((2, 9, 7, 12)).astype(np.float32)
    assert_close(pq(x), pq.to_dense()(x))
    # and the quantized layer approximates the original
    assert np.abs(pq.reconstruct_weight() - conv.weight).mean() < np.abs(conv.weight).mean()


def test_wrong_input_is_rejected():
    rng = np.random.default_rng(0)
    layer = random_pq(rng, 3, 3, 4, 3, 1, 2, 4)
    with pytest.raises(ValueError):
        layer(np.zeros((1, 5, 5, 5), np.float32))
    with pytest.raises(ValueError):
        layer(np.zeros((1, 2, 2, 4), np.float32))  # smaller than the kernel, no padding
