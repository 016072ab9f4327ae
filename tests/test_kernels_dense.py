"""Dense C kernels (qcnn/csrc/depthwise.c, pointwise.c): each against a float64 numpy reference on odd
shapes, each SIMD variant against the scalar reference, and the wrappers' argument checks."""
import copy
import itertools
import pickle
import platform

import numpy as np
import pytest

from qcnn import kernels as K
from qcnn import layers as L

ACTS = [None, "relu", "relu6"]
# Variants this CPU can run (set_isa caps at the best one); the scalar reference always runs.
ISAS = [name for name in ("scalar", "avx2", "avx512", "neon") if K.set_isa(name) == name]
K.set_isa(K.best_isa())
# This architecture's levels in order, and the other's (which cap to scalar here).
X86_LEVELS, ARM_LEVELS = ["scalar", "avx2", "avx512", "avx512vnni"], ["scalar", "neon", "neondot"]
LEVELS, OTHER_LEVELS = ((ARM_LEVELS, X86_LEVELS) if platform.machine() in ("aarch64", "arm64")
                        else (X86_LEVELS, ARM_LEVELS))
SIMD_ISAS = [i for i in ISAS if i != "scalar"]


@pytest.fixture
def isa():
    """Yields a function forcing a variant; the variant in use before the test comes back after."""
    before = K.isa()
    yield K.set_isa
    K.set_isa(before)


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def activate(y, act):
    if act == "relu":
        return np.maximum(y, 0)
    if act == "relu6":
        return np.clip(y, 0, 6)
    return y


def out_size(size, k, s, lo, hi):
    return (size + lo + hi - k) // s + 1


def ref_depthwise(x, wt, b, stride, pads, act):
    n, h, w, c = x.shape
    kh, kw, _ = wt.shape
    top, bottom, left, right = pads
    xp = np.zeros((n, h + top + bottom, w + left + right, c))
    xp[:, top:top + h, left:left + w] = x
    oh, ow = out_size(h, kh, stride[0], top, bottom), out_size(w, kw, stride[1], left, right)
    y = np.zeros((n, oh, ow, c))
    for i in range(kh):
        for j in range(kw):
            y += xp[:, i:i + (oh - 1) * stride[0] + 1:stride[0], j:j + (ow - 1) * stride[1] + 1:stride[1]] * wt[i, j]
    return activate(y + (0 if b is None else b), act), (oh, ow)


def ref_conv(x, w, b, stride, pads, act):
    """Dense (one group) convolution via the strided patch view of layers.im2col, in float64."""
    kh, kw, cin, cout = w.shape
    xp = L.pad_nhwc(x.astype(np.float64), pads)
    oh = out_size(x.shape[1], kh, stride[0], pads[0], pads[1])
    ow = out_size(x.shape[2], kw, stride[1], pads[2], pads[3])
    cols = L.im2col(xp, kh, kw, *stride, oh, ow).reshape(x.shape[0] * oh * ow, -1)
    y = cols @ w.reshape(-1, cout).astype(np.float64)
    return activate(y + (0 if b is None else b), act), (oh, ow)


# ---- depthwise ----------------------------------------------------------------------------------

DW_CASES = [  # (h, w), c, (kh, kw), stride, pads
    ((9, 8), c, (k, k), (s, s), p)
    for c, k, s, p in itertools.product([1, 3, 7, 17, 33], [3, 5], [1, 2], ["same", (0, 0, 0, 0), (2, 0, 1, 3)])
] + [
    ((1, 1), 16, (3, 3), (1, 1), "same"),       # 1-pixel map: only border taps
    ((1, 1), 5, (5, 5), (2, 2), "same"),
    ((7, 7), 48, (5, 5), (1, 1), "same"),       # Lite0's late layers: mostly border
    ((8, 8), 32, (3, 3), (2, 2), "same"),       # even size, stride 2: padding after only
    ((11, 13), 20, (3, 3), (2, 1), (1, 1, 0, 2)),   # unequal strides
    ((6, 10), 9, (2, 4), (1, 2), (0, 1, 1, 2)),     # no specialised kernel: generic path
    ((9, 9), 24, (7, 7), (1, 1), "same"),
    ((5, 40), 16, (3, 3), (1, 1), (3, 3, 4, 4)),    # padding wider than the kernel reach
] + [  # AVX2's 8-pixel groups (5x5; 3x3 under 8 pixels): widths that 8 does not divide, whose last
       # group overlaps the one before, groups narrower than 8, clipped groups in the middle of a row
    ((6, w), c, (k, k), (s, s), p)
    for w, c, k, s, p in [(19, 24, 5, 1, "same"), (26, 16, 5, 1, (1, 2, 0, 3)), (35, 8, 5, 2, "same"),
                          (21, 40, 5, 2, (2, 2, 1, 0)), (7, 16, 5, 1, "same"), (13, 24, 5, 2, "same"),
                          (5, 16, 3, 1, "same"), (6, 32, 3, 1, (0, 0, 0, 0)), (11, 8, 3, 2, "same"),
                          (9, 24, 5, 1, (2, 2, 9, 9))]
] + [  # AVX2's pixel-major order on wide maps (80 pixels or more, 32 channels or more)
    ((4, 83), 40, (3, 3), (1, 1), "same"), ((5, 90), 32, (5, 5), (2, 2), (1, 2, 2, 1)),
    ((3, 81), 33, (3, 3), (2, 2), "same"), ((6, 97), 48, (5, 5), (1, 1), (0, 2, 3, 0)),
]


