"""Fast-scan's accuracy and the variants it runs: the error of its uint8 tables against a bound
that does not grow with the number of subspaces M, sums that fill the SIMD variants' 16-bit
accumulators up to their widening flush, and each SIMD level running its own variant."""
import numpy as np
import pytest

from qcnn import kernels as dense_kernels
from qcnn.pq import kernels as K
from qcnn.pq.engine import relative_error
from qcnn.pq.layer import PQLayer

ISAS = list(dict.fromkeys(dense_kernels.set_isa(isa) for isa in dense_kernels.ISA_NAMES.values()))


@pytest.fixture(autouse=True)
def restore_isa():
    yield
    dense_kernels.set_isa(ISAS[-1])


def pq_layer(kind, cin, cout, k, dsub, seed=0, pads=(0, 0, 0, 0)):
    rng = np.random.default_rng(seed)
    m = -(-cin // dsub)
    cb = (rng.standard_normal((1, m, 16, dsub)) * 0.1).astype(np.float32)
    codes = rng.integers(0, 16, (k, k, m, cout)).astype(np.uint8)
    bias = (rng.standard_normal(cout) * 0.1).astype(np.float32)
    return PQLayer(kind, cb, codes, cin, bias, (1, 1), pads, 1, None)


def activations(shape, seed=1):
    """Inputs like a Lite0 project layer's: after ReLU6 (>= 0), channel scales spread over two
    orders of magnitude, so one pixel's tables span very different ranges (the narrow ones are
    what the uint8 step rounds away)."""
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.normal(0.0, 1.2, shape[-1]))
    return np.clip(rng.standard_normal(shape) * scales, 0, 6).astype(np.float32)


def errors(layer, x, debias=True):
    exact = K.PreparedPQ(layer, "exact")(x)
    fast = K.PreparedPQ(layer, "fastscan")
    fast.debias = debias
    got = fast(x)
    return relative_error(got, exact), np.abs(got - exact).max() / np.abs(exact).max()


