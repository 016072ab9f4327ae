"""Dense layers of the NHWC float32 engine.

Every layer maps NHWC arrays (N, H, W, C) — or (N, F) after flattening — to
new arrays and loops only over kernel offsets, never over pixels.  Weights
use the "input-major" layout the product quantizer splits into subspaces:
convolutions are (KH, KW, C_in/groups, C_out), fully connected (C_in, C_out).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import kernels

ACTIVATIONS = (None, "relu", "relu6")
_F32 = np.dtype(np.float32)


def _activate(y: np.ndarray, activation: str | None) -> np.ndarray:
    if activation == "relu":
        np.maximum(y, 0.0, out=y)
    elif activation == "relu6":
        np.clip(y, 0.0, 6.0, out=y)
    return y


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME": output = ceil(size / stride), the odd pixel of padding goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def resolve_pads(pads, h: int, w: int, kh: int, kw: int, sh: int, sw: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) for explicit pads or the string "same"."""
    if pads == "same":
        return (*same_pads(h, kh, sh), *same_pads(w, kw, sw))
    return tuple(pads)


def conv_geometry(h: int, w: int, kernel, stride, pads, what: str | Callable[[], str] = "convolution"):
    """(top, bottom, left, right) padding and output size of a sliding window on h x w pixels.
    `what` names the layer in the error, or makes that name (only then: this runs every forward)."""
    kh, kw = kernel
    sh, sw = stride
    pads = resolve_pads(pads, h, w, kh, kw, sh, sw)
    oh = (h + pads[0] + pads[1] - kh) // sh + 1
    ow = (w + pads[2] + pads[3] - kw) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"{what() if callable(what) else what}: input {h}x{w} is smaller than the kernel")
    return pads, oh, ow


def pad_nhwc(x: np.ndarray, pads, value: float = 0.0) -> np.ndarray:
    top, bottom, left, right = pads
    if not (top or bottom or left or right):
        return x
    n, h, w, c = x.shape
    out = np.full((n, h + top + bottom, w + left + right, c), value, dtype=x.dtype)
    out[:, top:top + h, left:left + w] = x
    return out


def windows(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int, oh: int, ow: int):
    """Yield (i, j, view) for each kernel offset: the strided view of the padded input it reads."""
    for i in range(kh):
        for j in range(kw):
            yield i, j, xp[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw]


def im2col(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int, oh: int, ow: int) -> np.ndarray:
    """(N, OH, OW, KH, KW, C) patch view of a padded NHWC input, no copy."""
    n, _, _, c = xp.shape
    s = xp.strides
    return np.lib.stride_tricks.as_strided(
        xp, shape=(n, oh, ow, kh, kw, c), strides=(s[0], s[1] * sh, s[2] * sw, s[1], s[2], s[3]),
        writeable=False)