def _dw_args(hw, c, k, stride, pads, seed=0):
    x = rand(2, *hw, c, seed=seed)
    wt = rand(*k, c, seed=seed + 1)
    b = rand(c, seed=seed + 2)
    resolved = L.resolve_pads(pads, *hw, *k, *stride)
    return x, wt, b, resolved


@pytest.mark.parametrize("variant", ISAS)
def test_depthwise_matches_numpy(isa, variant):
    isa(variant)
    for n, (hw, c, k, stride, pads) in enumerate(DW_CASES):
        x, wt, b, resolved = _dw_args(hw, c, k, stride, pads, seed=n)
        if hw[0] + resolved[0] + resolved[1] < k[0] or hw[1] + resolved[2] + resolved[3] < k[1]:
            continue
        act = ACTS[n % 3]
        bias = None if n % 4 == 3 else b
        want, out_hw = ref_depthwise(x, wt, bias, stride, resolved, act)
        got = K.depthwise(x, wt, bias, stride, resolved, out_hw, act)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"{variant} {hw} c{c} k{k} s{stride} {pads}")


@pytest.mark.parametrize("variant", SIMD_ISAS)
def test_depthwise_simd_matches_scalar(isa, variant):
    for n, (hw, c, k, stride, pads) in enumerate(DW_CASES):
        x, wt, b, resolved = _dw_args(hw, c, k, stride, pads, seed=n)
        if hw[0] + resolved[0] + resolved[1] < k[0] or hw[1] + resolved[2] + resolved[3] < k[1]:
            continue
        out_hw = (out_size(hw[0], k[0], stride[0], *resolved[:2]), out_size(hw[1], k[1], stride[1], *resolved[2:]))
        for act in ACTS:
            isa("scalar")
            ref = K.depthwise(x, wt, b, stride, resolved, out_hw, act)
            isa(variant)
            got = K.depthwise(x, wt, b, stride, resolved, out_hw, act)
            # Same sum in the same order; only FMA rounding differs.
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


# ---- pointwise (GEMM) ---------------------------------------------------------------------------

PW_SHAPES = list(itertools.product([1, 5, 13, 49], [1, 3, 16, 33], [1, 7, 16, 17, 33, 70]))
PW_SIMD_SHAPES = [(37, 40, 70), (12, 16, 96), (50, 27, 32), (7, 200, 33), (25, 5, 129)]


@pytest.mark.parametrize("variant", ISAS)
def test_pointwise_matches_numpy(isa, variant):
    isa(variant)
    for n_case, (m, k, n) in enumerate(PW_SHAPES):
        a, w, b = rand(m, k, seed=n_case), rand(k, n, seed=n_case + 1), rand(n, seed=n_case + 2)
        act = ACTS[n_case % 3]
        bias = None if n_case % 5 == 4 else b
        want = activate(a.astype(np.float64) @ w + (0 if bias is None else bias), act)
        got = K.pointwise(a, K.pack_weights(w), bias, act)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"{variant} {m}x{k}x{n}")


@pytest.mark.parametrize("variant", SIMD_ISAS)
def test_pointwise_simd_matches_scalar(isa, variant):
    for m, k, n in PW_SIMD_SHAPES:
        a, w, b = rand(m, k), rand(k, n, seed=1), rand(n, seed=2)
        packed = K.pack_weights(w)
        for act in ACTS:
            isa("scalar")
            ref = K.pointwise(a, packed, b, act)
            isa(variant)
            np.testing.assert_allclose(K.pointwise(a, packed, b, act), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ISAS)
def test_pointwise_strided_rows_and_output_slice(isa, variant):
    """Rows of `a` spaced out (a column slice) and the output written into a column slice, as a
    grouped convolution does; the columns around the slice stay untouched."""
    isa(variant)
    wide = rand(30, 50)
    a = wide[:, 10:27]                          # 17 of 50 columns: lda = 50
    w, b = rand(17, 21, seed=1), rand(21, seed=2)
    out = np.full((30, 40), 7.0, np.float32)
    K.pointwise(a, K.pack_weights(w), b, "relu", out=out[:, 5:26])
    np.testing.assert_allclose(out[:, 5:26], np.maximum(a.astype(np.float64) @ w + b, 0), rtol=1e-4, atol=1e-4)
    assert (out[:, :5] == 7).all() and (out[:, 26:] == 7).all()


def test_pack_weights_layout():
    w = rand(5, 40)
    p = K.pack_weights(w)
    assert p.data.shape == (2, 5, K.PANEL) and p.k == 5 and p.n == 40
    np.testing.assert_array_equal(p.data[0], w[:, :32])
    np.testing.assert_array_equal(p.data[1, :, :8], w[:, 32:])
    assert (p.data[1, :, 8:] == 0).all()
    assert p.data.ctypes.data % 64 == 0


# ---- implicit-GEMM convolution ------------------------------------------------------------------

CONV_CASES = [  # (h, w), cin, cout, (kh, kw), stride, pads
    ((9, 8), 3, 32, (3, 3), (2, 2), "same"),        # Lite0's stem on an odd/even map
    ((8, 8), 3, 17, (3, 3), (2, 2), "same"),
    ((7, 9), 7, 33, (5, 5), (1, 1), (2, 2, 2, 2)),
    ((6, 6), 17, 5, (3, 3), (1, 2), (0, 2, 1, 0)),
    ((1, 1), 4, 9, (3, 3), (1, 1), "same"),         # 1-pixel map
    ((5, 5), 8, 12, (1, 1), (1, 1), (1, 0, 0, 1)),  # padded 1x1 goes the implicit way too
    ((13, 11), 3, 40, (4, 4), (3, 2), (0, 0, 0, 0)),
    ((4, 30), 2, 7, (2, 3), (1, 1), (0, 0, 0, 0)),  # output rows longer than a tile
]


