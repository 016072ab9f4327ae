"""PQ lookup kernels (qcnn/csrc/pq_*.c) against the dense engine on reconstructed weights, and every
SIMD variant against the scalar reference."""
import numpy as np
import pytest

from qcnn import kernels as dense_kernels
from qcnn.pq import kernels as K
from qcnn.pq.layer import PQLayer

# set_isa caps at what the CPU has: the variants this machine runs, without repeats.
ISAS = list(dict.fromkeys(dense_kernels.set_isa(isa) for isa in dense_kernels.ISA_NAMES.values()))

# kind, C_in, C_out, kernel, dsub, K, groups, stride, pads, map size
CASES = [
    ("conv", 8, 40, 3, 2, 16, 1, (1, 1), (1, 1, 1, 1), (9, 8)),
    ("conv", 12, 64, 3, 4, 16, 2, (2, 2), "same", (9, 8)),        # groups, stride 2, SAME on odd/even
    ("conv", 7, 33, 1, 3, 16, 1, (2, 2), (0, 0, 0, 0), (7, 6)),   # strided 1x1, dsub does not divide C_in
    ("conv", 16, 17, 5, 4, 256, 1, (1, 1), (2, 2, 2, 2), (6, 7)), # K = 256: exact only
    ("conv", 6, 24, 3, 1, 5, 3, (1, 2), (0, 2, 1, 0), (5, 9)),     # K < 16, asymmetric pads
    ("conv", 4, 9, 3, 8, 16, 1, (1, 1), "same", (1, 1)),          # one subspace, 1-pixel map
    ("conv", 96, 64, 5, 4, 16, 1, (1, 1), (2, 2, 2, 2), (6, 6)),   # 25 taps x 6 quads: widening flush
    ("fc", 100, 70, 1, 4, 16, 1, (1, 1), (0, 0, 0, 0), (1, 1)),
    ("fc", 2100, 40, 1, 4, 16, 1, (1, 1), (0, 0, 0, 0), (1, 1)),   # 525 subspaces: flush inside a tap
    ("fc", 37, 9, 1, 5, 200, 1, (1, 1), (0, 0, 0, 0), (1, 1)),
    ("conv", 16, 130, 3, 4, 16, 1, (1, 1), "same", (5, 6)),      # 5 blocks of 32: a pass of 4, then 1
    ("conv", 8, 12, 1, 4, 16, 1, (2, 2), (1, 0, 1, 1), (6, 7)),    # padded strided 1x1 (ONNX allows it)
    ("fc", 64, 200, 1, 2, 16, 1, (1, 1), (0, 0, 0, 0), (1, 1)),    # 7 blocks: 4 + 3
    ("conv", 12, 40, 3, 3, 32, 1, (1, 1), "same", (5, 6)),        # K = 32: two registers of tables
    ("fc", 96, 50, 1, 2, 64, 1, (1, 1), (0, 0, 0, 0), (1, 1)),     # K = 64: NEON's largest in-register rows
    ("conv", 160, 40, 1, 33, 16, 1, (1, 1), (0, 0, 0, 0), (5, 3)),  # wide subspaces (kernel rows, as taps): 4 + 1 narrower, 15 pixels: 3 builds of four + 3 alone
    ("conv", 23, 36, 3, 3, 16, 1, (1, 1), (1, 1, 1, 1), (6, 5)),   # C_s' = 3: 8 subspaces, the last narrower
    ("conv", 800, 40, 3, 4, 16, 1, (1, 1), (1, 1, 1, 1), (4, 5)),  # 50 quads per tap: widened after runs of 2 taps, borders with 4 or 6
    ("fc", 2048, 36, 1, 4, 16, 1, (1, 1), (0, 0, 0, 0), (1, 1)),   # exactly FS_FLUSH = 128 quads in the one tap
]


