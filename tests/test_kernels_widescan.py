"""Wide-codebook lookups (qcnn/csrc/pq_widescan.c, K = 17..256): every SIMD variant bit-identical
to the scalar reference, all of them within the uint8 tables' rounding bound of the exact float
path, and bad layers refused before C."""
import numpy as np
import pytest

from qcnn import kernels as dense_kernels
from qcnn.pq import engine
from qcnn.pq import kernels as K
from qcnn.pq.widescan import PreparedWide, padded_k, widescan_supported
from test_kernels_pq import ISAS, inputs, make_layer, restore_isa  # noqa: F401 (autouse fixture)

# kind, C_in, C_out, kernel, dsub, K, groups, stride, pads, map size
CASES = [
    ("fc", 100, 70, 1, 4, 32, 1, (1, 1), (0, 0, 0, 0), (1, 1)),     # M = 25, C_out not a multiple of 16
    ("fc", 37, 9, 1, 5, 200, 1, (1, 1), (0, 0, 0, 0), (1, 1)),      # K = 200 padded to 256, narrow last subspace
    ("fc", 2100, 130, 1, 4, 64, 1, (1, 1), (0, 0, 0, 0), (1, 1)),   # 525 subspaces: widening flushes, 3 blocks
    ("fc", 64, 300, 1, 2, 128, 1, (1, 1), (0, 0, 0, 0), (1, 1)),    # 5 blocks of 64: a pass of 4, then 1
    ("conv", 7, 33, 1, 3, 32, 1, (2, 2), (0, 0, 0, 0), (7, 6)),     # strided 1x1, dsub does not divide C_in
    ("conv", 8, 12, 1, 4, 48, 1, (2, 2), (1, 0, 1, 1), (6, 7)),     # padded strided 1x1, K = 48 -> 64
    ("conv", 12, 40, 3, 3, 32, 1, (1, 1), "same", (5, 6)),          # 3x3 SAME
    ("conv", 12, 64, 3, 4, 128, 2, (2, 2), "same", (9, 8)),         # groups, stride 2
    ("conv", 6, 24, 3, 1, 100, 3, (1, 2), (0, 2, 1, 0), (5, 9)),    # K = 100 -> 128, asymmetric pads
    ("conv", 16, 17, 5, 4, 256, 1, (1, 1), (2, 2, 2, 2), (6, 7)),   # K = 256
    ("conv", 96, 70, 5, 8, 128, 1, (1, 1), (2, 2, 2, 2), (6, 6)),   # 25 taps x 12 subspaces: flush inside taps
    ("conv", 4, 9, 3, 8, 64, 1, (1, 1), "same", (1, 1)),            # one subspace, 1-pixel map
    ("conv", 10, 150, 3, 3, 256, 1, (1, 1), (1, 1, 1, 1), (4, 5)),  # K = 256, 3 blocks (pairs on AVX2)
]
IDS = [f"{c[0]}{c[1]}-{c[2]}k{c[3]}d{c[4]}K{c[5]}g{c[6]}" for c in CASES]


def rounding_bound(layer, x):
    """|widescan - exact| <= one uint8 step per summed term: a pixel's tables share one step =
    their span / 255 (1x1/FC), k x k layers the band's widest (here the whole map); an output sums
    taps * M terms, each rounded by at most half a step, and the rounding correction moves every
    output by the code-weighted mean of those errors, at most half a step per term again.  (The
    widest step, times the number of terms: loose but certain.)"""
    g, m, k, d = layer.codebooks.shape
    xs = x.reshape(x.shape[0], -1, x.shape[-1])
    cin_g = layer.in_channels // g
    xp = np.zeros((*xs.shape[:2], g, m * d), np.float32)
    for gi in range(g):
        xp[:, :, gi, :cin_g] = xs[..., gi * cin_g:(gi + 1) * cin_g]
    tables = np.einsum("npgmd,gmkd->npgmk", xp.reshape(*xs.shape[:2], g, m, d), layer.codebooks)
    step = (tables.max(axis=(-2, -1)) - tables.min(axis=(-2, -1))) / 255
    taps = layer.kernel[0] * layer.kernel[1]
    return taps * m * step.max() * 1.001 + 1e-4


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_variant_is_bit_identical_to_scalar(case):
    layer = make_layer(*case[:-1])
    x = inputs(case)
    dense_kernels.set_isa("scalar")
    want = PreparedWide(layer)(x)
    ran = []
    for isa in ISAS[1:]:
        ran.append(dense_kernels.set_isa(isa))
        got = PreparedWide(layer)(x)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want), f"{isa}: max diff {np.abs(got - want).max()}"
    assert ran == ISAS[1:]


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("isa", ISAS)
def test_close_to_exact_within_the_rounding_bound(case, isa):
    dense_kernels.set_isa(isa)
    layer = make_layer(*case[:-1])
    x = inputs(case)
    exact = K.PreparedPQ(layer, "exact")(x)
    got = PreparedWide(layer)(x)
    assert got.shape == exact.shape
    err = np.abs(got - exact).max()
    assert err <= rounding_bound(layer, x), err
    # and far from trivially: most outputs move by less than a tenth of the bound
    assert np.median(np.abs(got - exact)) < rounding_bound(layer, x) / 10