class Layer:
    """A node's computation.  `params()` lists the arrays that count as weights."""

    kind = "layer"

    def __call__(self, *xs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def params(self) -> dict[str, np.ndarray]:
        return {}

    def describe(self) -> str:
        return self.kind


@dataclass(eq=False)
class Conv2D(Layer):
    """Convolution, grouped or depthwise; `pads` is (top, bottom, left, right) or "same"."""

    weight: np.ndarray                 # (KH, KW, C_in / groups, C_out)
    bias: np.ndarray | None = None     # (C_out,)
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] | str = (0, 0, 0, 0)
    groups: int = 1
    activation: str | None = None
    kind = "conv"

    def __post_init__(self):
        self.weight = np.ascontiguousarray(self.weight, dtype=np.float32)
        if self.bias is not None:
            self.bias = np.ascontiguousarray(self.bias, dtype=np.float32)
        kh, kw, cin_g, cout = self.weight.shape
        if cout % self.groups:
            raise ValueError(f"{cout} output channels do not split into {self.groups} groups")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}")
        self.stride = tuple(self.stride)
        # Per-group GEMM operands, made once: (KH*KW*C_in/g, C_out/g).
        cg = cout // self.groups
        self._taps = np.ascontiguousarray(self.weight[:, :, 0, :]) if self.depthwise else None
        self._mats = [np.ascontiguousarray(self.weight[..., g * cg:(g + 1) * cg].reshape(-1, cg))
                      for g in range(self.groups)]
        # The same operands packed once for the C GEMM kernel (bias and activation fused into its
        # store); None where BLAS is the faster choice (kernels.gemm_prefers_blas).
        self._packed = [] if self.depthwise else [
            None if kernels.gemm_prefers_blas(*m.shape) else kernels.pack_weights(m) for m in self._mats]
        # 3x3 stride-1 convolutions: Winograd where it pays (kernels.winograd_pays); the transformed
        # weights per tile side (kernels.winograd_tile, which depends on the output size), made at
        # the first call that needs them.
        self._winograd = {} if (
            not self.depthwise and self.kernel == (3, 3) and self.stride == (1, 1)
            and kernels.winograd_pays(cin_g, cg)) else None
        if self._winograd is not None:    # the GEMM operands would serve only without SIMD (then BLAS)
            self._packed = [None] * self.groups
        # Per input shape, the kernel call with everything but the input checked (see _fast_path).
        self._fast = {}

    @property
    def in_channels(self) -> int:
        return self.weight.shape[2] * self.groups

    @property
    def out_channels(self) -> int:
        return self.weight.shape[3]

    @property
    def kernel(self) -> tuple[int, int]:
        return self.weight.shape[0], self.weight.shape[1]

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.weight.shape[2] == 1 and self.out_channels == self.groups

    def params(self):
        return {"weight": self.weight, **({"bias": self.bias} if self.bias is not None else {})}

    def describe(self):
        kh, kw = self.kernel
        kind = "depthwise" if self.depthwise else "conv"
        g = f" g{self.groups}" if self.groups > 1 and not self.depthwise else ""
        return f"{kind} {kh}x{kw}/{self.stride[0]} {self.in_channels}->{self.out_channels}{g}"

    def geometry(self, h: int, w: int):
        """Padding and output size for an input of h x w pixels."""
        return conv_geometry(h, w, self.kernel, self.stride, self.pads, self.describe)

    def __call__(self, x):
        fast = self._fast.get(x.shape) if type(x) is np.ndarray and x.dtype == _F32 and x.flags.c_contiguous else None
        # The entry holds what it was made from: a copy of this layer (Graph.fuse_activations
        # copies and changes the activation) shares the dict, and the ISA may be capped since.
        if (fast is not None and fast[0] is self.bias and fast[1] == self.activation and fast[2] == self.stride
                and fast[3] == self.pads and fast[4] == kernels.has_simd()):
            return fast[5](x)
        y = self._call(x)
        if fast is None and type(x) is np.ndarray and x.dtype == _F32 and x.flags.c_contiguous:
            run = self._fast_path(x.shape)
            if run is not None:
                self._fast[x.shape] = (self.bias, self.activation, self.stride, self.pads, kernels.has_simd(), run)
        return y

    # The prepared calls hold C pointers: never pickled (a quantized model travels to the app's
    # worker processes) nor shared with a copy (Graph.fuse_activations changes the copy's activation).
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_fast"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._fast = {}

    def _fast_path(self, shape):
        """The call this layer makes on a C-contiguous float32 input of `shape`, with the weights,
        geometry and output checked once (kernels.DepthwiseOp, PointwiseOp): the Python around a
        small layer's kernel took as long as the kernel (29 us a layer, 2 ms of a Lite0 forward).
        None where the layer takes another road (padding, groups, BLAS, Winograd)."""
        if len(shape) != 4 or shape[3] != self.in_channels:
            return None
        n, h, w, _ = shape
        pads, oh, ow = self.geometry(h, w)
        if self.depthwise:
            return kernels.DepthwiseOp(shape, self._taps, self.bias, self.stride, pads, (oh, ow), self.activation)
        if (self.kernel == (1, 1) and self.stride == (1, 1) and not any(pads) and self.groups == 1
                and self._packed[0] is not None and kernels.has_simd()):
            op = kernels.PointwiseOp(self._packed[0], self.bias, self.activation)
            rows, out = (n * h * w, shape[3]), (n, oh, ow, self.out_channels)
            return lambda x: op(x.reshape(rows)).reshape(out)
        return None

    def _call(self, x):
        n, h, w, c = x.shape
        if c != self.in_channels:
            raise ValueError(f"{self.describe()}: got {c} input channels")
        pads, oh, ow = self.geometry(h, w)
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.depthwise:  # bias and activation are applied inside the kernel
            return self._depthwise(x, pads, oh, ow)
        sh, sw = self.stride
        if self.kernel == (1, 1) and not any(pads):
            # A 1x1 convolution reads the pixels in place as GEMM rows; a strided one gathers
            # every sh-th row and sw-th column first.
            if (sh, sw) != (1, 1):
                x = np.ascontiguousarray(x[:, :(oh - 1) * sh + 1:sh, :(ow - 1) * sw + 1:sw])
            return self._grouped_gemm(x.reshape(n * oh * ow, c), None, n, oh, ow)
        if self._winograd is not None and kernels.has_simd():
            return self._winograd_conv(pad_nhwc(x, pads), n, oh, ow)
        # Others read their patches straight from the padded input (implicit GEMM, no im2col).
        return self._grouped_gemm(None, pad_nhwc(x, pads), n, oh, ow)

    def _winograd_conv(self, xp, n, oh, ow):
        cin_g, cout_g = self.weight.shape[2], self.out_channels // self.groups
        mt = kernels.winograd_tile(oh, ow)
        if mt not in self._winograd:
            self._winograd[mt] = [kernels.winograd_weights(self.weight[..., g * cout_g:(g + 1) * cout_g], mt)
                                  for g in range(self.groups)]
        y = kernels.empty_aligned((n * oh * ow, self.out_channels))
        for g, weights in enumerate(self._winograd[mt]):
            bias = None if self.bias is None else self.bias[g * cout_g:(g + 1) * cout_g]
            kernels.winograd(xp, weights, (oh, ow), bias, self.activation, (g * cin_g, cin_g),
                             out=y if self.groups == 1 else y[:, g * cout_g:(g + 1) * cout_g])
        return y.reshape(n, oh, ow, -1)

    def _grouped_gemm(self, rows, xp, n, oh, ow):
        """One GEMM per group, into its column slice of the output: of the (N*OH*OW, C_in) pixel
        `rows` of a 1x1 convolution, or else of the patches of the padded input `xp`."""
        cin_g = self.weight.shape[2]
        cout_g = self.out_channels // self.groups
        packs = self._packed if kernels.has_simd() else [None] * self.groups
        if self.groups == 1 and packs[0] is not None:  # the common case: one call, its own output
            if rows is not None:
                y = kernels.pointwise(rows, packs[0], self.bias, self.activation)
            else:
                y = kernels.conv_gemm(xp, packs[0], self.kernel, self.stride, (oh, ow), self.bias, self.activation)
            return y.reshape(n, oh, ow, -1)
        y = kernels.empty_aligned((n * oh * ow, self.out_channels))
        for g, (mat, packed) in enumerate(zip(self._mats, packs)):
            out = y if self.groups == 1 else y[:, g * cout_g:(g + 1) * cout_g]
            bias = None if self.bias is None else self.bias[g * cout_g:(g + 1) * cout_g]
            if packed is not None and rows is not None:
                a = rows if self.groups == 1 else rows[:, g * cin_g:(g + 1) * cin_g]
                kernels.pointwise(a, packed, bias, self.activation, out=out)
            elif packed is not None:
                kernels.conv_gemm(xp, packed, self.kernel, self.stride, (oh, ow), bias, self.activation,
                                  (g * cin_g, cin_g), out=out)
            else:  # BLAS (kernels.gemm_prefers_blas, or no SIMD), on an explicit patch matrix
                if rows is not None:
                    a = rows[:, g * cin_g:(g + 1) * cin_g]
                else:
                    kh, kw = self.kernel
                    sh, sw = self.stride
                    a = im2col(xp[..., g * cin_g:(g + 1) * cin_g], kh, kw, sh, sw, oh, ow).reshape(n * oh * ow, -1)
                np.matmul(a, mat, out=out)
                if bias is not None:
                    out += bias
                _activate(out, self.activation)
        return y.reshape(n, oh, ow, -1)

    def _depthwise(self, x, pads, oh, ow):
        return kernels.depthwise(x, self._taps, self.bias,
                                 self.stride, pads, (oh, ow), self.activation)


