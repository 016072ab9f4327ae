"""Validated Python entry points to the C kernels (qcnn/csrc, built with cffi).

The C side trusts its arguments, so every dtype, shape, stride and index is checked here
before the call; cffi releases the GIL for the duration of each call."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._kernels import ffi, lib

ISA_NAMES = {0: "scalar", 1: "avx2", 2: "avx512", 3: "avx512vnni", 4: "neon", 5: "neondot"}   # qcnn.h
_ACT = {None: 0, "relu": 1, "relu6": 2}
PANEL = lib.qc_pw_panel()      # output channels per packed weight panel
_INT_MAX = 2**31 - 1
_F32 = np.dtype(np.float32)    # comparing with a dtype object is cheaper than with np.float32


ISA_ENV = "QCNN_ISA"           # caps the variants (isa.c): measure the AVX2 paths on an AVX-512 machine


def _check_isa_env() -> None:
    import os
    cap = os.environ.get(ISA_ENV, "")
    if cap and cap not in ISA_NAMES.values():
        raise ValueError(f"{ISA_ENV}={cap!r}: unknown instruction set; use one of {', '.join(ISA_NAMES.values())}")


_check_isa_env()


def isa() -> str:
    """The SIMD variant in use."""
    return ISA_NAMES[lib.qc_isa()]


#: This build of the C kernels (a digest of their sources and flags, qcnn/_build_kernels.py): kernel
#: plans are timings of one build.
BUILD = ffi.string(lib.qc_kernels_digest()).decode()


def best_isa() -> str:
    """The best variant set_isa can select: the CPU's, capped by $QCNN_ISA."""
    return ISA_NAMES[lib.qc_isa_cap()]


def cpu_isa() -> str:
    """The best variant this CPU supports, whatever $QCNN_ISA says."""
    return ISA_NAMES[lib.qc_isa_best()]


def cap_cpuid(name: str) -> bool:
    """From now on, what CPUID tells the other libraries of this process stops at level `name`
    (qcnn/csrc/cpuid_cap.c): libraries that load later and choose their kernels from CPUID (the
    peers of `qcnn bench`) run that level's code.  False where it cannot be done (not Linux x86-64,
    or a CPU without CPUID faulting); our own kernels follow set_isa, not this."""
    return bool(lib.qc_cap_cpuid(_isa_code(name)))


def set_isa(name: str) -> str:
    """Force a SIMD variant ("scalar", "avx2", "avx512", "avx512vnni" on x86; "neon", "neondot" on 64-bit
    ARM); capped at best_isa(), and scalar for the other architecture's names."""
    return ISA_NAMES[lib.qc_set_isa(_isa_code(name))]


def _isa_code(name: str) -> int:
    codes = {v: k for k, v in ISA_NAMES.items()}
    if name not in codes:
        raise ValueError(f"unknown instruction set {name!r}; use one of {', '.join(codes)}")
    return codes[name]


def _f32(a: np.ndarray, shape: tuple, what: str) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype != _F32 or a.shape != shape or not a.flags.c_contiguous:
        got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
        raise ValueError(f"{what}: need C-contiguous float32 {shape}, got {got}")
    return a


def _rows(a: np.ndarray, shape: tuple, what: str, writeable: bool = False) -> int:
    """Check a 2-D float32 matrix whose rows may be spaced out (a column slice of a wider one);
    returns the row pitch in floats."""
    if not isinstance(a, np.ndarray) or a.dtype != _F32 or a.shape != shape:
        got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
        raise ValueError(f"{what}: need float32 {shape}, got {got}")
    rs, cs = a.strides
    if shape[0] <= 1 and cs == 4:  # a single row: its pitch is never used (and numpy may report any)
        rs = 4 * shape[1]
    if cs != 4 or rs % 4 or rs < 4 * shape[1]:
        raise ValueError(f"{what}: rows must be unit-stride float32 rows, at least a row apart (strides {a.strides})")
    if writeable and not a.flags.writeable:
        raise ValueError(f"{what}: not writeable")
    if rs // 4 > _INT_MAX or shape[0] > _INT_MAX:
        raise ValueError(f"{what}: too large")
    return rs // 4