@pytest.mark.parametrize("variant", ISAS)
def test_conv_gemm_matches_numpy(isa, variant):
    isa(variant)
    for n_case, (hw, cin, cout, k, stride, pads) in enumerate(CONV_CASES):
        x, w, b = rand(2, *hw, cin, seed=n_case), rand(*k, cin, cout, seed=n_case + 1), rand(cout, seed=n_case + 2)
        resolved = L.resolve_pads(pads, *hw, *k, *stride)
        act = ACTS[n_case % 3]
        want, (oh, ow) = ref_conv(x, w, b, stride, resolved, act)
        packed = K.pack_weights(w.reshape(-1, cout))
        got = K.conv_gemm(L.pad_nhwc(x, resolved), packed, k, stride, (oh, ow), b, act)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"{variant} case {n_case}")


@pytest.mark.parametrize("variant", SIMD_ISAS)
def test_conv_gemm_simd_matches_scalar(isa, variant):
    x, w, b = rand(2, 11, 10, 6), rand(3, 3, 6, 40, seed=1), rand(40, seed=2)
    packed = K.pack_weights(w.reshape(-1, 40))
    xp = L.pad_nhwc(x, (1, 1, 1, 1))
    for act in ACTS:
        isa("scalar")
        ref = K.conv_gemm(xp, packed, (3, 3), (2, 1), (6, 10), b, act)
        isa(variant)
        np.testing.assert_allclose(K.conv_gemm(xp, packed, (3, 3), (2, 1), (6, 10), b, act), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", SIMD_ISAS)
@pytest.mark.parametrize("channels", [(0, 13), (3, 5), (2, 9)])
def test_conv_gemm_simd_matches_scalar_runs(isa, variant, channels):
    """The SIMD tiles read k in contiguous runs: a whole kernel row when the patch takes every
    channel (13 x 5 = 65 values), else one tap's channels (5: one group of four steps and one
    left over; 9) from an offset group."""
    c0, cc = channels
    xp, b = rand(1, 9, 12, 13, seed=3), rand(37, seed=5)
    packed = K.pack_weights(rand(3 * 5 * cc, 37, seed=4))
    for act in ACTS:
        isa("scalar")
        ref = K.conv_gemm(xp, packed, (3, 5), (1, 2), (7, 4), b, act, (c0, cc))
        isa(variant)
        np.testing.assert_allclose(K.conv_gemm(xp, packed, (3, 5), (1, 2), (7, 4), b, act, (c0, cc)), ref,
                                   rtol=1e-5, atol=1e-5)


def test_conv_gemm_one_group_into_slice():
    x = rand(1, 6, 7, 10)
    w = rand(3, 3, 4, 6, seed=1)               # group of input channels [3, 7)
    out = np.zeros((1 * 4 * 5, 9), np.float32)
    K.conv_gemm(x, K.pack_weights(w.reshape(-1, 6)), (3, 3), (1, 1), (4, 5), None, None, (3, 4), out=out[:, 2:8])
    want, _ = ref_conv(x[..., 3:7], w, None, (1, 1), (0, 0, 0, 0), None)
    np.testing.assert_allclose(out[:, 2:8], want, rtol=1e-4, atol=1e-4)
    assert (out[:, :2] == 0).all() and (out[:, 8:] == 0).all()


# ---- Winograd F(2x2, 3x3) and F(4x4, 3x3) ---------------------------------------------------------

WINOGRAD_CASES = [  # (h, w), cin, cout, pads
    ((13, 13), 16, 24, (1, 1, 1, 1)),     # AlexNet conv3-5's odd map: a half tile at the bottom/right
    ((8, 6), 19, 33, (1, 1, 1, 1)),       # channels that fill no vector; even map
    ((1, 1), 8, 9, (1, 1, 1, 1)),         # one pixel: a single, mostly-empty tile
    ((7, 5), 17, 40, (0, 0, 0, 0)),       # no padding: 5x3 output
    ((3, 40), 5, 16, (2, 0, 1, 1)),       # asymmetric padding, a long row
    ((40, 30), 4, 7, (1, 1, 1, 1)),       # 300 tiles: more than one chunk (of F(2x2))
    ((50, 46), 3, 5, (1, 1, 1, 1)),       # 156 4x4 tiles: more than one chunk of F(4x4) too
]
WINOGRAD_TILES = [2, 4]


def winograd_atol(mt):
    """F(4x4)'s transforms have coefficients up to 8 (and 1/24 in G): about 4x the rounding."""
    return 1e-4 if mt == 2 else 5e-4


def winograd_used(layer):
    """The tile sides a layer made Winograd weights for (none without SIMD: it goes to BLAS then)."""
    return sorted(layer._winograd) if K.has_simd() else None


def winograd_case(n_case):
    hw, cin, cout, pads = WINOGRAD_CASES[n_case]
    x, w, b = rand(2, *hw, cin, seed=n_case), rand(3, 3, cin, cout, seed=n_case + 1), rand(cout, seed=n_case + 2)
    oh = out_size(hw[0], 3, 1, pads[0], pads[1])
    ow = out_size(hw[1], 3, 1, pads[2], pads[3])
    return x, w, b, pads, (oh, ow)


@pytest.mark.parametrize("variant", ISAS)
@pytest.mark.parametrize("mt", WINOGRAD_TILES)
def test_winograd_matches_numpy(isa, variant, mt):
    isa(variant)
    for n_case in range(len(WINOGRAD_CASES)):
        x, w, b, pads, out_hw = winograd_case(n_case)
        act = ACTS[n_case % 3]
        bias = None if n_case == 2 else b
        want, _ = ref_conv(x, w, bias, (1, 1), pads, act)
        got = K.winograd(L.pad_nhwc(x, pads), K.winograd_weights(w, mt), out_hw, bias, act)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=winograd_atol(mt), err_msg=f"{variant} case {n_case}")