@dataclass(eq=False)
class Dense(Layer):
    """Fully connected layer on (N, C_in) inputs."""

    weight: np.ndarray                 # (C_in, C_out)
    bias: np.ndarray | None = None
    activation: str | None = None
    kind = "fc"

    def __post_init__(self):
        self.weight = np.ascontiguousarray(self.weight, dtype=np.float32)
        if self.bias is not None:
            self.bias = np.ascontiguousarray(self.bias, dtype=np.float32)

    @property
    def in_channels(self):
        return self.weight.shape[0]

    @property
    def out_channels(self):
        return self.weight.shape[1]

    def params(self):
        return {"weight": self.weight, **({"bias": self.bias} if self.bias is not None else {})}

    def describe(self):
        return f"fc {self.in_channels}->{self.out_channels}"

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{self.describe()}: got {x.shape[1]} inputs")
        y = x @ self.weight
        if self.bias is not None:
            y += self.bias
        return _activate(y, self.activation)


@dataclass(eq=False)
class Activation(Layer):
    name: str = "relu"
    kind = "activation"

    def describe(self):
        return self.name

    def __call__(self, x):
        if self.name == "relu":
            return np.maximum(x, 0.0)
        if self.name == "relu6":
            return np.clip(x, 0.0, 6.0)
        raise ValueError(f"unknown activation {self.name!r}")


