"""Validated Python entry points to the C kernels (qcnn/csrc, built with cffi).

The C side trusts its arguments, so every dtype, shape, contiguity and index is checked here
before the call; cffi releases the GIL for the duration of each call."""
from __future__ import annotations

import numpy as np

from ._kernels import ffi, lib

ISA_NAMES = {0: "scalar", 1: "avx2"}
_ACT = {None: 0, "relu": 1, "relu6": 2}


def isa() -> str:
    return ISA_NAMES[lib.qc_isa()]


def set_isa(name: str) -> str:
    """Force a SIMD variant ("scalar" or "avx2"); capped at what the CPU supports."""
    code = {v: k for k, v in ISA_NAMES.items()}[name]
    return ISA_NAMES[lib.qc_set_isa(code)]


def _f32(a: np.ndarray, shape: tuple, what: str) -> np.ndarray:
    if a.dtype != np.float32 or a.shape != shape or not a.flags.c_contiguous:
        raise ValueError(f"{what}: need C-contiguous float32 {shape}, got {a.dtype} {a.shape}")
    return a


def _ptr(a: np.ndarray | None, ctype: str = "float *"):
    return ffi.NULL if a is None else ffi.cast(ctype, a.ctypes.data)


def depthwise(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: tuple[int, int],
              pads: tuple[int, int, int, int], out_hw: tuple[int, int], activation: str | None) -> np.ndarray:
    """NHWC depthwise convolution; weight (KH, KW, C)."""
    n, h, w, c = x.shape
    kh, kw = weight.shape[:2]
    sh, sw = stride
    oh, ow = out_hw
    top, bottom, left, right = pads
    _f32(x, (n, h, w, c), "depthwise input")
    _f32(weight, (kh, kw, c), "depthwise weight")
    if bias is not None:
        _f32(bias, (c,), "depthwise bias")
    if min(sh, sw, kh, kw, oh, ow) < 1 or min(pads) < 0:
        raise ValueError("depthwise: bad geometry")
    # Every tap the kernel may touch must lie inside the padded input.
    if (oh - 1) * sh + kh > h + top + bottom or (ow - 1) * sw + kw > w + left + right:
        raise ValueError("depthwise: output size does not fit the padded input")
    y = np.empty((n, oh, ow, c), np.float32)
    lib.qc_depthwise_f32(_ptr(x), n, h, w, c, _ptr(weight), _ptr(bias), kh, kw, sh, sw, top, left,
                         _ptr(y), oh, ow, _ACT[activation])
    return y
