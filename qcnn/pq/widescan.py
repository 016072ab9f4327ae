"""Validated entry point to the wide-codebook lookups (qcnn/csrc/pq_widescan.c): K = 17..256.

`PreparedWide` mirrors `qcnn.pq.kernels.PreparedPQ`: codebooks padded to the next size the kernels
take (32, 64, 128, 256) and transposed for the table build, codes packed once into the kernels'
block layout; calls run NHWC batches band by band.  Everything the C side indexes with is checked
here first: the kernels trust their arguments.
"""
from __future__ import annotations

import time

import numpy as np

from .._kernels import ffi, lib
from ..kernels import _ACT, _ptr, empty_aligned
from .kernels import ScratchBuffers, code_statistics, run_in_bands
from .layer import PQLayer

SIZES = (32, 64, 128, 256)          # codebook sizes the lookups take; others are padded up
MAX_TAPS = lib.QC_WS_MAX_TAPS
# uint8 tables of one band of input rows.  Bands of a k x k layer overlap by kh - 1 input rows,
# whose tables are built again: larger than PreparedPQ's budget, as only uint8 tables are kept.
TABLE_BUDGET_BYTES = 4 << 20


def padded_k(k: int) -> int:
    """The codebook size the kernels run for K codewords."""
    for size in SIZES:
        if k <= size:
            return size
    raise ValueError(f"wide-scan supports K <= {SIZES[-1]}, got {k}")


def widescan_supported(layer: PQLayer) -> bool:
    """K in 17..256 (K <= 16 is fast-scan's) and a kernel the tap lists hold."""
    return 16 < layer.ksub <= SIZES[-1] and layer.kernel[0] * layer.kernel[1] <= MAX_TAPS


class PreparedWide(ScratchBuffers):
    def __init__(self, layer: PQLayer):
        layer.validate()       # every code < K, shapes consistent: required before C reads them
        if not 2 <= layer.ksub <= SIZES[-1]:
            raise ValueError(f"wide-scan supports K <= {SIZES[-1]}, layer has K = {layer.ksub}")
        kh, kw = layer.kernel
        if kh * kw > MAX_TAPS:
            raise ValueError(f"wide-scan supports kernels up to {MAX_TAPS} taps, layer has {kh}x{kw}")
        self.layer, self.kernel = layer, "widescan"
        g, m, k, d = layer.codebooks.shape
        kp = padded_k(k)
        cb = layer.codebooks
        if kp > k:
            # Copies of codeword 0: never selected, and they leave each table's min and max (hence
            # the uint8 step) unchanged.
            cb = np.concatenate([cb, np.repeat(cb[:, :, :1], kp - k, axis=2)], axis=2)
        self.ksub = kp
        self.cbt = np.ascontiguousarray(cb.transpose(0, 1, 3, 2).reshape(g * m, d, kp))
        codes = layer.codes
        if codes.dtype != np.uint8 or codes.shape != (kh, kw, m, layer.out_channels) or \
                (codes.size and int(codes.max()) >= k):
            raise ValueError(f"{layer.describe()}: codes must be uint8 (KH, KW, M, C_out), each < K")
        size = lib.qc_ws_packed_size(kh, kw, g, m, layer.out_channels)
        self.packed = empty_aligned((size,), dtype=np.uint8)
        lib.qc_ws_pack_codes(_ptr(np.ascontiguousarray(codes), "uint8_t *"), kh, kw, g, m, layer.out_channels,
                             _ptr(self.packed, "uint8_t *"))
        self._fixed = None
        # The rounding correction fast-scan has (pq_fastscan.c), on these tables; off only to
        # measure what it brings (scripts/widescan_layers.py).
        self.debias = True
        self.code_counts, self.mean_weight = code_statistics(layer, cb)
        # Seconds building (and quantizing) tables and looking up, summed over calls: the
        # benchmark's per-layer breakdown reads and resets them.
        self.seconds = {"tables": 0.0, "lookups": 0.0}

    def table_bytes(self, w: int) -> int:
        """Bytes of uint8 lookup tables for one input row of width w (the float ones are one
        pixel's at a time)."""
        l = self.layer
        return w * l.groups * l.M * self.ksub

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return run_in_bands(self, x, TABLE_BUDGET_BYTES)

    def _pointers(self):
        if self._fixed is None or self._fixed[0] != self.debias:
            self._fixed = (self.debias, _ptr(self.cbt), _ptr(self.layer.bias), _ptr(self.packed, "uint8_t *"),
                           _ptr(self.mean_weight) if self.debias else ffi.NULL,
                           _ptr(self.code_counts, "uint16_t *") if self.debias else ffi.NULL)
        return self._fixed[1:]

    def _band(self, xb: np.ndarray, yb: np.ndarray, pt: int, pl: int, sh: int, sw: int) -> None:
        """Output rows yb from input rows xb; pt, pl: padding before the band."""
        l = self.layer
        h, w, c = xb.shape
        oh, ow, cout = yb.shape
        kh, kw = l.kernel
        g, m, k = l.groups, l.M, self.ksub
        # The kernels read rows oy*sh - pt + i for i < kh, clipped to [0, h): check the geometry.
        if pt < 0 or pl < 0 or h < 1 or w < 1 or (oh - 1) * sh - pt + kh > h + kh or \
                (ow - 1) * sw - pl + kw > w + kw or not yb.flags.c_contiguous or cout != l.out_channels:
            raise ValueError("wide-scan kernel: bad band geometry")
        px, py = _ptr(np.ascontiguousarray(xb)), _ptr(yb)
        cbt, bias, packed, wmean, counts = self._pointers()
        t0 = time.perf_counter()
        # A k x k output sums tables of several pixels: they share one step (the band's widest).
        shared = int(kh * kw > 1)
        T = self._scratch("tables", (4, m, k), np.float32)     # four pixels at a time
        Q = self._scratch("q", (h * w, g, m, k), np.uint8)
        scale = self._scratch("scale", (h * w, g), np.float32)
        offset_sum = self._scratch("offset_sum", (h * w, g), np.float32)
        lib.qc_ws_tables_u8(px, h * w, c, g, m, l.dsub, k, cbt, wmean, counts, shared, T, Q, scale, offset_sum)
        t1 = time.perf_counter()
        lib.qc_pq_conv_widescan(Q, scale, offset_sum, h, w, g, m, k, packed, kh, kw, sh, sw, pt, pl, cout, bias,
                                py, oh, ow, _ACT[l.activation])
        self.seconds["tables"] += t1 - t0
        self.seconds["lookups"] += time.perf_counter() - t1