@pytest.mark.parametrize("isa", ISAS)
def test_error_relative_to_output_scale_does_not_grow_with_M(isa):
    """Rounding errors are independent per term: the RMS error grows as sqrt(M) and so does the
    output's spread, so their ratio stays nearly flat from M = 16 to M = 1024 (it creeps up as the
    one step per pixel spans the widest of more tables: measured 0.0094, 0.0126, 0.0154)."""
    dense_kernels.set_isa(isa)
    ratios = []
    for cin in (64, 512, 4096):
        layer = make_layer("fc", cin, 256, 1, 4, 128, 1, (1, 1), (0, 0, 0, 0))
        layer.bias[:] = 0
        x = np.random.default_rng(3).standard_normal((4, 1, 1, cin)).astype(np.float32)
        exact = K.PreparedPQ(layer, "exact")(x)
        got = PreparedWide(layer)(x)
        ratios.append(np.sqrt(np.mean((got - exact) ** 2)) / np.std(exact))
    assert max(ratios) < 0.02, ratios
    assert ratios[-1] < 2 * ratios[0], ratios


def narrow_tables_layer(cin, cout=256, ksub=32, dsub=4, seed=0):
    """An FC layer whose inputs' scales spread over orders of magnitude (as after a ReLU in a real
    network): most of a pixel's tables are far narrower than the widest, which sets the step, so
    their entries round to the same few levels and the errors do not cancel over the subspaces."""
    layer = make_layer("fc", cin, cout, 1, dsub, ksub, 1, (1, 1), (0, 0, 0, 0), seed=seed)
    rng = np.random.default_rng(seed + 7)
    scales = np.exp(rng.normal(0.0, 1.5, cin))
    x = np.clip(rng.standard_normal((3, 1, 1, cin)) * scales, 0, None).astype(np.float32)
    return layer, x


@pytest.mark.parametrize("isa", ISAS)
def test_rounding_correction_removes_the_bias_that_grows_with_M(isa):
    """Without the correction the error of narrow tables adds up over M (here M = 2304, AlexNet
    fc6's at C_s' = 4); with it the error about the output's mean is all that is left."""
    dense_kernels.set_isa(isa)
    rel = {}
    for cin in (64, 9216):
        layer, x = narrow_tables_layer(cin)
        exact = K.PreparedPQ(layer, "exact")(x)
        for debias in (False, True):
            wide = PreparedWide(layer)
            wide.debias = debias
            rel[cin, debias] = engine.relative_error(wide(x), exact)
    # measured 1.06 -> 0.082 at M = 2304 (the rest: one step per pixel, set by its widest table)
    assert rel[9216, True] < rel[9216, False] / 5, rel
    assert rel[9216, True] < 0.1 and rel[64, True] < 0.03, rel
    assert rel[9216, False] > 2 * rel[64, False], rel          # uncorrected, it grows with M


def test_saturated_tables_reach_the_flush_limits():
    """Inputs that make every table entry but one the largest value: the integer sums run near
    255 per term over hundreds of subspaces between flushes, and still agree across variants."""
    layer = make_layer("fc", 4096, 70, 1, 2, 64, 1, (1, 1), (0, 0, 0, 0))
    layer.codebooks[:] = 1.0
    layer.codebooks[:, :, 0] = -1.0          # codeword 0 is the table minimum, the rest the maximum
    layer.codes[:] = np.where(layer.codes == 0, 1, layer.codes)
    x = np.ones((1, 1, 1, 4096), np.float32)
    dense_kernels.set_isa("scalar")
    want = PreparedWide(layer)(x)
    exact = K.PreparedPQ(layer, "exact")(x)
    np.testing.assert_allclose(want, exact, rtol=1e-4, atol=1e-2)
    for isa in ISAS[1:]:
        dense_kernels.set_isa(isa)
        assert np.array_equal(PreparedWide(layer)(x), want), isa


def test_padded_k():
    assert [padded_k(k) for k in (2, 17, 32, 33, 64, 65, 128, 129, 256)] == [32, 32, 32, 64, 64, 128, 128, 256, 256]
    with pytest.raises(ValueError, match="K <= 256"):
        padded_k(257)


def test_bad_codes_and_shapes_are_refused_before_c():
    layer = make_layer("fc", 40, 20, 1, 4, 64, 1, (1, 1), (0, 0, 0, 0))
    layer.codes[0, 0, 0, 0] = 64                      # a code >= K
    with pytest.raises(ValueError, match="code is >= K"):
        PreparedWide(layer)
    layer = make_layer("fc", 40, 20, 1, 4, 64, 1, (1, 1), (0, 0, 0, 0))
    prepared = PreparedWide(layer)
    with pytest.raises(ValueError, match="input channels"):
        prepared(np.zeros((1, 41), np.float32))
    conv = make_layer("conv", 8, 20, 3, 4, 32, 1, (1, 1), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="NHWC"):
        PreparedWide(conv)(np.zeros((5, 5, 8), np.float32))
    with pytest.raises(ValueError):
        PreparedWide(conv)(np.zeros((1, 2, 2, 8), np.float32))    # smaller than the kernel
    big = make_layer("conv", 4, 8, 12, 4, 32, 1, (1, 1), "same")
    with pytest.raises(ValueError, match="121 taps"):
        PreparedWide(big)


def test_engine_runs_widescan_where_it_can():
    wide = make_layer("fc", 40, 20, 1, 4, 64, 1, (1, 1), (0, 0, 0, 0))
    small = make_layer("fc", 40, 20, 1, 4, 16, 1, (1, 1), (0, 0, 0, 0))
    assert widescan_supported(wide) and not widescan_supported(small)
    assert engine.impl_for(wide, "widescan") == "widescan"
    assert engine.impl_for(small, "widescan") == "fastscan"
    layer = engine._retarget(wide, "widescan")
    assert isinstance(layer.prepared(), PreparedWide)
    x = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32)
    np.testing.assert_allclose(layer(x), wide.reference(x), atol=rounding_bound(wide, x.reshape(3, 1, 1, 40)))