_ARRAY_TYPES = {"float *": "float[]", "uint8_t *": "uint8_t[]", "uint16_t *": "uint16_t[]"}


def _ptr(a: np.ndarray | None, ctype: str = "float *"):
    # from_buffer is several times cheaper than a.ctypes.data (which builds a ctypes object), and
    # this runs a few times per layer; it needs a contiguous buffer, so spaced-out rows (a column
    # slice) take the slower road.
    if a is None:
        return ffi.NULL
    if a.flags.c_contiguous:
        return ffi.from_buffer(_ARRAY_TYPES[ctype], a)
    return ffi.cast(ctype, a.ctypes.data)


def _address(a: np.ndarray) -> int:
    return int(ffi.cast("uintptr_t", ffi.from_buffer(a)))


def empty_aligned(shape: tuple, align: int = 64, dtype=np.float32) -> np.ndarray:
    """Uninitialised array starting on a cache-line boundary.  np.empty puts large arrays 16 or 32
    bytes past one, so every 64-byte vector load or store of a kernel would straddle two lines
    (measured: a 1x1 convolution 12544x16 -> 96 takes 40% longer on such an output; fast-scan
    lookups and tables on AlexNet's conv layers 20-30% longer on such codes and tables)."""
    count = 1
    for d in shape:
        count *= d
    size = np.dtype(dtype).itemsize
    raw = np.empty(count + align // size, dtype)
    skip = (-_address(raw) % align) // size
    return raw[skip:skip + count].reshape(shape)


def _aligned_zeros(count: int) -> np.ndarray:
    a = empty_aligned((count,))
    a.fill(0)
    return a


def _window_fits(h, w, kh, kw, sh, sw, pads, oh, ow, what):
    top, bottom, left, right = pads
    if min(sh, sw, kh, kw, oh, ow) < 1 or min(pads) < 0:
        raise ValueError(f"{what}: bad geometry")
    # Every tap the kernel may touch must lie inside the padded input.
    if (oh - 1) * sh + kh > h + top + bottom or (ow - 1) * sw + kw > w + left + right:
        raise ValueError(f"{what}: output size does not fit the padded input")


def depthwise(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: tuple[int, int],
              pads: tuple[int, int, int, int], out_hw: tuple[int, int], activation: str | None) -> np.ndarray:
    """NHWC depthwise convolution; weight (KH, KW, C)."""
    if not isinstance(x, np.ndarray) or x.ndim != 4 or not isinstance(weight, np.ndarray) or weight.ndim != 3:
        raise ValueError("depthwise: need a (N, H, W, C) input and (KH, KW, C) weights")
    n, h, w, c = x.shape
    kh, kw = weight.shape[:2]
    sh, sw = stride
    oh, ow = out_hw
    _f32(x, (n, h, w, c), "depthwise input")
    _f32(weight, (kh, kw, c), "depthwise weight")
    if bias is not None:
        _f32(bias, (c,), "depthwise bias")
    _window_fits(h, w, kh, kw, sh, sw, pads, oh, ow, "depthwise")
    y = empty_aligned((n, oh, ow, c))
    lib.qc_depthwise_f32(_ptr(x), n, h, w, c, _ptr(weight), _ptr(bias), kh, kw, sh, sw, pads[0], pads[2],
                         _ptr(y), oh, ow, _ACT[activation])
    return y


@dataclass(frozen=True, eq=False)
class PackedWeights:
    """A (K, N) GEMM operand rearranged for the pointwise microkernels: panels of PANEL output
    channels, each K rows of PANEL floats (zero past column N), cache-line aligned."""

    data: np.ndarray   # (ceil(N / PANEL), K, PANEL)
    k: int
    n: int


# Which GEMM runs a convolution.  Measured single-threaded with bias and activation included, the
# packed C kernel beat OpenBLAS on every convolution of Lite0 and AlexNet (K*N up to 0.9 M,
# AlexNet's conv3, by 5-70%); BLAS only wins on matrix-vector-like products with huge weight
# matrices (AlexNet's FC layers, K*N >= 16 M: the time goes into streaming the weights, where its
# GEMV path is better).  So: BLAS when the weights exceed 4 M floats (16 MB), our kernel otherwise
# -- as long as a SIMD variant runs (see has_simd).
BLAS_MIN_WEIGHTS = 1 << 22


def gemm_prefers_blas(k: int, n: int) -> bool:
    """True if a (K, N) weight matrix should go through numpy/BLAS rather than `pointwise`."""
    return k * n >= BLAS_MIN_WEIGHTS


def has_simd() -> bool:
    """Whether a SIMD variant runs.  Without one (non-x86, or QCNN_DISABLE_SIMD=1) the layers send
    their GEMMs to BLAS, which then beats our plain-C reference by an order of magnitude."""
    return lib.qc_isa() != 0


def pack_weights(b: np.ndarray) -> PackedWeights:
    """Pack a (K, N) weight matrix once, when the layer is built."""
    b = np.asarray(b, dtype=np.float32)
    if b.ndim != 2 or min(b.shape) < 1 or max(b.shape) > _INT_MAX:
        raise ValueError(f"pack_weights: need a non-empty (K, N) matrix, got {b.shape}")
    k, n = b.shape
    panels = -(-n // PANEL)
    data = _aligned_zeros(panels * k * PANEL).reshape(panels, k, PANEL)
    padded = np.zeros((k, panels * PANEL), np.float32)
    padded[:, :n] = b
    data[...] = padded.reshape(k, panels, PANEL).transpose(1, 0, 2)
    return PackedWeights(data, k, n)


def pointwise(a: np.ndarray, packed: PackedWeights, bias: np.ndarray | None = None, activation: str | None = None,
              out: np.ndarray | None = None) -> np.ndarray:
    """act(a @ B + bias) for a (M, K) matrix (rows may be spaced out) and packed (K, N) weights B;
    writes into `out` (M, N) — possibly a column slice of a wider matrix — or a new array."""
    if not isinstance(packed, PackedWeights):
        raise ValueError("pointwise: weights must come from pack_weights")
    k, n = packed.k, packed.n
    _f32(packed.data, (-(-n // PANEL), k, PANEL), "pointwise packed weights")
    if not isinstance(a, np.ndarray) or a.ndim != 2:
        raise ValueError("pointwise: input must be a 2-D array")
    m = a.shape[0]
    lda = _rows(a, (m, k), "pointwise input")
    if out is None:
        out = empty_aligned((m, n))
        ldc = n
    else:
        ldc = _rows(out, (m, n), "pointwise output", writeable=True)
        if m and np.may_share_memory(a, out):
            raise ValueError("pointwise: output overlaps the input")
    if bias is not None:
        _f32(bias, (n,), "pointwise bias")
    if activation not in _ACT:
        raise ValueError(f"pointwise: unknown activation {activation!r}")
    lib.qc_pointwise_f32(_ptr(a), m, k, lda, _ptr(packed.data), n, _ptr(bias), _ptr(out), ldc, _ACT[activation])
    return out


class PointwiseOp:
    """`pointwise(a, packed, bias, activation)` for C-contiguous (M, K) inputs into a new array,
    with the weights, bias and activation checked once: a layer calls it every forward, and the
    checks and pointer conversions of `pointwise` cost about as much as a small layer's product
    (16 us a call, 50 calls per Lite0 forward).  The input is still checked on every call."""

    __slots__ = ("k", "n", "_keep", "_b", "_bias", "_act")

    def __init__(self, packed: PackedWeights, bias: np.ndarray | None = None, activation: str | None = None):
        if not isinstance(packed, PackedWeights):
            raise ValueError("pointwise: weights must come from pack_weights")
        _f32(packed.data, (-(-packed.n // PANEL), packed.k, PANEL), "pointwise packed weights")
        if bias is not None:
            _f32(bias, (packed.n,), "pointwise bias")
        if activation not in _ACT:
            raise ValueError(f"pointwise: unknown activation {activation!r}")
        self.k, self.n = packed.k, packed.n
        self._keep = (packed, bias)          # the pointers below borrow their buffers
        self._b, self._bias, self._act = _ptr(packed.data), _ptr(bias), _ACT[activation]

    def __call__(self, a: np.ndarray) -> np.ndarray:
        if (type(a) is not np.ndarray or a.ndim != 2 or a.dtype != _F32 or a.shape[1] != self.k
                or not a.flags.c_contiguous or a.shape[0] > _INT_MAX):
            got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            raise ValueError(f"pointwise: need a C-contiguous float32 (M, {self.k}) input, got {got}")
        m, n = a.shape[0], self.n
        out = empty_aligned((m, n))
        lib.qc_pointwise_f32(_ptr(a), m, self.k, self.k, self._b, n, self._bias, _ptr(out), n, self._act)
        return out


class DepthwiseOp:
    """`depthwise(x, weight, bias, stride, pads, out_hw, activation)` for inputs of one shape, all
    checked once (see PointwiseOp); each call checks only that the input is that array shape."""

    __slots__ = ("shape", "out_shape", "_keep", "_args", "_args_tail")

    def __init__(self, shape: tuple, weight: np.ndarray, bias: np.ndarray | None, stride: tuple[int, int],
                 pads: tuple[int, int, int, int], out_hw: tuple[int, int], activation: str | None):
        if len(shape) != 4 or not isinstance(weight, np.ndarray) or weight.ndim != 3:
            raise ValueError("depthwise: need a (N, H, W, C) input and (KH, KW, C) weights")
        n, h, w, c = (int(d) for d in shape)
        kh, kw = weight.shape[:2]
        sh, sw = stride
        oh, ow = out_hw
        _f32(weight, (kh, kw, c), "depthwise weight")
        if bias is not None:
            _f32(bias, (c,), "depthwise bias")
        _window_fits(h, w, kh, kw, sh, sw, pads, oh, ow, "depthwise")
        if activation not in _ACT:
            raise ValueError(f"depthwise: unknown activation {activation!r}")
        if max(n * h * w * c, n * oh * ow * c) > 2**62:
            raise ValueError("depthwise: too large")
        self.shape, self.out_shape = (n, h, w, c), (n, oh, ow, c)
        self._keep = (weight, bias)
        self._args = (n, h, w, c, _ptr(weight), _ptr(bias), kh, kw, sh, sw, pads[0], pads[2])
        self._args_tail = (oh, ow, _ACT[activation])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if type(x) is not np.ndarray or x.shape != self.shape or x.dtype != _F32 or not x.flags.c_contiguous:
            got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
            raise ValueError(f"depthwise: need a C-contiguous float32 {self.shape} input, got {got}")
        y = empty_aligned(self.out_shape)
        lib.qc_depthwise_f32(_ptr(x), *self._args, _ptr(y), *self._args_tail)
        return y


def _conv_output(xp, m, cout, out, bias, activation, what):
    """A convolution's (m, cout) output -- `out` checked, or a new array -- and its row pitch,
    with the bias and activation checked too."""
    if out is None:
        out, ldy = empty_aligned((m, cout)), cout
    else:
        ldy = _rows(out, (m, cout), f"{what} output", writeable=True)
        if np.may_share_memory(xp, out):
            raise ValueError(f"{what}: output overlaps the input")
    if bias is not None:
        _f32(bias, (cout,), f"{what} bias")
    if activation not in _ACT:
        raise ValueError(f"{what}: unknown activation {activation!r}")
    return out, ldy


def _padded_input(xp, channels, kernel, stride, out_hw, what: str):
    """(n, hp, wp, c, c0, cc) of an already padded NHWC float32 input whose input-channel range
    [c0, c0 + cc) (`channels`, default all) and windows the C convolutions may read."""
    if not isinstance(xp, np.ndarray) or xp.ndim != 4:
        raise ValueError(f"{what}: need a (N, H, W, C) input")
    n, hp, wp, c = xp.shape
    _f32(xp, (n, hp, wp, c), f"{what} input")
    c0, cc = channels if channels is not None else (0, c)
    if c0 < 0 or cc < 1 or c0 + cc > c:
        raise ValueError(f"{what}: channel range [{c0}, {c0 + cc}) outside 0..{c}")
    _window_fits(hp, wp, *kernel, *stride, (0, 0, 0, 0), *out_hw, what)
    return n, hp, wp, c, c0, cc


def conv_gemm(xp: np.ndarray, packed: PackedWeights, kernel: tuple[int, int], stride: tuple[int, int],
              out_hw: tuple[int, int], bias: np.ndarray | None = None, activation: str | None = None,
              channels: tuple[int, int] | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Convolution of an already padded NHWC input `xp` as an implicit GEMM (no im2col copy):
    act(patches @ B + bias) with B packed from the (KH*KW*CC, N) weights of input channels
    [c0, c0 + cc) (`channels`, default all), taps in (i, j, channel) order.  Writes the
    (N*OH*OW, N) result into `out` (possibly a column slice) or a new array."""
    if not isinstance(packed, PackedWeights):
        raise ValueError("conv_gemm: weights must come from pack_weights")
    kh, kw = kernel
    sh, sw = stride
    oh, ow = out_hw
    n, hp, wp, c, c0, cc = _padded_input(xp, channels, kernel, stride, out_hw, "conv_gemm")
    if packed.k != kh * kw * cc:
        raise ValueError(f"conv_gemm: weights have K = {packed.k}, the patches {kh * kw * cc}")
    _f32(packed.data, (-(-packed.n // PANEL), packed.k, PANEL), "conv_gemm packed weights")
    if hp * wp * c > _INT_MAX or n * oh * ow > _INT_MAX:  # offsets and row counts are C ints
        raise ValueError("conv_gemm: input too large")
    out, ldy = _conv_output(xp, n * oh * ow, packed.n, out, bias, activation, "conv_gemm")
    cout = packed.n
    if lib.qc_conv_gemm_f32(_ptr(xp), n, hp, wp, c, c0, cc, kh, kw, sh, sw, _ptr(packed.data), cout, _ptr(bias),
                            _ptr(out), ldy, oh, ow, _ACT[activation]):
        raise MemoryError("conv_gemm: out of memory")
    return out


@dataclass(frozen=True, eq=False)
class WinogradWeights:
    """A 3x3 convolution's weights for Winograd's F(mt x mt, 3x3) (qcnn/csrc/winograd.c): the
    (mt + 2)^2 transformed (C_in, C_out) matrices U[e] = (G g G^T)[e], each packed as pack_weights
    packs."""

    data: np.ndarray   # ((mt + 2)^2, ceil(N / PANEL), K, PANEL)
    k: int
    n: int
    mt: int = 2        # output pixels per tile side


# G of F(2x2, 3x3) and F(4x4, 3x3) (Lavin & Gray 2016), by output tile side.
_WINOGRAD_G = {
    2: np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]),
    4: np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                 [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
}


def winograd_pays(cin: int, cout: int) -> bool:
    """Whether a 3x3 stride-1 convolution (per group) should run by Winograd: measured against the
    implicit GEMM, 2-2.2x faster from 64 channels in and out (AlexNet conv3-5, ResNet's 3x3
    layers, AVX2 and AVX-512), even with 16-32; equal or slower with fewer (the transforms cost
    per channel what 16 products per tile save)."""
    return cin >= 16 and cout >= 16


def winograd_tile(oh: int, ow: int) -> int:
    """The output tile side for a Winograd convolution with an oh x ow output: 4 (36 products per
    16 pixels, 2.25 per pixel instead of 4) from 28 x 28 on (ResNet's layer1-2), where there are
    enough tiles to amortise the 2.25x larger transformed weights; else 2.  (Measured against
    F(2x2) on ResNet-18's shapes, one thread: 56x56x64 1.62x faster at AVX2, 1.16x at AVX-512;
    28x28x128 1.43x and 1.46x; 14x14x256 0.93x and 0.92x: there the 36 GEMMs have 16 rows each
    and stream 9 MB of weights per layer.)"""
    return 4 if oh * ow >= 28 * 28 else 2


def winograd_weights(weight: np.ndarray, mt: int = 2) -> WinogradWeights:
    """Transform and pack (3, 3, C_in, C_out) weights once for F(mt x mt, 3x3), mt = 2 or 4."""
    weight = np.asarray(weight)
    if weight.ndim != 4 or weight.shape[:2] != (3, 3) or min(weight.shape) < 1 or max(weight.shape) > _INT_MAX:
        raise ValueError(f"winograd_weights: need (3, 3, C_in, C_out) weights, got {weight.shape}")
    if mt not in _WINOGRAD_G:
        raise ValueError(f"winograd_weights: tile side {mt!r}, not 2 or 4")
    g = _WINOGRAD_G[mt]
    ne = (mt + 2) ** 2
    k, n = weight.shape[2:]
    u = np.einsum("ai,ijkn,bj->abkn", g, weight.astype(np.float64), g).reshape(ne, k, n)
    data = empty_aligned((ne, -(-n // PANEL), k, PANEL))
    for e in range(ne):
        data[e] = pack_weights(u[e].astype(np.float32)).data
    return WinogradWeights(data, k, n, mt)


def winograd(xp: np.ndarray, weights: WinogradWeights, out_hw: tuple[int, int], bias: np.ndarray | None = None,
             activation: str | None = None, channels: tuple[int, int] | None = None,
             out: np.ndarray | None = None) -> np.ndarray:
    """A 3x3 stride-1 convolution of an already padded NHWC input by Winograd's F(mt x mt, 3x3)
    (mt of the weights); otherwise as conv_gemm (input channels [c0, c0 + cc), output into `out` or
    a new array)."""
    if not isinstance(weights, WinogradWeights):
        raise ValueError("winograd: weights must come from winograd_weights")
    oh, ow = out_hw
    n, hp, wp, c, c0, cc = _padded_input(xp, channels, (3, 3), (1, 1), out_hw, "winograd")
    if weights.k != cc:
        raise ValueError(f"winograd: weights have C_in = {weights.k}, the input range {cc}")
    _f32(weights.data, ((weights.mt + 2) ** 2, -(-weights.n // PANEL), weights.k, PANEL), "winograd weights")
    if hp * wp * c > _INT_MAX or n * oh * ow > _INT_MAX:
        raise ValueError("winograd: input too large")
    out, ldy = _conv_output(xp, n * oh * ow, weights.n, out, bias, activation, "winograd")
    cout = weights.n
    if lib.qc_winograd_f32(_ptr(xp), n, hp, wp, c, c0, cc, _ptr(weights.data), cout, _ptr(bias), _ptr(out), ldy,
                           oh, ow, _ACT[activation], weights.mt):
        raise MemoryError("winograd: out of memory")
    return out


def lrn(x: np.ndarray, size: int, alpha: float, beta: float, k: float) -> np.ndarray:
    """Cross-channel LRN over the last axis, as layers.LRN."""
    if not isinstance(x, np.ndarray) or x.ndim < 1 or x.shape[-1] < 1:
        raise ValueError("lrn: need an array with channels on the last axis")
    _f32(x, x.shape, "lrn input")
    if not 1 <= size <= _INT_MAX or x.shape[-1] > _INT_MAX:
        raise ValueError(f"lrn: bad size {size}")
    c = x.shape[-1]
    y = empty_aligned(x.shape)
    # alpha / size rounded once to float32, exactly as the numpy layer scales
    lib.qc_lrn_f32(_ptr(x), x.size // c, c, size, float(np.float32(alpha / size)), beta, k, _ptr(y))
    return y


def pool(x: np.ndarray, mode: str, kernel: tuple[int, int], stride: tuple[int, int],
         pads: tuple[int, int, int, int], out_hw: tuple[int, int], count_include_pad: bool = False) -> np.ndarray:
    """NHWC max ("max") or average ("avg") pooling with declared pads (top, bottom, left, right);
    windows past the padding (ceil mode) are clipped, as layers.Pool2D."""
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        raise ValueError("pool: need a (N, H, W, C) input")
    n, h, w, c = x.shape
    _f32(x, (n, h, w, c), "pool input")
    if mode not in ("max", "avg"):
        raise ValueError(f"pool: unknown mode {mode!r}")
    kh, kw = kernel
    sh, sw = stride
    oh, ow = out_hw
    if min(kh, kw, sh, sw, oh, ow) < 1 or min(pads) < 0:
        raise ValueError("pool: bad geometry")
    # The kernel clips every window to the image, so any output size is memory-safe; only keep
    # the window coordinates within C ints.
    if max(oh * sh + kh, ow * sw + kw) + max(h, w) + sum(pads) > _INT_MAX or n * h * w * c > 2**40:
        raise ValueError("pool: too large")
    y = empty_aligned((n, oh, ow, c))
    top, bottom, left, right = pads
    lib.qc_pool_f32(_ptr(x), n, h, w, c, kh, kw, sh, sw, top, bottom, left, right, int(mode == "avg"),
                    int(bool(count_include_pad)), _ptr(y), oh, ow)
    return y


UNARY_KINDS = {"sigmoid": 0, "silu": 1, "hardsigmoid": 2, "hardswish": 3, "tanh": 4, "gelu": 5, "leakyrelu": 6,
               "erf": 7, "elu": 8}


def unary(x: np.ndarray, kind: str, alpha: float = 0.0, beta: float = 0.0, out: np.ndarray | None = None) -> np.ndarray:
    """Element-wise activation (qcnn/csrc/elementwise.c) of a float32 array, into `out` (which may
    be `x` itself) or a new array of x's shape."""
    if kind not in UNARY_KINDS:
        raise ValueError(f"unary: unknown kind {kind!r}")
    if not isinstance(x, np.ndarray) or x.dtype != _F32 or not x.flags.c_contiguous:
        raise ValueError("unary: need a C-contiguous float32 array")
    if out is None:
        out = empty_aligned(x.shape)
    elif (not isinstance(out, np.ndarray) or out.dtype != _F32 or out.shape != x.shape or not out.flags.c_contiguous
          or not out.flags.writeable):
        raise ValueError("unary: out must be a writeable C-contiguous float32 array of the input's shape")
    if x.size:
        lib.qc_unary_f32(_ptr(x), _ptr(out), x.size, UNARY_KINDS[kind], float(alpha), float(beta))
    return out


def affine(x: np.ndarray, scale: np.ndarray, shift: np.ndarray, activation: str | None = None,
           out: np.ndarray | None = None) -> np.ndarray:
    """act(x * scale + shift) over the last axis of a float32 array (elementwise.c), into `out`
    (which may be `x`) or a new array."""
    if not isinstance(x, np.ndarray) or x.ndim < 1 or x.dtype != _F32 or not x.flags.c_contiguous:
        raise ValueError("affine: need a C-contiguous float32 array")
    c = x.shape[-1]
    _f32(scale, (c,), "affine scale")
    _f32(shift, (c,), "affine shift")
    if activation not in _ACT:
        raise ValueError(f"affine: unknown activation {activation!r}")
    if out is None:
        out = empty_aligned(x.shape)
    elif (not isinstance(out, np.ndarray) or out.dtype != _F32 or out.shape != x.shape or not out.flags.c_contiguous
          or not out.flags.writeable):
        raise ValueError("affine: out must be a writeable C-contiguous float32 array of the input's shape")
    if x.size and c <= _INT_MAX:
        lib.qc_affine_f32(_ptr(x), _ptr(out), x.size // c, c, _ptr(scale), _ptr(shift), _ACT[activation])
    elif x.size:
        raise ValueError("affine: too many channels")
    return out
