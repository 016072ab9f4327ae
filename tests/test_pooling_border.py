"""Pooling at the borders: average pooling's divisor with count_include_pad both ways, ceil mode's
overhanging last window, asymmetric pads, kernels and strides that differ per axis.

Three implementations against one independent definition written out pixel by pixel below: the
C kernel under every ISA variant this CPU runs, the numpy path of layers.Pool2D (float64 input),
and onnxruntime's MaxPool/AveragePool on the exported graph.
"""
from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcnn import kernels as K
from qcnn import layers as L
from qcnn.graph import Graph, Node

VARIANTS = [v for v in ("scalar", "avx2", "avx512", "avx512vnni")
            if K.ISA_NAMES[min({n: k for k, n in K.ISA_NAMES.items()}.get(v, 0), K.lib.qc_isa_best())] == v]


def _size(n: int, k: int, s: int, lo: int, hi: int, ceil: bool) -> int:
    """Output length: floor or ceil of the window positions; in ceil mode the last window must start
    inside the image or its leading padding (PyTorch's and ONNX's rule)."""
    span = n + lo + hi - k
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= n + lo:
        out -= 1
    return out


def reference(x, mode, kernel, stride, pads, ceil, include_pad):
    """Each output pixel from its own window, in float64.  The window starts at i*stride - top
    (rows; columns alike) and spans `kernel` rows.  Max: the largest of its pixels inside the
    image.  Average: their sum over a divisor that counts the window's pixels inside the image,
    plus, with count_include_pad, those in the declared padding -- never the part of a ceil-mode
    window that hangs past the padding."""
    n, h, w, c = x.shape
    (kh, kw), (sh, sw), (top, bottom, left, right) = kernel, stride, pads
    oh, ow = _size(h, kh, sh, top, bottom, ceil), _size(w, kw, sw, left, right, ceil)
    y = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            rows = [r for r in range(i * sh - top, i * sh - top + kh)]
            cols = [q for q in range(j * sw - left, j * sw - left + kw)]
            inside = [(r, q) for r in rows for q in cols if 0 <= r < h and 0 <= q < w]
            if mode == "max":
                y[:, i, j] = np.max([x[:, r, q] for r, q in inside], axis=0) if inside else -np.inf
                continue
            if include_pad:
                divisor = (sum(1 for r in rows if -top <= r < h + bottom)
                           * sum(1 for q in cols if -left <= q < w + right))
            else:
                divisor = len(inside)
            total = np.sum([x[:, r, q] for r, q in inside], axis=0, dtype=np.float64) if inside else 0.0
            y[:, i, j] = total / divisor if divisor else 0.0
    return y


def _check(x, mode, kernel, stride, pads, ceil, include):
    want = reference(x.astype(np.float64), mode, kernel, stride, pads, ceil, include)
    layer = L.Pool2D(mode, kernel, stride, pads, ceil, include)
    numpy_path = layer(x.astype(np.float64))
    assert numpy_path.shape == want.shape
    np.testing.assert_allclose(numpy_path, want, rtol=1e-6, atol=1e-7)    # its divisors are float32
    before = K.isa()
    try:
        for variant in VARIANTS:
            K.set_isa(variant)
            got = layer(x)
            assert got.dtype == np.float32 and got.shape == want.shape, variant
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=variant)
    finally:
        K.set_isa(before)


@pytest.mark.parametrize("ceil", [False, True])
@pytest.mark.parametrize("include", [False, True])
@pytest.mark.parametrize("pads", [(1, 1, 1, 1), (1, 0, 2, 1), (0, 2, 0, 0), (2, 2, 1, 0)])
def test_average_divisor_at_every_border(ceil, include, pads):
    """Ones in, so each output is exactly its divisor's share: 1 where only image pixels count,
    (pixels inside / pixels counted) at a padded border."""
    x = np.ones((1, 7, 6, 3), np.float32)
    want = reference(x.astype(np.float64), "avg", (3, 3), (2, 2), pads, ceil, include)
    if not include:
        np.testing.assert_allclose(want, 1.0)             # the divisor is the pixels it averages
    else:
        assert want.min() < 1.0                           # padding counted at some border
    _check(x, "avg", (3, 3), (2, 2), pads, ceil, include)