@dataclass(eq=False)
class Clip(Layer):
    lo: float = -math.inf
    hi: float = math.inf
    kind = "clip"

    def __call__(self, x):
        return np.clip(x, self.lo, self.hi)


@dataclass(eq=False)
class Pool2D(Layer):
    """Max or average pooling; `ceil_mode` as in Caffe and ONNX (last window may hang over)."""

    mode: str = "max"
    kernel: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    pads: tuple[int, int, int, int] | str = (0, 0, 0, 0)
    ceil_mode: bool = False
    count_include_pad: bool = False
    kind = "pool"

    def describe(self):
        return f"{self.mode}pool {self.kernel[0]}x{self.kernel[1]}/{self.stride[0]}"

    def _out(self, size, k, s, lo, hi):
        span = size + lo + hi - k
        out = (-(-span // s) if self.ceil_mode else span // s) + 1
        if self.ceil_mode and (out - 1) * s >= size + lo:
            out -= 1  # a window must start inside the image or its leading padding
        return out

    def geometry(self, h: int, w: int):
        """Padding and output size for an input of h x w pixels (ceil mode included)."""
        kh, kw = self.kernel
        sh, sw = self.stride
        pads = resolve_pads(self.pads, h, w, kh, kw, sh, sw)
        oh, ow = self._out(h, kh, sh, pads[0], pads[1]), self._out(w, kw, sw, pads[2], pads[3])
        if oh < 1 or ow < 1:
            raise ValueError(f"{self.describe()}: input {h}x{w} is smaller than the window")
        return pads, oh, ow

    def __call__(self, x):
        n, h, w, c = x.shape
        kh, kw = self.kernel
        sh, sw = self.stride
        (top, bottom, left, right), oh, ow = self.geometry(h, w)
        if x.dtype == np.float32 and c > 0:  # C kernel; other dtypes keep the numpy path below
            return kernels.pool(np.ascontiguousarray(x), "max" if self.mode == "max" else "avg", self.kernel,
                                self.stride, (top, bottom, left, right), (oh, ow), self.count_include_pad)
        # Extra padding so the last (ceil-mode) window is in bounds; it never wins a max
        # and is excluded from averages.
        extra_b = max((oh - 1) * sh + kh - (h + top + bottom), 0)
        extra_r = max((ow - 1) * sw + kw - (w + left + right), 0)
        full = (top, bottom + extra_b, left, right + extra_r)
        if self.mode == "max":
            xp = pad_nhwc(x, full, -np.inf)
            out = None
            for _, _, view in windows(xp, kh, kw, sh, sw, oh, ow):
                out = view.copy() if out is None else np.maximum(out, view, out=out)
            return out
        xp = pad_nhwc(x, full, 0.0)
        out = None
        for _, _, view in windows(xp, kh, kw, sh, sw, oh, ow):
            out = view.copy() if out is None else np.add(out, view, out=out)
        return out * self._inverse_counts(h, w, (top, bottom, left, right), full, oh, ow)

    def _inverse_counts(self, h, w, pads, full, oh, ow):
        kh, kw = self.kernel
        sh, sw = self.stride
        top, bottom, left, right = pads
        ones = np.zeros((1, h + full[0] + full[1], w + full[2] + full[3], 1), np.float32)
        if self.count_include_pad:  # declared padding counts, the ceil-mode overhang does not
            ones[:, :h + top + bottom, :w + left + right] = 1
        else:
            ones[:, top:top + h, left:left + w] = 1
        counts = sum(view for _, _, view in windows(ones, kh, kw, sh, sw, oh, ow))
        return (1.0 / np.maximum(counts, 1)).astype(np.float32)


@dataclass(eq=False)
class GlobalAvgPool(Layer):
    kind = "gap"

    def describe(self):
        return "global avgpool"

    def __call__(self, x):
        return x.mean(axis=(1, 2), keepdims=True, dtype=np.float32)


@dataclass(eq=False)
class LRN(Layer):
    """Caffe cross-channel LRN: x / (k + alpha/size * sum of x^2 over `size` neighbours)^beta."""

    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 1.0
    kind = "lrn"

    def describe(self):
        return f"lrn {self.size}"

    def __call__(self, x):
        c = x.shape[-1]
        if x.dtype == np.float32 and c > 0:  # C kernel; other dtypes keep the numpy path below
            return kernels.lrn(np.ascontiguousarray(x), self.size, self.alpha, self.beta, self.k)
        lo = (self.size - 1) // 2
        sq = np.zeros(x.shape[:-1] + (c + self.size - 1,), np.float32)
        np.square(x, out=sq[..., lo:lo + c])
        acc = sq[..., 0:c].copy()
        for i in range(1, self.size):
            acc += sq[..., i:i + c]
        acc *= np.float32(self.alpha / self.size)
        acc += np.float32(self.k)
        if self.beta == 0.75:  # two square roots are several times faster than pow
            root = np.sqrt(acc)
            acc = root * np.sqrt(root)
            return x / acc
        return x * np.power(acc, np.float32(-self.beta))


@dataclass(eq=False)
class Affine(Layer):
    """Per-channel scale and shift: a batch norm that had no convolution to fold into."""

    scale: np.ndarray = None
    shift: np.ndarray = None
    kind = "affine"

    def params(self):
        return {"scale": self.scale, "shift": self.shift}

    def __call__(self, x):
        return x * self.scale + self.shift


@dataclass(eq=False)
class Add(Layer):
    kind = "add"

    def __call__(self, a, b):
        return a + b


@dataclass(eq=False)
class Concat(Layer):
    """Concatenation along channels (the last NHWC axis)."""

    kind = "concat"

    def __call__(self, *xs):
        return np.concatenate(xs, axis=-1)


@dataclass(eq=False)
class Patches(Layer):
    """Each output pixel's input window as one vector in (KH, KW, C) order: the input of a
    convolution whose product-quantization subspaces run across kernel offsets (qcnn.pq.taps)."""

    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] | str = (0, 0, 0, 0)
    kind = "patches"

    def __post_init__(self):
        self.kernel, self.stride = tuple(self.kernel), tuple(self.stride)

    def describe(self):
        return f"patches {self.kernel[0]}x{self.kernel[1]}/{self.stride[0]}"

    def geometry(self, h: int, w: int):
        return conv_geometry(h, w, self.kernel, self.stride, self.pads, self.describe)

    def out_shape(self, x):
        h, w, c = x
        _, oh, ow = self.geometry(h, w)
        return oh, ow, self.kernel[0] * self.kernel[1] * c

    def __call__(self, x):
        n, h, w, c = x.shape
        pads, oh, ow = self.geometry(h, w)
        xp = pad_nhwc(np.asarray(x, dtype=np.float32), pads)
        cols = im2col(xp, *self.kernel, *self.stride, oh, ow)
        return np.ascontiguousarray(cols).reshape(n, oh, ow, -1)


@dataclass(eq=False)
class Flatten(Layer):
    """Flattens in channel-major (NCHW) order, as Caffe and ONNX do, so their FC weights apply as is."""

    kind = "flatten"

    def __call__(self, x):
        if x.ndim == 4:
            x = x.transpose(0, 3, 1, 2)
        return x.reshape(x.shape[0], -1)


@dataclass(eq=False)
class Pad(Layer):
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    value: float = 0.0
    kind = "pad"

    def __call__(self, x):
        return pad_nhwc(x, self.pads, self.value)


@dataclass(eq=False)
class Softmax(Layer):
    kind = "softmax"

    def __call__(self, x):
        return softmax(x)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def fold_batch_norm(weight, bias, gamma, beta, mean, var, eps):
    """Fold inference-mode batch norm into the preceding layer (output channels last)."""
    scale = (gamma / np.sqrt(var + eps)).astype(np.float32)
    b = np.zeros_like(mean) if bias is None else bias
    return (weight * scale).astype(np.float32), ((b - mean) * scale + beta).astype(np.float32)


# -- layers of imported networks (qcnn/models/onnx_import) --------------------------------------------
# They work on arrays of any rank in the engine's physical layout (NHWC for images); the importer
# translates ONNX axes into these.  `out_shape` gives the output shape (batch excluded) for the cost
# model and the budget checks.

UNARY = ("sigmoid", "silu", "hardsigmoid", "hardswish", "tanh", "gelu", "leakyrelu", "erf", "elu")


@dataclass(eq=False)
class Unary(Layer):
    """Element-wise activation in C (qcnn/csrc/elementwise.c): sigmoid, SiLU, hard-sigmoid
    (alpha * x + beta clipped to [0, 1]), hard-swish, tanh, GELU (erf form), leaky ReLU (alpha),
    erf, ELU (alpha).  With `inplace` it overwrites its input, which the importer allows only when
    this layer is the sole reader of a fresh output (a convolution's, say)."""

    name: str = "sigmoid"
    alpha: float = 0.0
    beta: float = 0.0
    inplace: bool = False
    kind = "unary"

    def __post_init__(self):
        if self.name not in UNARY:
            raise ValueError(f"unknown activation {self.name!r}")

    def describe(self):
        return self.name

    def out_shape(self, x):
        return x

    def __call__(self, x):
        if x.dtype != np.float32 or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, dtype=np.float32)
        elif self.inplace and x.flags.writeable:
            return kernels.unary(x, self.name, self.alpha, self.beta, out=x)
        return kernels.unary(x, self.name, self.alpha, self.beta)


_BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "max": np.maximum,
           "min": np.minimum, "pow": np.power}


@dataclass(eq=False)
class Binary(Layer):
    """Element-wise a op b with numpy broadcasting, of two inputs or of one input and a constant
    (`const`, already in the input's physical layout; `const_first` puts it on the left)."""

    op: str = "mul"
    const: np.ndarray | None = None
    const_first: bool = False
    kind = "binary"

    def __post_init__(self):
        if self.op not in _BINARY:
            raise ValueError(f"unknown element-wise operation {self.op!r}")
        if self.const is not None:
            self.const = np.ascontiguousarray(self.const, dtype=np.float32)

    def describe(self):
        return self.op

    def params(self):
        return {} if self.const is None or self.const.size <= 1 else {"const": self.const}

    def out_shape(self, *xs):
        shapes = [tuple(s) for s in xs] + ([self.const.shape[1:] if self.const.ndim > len(xs[0]) else
                                            self.const.shape] if self.const is not None else [])
        return tuple(np.broadcast_shapes(*shapes))

    def __call__(self, *xs):
        if self.const is None:
            a, b = xs
        else:
            a, b = (self.const, xs[0]) if self.const_first else (xs[0], self.const)
        return _BINARY[self.op](a, b, dtype=np.float32)


@dataclass(eq=False)
class PRelu(Layer):
    """x < 0 ? slope * x : x, the slope broadcast in the physical layout."""

    slope: np.ndarray = None
    kind = "prelu"

    def __post_init__(self):
        self.slope = np.ascontiguousarray(self.slope, dtype=np.float32)

    def params(self):
        return {"slope": self.slope}

    def out_shape(self, x):
        return x

    def __call__(self, x):
        return np.where(x < 0, x * self.slope, x).astype(np.float32, copy=False)


