"""The element-wise activation kernels (qcnn/csrc/elementwise.c): every SIMD variant against the
scalar reference at every tail length, the reference against double precision, in place."""
import math

import numpy as np

from qcnn import kernels
from qcnn import layers as L

RNG = np.random.default_rng(3)


def test_unary_kernels_every_isa():
    x = np.concatenate([np.linspace(-30, 30, 2001), [0.0, -0.0, 1e-30, -1e-30, 88, -88, 100, -100]]).astype(np.float32)
    start = kernels.isa()
    try:
        for kind in kernels.UNARY_KINDS:
            kernels.set_isa("scalar")
            ref = kernels.unary(x, kind, 0.2, 0.5)
            for isa in ("avx2", "avx512"):
                if kernels.set_isa(isa) != isa:
                    continue
                for n in (1, 7, 8, 15, 16, 17, len(x)):   # every tail length of both vector widths
                    got = kernels.unary(x[:n].copy(), kind, 0.2, 0.5)
                    tol = 3e-7 if kind in ("erf", "gelu") else 1e-7
                    assert np.allclose(got, ref[:n], rtol=2e-6, atol=tol), (kind, isa, n)
                inplace = x.copy()
                assert kernels.unary(inplace, kind, 0.2, 0.5, out=inplace) is inplace
                assert np.allclose(inplace, ref, rtol=2e-6, atol=3e-7)
    finally:
        kernels.set_isa(start)
    scalar = {"sigmoid": lambda v: 1 / (1 + math.exp(-v)), "tanh": math.tanh, "erf": math.erf,
              "gelu": lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2)))}
    for kind, f in scalar.items():   # the reference itself against double precision
        kernels.set_isa("scalar")
        got = kernels.unary(x[:2001], kind)
        kernels.set_isa(start)
        want = np.array([f(float(v)) for v in x[:2001]])
        assert np.allclose(got, want, rtol=1e-6, atol=1e-7), kind


def test_unary_layer_in_place_only_when_allowed():
    x = RNG.standard_normal((1, 4, 4, 8)).astype(np.float32)
    keep = x.copy()
    L.Unary("silu")(x)
    assert np.array_equal(x, keep)
    y = L.Unary("silu", inplace=True)(x)
    assert y is x and not np.array_equal(x, keep)



def test_channel_affine_every_isa_bit_exact():
    start = kernels.isa()
    try:
        for c in (1, 7, 8, 15, 16, 17, 40):
            x = RNG.standard_normal((3, 5, c)).astype(np.float32) * 5
            scale, shift = RNG.standard_normal(c).astype(np.float32), RNG.standard_normal(c).astype(np.float32)
            for act, f in ((None, lambda v: v), ("relu", lambda v: np.maximum(v, 0)), ("relu6", lambda v: np.clip(v, 0, 6))):
                kernels.set_isa("scalar")
                ref = kernels.affine(x, scale, shift, act)
                assert np.allclose(ref, f(x * scale + shift), atol=1e-6)
                for isa in ("avx2", "avx512"):
                    if kernels.set_isa(isa) == isa:
                        assert np.array_equal(kernels.affine(x, scale, shift, act), ref), (c, act, isa)
                        y = x.copy()
                        assert kernels.affine(y, scale, shift, act, out=y) is y and np.array_equal(y, ref)
    finally:
        kernels.set_isa(start)