def make_layer(kind, cin, cout, k, dsub, ksub, groups, stride, pads, seed=0, act=None):
    """A random PQ layer of a CASES row (also tests/test_kernels_widescan.py's); act: its
    activation, by default ReLU on odd output counts."""
    rng = np.random.default_rng(seed)
    m = -(-(cin // groups) // dsub)
    cb = rng.standard_normal((groups, m, ksub, dsub)).astype(np.float32)
    codes = rng.integers(0, ksub, (k, k, m, cout)).astype(np.uint8)
    bias = rng.standard_normal(cout).astype(np.float32)
    return PQLayer(kind, cb, codes, cin, bias, stride, pads, groups, act or ("relu" if cout % 2 else None))


def inputs(case, seed=1):
    kind, cin, *_, hw = case
    return np.random.default_rng(seed).standard_normal((2, *hw, cin)).astype(np.float32)


@pytest.fixture(autouse=True)
def restore_isa():
    yield
    dense_kernels.set_isa(ISAS[-1])


def fastscan_bound(layer, x):
    """|fast-scan - exact| <= sum over the terms of an output of half a uint8 table step.
    A pixel's tables (all its subspaces) share one offset and step = their span / 255; 1x1/FC
    layers keep a step per pixel, k x k layers share the widest step of the band (here the whole
    map).  An output sums at most taps * M terms, so the bound uses the widest step."""
    g, m, k, d = layer.codebooks.shape
    xs = x.reshape(x.shape[0], -1, x.shape[-1])
    cin_g = layer.in_channels // g
    xp = np.zeros((*xs.shape[:2], g, m * d), np.float32)
    for gi in range(g):
        xp[:, :, gi, :cin_g] = xs[..., gi * cin_g:(gi + 1) * cin_g]
    tables = np.einsum("npgmd,gmkd->npgmk", xp.reshape(*xs.shape[:2], g, m, d), layer.codebooks)
    step = (tables.max(axis=(-2, -1)) - tables.min(axis=(-2, -1))) / 255        # (n, pixels, g)
    taps = layer.kernel[0] * layer.kernel[1]
    return taps * m * step.max() / 2 * 1.001 + 1e-4


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}{c[1]}-{c[2]}k{c[3]}d{c[4]}K{c[5]}g{c[6]}")
@pytest.mark.parametrize("isa", ISAS)
def test_exact_kernel_equals_dense_engine_on_reconstructed_weights(case, isa):
    dense_kernels.set_isa(isa)
    layer = make_layer(*case[:-1])
    x = inputs(case)
    want = layer.to_dense()(x)
    got = K.PreparedPQ(layer, "exact")(x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("case", [c for c in CASES if c[5] <= 16], ids=lambda c: f"{c[0]}{c[1]}-{c[2]}k{c[3]}")
@pytest.mark.parametrize("isa", ISAS)
def test_fastscan_within_the_table_quantization_bound(case, isa):
    dense_kernels.set_isa(isa)
    layer = make_layer(*case[:-1])
    x = inputs(case)
    exact = K.PreparedPQ(layer, "exact")(x)
    fast = K.PreparedPQ(layer, "fastscan")(x)
    err = np.abs(fast - exact).max()
    assert err <= fastscan_bound(layer, x), err
    assert err > 0          # it really used the uint8 tables


@pytest.mark.parametrize("case", [c for c in CASES if c[5] <= 16], ids=lambda c: f"{c[0]}{c[1]}-{c[2]}k{c[3]}")
@pytest.mark.parametrize("isa", ISAS)
def test_two_pass_fastscan_is_as_precise_as_16_bit_tables(case, isa):
    """The second pass looks up what the uint8 tables' rounding left out, in steps of 1/255 of
    theirs: the bound shrinks 255-fold (all pixels of a band share the step in both passes)."""
    dense_kernels.set_isa(isa)
    layer = make_layer(*case[:-1])
    x = inputs(case)
    exact = K.PreparedPQ(layer, "exact")(x)
    one = np.abs(K.PreparedPQ(layer, "fastscan")(x) - exact).max()
    two = np.abs(K.PreparedPQ(layer, "fastscan2")(x) - exact).max()
    assert two <= (fastscan_bound(layer, x) - 1e-4) / 255 + 1e-4, two
    assert 0 < two < one / 50, (one, two)


@pytest.mark.parametrize("kernel", K.IMPLS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}{c[1]}-{c[2]}k{c[3]}")
def test_simd_variants_equal_the_scalar_reference_bit_for_bit(case, kernel):
    layer = make_layer(*case[:-1])
    if kernel in K.FASTSCAN and layer.ksub > 16:
        pytest.skip("fast-scan needs K <= 16")
    x = inputs(case)
    outs = {}
    for isa in ISAS:
        dense_kernels.set_isa(isa)
        outs[isa] = K.PreparedPQ(layer, kernel)(x)
    for isa in ISAS[1:]:
        np.testing.assert_array_equal(outs[isa], outs["scalar"], err_msg=isa)


@pytest.mark.parametrize("case", [c for c in CASES if c[5] <= 16], ids=lambda c: f"{c[0]}{c[1]}-{c[2]}k{c[3]}")
@pytest.mark.parametrize("isa", ISAS)
def test_every_fastscan_code_layout_agrees(case, isa):
    dense_kernels.set_isa(isa)
    layer = make_layer(*case[:-1])
    x = inputs(case)
    prepared = K.PreparedPQ(layer, "fastscan")
    first = prepared(x)
    for layout in K.LAYOUTS:
        prepared.pack_codes(layout)
        np.testing.assert_array_equal(prepared(x), first, err_msg=layout)


@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("stride,pads", [(1, (1, 1, 1, 1)), (2, (0, 1, 1, 0)), (1, (0, 0, 2, 0))])
def test_dot_layout_pixel_pairs_at_every_border(width, stride, pads):
    """The VNNI kernel runs neighbouring outputs with whole windows in pairs, the others alone: every
    mix of the two along a row (odd widths, windows leaving the image left or right) equals the
    vpshufb layout exactly."""
    layer = make_layer("conv", 8, 40, 3, 2, 16, 1, (stride, stride), pads)
    x = np.random.default_rng(width).standard_normal((1, 3, width + 2, 8)).astype(np.float32)
    prepared = K.PreparedPQ(layer, "fastscan")
    prepared.pack_codes("bytes")
    want = prepared(x)
    prepared.pack_codes("dot")
    np.testing.assert_array_equal(prepared(x), want)


def test_fastscan_repacks_its_codes_when_the_simd_variant_changes():
    layer = make_layer("conv", 16, 40, 3, 4, 16, 1, (1, 1), "same")
    prepared = K.PreparedPQ(layer, "fastscan")
    x = np.random.default_rng(1).standard_normal((1, 5, 5, 16)).astype(np.float32)
    for isa in ISAS:
        dense_kernels.set_isa(isa)
        prepared(x)
        assert prepared.layout == ("dot" if isa in ("avx512vnni", "neondot") else "bytes")
    assert K.PreparedPQ(make_layer("fc", 16, 40, 1, 4, 16, 1, (1, 1), (0, 0, 0, 0)), "fastscan").layout == "nibbles"
    with pytest.raises(ValueError, match="unknown fast-scan layout"):
        prepared.pack_codes("packed")


def test_row_bands_give_the_same_result(monkeypatch):
    case = ("conv", 12, 64, 3, 4, 16, 2, (2, 2), "same", (17, 11))
    layer = make_layer(*case[:-1])
    x = inputs(case)
    whole = {k: K.PreparedPQ(layer, k)(x) for k in K.IMPLS}
    monkeypatch.setattr(K, "TABLE_BUDGET_BYTES", 1)        # one output row per band
    np.testing.assert_array_equal(K.PreparedPQ(layer, "exact")(x), whole["exact"])
    banded = K.PreparedPQ(layer, "fastscan")(x)          # bands may pick their own shared scale
    assert np.abs(banded - whole["exact"]).max() <= fastscan_bound(layer, x)


def test_validation_before_c():
    layer = make_layer("conv", 8, 16, 3, 2, 16, 1, (1, 1), "same")
    with pytest.raises(ValueError, match="input channels"):
        K.PreparedPQ(layer)(np.zeros((1, 5, 5, 7), np.float32))
    layer.codes[0, 0, 0, 0] = 16                            # corrupted after construction
    with pytest.raises(ValueError, match="code is >= K"):
        K.PreparedPQ(layer)
    big = make_layer("fc", 8, 4, 1, 2, 64, 1, (1, 1), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="K <= 16"):
        K.PreparedPQ(big, "fastscan")
    with pytest.raises(ValueError, match="unknown PQ kernel"):
        K.PreparedPQ(big, "magic")


def test_engine_retargets_graphs_and_auto_without_a_plan_keeps_the_model():
    from qcnn.graph import Graph, Node
    from qcnn.pq import engine
    conv = make_layer("conv", 3, 64, 3, 2, 16, 1, (1, 1), "same")
    fc = make_layer("fc", 9 * 9 * 64, 10, 1, 4, 64, 1, (1, 1), (0, 0, 0, 0))
    graph = Graph([Node("conv", conv, ("input",)), Node("fc", fc, ("conv",))])
    x = inputs(("conv", 3, 0, 0, 0, 0, 0, 0, 0, (9, 9)))
    want = graph.forward(x)                                   # numpy reference
    for kernel, impls in (("exact", ("exact", "exact")), ("fastscan", ("fastscan", "exact")),
                          ("fastscan2", ("fastscan2", "exact")),
                          ("reconstructed", ("reconstructed", "reconstructed"))):
        g = engine.with_kernel(graph, kernel)
        assert tuple(engine.kernel_map(g).values()) == impls
        tol = 5e-2 if kernel == "fastscan" else 1e-4          # uint8 tables, amplified by the FC
        np.testing.assert_allclose(g.forward(x), want, rtol=tol, atol=tol * np.abs(want).max())
    # "auto" without a kernel plan (tests/test_kernel_plan.py) runs the lossless exact lookups
    auto = engine.with_kernel(graph, "auto", (9, 9))
    assert engine.kernel_map(auto) == {"conv": "exact", "fc": "exact"}
    np.testing.assert_allclose(auto.forward(x), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert engine.kernel_map(graph) == {"conv": "reference", "fc": "reference"}    # the input is untouched
    with pytest.raises(ValueError, match="unknown kernel"):
        engine.with_kernel(graph, "gpu")
