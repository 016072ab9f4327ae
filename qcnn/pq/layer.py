"""A product-quantized conv or FC layer, in the paper's layout.

Vocabulary (as in FAISS): a layer's C_in/groups input channels are split into M subspaces of
`dsub` channels (the paper's C_s'); each subspace has one codebook of `ksub` codewords (the
paper's K), shared by every kernel offset of the layer; each (kernel offset, subspace, output
channel) stores one code.  When dsub does not divide C_in/groups the last subspace is padded with
zero channels (inputs and codewords alike), so every subspace has width dsub.

Canonical storage, the one layout every kernel derives its own from at load:
    codebooks  float32 (groups, M, ksub, dsub)
    codes      uint8   (KH, KW, M, C_out)       output channel innermost
An FC layer is a 1x1 convolution on a 1x1 map with groups = 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..layers import ACTIVATIONS, Conv2D, Dense, Layer, conv_geometry


@dataclass(frozen=True)
class PQSetting:
    dsub: int          # C_s': channels per subspace
    ksub: int          # K: codewords per subspace
    # Subspaces run across kernel offsets: dsub consecutive entries of each (KH, KW, C_in) input
    # window, one codebook per subspace (qcnn.pq.taps; for stems with 3 input channels).
    taps: bool = False

    def __post_init__(self):
        if not isinstance(self.taps, bool):
            raise ValueError(f"'taps' must be true or false, got {self.taps!r}")
        if not (2 <= self.ksub <= 256):
            raise ValueError(f"codebook size K must be 2..256, got {self.ksub}")
        if not 1 <= self.dsub <= 65536:       # wider is no layer's width: a typo that would allocate GBs
            raise ValueError(f"subspace width C_s' must be 1..65536, got {self.dsub}")

    @property
    def bits(self) -> int:
        """Bits per stored code: ceil(log2 K)."""
        return max(1, int(self.ksub - 1).bit_length())


@dataclass(eq=False)
class PQLayer(Layer):
    kind_of: str                         # "conv" or "fc"
    codebooks: np.ndarray                # (groups, M, ksub, dsub) float32
    codes: np.ndarray                    # (KH, KW, M, C_out) uint8
    in_channels: int                     # C_in (all groups)
    bias: np.ndarray | None = None
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] | str = (0, 0, 0, 0)
    groups: int = 1
    activation: str | None = None
    # How the layer runs: "reference" (the numpy test phase below), a C lookup kernel, "exact"
    # (float tables), "fastscan" (uint8 tables, K <= 16), "fastscan2" (the same in two passes, tables
    # and their rounding residual: as precise as 16-bit tables) or "widescan" (uint8 tables, K = 17..256), or
    # "reconstructed" (weights rebuilt once, run by the dense kernels); see qcnn.pq.engine.with_kernel.
    impl: str = "reference"
    kind = "pq"

    def __post_init__(self):
        self.codebooks = np.ascontiguousarray(self.codebooks, dtype=np.float32)
        self.codes = np.ascontiguousarray(self.codes, dtype=np.uint8)
        self.stride = tuple(self.stride)
        self.validate()

    def validate(self) -> None:
        """Every invariant a kernel relies on; run before anything reaches C."""
        if self.codebooks.ndim != 4 or self.codes.ndim != 4:
            raise ValueError("PQ layer: codebooks must be 4-D (groups, M, K, dsub), codes 4-D (KH, KW, M, C_out)")
        g, m, k, d = self.codebooks.shape
        kh, kw, mc, cout = self.codes.shape
        if g != self.groups or mc != m or g < 1 or min(m, k, d, kh, kw, cout) < 1:
            raise ValueError("PQ layer: codebook and code shapes disagree")
        if self.in_channels % g or cout % g:
            raise ValueError("PQ layer: channels do not split into groups")
        if m != -(-(self.in_channels // g) // d):
            raise ValueError("PQ layer: M does not match C_in/groups and dsub")
        if not 2 <= k <= 256:
            raise ValueError("PQ layer: K must be 2..256")
        if self.codes.size and int(self.codes.max()) >= k:
            raise ValueError("PQ layer: a code is >= K")
        if self.bias is not None and self.bias.shape != (cout,):
            raise ValueError("PQ layer: bias shape")
        if self.kind_of not in ("conv", "fc") or self.activation not in ACTIVATIONS:
            raise ValueError("PQ layer: bad kind or activation")
        if self.impl not in ("reference", "exact", "fastscan", "fastscan2", "widescan", "reconstructed"):
            raise ValueError(f"PQ layer: unknown implementation {self.impl!r}")
        if self.kind_of == "fc" and ((kh, kw, g) != (1, 1, 1) or tuple(self.stride) != (1, 1)
                                     or self.pads not in ((0, 0, 0, 0), [0, 0, 0, 0])):
            # The C kernels would run a padded "FC" as a convolution: 4x the outputs for pads of 1.
            raise ValueError("PQ layer: FC layers are 1x1 with one group, stride 1 and no padding")

    # geometry, named as on Conv2D/Dense
    @property
    def setting(self) -> PQSetting:
        return PQSetting(self.dsub, self.ksub)

    @property
    def M(self) -> int:
        return self.codebooks.shape[1]

    @property
    def ksub(self) -> int:
        return self.codebooks.shape[2]

    @property
    def dsub(self) -> int:
        return self.codebooks.shape[3]

    @property
    def kernel(self) -> tuple[int, int]:
        return self.codes.shape[0], self.codes.shape[1]

    @property
    def out_channels(self) -> int:
        return self.codes.shape[3]

    def params(self):
        return {"codebooks": self.codebooks, "codes": self.codes,
                **({"bias": self.bias} if self.bias is not None else {})}

    def describe(self):
        kh, kw = self.kernel
        shape = f"fc {self.in_channels}->{self.out_channels}" if self.kind_of == "fc" else \
            f"conv {kh}x{kw}/{self.stride[0]} {self.in_channels}->{self.out_channels}"
        return f"{shape} PQ C_s'={self.dsub} K={self.ksub}"

    def geometry(self, h: int, w: int):
        """Padding and output size for an input of h x w pixels, as Conv2D.geometry."""
        return conv_geometry(h, w, self.kernel, self.stride, self.pads, self.describe)

    def reconstruct_weight(self) -> np.ndarray:
        """The dense weight the codes stand for: (KH, KW, C_in/groups, C_out)."""
        g, m, k, d = self.codebooks.shape
        kh, kw, _, cout = self.codes.shape
        cin_g, cout_g = self.in_channels // g, cout // g
        w = np.empty((kh, kw, m * d, cout), np.float32)
        for gi in range(g):
            cols = slice(gi * cout_g, (gi + 1) * cout_g)
            for mi in range(m):
                # (KH, KW, cout_g) codes -> (KH, KW, cout_g, d) codewords
                cw = self.codebooks[gi, mi][self.codes[:, :, mi, cols]]
                w[:, :, mi * d:(mi + 1) * d, cols] = cw.transpose(0, 1, 3, 2)
        return np.ascontiguousarray(w[:, :, :cin_g])

    def to_dense(self) -> Layer:
        """The equivalent dense layer (reconstructed weights)."""
        w = self.reconstruct_weight()
        if self.kind_of == "fc":
            return Dense(w.reshape(self.in_channels, self.out_channels), self.bias, self.activation)
        return Conv2D(w, self.bias, self.stride, self.pads, self.groups, self.activation)

    # ---------------------------------------------------------------- reference forward (test phase)

    def lookup_table(self, x: np.ndarray) -> np.ndarray:
        """(N, H, W, groups*M, K): inner products of every input pixel's sub-vectors with every
        codeword of its subspace.  Built once per input and shared by all output positions,
        kernel offsets and output channels -- the whole point of the paper's test phase."""
        g, m, k, d = self.codebooks.shape
        n, h, w, c = x.shape
        cin_g = c // g
        # Zero channels pad each group's last subspace, matching the zero-padded codewords.
        xs = np.zeros((n * h * w, g, m * d), np.float32)
        xs[:, :, :cin_g] = x.reshape(n * h * w, g, cin_g)
        xs = xs.reshape(-1, g * m, d).transpose(1, 0, 2)             # (G*M, pixels, d)
        table = np.matmul(xs, self.codebooks.reshape(g * m, k, d).transpose(0, 2, 1))
        return table.transpose(1, 0, 2).reshape(n, h, w, g * m, k)  # (pixels, G*M, K) order

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.impl == "reference":
            return self.reference(x)
        return self.prepared()(x)

    def prepared(self):
        """What runs the layer for `impl`, made once and kept: a C kernel's view with its code
        layout, or the reconstructed dense layer."""
        if getattr(self, "_prepared", None) is None:
            if self.impl == "reconstructed":
                self._prepared = self.to_dense()
            elif self.impl == "widescan":
                from .widescan import PreparedWide
                self._prepared = PreparedWide(self)
            else:
                from .kernels import PreparedPQ    # the kernels module builds on this one
                self._prepared = PreparedPQ(self, self.impl)
        return self._prepared

    def reference(self, x: np.ndarray) -> np.ndarray:
        """The paper's test phase in numpy: the oracle the C kernels are tested against."""
        x = np.asarray(x, dtype=np.float32)
        kh, kw = self.kernel
        if self.kind_of == "fc":
            x = x.reshape(x.shape[0], -1)
            if x.shape[1] != self.in_channels:
                raise ValueError(f"{self.describe()}: got {x.shape[1]} inputs")
            x = x.reshape(x.shape[0], 1, 1, -1)
            sh = sw = 1
            pads, oh, ow = (0, 0, 0, 0), 1, 1
        else:
            if x.ndim != 4 or x.shape[3] != self.in_channels:
                raise ValueError(f"{self.describe()}: got input of shape {x.shape}")
            sh, sw = self.stride
            pads, oh, ow = self.geometry(x.shape[1], x.shape[2])
        n, h, w, _ = x.shape
        g, m, k, _ = self.codebooks.shape
        top, bottom, left, right = pads
        # Zero padding of the input is a zero table entry: a padded pixel contributes nothing
        # whichever codeword its code selects.
        table = np.zeros((n, h + top + bottom, w + left + right, g * m, k), np.float32)
        table[:, top:top + h, left:left + w] = self.lookup_table(x)
        table = table.reshape(n, h + top + bottom, w + left + right, g * m * k)
        # Output channel c of group c // cout_g reads table column (group*M + subspace)*K + code.
        cout = self.out_channels
        group_of = np.arange(cout) // (cout // g)
        y = np.zeros((n, oh, ow, cout), np.float32)
        for i in range(kh):
            for j in range(kw):
                view = table[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw]
                for mi in range(m):
                    y += view[..., (group_of * m + mi) * k + self.codes[i, j, mi]]
        if self.bias is not None:
            y += self.bias
        if self.activation == "relu":
            np.maximum(y, 0.0, out=y)
        elif self.activation == "relu6":
            np.clip(y, 0.0, 6.0, out=y)
        return y.reshape(n, cout) if self.kind_of == "fc" else y