# Lite0's 1x1 layers at C_s' = 1-2 (M = C_in / C_s' in the hundreds) and AlexNet-shaped layers.
# Both bounds hold for every M: before the rounding correction the RMS error grew with M, to
# 0.2-1.6 of the output's RMS at M = 240-1152 on the real layers (scripts/fastscan_error.py).
RMS_BOUND, MAX_BOUND = 0.06, 0.15
SHAPES = [("conv", 96, 24, 1, 1, 14), ("conv", 240, 80, 1, 1, 14), ("conv", 480, 112, 1, 2, 7),
          ("conv", 1152, 320, 1, 1, 7), ("conv", 2304, 64, 1, 2, 4),
          ("conv", 96, 256, 5, 4, 9), ("conv", 256, 384, 3, 4, 7), ("fc", 4096, 1000, 1, 4, 1),
          ("conv", 64, 4096, 3, 4, 3)]      # 9 x 4096 codes per subspace: counts scaled to 16 bits


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}{s[1]}-{s[2]}k{s[3]}d{s[4]}")
@pytest.mark.parametrize("isa", ISAS)
def test_fastscan_error_does_not_grow_with_the_subspaces(shape, isa):
    dense_kernels.set_isa(isa)
    kind, cin, cout, k, dsub, side = shape
    layer = pq_layer(kind, cin, cout, k, dsub, pads=(k // 2,) * 4)
    x = activations((2, side, side, cin) if kind == "conv" else (2, cin))
    rms, worst = errors(layer, x)
    assert rms <= RMS_BOUND and worst <= MAX_BOUND, (rms, worst)


def test_code_counts_fit_16_bits_and_keep_the_frequencies():
    small = pq_layer("conv", 64, 96, 3, 4)
    counts, _ = K.code_statistics(small, small.codebooks)
    assert (counts.sum(axis=-1) == 9 * 96).all()                    # exact below the limit
    big = pq_layer("conv", 64, 4096, 3, 4)
    counts, _ = K.code_statistics(big, big.codebooks)
    assert counts.dtype == np.uint16 and (counts.sum(axis=-1) == K.COUNT_LIMIT).all()
    exact = np.stack([np.bincount(big.codes[:, :, m].ravel(), minlength=16) for m in range(big.M)])
    assert np.abs(counts[0] / K.COUNT_LIMIT - exact / exact.sum(-1, keepdims=True)).max() <= 1 / K.COUNT_LIMIT


def test_the_bound_catches_the_uncorrected_tables():
    """The same bound fails without the rounding correction once M is large (so the test above
    guards the correction, not just the kernels)."""
    layer = pq_layer("conv", 1152, 320, 1, 1)
    x = activations((2, 7, 7, 1152))
    rms, worst = errors(layer, x, debias=False)
    assert rms > RMS_BOUND or worst > MAX_BOUND, (rms, worst)
    small = errors(pq_layer("conv", 96, 24, 1, 1), activations((2, 14, 14, 96)), debias=False)[0]
    assert rms > 2 * small        # uncorrected, the error grows with M


def saturating_layer(kind, cin, cout, k, dsub):
    """Every lookup hits the largest entry of its table (byte 255): codeword 0 is +1 in every
    channel, the others are in [-1, 0], the inputs are ones and every code is 0."""
    rng = np.random.default_rng(3)
    m = -(-cin // dsub)
    cb = -rng.random((1, m, 16, dsub)).astype(np.float32)
    cb[:, :, 0] = 1.0
    codes = np.zeros((k, k, m, cout), np.uint8)
    return PQLayer(kind, cb, codes, cin, None, (1, 1), (k // 2,) * 4 if k > 1 else (0, 0, 0, 0), 1, None)


# (kind, C_in, C_out, kernel, C_s', map side): sums of 150 to 2048 quads of subspaces (4 subspaces,
# two bytes of 255 per 16-bit lane per quad: the AVX2/AVX-512 lanes must be widened every 128
# quads, NEON's every 64) within one tap and across the taps of a k x k kernel.
FLUSH_SHAPES = [("fc", 4096, 70, 1, 1, 1), ("fc", 8192, 33, 1, 1, 1), ("conv", 1200, 40, 1, 1, 3),
                ("conv", 96, 64, 5, 4, 6), ("conv", 256, 40, 3, 1, 3)]


@pytest.mark.parametrize("shape", FLUSH_SHAPES, ids=lambda s: f"{s[0]}{s[1]}-{s[2]}k{s[3]}d{s[4]}")
@pytest.mark.parametrize("isa", ISAS)
def test_fastscan_sums_up_to_the_accumulators_flush_limit(shape, isa):
    dense_kernels.set_isa(isa)
    kind, cin, cout, k, dsub, side = shape
    layer = saturating_layer(kind, cin, cout, k, dsub)
    x = np.ones((1, cin) if kind == "fc" else (1, side, side, cin), np.float32)
    exact = K.PreparedPQ(layer, "exact")(x)
    prepared = K.PreparedPQ(layer, "fastscan")
    for layout in K.LAYOUTS:
        prepared.pack_codes(layout)
        got = prepared(x)
        # No rounding at all (every entry read is a table's largest): only float error remains;
        # a 16-bit lane that wrapped would be off by 65536 steps.
        np.testing.assert_allclose(got, exact, rtol=1e-4, atol=1e-3, err_msg=layout)


# What each level must run: the AVX-512 table and quantization variants also serve VNNI, and FC
# layers (nibbles layout) take the AVX-512 lookups there; NEON's serve NEONDOT.
def expected(isa: str, family: str, fc: bool) -> str:
    if family == "fastscan_lookups" and not fc:
        return isa
    return {"avx512vnni": "avx512", "neondot": "neon"}.get(isa, isa)


@pytest.mark.parametrize("isa", ISAS)
def test_each_simd_level_runs_its_own_variant(isa):
    """A dispatch table that sends a level to another variant gives the same numbers (they are
    bit-identical), so only the variants' own record shows it."""
    dense_kernels.set_isa(isa)
    for fc, layer, x in ((False, pq_layer("conv", 64, 96, 3, 4, pads=(1, 1, 1, 1)), activations((1, 6, 6, 64))),
                         (True, pq_layer("fc", 256, 64, 1, 4), activations((1, 256)))):
        K.reset_variants_ran()
        K.PreparedPQ(layer, "fastscan")(x)
        K.PreparedPQ(layer, "exact")(x)
        ran = K.variants_ran()
        for family in K.FAMILIES:
            assert ran[family] == {expected(isa, family, fc)}, (family, "fc" if fc else "conv", ran[family])