def test_the_divisor_by_hand():
    """A 3x3 window, stride 2, pads 1, on a 4x4 image of ones: the corner window holds 4 image
    pixels of the 9 it covers with padding -> 4/9 with count_include_pad, 1 without.  With pads
    only at the top and left (ceil mode), the window beside it covers 2 image rows and 1 padding
    row -> 6/9.  With no padding, ceil mode adds windows hanging a row and a column past the
    image: 2x2 image pixels, and the overhang never counts -> 1, not 4/9."""
    x = np.ones((1, 4, 4, 1), np.float32)
    inc = L.Pool2D("avg", (3, 3), (2, 2), (1, 1, 1, 1), False, True)(x)
    exc = L.Pool2D("avg", (3, 3), (2, 2), (1, 1, 1, 1), False, False)(x)
    assert inc[0, 0, 0, 0] == pytest.approx(4 / 9) and exc[0, 0, 0, 0] == pytest.approx(1.0)
    ceil = L.Pool2D("avg", (3, 3), (2, 2), (1, 0, 1, 0), True, True)(x)
    assert ceil.shape == (1, 2, 2, 1)
    assert ceil[0, 1, 1, 0] == pytest.approx(1.0)          # rows 1..3, cols 1..3: all image pixels
    assert ceil[0, 0, 1, 0] == pytest.approx(6 / 9)        # top row of padding counted: 2 of 3 rows
    assert ceil[0, 0, 0, 0] == pytest.approx(4 / 9)
    odd = L.Pool2D("avg", (3, 3), (2, 2), (0, 0, 0, 0), True, True)(np.ones((1, 4, 4, 1), np.float32))
    assert odd.shape == (1, 2, 2, 1) and odd[0, 1, 1, 0] == pytest.approx(1.0)   # 2x2 pixels, 2x2 counted


@settings(max_examples=int(os.environ.get("QCNN_FUZZ_EXAMPLES", 150)), deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), kh=st.integers(1, 5), kw=st.integers(1, 5),
       sh=st.integers(1, 4), sw=st.integers(1, 4), pads=st.tuples(*[st.integers(0, 4)] * 4),
       mode=st.sampled_from(["max", "avg"]), ceil=st.booleans(), include=st.booleans(), c=st.integers(1, 19))
def test_random_geometry_matches_the_definition(h, w, kh, kw, sh, sw, pads, mode, ceil, include, c):
    top, bottom, left, right = pads
    pads = (min(top, kh - 1), min(bottom, kh - 1), min(left, kw - 1), min(right, kw - 1))   # pad < window
    if _size(h, kh, sh, pads[0], pads[1], ceil) < 1 or _size(w, kw, sw, pads[2], pads[3], ceil) < 1:
        return
    x = np.random.default_rng(h * 131 + w).standard_normal((2, h, w, c)).astype(np.float32)
    _check(x, mode, (kh, kw), (sh, sw), pads, ceil, include)


# --------------------------------------------------------------------------- onnxruntime

def _ort_cases():
    rng = np.random.default_rng(11)
    grid = list(itertools.product([(5, 7), (6, 6), (7, 5), (9, 8)], [(3, 3), (3, 2), (2, 3), (4, 4)],
                                  [(2, 2), (2, 1), (1, 2), (3, 3)], [(0, 0, 0, 0), (1, 1, 1, 1), (1, 0, 0, 1),
                                                                     (0, 1, 1, 0), (1, 2, 0, 1)],
                                  ["max", "avg"], [False, True], [False, True]))
    picks = rng.choice(len(grid), 60, replace=False)
    cases = [grid[i] for i in picks]
    # and the four corners of (ceil mode, count_include_pad) on one asymmetric case, for certain
    cases += [((9, 8), (3, 3), (2, 2), (1, 2, 0, 1), "avg", ceil, inc) for ceil in (False, True) for inc in (False, True)]
    return [c for c in cases if c[4] == "avg" or not c[6]]          # count_include_pad means nothing to max


@pytest.mark.parametrize("case", _ort_cases(), ids=lambda c: "-".join(map(str, c)).replace(" ", ""))
def test_matches_onnxruntime(case):
    from test_reference_onnxruntime import ort_run, ort_session
    hw, kernel, stride, pads, mode, ceil, include = case
    pads = (min(pads[0], kernel[0] - 1), min(pads[1], kernel[0] - 1), min(pads[2], kernel[1] - 1),
            min(pads[3], kernel[1] - 1))
    layer = L.Pool2D(mode, kernel, stride, pads, ceil, include)
    graph = Graph([Node("pool", layer, ("input",))])
    x = np.random.default_rng(3).standard_normal((2, *hw, 4)).astype(np.float32)
    ref = ort_run(ort_session(graph, hw, channels=4), x)
    ours = graph(x)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ref, reference(x.astype(np.float64), mode, kernel, stride, pads, ceil, include),
                               rtol=1e-5, atol=1e-6)