@dataclass(eq=False)
class Reshape(Layer):
    """Transpose (when `perm` is set) then reshape to (batch, *shape): the importer's one layout
    change; a reshape that keeps the memory order is a view, free."""

    shape: tuple[int, ...] = ()
    perm: tuple[int, ...] | None = None
    kind = "reshape"

    def describe(self):
        return f"transpose {self.perm} reshape {self.shape}" if self.perm else f"reshape {self.shape}"

    def out_shape(self, x):
        if math.prod(x) != math.prod(self.shape):
            raise ValueError(f"{self.describe()}: input of shape {x}")
        return tuple(self.shape)

    def __call__(self, x):
        if self.perm is not None:
            x = x.transpose(self.perm)
        return x.reshape((x.shape[0], *self.shape))


@dataclass(eq=False)
class Slice(Layer):
    """Basic slicing (start, stop, step) per non-batch axis."""

    slices: tuple[tuple[int, int, int], ...] = ()
    kind = "slice"

    def out_shape(self, x):
        return tuple(len(range(*slice(*s).indices(d))) for s, d in zip(self.slices, x))

    def __call__(self, x):
        return x[(slice(None), *(slice(*s) for s in self.slices))]


_REDUCE = {"mean": np.mean, "max": np.max, "min": np.min, "sum": np.sum}