@pytest.mark.parametrize("variant", SIMD_ISAS)
@pytest.mark.parametrize("mt", WINOGRAD_TILES)
def test_winograd_simd_matches_scalar(isa, variant, mt):
    """The transforms add in the same order in every variant; only the GEMMs' sums differ."""
    for n_case in range(len(WINOGRAD_CASES)):
        x, w, b, pads, out_hw = winograd_case(n_case)
        xp, ww = L.pad_nhwc(x, pads), K.winograd_weights(w, mt)
        for act in ACTS:
            isa("scalar")
            ref = K.winograd(xp, ww, out_hw, b, act)
            isa(variant)
            # F(4x4)'s output transform multiplies the GEMMs' differences in rounding by up to 8 x 8
            np.testing.assert_allclose(K.winograd(xp, ww, out_hw, b, act), ref, rtol=1e-5, atol=1e-5 if mt == 2 else 2.5e-4)


@pytest.mark.parametrize("mt", WINOGRAD_TILES)
def test_winograd_one_group_into_slice(mt):
    x = rand(1, 6, 7, 10)
    w = rand(3, 3, 4, 6, seed=1)               # group of input channels [3, 7)
    out = np.zeros((1 * 4 * 5, 9), np.float32)
    K.winograd(x, K.winograd_weights(w, mt), (4, 5), None, None, (3, 4), out=out[:, 2:8])
    want, _ = ref_conv(x[..., 3:7], w, None, (1, 1), (0, 0, 0, 0), None)
    np.testing.assert_allclose(out[:, 2:8], want, rtol=1e-4, atol=winograd_atol(mt))
    assert (out[:, :2] == 0).all() and (out[:, 8:] == 0).all()


def test_winograd_rejects_bad_arguments():
    x, ww = rand(1, 6, 6, 4), K.winograd_weights(rand(3, 3, 4, 5))
    K.winograd(x, ww, (4, 4))
    with pytest.raises(ValueError):
        K.winograd(x, K.pack_weights(rand(36, 5)), (4, 4))                  # not Winograd weights
    with pytest.raises(ValueError):
        K.winograd(x, ww, (5, 4))                                           # window past the input
    with pytest.raises(ValueError):
        K.winograd(x, ww, (4, 4), channels=(1, 4))                          # past the channels
    with pytest.raises(ValueError):
        K.winograd(x, ww, (4, 4), channels=(0, 3))                          # not the weights' C_in
    with pytest.raises(ValueError):
        K.winograd(x, ww, (4, 4), rand(4))                                  # bias size
    with pytest.raises(ValueError):
        K.winograd_weights(rand(5, 5, 4, 5))
    with pytest.raises(ValueError):
        K.winograd_weights(rand(3, 3, 4, 5), 3)                             # no F(3x3, 3x3)


@pytest.mark.parametrize("variant", ISAS)
@pytest.mark.parametrize("groups", [1, 2])
def test_conv2d_takes_winograd_where_it_pays(isa, variant, groups):
    isa(variant)
    x, w, b = rand(2, 9, 8, 32), rand(3, 3, 32 // groups, 40, seed=1), rand(40, seed=2)
    layer = L.Conv2D(w, b, (1, 1), "same", groups, "relu")
    assert layer._winograd is not None
    assert L.Conv2D(rand(3, 3, 3, 40), b, (1, 1), "same")._winograd is None       # 3 channels in
    assert L.Conv2D(w, b, (2, 2), "same", groups)._winograd is None               # strided
    cin_g, cout_g = 32 // groups, 40 // groups
    want = np.concatenate([ref_conv(x[..., g * cin_g:(g + 1) * cin_g], w[..., g * cout_g:(g + 1) * cout_g],
                                    b[g * cout_g:(g + 1) * cout_g], (1, 1), (1, 1, 1, 1), "relu")[0]
                           for g in range(groups)], axis=1)
    np.testing.assert_allclose(layer(x), want.reshape(2, 9, 8, 40), rtol=1e-4, atol=1e-4)
    if K.has_simd():
        assert winograd_used(layer) == [2] and len(layer._winograd[2]) == groups
    else:
        assert layer._winograd == {}


@pytest.mark.parametrize("variant", ISAS)
def test_conv2d_takes_winograd_4x4_on_large_maps(isa, variant):
    """From a 28 x 28 output on, the layer makes and uses F(4x4, 3x3) weights (kernels.winograd_tile)."""
    isa(variant)
    x, w, b = rand(1, 29, 28, 16), rand(3, 3, 16, 20, seed=1), rand(20, seed=2)
    layer = L.Conv2D(w, b, (1, 1), "same", 1, "relu")
    want, _ = ref_conv(x, w, b, (1, 1), (1, 1, 1, 1), "relu")
    np.testing.assert_allclose(layer(x), want.reshape(1, 29, 28, 20), rtol=1e-4, atol=winograd_atol(4))
    assert K.winograd_tile(29, 28) == 4 and K.winograd_tile(27, 28) == 2
    assert winograd_used(layer) in ([4], None)


# ---- through the Conv2D layer -------------------------------------------------------------------

@pytest.mark.parametrize("variant", ISAS)
@pytest.mark.parametrize("k,stride,pads,groups", [
    (1, (1, 1), (0, 0, 0, 0), 1),
    (1, (2, 2), (0, 0, 0, 0), 1),      # strided 1x1: gathered rows
    (1, (1, 1), (0, 0, 0, 0), 2),      # grouped 1x1: spaced-out rows into output slices
    (3, (2, 2), "same", 1),
    (3, (1, 1), (1, 1, 1, 1), 2),      # grouped, as AlexNet
])
def test_conv2d_layer(isa, variant, k, stride, pads, groups):
    isa(variant)
    x, w, b = rand(2, 9, 8, 6), rand(k, k, 6 // groups, 10, seed=1), rand(10, seed=2)
    layer = L.Conv2D(w, b, stride, pads, groups, "relu6")
    resolved = L.resolve_pads(pads, 9, 8, k, k, *stride)
    parts = [ref_conv(x[..., g * (6 // groups):(g + 1) * (6 // groups)], w[..., g * 5:(g + 1) * 5] if groups == 2 else w,
                      b[g * 5:(g + 1) * 5] if groups == 2 else b, stride, resolved, "relu6") for g in range(groups)]
    want = np.concatenate([p[0] for p in parts], axis=1)
    oh, ow = parts[0][1]
    np.testing.assert_allclose(layer(x), want.reshape(2, oh, ow, 10), rtol=1e-4, atol=1e-4)


def test_conv2d_blas_path_agrees(monkeypatch):
    """Weights above the BLAS threshold take numpy's GEMM (on an explicit patch matrix)."""
    x, w, b = rand(2, 7, 7, 4), rand(3, 3, 2, 6, seed=1), rand(6, seed=2)
    ours = L.Conv2D(w, b, (1, 1), "same", 2, "relu")
    monkeypatch.setattr(K, "gemm_prefers_blas", lambda k, n: True)
    blas = L.Conv2D(w, b, (1, 1), "same", 2, "relu")
    assert all(p is None for p in blas._packed) and all(p is not None for p in ours._packed)
    np.testing.assert_allclose(blas(x), ours(x), rtol=1e-5, atol=1e-5)
    one = L.Conv2D(rand(1, 1, 4, 6), b, (2, 2), (0, 0, 0, 0), 1, None)
    monkeypatch.setattr(K, "gemm_prefers_blas", lambda k, n: False)
    np.testing.assert_allclose(one(x), L.Conv2D(one.weight, b, (2, 2))(x), rtol=1e-5, atol=1e-5)


def test_blas_rule():
    assert not K.gemm_prefers_blas(1152, 320)        # Lite0's biggest 1x1
    assert not K.gemm_prefers_blas(2304, 384)        # AlexNet conv3
    assert K.gemm_prefers_blas(9216, 4096)           # AlexNet fc6


# ---- ISA control --------------------------------------------------------------------------------

def test_set_isa_caps_and_restores(isa):
    best = K.best_isa()
    assert isa(LEVELS[2]) == LEVELS[min(2, LEVELS.index(best))]
    assert isa(LEVELS[-1]) == best
    assert isa(OTHER_LEVELS[1]) == "scalar"
    assert isa("scalar") == "scalar" and K.isa() == "scalar"
    with pytest.raises(ValueError, match="unknown instruction set"):
        isa("sse2")


@pytest.mark.parametrize("cap", [*X86_LEVELS, *ARM_LEVELS[1:]])
def test_isa_environment_variable_caps_every_variant(cap):
    """QCNN_ISA caps the variant a fresh process starts with and the ones set_isa can reach; the
    other architecture's names cap to scalar."""
    import os
    import subprocess
    import sys
    want = LEVELS[min(LEVELS.index(cap), LEVELS.index(K.cpu_isa()))] if cap in LEVELS else "scalar"
    code = f"from qcnn import kernels as K; print(K.isa(), K.best_isa(), K.set_isa({LEVELS[-1]!r}), K.cpu_isa())"
    env = {**os.environ, "QCNN_ISA": cap}       # (QCNN_DISABLE_SIMD, if set, caps both processes alike)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [want, want, want, K.cpu_isa()]


def test_unknown_isa_in_the_environment_is_refused_by_name():
    import os
    import subprocess
    import sys
    env = {**os.environ, "QCNN_ISA": "avx3"}
    r = subprocess.run([sys.executable, "-c", "import qcnn.kernels"], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "QCNN_ISA='avx3'" in r.stderr and "avx512vnni" in r.stderr


# ---- wrapper validation -------------------------------------------------------------------------

def test_depthwise_rejects_bad_arguments():
    x, wt, b = rand(1, 5, 5, 8), rand(3, 3, 8), rand(8)
    ok = dict(stride=(1, 1), pads=(1, 1, 1, 1), out_hw=(5, 5), activation=None)
    K.depthwise(x, wt, b, **ok)
    with pytest.raises(ValueError):
        K.depthwise(x.astype(np.float64), wt, b, **ok)
    with pytest.raises(ValueError):
        K.depthwise(x[:, :, ::2], wt, b, **{**ok, "out_hw": (5, 3)})        # not contiguous
    with pytest.raises(ValueError):
        K.depthwise(x, rand(3, 3, 7), b, **ok)                              # channel mismatch
    with pytest.raises(ValueError):
        K.depthwise(x, wt, rand(7), **ok)
    with pytest.raises(ValueError):
        K.depthwise(x, wt, b, **{**ok, "out_hw": (6, 5)})                  # window past the padding
    with pytest.raises(ValueError):
        K.depthwise(x, wt, b, **{**ok, "pads": (-1, 1, 1, 1)})
    with pytest.raises(ValueError):
        K.depthwise(x, wt, b, **{**ok, "stride": (0, 1)})
    with pytest.raises(ValueError):
        K.depthwise(x[0], wt, b, **ok)                                      # not 4-D


def test_pointwise_rejects_bad_arguments():
    a, w, b = rand(6, 5), rand(5, 9), rand(9)
    p = K.pack_weights(w)
    K.pointwise(a, p, b)
    with pytest.raises(ValueError):
        K.pointwise(a.astype(np.float64), p, b)
    with pytest.raises(ValueError):
        K.pointwise(rand(6, 4), p, b)                                       # K mismatch
    with pytest.raises(ValueError):
        K.pointwise(rand(6, 10)[:, ::2], p, b)                              # columns not unit-stride
    with pytest.raises(ValueError):
        K.pointwise(a, w, b)                                                # unpacked weights
    with pytest.raises(ValueError):
        K.pointwise(a, p, rand(8))
    with pytest.raises(ValueError):
        K.pointwise(a, p, b, "gelu")
    with pytest.raises(ValueError):
        K.pointwise(a, p, b, out=np.empty((6, 8), np.float32))              # wrong output shape
    with pytest.raises(ValueError):
        K.pointwise(a, p, b, out=np.empty((9, 6), np.float32).T)            # output columns strided
    ro = np.empty((6, 9), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        K.pointwise(a, p, b, out=ro)
    buf = np.zeros((6, 20), np.float32)
    with pytest.raises(ValueError):
        K.pointwise(buf[:, :5], p, b, out=buf[:, 5:14])                     # output overlaps input
    bad = K.PackedWeights(p.data[:, :3], 5, 9)                              # packed data of the wrong size
    with pytest.raises(ValueError):
        K.pointwise(a, bad, b)
    with pytest.raises(ValueError):
        K.pack_weights(rand(3, 0))


def test_conv_gemm_rejects_bad_arguments():
    x, w = rand(1, 6, 6, 4), rand(3, 3, 4, 5)
    p = K.pack_weights(w.reshape(-1, 5))
    K.conv_gemm(x, p, (3, 3), (1, 1), (4, 4))
    with pytest.raises(ValueError):
        K.conv_gemm(x, p, (3, 3), (1, 1), (5, 4))                           # window past the input
    with pytest.raises(ValueError):
        K.conv_gemm(x, p, (3, 3), (1, 1), (4, 4), channels=(1, 4))          # channels past C
    with pytest.raises(ValueError):
        K.conv_gemm(x, p, (3, 3), (1, 1), (4, 4), channels=(0, 3))          # K mismatch
    with pytest.raises(ValueError):
        K.conv_gemm(x, p, (2, 2), (1, 1), (4, 4))
    with pytest.raises(ValueError):
        K.conv_gemm(x.astype(np.float64), p, (3, 3), (1, 1), (4, 4))
    with pytest.raises(ValueError):
        K.conv_gemm(x[:, :, ::2], p, (3, 3), (1, 1), (4, 1))
    with pytest.raises(ValueError):
        K.conv_gemm(x, p, (3, 3), (1, 1), (4, 4), bias=rand(4))
    with pytest.raises(ValueError):
        K.conv_gemm(x, p, (3, 3), (1, 1), (4, 4), out=np.empty((16, 4), np.float32))


# ---- LRN and pooling ----------------------------------------------------------------------------
# The layers keep their numpy code for other dtypes: float64 input is the reference.

@pytest.mark.parametrize("variant", ISAS)
@pytest.mark.parametrize("c,size,beta", [(1, 5, 0.75), (3, 5, 0.75), (17, 5, 0.75), (33, 3, 0.5),
                                         (96, 5, 0.75), (20, 4, 0.75), (7, 9, 1.0)])
def test_lrn_matches_numpy_layer(isa, variant, c, size, beta):
    isa(variant)
    layer = L.LRN(size=size, alpha=2e-4 * size, beta=beta, k=2.0)
    x = rand(2, 5, 3, c) * 3
    got = layer(x)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, layer(x.astype(np.float64)), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("variant", SIMD_ISAS)
def test_lrn_simd_matches_scalar(isa, variant):
    x = rand(3, 4, 5, 45) * 4
    for beta, k in ((0.75, 1.0), (0.75, 0.0), (0.6, 1.0)):
        isa("scalar")
        ref = K.lrn(x, 5, 1e-3, beta, k)
        isa(variant)
        got = K.lrn(x, 5, 1e-3, beta, k)
        if variant in ("avx512", "avx2") and beta == 0.75 and k > 0:    # Newton-refined reciprocal square roots
            np.testing.assert_allclose(got, ref, rtol=1e-6, atol=0)
            assert not np.array_equal(got, ref)
        else:
            np.testing.assert_array_equal(got, ref)          # same operations in the same order


@pytest.mark.parametrize("variant", ["avx512", "avx2"])
def test_lrn_fast_root_error_over_a_wide_range(isa, variant):
    """The AVX-512 and AVX2 s^-0.75 against float64 over sums from k to about 1e30."""
    if variant not in ISAS:
        pytest.skip(f"no {variant} on this CPU")
    isa(variant)
    x = (np.random.default_rng(3).standard_normal((1, 64, 64, 32)) * np.logspace(-3, 15, 32)).astype(np.float32)
    want = L.LRN(5, 1e-4, 0.75, 1.0)(x.astype(np.float64))
    np.testing.assert_allclose(K.lrn(x, 5, 1e-4, 0.75, 1.0), want, rtol=1e-6, atol=0)


POOL_CASES = [  # mode, (h, w), c, kernel, stride, pads, ceil_mode, count_include_pad
    ("max", (55, 55), 17, (3, 3), (2, 2), (0, 0, 0, 0), False, False),    # AlexNet's pools
    ("max", (13, 13), 33, (3, 3), (2, 2), (0, 0, 0, 0), True, False),
    ("max", (8, 9), 3, (2, 2), (2, 2), (0, 0, 0, 0), True, False),        # ceil-mode overhang
    ("max", (7, 7), 1, (3, 3), (1, 1), (1, 1, 1, 1), False, False),
    ("max", (1, 1), 5, (3, 3), (2, 2), "same", False, False),
    ("avg", (9, 8), 7, (3, 3), (2, 2), (1, 1, 1, 1), False, False),
    ("avg", (9, 8), 7, (3, 3), (2, 2), (1, 1, 1, 1), False, True),        # count_include_pad
    ("avg", (10, 7), 20, (3, 2), (2, 3), (1, 0, 0, 1), True, True),      # overhang never counts
    ("avg", (10, 7), 20, (3, 2), (2, 3), (1, 0, 0, 1), True, False),
    ("avg", (6, 6), 16, (6, 6), (1, 1), (0, 0, 0, 0), False, False),     # global
]


@pytest.mark.parametrize("variant", ISAS)
@pytest.mark.parametrize("case", range(len(POOL_CASES)))
def test_pool_matches_numpy_layer(isa, variant, case):
    isa(variant)
    mode, hw, c, k, s, pads, ceil_mode, include_pad = POOL_CASES[case]
    layer = L.Pool2D(mode, k, s, pads, ceil_mode, include_pad)
    x = rand(2, *hw, c, seed=case)
    got = layer(x)
    want = layer(x.astype(np.float64))
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", SIMD_ISAS)
@pytest.mark.parametrize("c", [37, 64, 75, 136])   # passes of up to 64 (AVX2) or 128 channels, tails
def test_pool_simd_matches_scalar(isa, variant, c):
    x = rand(2, 11, 9, c)
    for mode, include in (("max", False), ("avg", False), ("avg", True)):
        isa("scalar")
        ref = K.pool(x, mode, (3, 3), (2, 2), (1, 1, 0, 2), (6, 5), include)
        isa(variant)
        np.testing.assert_array_equal(K.pool(x, mode, (3, 3), (2, 2), (1, 1, 0, 2), (6, 5), include), ref)


def test_pool_window_entirely_in_padding():
    """A window that sees only padding: -inf for max (as the numpy layer's -inf padding), 0 for avg."""
    x = rand(1, 2, 2, 3)
    y = K.pool(x, "max", (2, 2), (3, 3), (3, 0, 0, 0), (2, 1))
    assert np.isneginf(y[0, 0]).all() and np.isfinite(y[0, 1]).all()
    assert (K.pool(x, "avg", (2, 2), (3, 3), (3, 0, 0, 0), (2, 1))[0, 0] == 0).all()


def test_lrn_and_pool_reject_bad_arguments():
    x = rand(1, 4, 4, 8)
    with pytest.raises(ValueError):
        K.lrn(x.astype(np.float64), 5, 1e-4, 0.75, 1.0)
    with pytest.raises(ValueError):
        K.lrn(x[..., ::2], 5, 1e-4, 0.75, 1.0)
    with pytest.raises(ValueError):
        K.lrn(x, 0, 1e-4, 0.75, 1.0)
    with pytest.raises(ValueError):
        K.pool(x, "min", (2, 2), (2, 2), (0, 0, 0, 0), (2, 2))
    with pytest.raises(ValueError):
        K.pool(x, "max", (0, 2), (2, 2), (0, 0, 0, 0), (2, 2))
    with pytest.raises(ValueError):
        K.pool(x, "max", (2, 2), (2, 2), (0, -1, 0, 0), (2, 2))
    with pytest.raises(ValueError):
        K.pool(x[:, ::2], "max", (2, 2), (2, 2), (0, 0, 0, 0), (1, 2))
    with pytest.raises(ValueError):
        K.pool(x[0], "max", (2, 2), (2, 2), (0, 0, 0, 0), (2, 2))


def test_empty_aligned_and_single_row_pitch():
    for shape in [(0, 5), (3,), (1000, 37)]:
        a = K.empty_aligned(shape)
        assert a.shape == shape and a.dtype == np.float32 and (a.size == 0 or a.ctypes.data % 64 == 0)
        b = K.empty_aligned(shape, dtype=np.uint8)       # fast-scan codes and tables
        assert b.shape == shape and b.dtype == np.uint8 and (b.size == 0 or b.ctypes.data % 64 == 0)
    # one row: its reported row stride is irrelevant and must not be rejected
    a = np.lib.stride_tricks.as_strided(rand(1, 8), shape=(1, 8), strides=(4, 4))
    w = rand(8, 3, seed=1)
    np.testing.assert_allclose(K.pointwise(a, K.pack_weights(w)), a @ w, rtol=1e-5, atol=1e-5)


# ---- the layers' prepared calls (kernels.PointwiseOp, DepthwiseOp) --------------------------------


@pytest.mark.parametrize("variant", ISAS)
def test_prepared_ops_equal_the_checked_calls(isa, variant):
    isa(variant)
    for m, k, n in PW_SIMD_SHAPES:
        a, w, b = rand(m, k), rand(k, n, seed=1), rand(n, seed=2)
        p = K.pack_weights(w)
        for act in ACTS:
            np.testing.assert_array_equal(K.PointwiseOp(p, b, act)(a), K.pointwise(a, p, b, act))
        np.testing.assert_array_equal(K.PointwiseOp(p)(a), K.pointwise(a, p))
    for n, (hw, c, k, stride, pads) in enumerate(DW_CASES[::3]):
        x, wt, b, resolved = _dw_args(hw, c, k, stride, pads, seed=n)
        if hw[0] + resolved[0] + resolved[1] < k[0] or hw[1] + resolved[2] + resolved[3] < k[1]:
            continue
        out_hw = (out_size(hw[0], k[0], stride[0], *resolved[:2]), out_size(hw[1], k[1], stride[1], *resolved[2:]))
        bias = None if n % 2 else b
        op = K.DepthwiseOp(x.shape, wt, bias, stride, resolved, out_hw, ACTS[n % 3])
        np.testing.assert_array_equal(op(x), K.depthwise(x, wt, bias, stride, resolved, out_hw, ACTS[n % 3]))


def test_prepared_ops_check_their_input_and_arguments():
    a, w, b = rand(6, 5), rand(5, 9), rand(9)
    p = K.pack_weights(w)
    op = K.PointwiseOp(p, b, "relu")
    for bad in (a.astype(np.float64), rand(6, 4), rand(6, 10)[:, ::2], a[None], a.tolist()):
        with pytest.raises(ValueError):
            op(bad)
    for args in ((w, b), (p, rand(8)), (p, b, "gelu"), (K.PackedWeights(p.data[:, :3], 5, 9), b)):
        with pytest.raises(ValueError):
            K.PointwiseOp(*args)
    x, wt = rand(1, 5, 5, 7), rand(3, 3, 7)
    ok = dict(stride=(1, 1), pads=(1, 1, 1, 1), out_hw=(5, 5), activation=None)
    op = K.DepthwiseOp(x.shape, wt, rand(7), **ok)
    for bad in (x.astype(np.float64), rand(1, 5, 6, 7), rand(1, 5, 10, 7)[:, :, ::2], x[0]):
        with pytest.raises(ValueError):
            op(bad)
    for shape, weight, kw in ((x.shape, rand(3, 3, 6), ok), ((1, 5, 5), wt, ok), (x.shape, wt, {**ok, "out_hw": (6, 5)}),
                              (x.shape, wt, {**ok, "activation": "gelu"}), (x.shape, wt, {**ok, "stride": (0, 1)})):
        with pytest.raises(ValueError):
            K.DepthwiseOp(shape, weight, None, **kw)


def test_conv2d_prepared_call_follows_the_layer(isa):
    """A layer's prepared call is the one its settings make: after a copy changes the activation
    (Graph.fuse_activations), a new bias, or a cap to scalar (BLAS), the result is still the plain one."""
    x = rand(1, 6, 6, 16)
    for weight, groups, pads in ((rand(1, 1, 16, 24), 1, (0, 0, 0, 0)), (rand(3, 3, 1, 16), 16, "same")):
        conv = L.Conv2D(weight, rand(weight.shape[3]), groups=groups, pads=pads)
        want = lambda layer: (ref_conv(x, weight, layer.bias, (1, 1), (0,) * 4, layer.activation)[0] if groups == 1 else
                              ref_depthwise(x, weight[:, :, 0], layer.bias, (1, 1), (1, 1, 1, 1), layer.activation)[0]
                              ).reshape(1, 6, 6, -1)
        for _ in range(2):        # the second call runs the prepared one
            np.testing.assert_allclose(conv(x), want(conv), rtol=1e-4, atol=1e-4)
        # Without SIMD a 1x1 convolution goes to BLAS, which has no prepared call.
        assert conv._fast or (groups == 1 and not K.has_simd()), "the layer prepared no call"
        fused = copy.copy(conv)
        fused.activation = "relu"
        assert not fused._fast
        np.testing.assert_allclose(pickle.loads(pickle.dumps(conv))(x), want(conv), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(fused(x), want(fused), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(conv(x), want(conv), rtol=1e-4, atol=1e-4)
        conv.bias = rand(weight.shape[3], seed=9)
        np.testing.assert_allclose(conv(x), want(conv), rtol=1e-4, atol=1e-4)
        isa("scalar")
        np.testing.assert_allclose(conv(x), want(conv), rtol=1e-4, atol=1e-4)
        isa(K.best_isa())
        np.testing.assert_allclose(conv(x), want(conv), rtol=1e-4, atol=1e-4)