@dataclass(eq=False)
class Reduce(Layer):
    """Mean, max, min or sum over non-batch axes (1-based physical axes), keeping them or not."""

    op: str = "mean"
    axes: tuple[int, ...] = (1, 2)
    keepdims: bool = True
    kind = "reduce"

    def describe(self):
        return f"reduce{self.op} {self.axes}"

    def out_shape(self, x):
        if self.keepdims:
            return tuple(1 if i + 1 in self.axes else d for i, d in enumerate(x))
        return tuple(d for i, d in enumerate(x) if i + 1 not in self.axes)

    def __call__(self, x):
        return _REDUCE[self.op](x, axis=self.axes, keepdims=self.keepdims).astype(np.float32, copy=False)


@dataclass(eq=False)
class LayerNorm(Layer):
    """(x - mean) / sqrt(var + eps) * scale + bias over the last `axes` physical axes."""

    scale: np.ndarray = None
    bias: np.ndarray | None = None
    eps: float = 1e-5
    axes: int = 1
    kind = "layernorm"

    def __post_init__(self):
        self.scale = np.ascontiguousarray(self.scale, dtype=np.float32)
        if self.bias is not None:
            self.bias = np.ascontiguousarray(self.bias, dtype=np.float32)

    def params(self):
        return {"scale": self.scale, **({"bias": self.bias} if self.bias is not None else {})}

    def out_shape(self, x):
        return x

    def __call__(self, x):
        axes = tuple(range(x.ndim - self.axes, x.ndim))
        mean = x.mean(axis=axes, keepdims=True, dtype=np.float32)
        d = x - mean
        # the sum of squares per row in one pass, without a squared temporary the size of x
        var = np.einsum("...i,...i->...", d.reshape(*d.shape[:x.ndim - self.axes], -1),
                        d.reshape(*d.shape[:x.ndim - self.axes], -1)) * np.float32(1 / math.prod(x.shape[-self.axes:]))
        inv = 1.0 / np.sqrt(var.astype(np.float32) + np.float32(self.eps))
        d *= inv.reshape(*inv.shape, *(1,) * self.axes)
        d *= self.scale
        if self.bias is not None:
            d += self.bias
        return d


@dataclass(eq=False)
class SoftmaxAxis(Layer):
    """Softmax or log-softmax over one non-batch physical axis."""

    axis: int = -1
    log: bool = False
    kind = "softmax"

    def describe(self):
        return f"{'log' if self.log else ''}softmax {self.axis}"

    def out_shape(self, x):
        return x

    def __call__(self, x):
        z = x - x.max(axis=self.axis, keepdims=True)
        if self.log:
            return (z - np.log(np.exp(z).sum(axis=self.axis, keepdims=True))).astype(np.float32, copy=False)
        e = np.exp(z)
        return (e / e.sum(axis=self.axis, keepdims=True)).astype(np.float32, copy=False)


@dataclass(eq=False)
class ConcatAxis(Layer):
    """Concatenation along a physical axis other than the last (which layers.Concat does)."""

    axis: int = 1
    kind = "concat"

    def out_shape(self, *xs):
        a = self.axis - 1
        return (*xs[0][:a], sum(s[a] for s in xs), *xs[0][a + 1:])

    def __call__(self, *xs):
        return np.concatenate(xs, axis=self.axis)


@dataclass(eq=False)
class PadND(Layer):
    """Padding of the non-batch axes, (before, after) each: constant, reflect or edge."""

    pads: tuple[tuple[int, int], ...] = ()
    mode: str = "constant"
    value: float = 0.0
    kind = "pad"

    def out_shape(self, x):
        return tuple(d + a + b for d, (a, b) in zip(x, self.pads))

    def __call__(self, x):
        width = ((0, 0), *self.pads)
        if self.mode == "constant":
            return np.pad(x, width, constant_values=np.float32(self.value))
        return np.pad(x, width, mode="reflect" if self.mode == "reflect" else "edge")


@dataclass(eq=False)
class Take(Layer):
    """np.take of constant indices along one non-batch axis, then optionally a reshape to
    (batch, *shape): ONNX Gather on an activation."""

    index: np.ndarray = None
    axis: int = 1
    shape: tuple[int, ...] | None = None
    kind = "take"

    def __post_init__(self):
        self.index = np.ascontiguousarray(self.index, dtype=np.int64)

    def out_shape(self, x):
        if self.shape is not None:
            return tuple(self.shape)
        a = self.axis - 1
        return (*x[:a], *self.index.shape, *x[a + 1:])

    def __call__(self, x):
        y = np.take(x, self.index, axis=self.axis)
        return y if self.shape is None else y.reshape((x.shape[0], *self.shape))


@dataclass(eq=False)
class ChannelAffine(Layer):
    """act(x * scale + shift) per channel (last axis) in one pass (elementwise.c): a batch norm with
    no convolution before it to fold into, and the ReLU / ReLU6 after it (DenseNet's BN-ReLU)."""

    scale: np.ndarray = None
    shift: np.ndarray = None
    activation: str | None = None
    kind = "affine"

    def __post_init__(self):
        self.scale = np.ascontiguousarray(self.scale, dtype=np.float32).reshape(-1)
        self.shift = np.ascontiguousarray(self.shift, dtype=np.float32).reshape(-1)
        if self.scale.shape != self.shift.shape or self.activation not in ACTIVATIONS:
            raise ValueError("channel affine: scale and shift must match, activation relu / relu6 / none")

    def describe(self):
        return f"affine{'+' + self.activation if self.activation else ''}"

    def params(self):
        return {"scale": self.scale, "shift": self.shift}

    def out_shape(self, x):
        if x[-1] != self.scale.size:
            raise ValueError(f"{self.describe()}: {x[-1]} channels for {self.scale.size} scales")
        return x

    def __call__(self, x):
        return kernels.affine(np.ascontiguousarray(x, dtype=np.float32), self.scale, self.shift, self.activation)
