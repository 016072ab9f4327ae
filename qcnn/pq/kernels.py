"""Validated entry points to the PQ lookup kernels (qcnn/csrc/pq_*.c).

A `PreparedPQ` holds the layouts a kernel wants (codebooks transposed for the table build, codes
packed for fast-scan), made once when a model is loaded, and runs the layer on NHWC batches.
Everything the C side indexes with is checked here first: the kernels trust their arguments.
"""
from __future__ import annotations

import time

import numpy as np

from .._kernels import ffi, lib
from ..kernels import _ACT, _ptr, empty_aligned
from .layer import PQLayer

IMPLS = ("exact", "fastscan", "fastscan2")   # what PreparedPQ runs; qcnn.pq.engine chooses among more
FASTSCAN = ("fastscan", "fastscan2")          # the K <= 16 uint8 kernels: one pass, or two (tables and residual)
LAYOUTS = {"bytes": lib.QC_FS_BYTES, "nibbles": lib.QC_FS_NIBBLES, "dot": lib.QC_FS_DOT}   # pq_fastscan.c
MAX_TAPS = lib.QC_FS_MAX_TAPS
# Tables of a band of input rows are built, used and dropped before the next band: it bounds
# memory (K = 256 tables of a 112x112 map would take hundreds of MB) and keeps them in cache.
TABLE_BUDGET_BYTES = 2 << 20



# Kernel families that record which of their variants ran (qc_variants_ran in qcnn.h).
FAMILIES = {"fastscan_tables": lib.QC_FAMILY_FS_TABLES, "fastscan_quant": lib.QC_FAMILY_FS_QUANT,
            "fastscan_lookups": lib.QC_FAMILY_FS_LOOKUPS, "pq_tables": lib.QC_FAMILY_PQ_TABLES,
            "pq_exact": lib.QC_FAMILY_PQ_EXACT}


def reset_variants_ran() -> None:
    lib.qc_variants_reset()


def variants_ran() -> dict[str, set[str]]:
    """Per family, the SIMD variants (qcnn.kernels.ISA_NAMES) that ran since reset_variants_ran():
    what really ran, as the variants themselves record it, whatever the dispatch tables say."""
    from ..kernels import ISA_NAMES
    return {name: {isa for bit, isa in ISA_NAMES.items() if lib.qc_variants_ran(f) >> bit & 1}
            for name, f in FAMILIES.items()}


def fastscan_supported(layer: PQLayer) -> bool:
    return layer.ksub <= 16


COUNT_LIMIT = 32767       # pq.h: each table's code counts sum to at most this


def code_statistics(layer: PQLayer, cb16: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the uint8 kernels' rounding correction needs, made once at load: how often each code
    occurs per (group, subspace) over the kernel offsets and the group's outputs, (G, M, K) uint16,
    and the weights averaged the same way, (G, C_in/G) float32 (codebooks cb16 as the kernel runs
    them, padded: (G, M, K, dsub), K = 16 for fast-scan, 32..256 for wide-scan).  Counts are
    scaled to COUNT_LIMIT per table when a layer has more outputs and taps."""
    g, m, k, d = cb16.shape
    kh, kw = layer.kernel
    cout_g = layer.out_channels // g
    cin_g = layer.in_channels // g
    # codes (kh, kw, M, cout) -> (G, M, taps * cout_g)
    codes = layer.codes.reshape(kh * kw, m, g, cout_g).transpose(2, 1, 0, 3).reshape(g, m, -1).astype(np.int64)
    offsets = (np.arange(g * m, dtype=np.int64) * k).reshape(g, m, 1)
    counts = np.bincount((codes + offsets).ravel(), minlength=g * m * k).reshape(g, m, k)
    total = codes.shape[-1]
    if total > COUNT_LIMIT:
        # The C side multiplies 16-bit counts: scale every table to the same total COUNT_LIMIT,
        # rounding by largest remainder (frequencies to 1 / 32767).
        exact = counts * (COUNT_LIMIT / total)
        counts = np.floor(exact).astype(np.int64)
        short = COUNT_LIMIT - counts.sum(axis=-1, keepdims=True)
        order = np.argsort(-(exact - counts), axis=-1, kind="stable")
        counts += (np.argsort(order, axis=-1, kind="stable") < short).astype(np.int64)
        total = COUNT_LIMIT
    freq = counts / total
    wmean = np.einsum("gmk,gmkd->gmd", freq, cb16.astype(np.float64)).reshape(g, m * d)[:, :cin_g]
    return (np.ascontiguousarray(counts, dtype=np.uint16),
            np.ascontiguousarray(wmean, dtype=np.float32))


class ScratchBuffers:
    """Work buffers reused across calls, with their C pointers: fresh megabyte-sized arrays per
    call cost page faults, and making pointers costs more than the small layers' kernels.  (So one
    prepared layer must not run in two threads at once; each engine has its own.)"""

    def _scratch(self, name: str, shape: tuple, dtype=np.float32, zeroed: bool = False):
        """The C pointer of work buffer `name` (made uninitialised, or zeroed, at the first call)."""
        return self._scratch_entry(name, shape, dtype, zeroed)[1]

    def _scratch_array(self, name: str, shape: tuple, dtype=np.float32):
        return self._scratch_entry(name, shape, dtype, False)[0]

    def _scratch_entry(self, name: str, shape: tuple, dtype, zeroed: bool):
        buffers = self.__dict__.setdefault("_buffers", {})
        key = (name, shape)
        if key not in buffers:
            buf = empty_aligned(shape, dtype=dtype)
            if zeroed:
                buf.fill(0)
            buffers[key] = (buf, _ptr(buf, "float *" if dtype == np.float32 else "uint8_t *"))
        return buffers[key]


class PreparedPQ(ScratchBuffers):
    def __init__(self, layer: PQLayer, kernel: str = "exact"):
        if kernel not in IMPLS:
            raise ValueError(f"unknown PQ kernel {kernel!r}; choose from {IMPLS}")
        layer.validate()       # every code < K, shapes consistent: required before C reads them
        fs = kernel in FASTSCAN
        if fs and not fastscan_supported(layer):
            raise ValueError(f"fast-scan needs K <= 16, layer has K = {layer.ksub}")
        if fs and layer.kernel[0] * layer.kernel[1] > MAX_TAPS:
            raise ValueError(f"fast-scan supports kernels up to {MAX_TAPS} taps")
        self.layer, self.kernel = layer, kernel
        g, m, k, d = layer.codebooks.shape
        cb = layer.codebooks
        if fs and k < 16:
            # Pad to 16 codewords with copies of codeword 0: never selected, and they leave each
            # table's min and max (hence the uint8 step) unchanged.
            cb = np.concatenate([cb, np.repeat(cb[:, :, :1], 16 - k, axis=2)], axis=2)
        self.ksub = cb.shape[2]
        self.cbt = np.ascontiguousarray(cb.transpose(0, 1, 3, 2).reshape(g * m, d, self.ksub))
        self.codes = layer.codes
        self._fixed = None
        # Seconds spent building tables (incl. their uint8 quantization) and looking up, summed
        # over calls: the benchmark's per-layer breakdown reads and resets them.
        self.seconds = {"tables": 0.0, "lookups": 0.0}
        self.layout, self._packed_for = None, None
        # A Patches layer (qcnn.layers) whose windows this 1x1 fast-scan layer reads straight from
        # its input image, instead of their im2col copy (read_windows_in_place).
        self.windows = None
        # Fast-scan: remove the expected rounding error of the uint8 tables (pq_fastscan.c).  Off
        # only to measure what it brings (scripts/fastscan_error.py), and in two passes, whose
        # second one takes that error away itself.
        self.debias = kernel == "fastscan"
        if fs:
            self.pack_codes()
            self.code_counts, self.mean_weight = code_statistics(layer, cb)

    def best_layout(self) -> str:
        """FC layers read each code once per image (memory-bound): two codes per byte.  Convolutions
        reuse codes at every position: one per byte, in the dot layout where the CPU has byte dot
        products (lookups 1.6x faster on AlexNet's conv2-5, 2.2x on Lite0's 1x1 layers with VNNI;
        on ARM, udot: unmeasured)."""
        if self.layer.kind_of == "fc":
            return "nibbles"
        return "dot" if lib.qc_isa() in (lib.QC_ISA_AVX512VNNI, lib.QC_ISA_NEONDOT) else "bytes"

    def pack_codes(self, layout: str | None = None) -> None:
        """The fast-scan code layout (pq_fastscan.c documents them); None: the best one for the SIMD
        variant in use, made again if that changes (kernels.set_isa)."""
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"unknown fast-scan layout {layout!r}; choose from {sorted(LAYOUTS)}")
        l = self.layer
        kh, kw = l.kernel
        self.layout = layout or self.best_layout()
        self._packed_for = None if layout else lib.qc_isa()
        self._fixed = None
        size = lib.qc_fs_packed_size(kh, kw, l.groups, l.M, l.out_channels, LAYOUTS[self.layout])
        self.packed = empty_aligned((size,), dtype=np.uint8)
        lib.qc_fs_pack_codes(_ptr(self.codes, "uint8_t *"), kh, kw, l.groups, l.M, l.out_channels,
                             LAYOUTS[self.layout], _ptr(self.packed, "uint8_t *"))

    def table_bytes(self, w: int) -> int:
        """Bytes of lookup tables for one input row of width w."""
        l = self.layer
        return w * l.groups * l.M * self.ksub * (4 + {"exact": 0, "fastscan": 1, "fastscan2": 2}[self.kernel])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.windows is not None:
            return self._over_windows(x)
        return run_in_bands(self, x)

    def read_windows_in_place(self, patches) -> None:
        """Take the image the Patches layer `patches` would unroll, and build each output pixel's
        tables from its window of the image (qc_fs_tables_u8_windows): the same tables, without
        the im2col copy (4.4 MB for AlexNet's conv1; it cost more than the lookups)."""
        from ..layers import Patches
        l = self.layer
        if not isinstance(patches, Patches) or self.kernel != "fastscan" or l.kernel != (1, 1) or l.groups != 1 \
                or tuple(l.stride) != (1, 1) or l.pads not in ((0, 0, 0, 0), [0, 0, 0, 0]):
            raise ValueError("windows in place: needs a Patches layer before a one-group 1x1 fast-scan layer")
        self.windows = patches

    def _over_windows(self, x: np.ndarray) -> np.ndarray:
        from ..layers import pad_nhwc
        l, patches = self.layer, self.windows
        x = np.ascontiguousarray(x, dtype=np.float32)
        (kh, kw), (sh, sw) = patches.kernel, patches.stride
        if x.ndim != 4 or kh * kw * x.shape[-1] != l.in_channels:
            raise ValueError(f"{l.describe()}: expected NHWC images of {l.in_channels // (kh * kw)} channels "
                             f"for its {kh}x{kw} windows, got shape {x.shape}")
        n, h, w, c = x.shape
        pads, oh, ow = patches.geometry(h, w)
        if min(pads) < 0:
            raise ValueError(f"{l.describe()}: negative padding")
        xp = np.ascontiguousarray(pad_nhwc(x, pads))
        hp, wp = xp.shape[1:3]
        if (oh - 1) * sh + kh > hp or (ow - 1) * sw + kw > wp:
            raise ValueError("windows in place: bad geometry")
        if self._packed_for is not None and self._packed_for != lib.qc_isa():
            self.pack_codes()
        m, cin = l.M, l.in_channels
        y = empty_aligned((n, oh, ow, l.out_channels))
        rows = max(1, TABLE_BUDGET_BYTES // max(1, self.table_bytes(ow)) - 1)
        cbt, _, bias, packed, wmean, counts = self._pointers()
        T = self._scratch("tables", (1, m, 16), np.float32)
        buf = self._scratch("windows", (4, cin), np.float32)
        act = _ACT[l.activation]
        for b in range(n):
            image = _ptr(xp[b])
            for oy0 in range(0, oh, rows):
                r = min(rows, oh - oy0)
                Q = self._scratch("q", (r * ow, 1, -(-m // 4) * 4, 16), np.uint8)
                scale = self._scratch("scale", (r * ow, 1), np.float32)
                offset_sum = self._scratch("offset_sum", (r * ow, 1), np.float32)
                t0 = time.perf_counter()
                lib.qc_fs_tables_u8_windows(image, wp, c, kh, kw, sh, sw, oy0, r, ow, m, l.dsub, cbt, wmean, counts,
                                            T, Q, scale, offset_sum, buf)
                t1 = time.perf_counter()
                lib.qc_pq_conv_fastscan(Q, scale, offset_sum, r, ow, 1, m, packed, 1, 1, 1, 1, 0, 0, l.out_channels,
                                        bias, _ptr(y[b, oy0:oy0 + r]), r, ow, act, LAYOUTS[self.layout])
                self._count(t0, t1)
        return y

    def _pointers(self):
        """Pointers to the arrays every call reads, made once."""
        if self._fixed is None:
            l = self.layer
            fs = self.kernel in FASTSCAN
            self._fixed = (_ptr(self.cbt), _ptr(self.codes, "uint8_t *"), _ptr(l.bias),
                           _ptr(self.packed, "uint8_t *") if fs else ffi.NULL,
                           _ptr(self.mean_weight) if fs and self.debias else ffi.NULL,
                           _ptr(self.code_counts, "uint16_t *") if fs and self.debias else ffi.NULL)
        return self._fixed

    def _band(self, xb: np.ndarray, yb: np.ndarray, pt: int, pl: int, sh: int, sw: int) -> None:
        """Output rows yb from input rows xb; pt, pl: padding before the band (may count rows
        of the image above it, which the band's outputs never read)."""
        l = self.layer
        h, w, c = xb.shape
        oh, ow, cout = yb.shape
        kh, kw = l.kernel
        g, m = l.groups, l.M
        # The kernels read rows oy*sh - pt + i for i < kh, clipped to [0, h): check they exist.
        if pt < 0 or pl < 0 or (oh - 1) * sh - pt + kh > h + kh or not yb.flags.c_contiguous:
            raise ValueError("PQ kernel: bad band geometry")
        if self._packed_for is not None and self._packed_for != lib.qc_isa():
            self.pack_codes()
        px, py = _ptr(np.ascontiguousarray(xb)), _ptr(yb)
        cbt, codes, bias, packed, wmean, counts = self._pointers()
        act = _ACT[l.activation]
        t0 = time.perf_counter()
        if self.kernel == "exact":
            T = self._scratch("tables", (h * w, g * m, self.ksub), np.float32)
            lib.qc_pq_tables_f32(px, h * w, c, g, m, l.dsub, self.ksub, cbt, T)
            t1 = time.perf_counter()
            lib.qc_pq_conv_exact(T, h, w, g, m, self.ksub, codes, kh, kw, sh, sw, pt, pl, cout, bias, py, oh, ow, act)
            self._count(t0, t1)
            return
        if self.kernel == "fastscan2":
            self._two_passes(px, py, h, w, c, yb, pt, pl, sh, sw, t0)
            return
        # An output of a k x k layer sums tables of several pixels: they must share one scale,
        # so all float tables of the band are kept; otherwise one pixel's at a time.
        shared = int(kh * kw > 1)
        T = self._scratch("tables", ((h * w if shared else 1), g * m, 16), np.float32)
        Q = self._scratch("q", (h * w, g, -(-m // 4) * 4, 16), np.uint8)
        scale = self._scratch("scale", (h * w, g), np.float32)
        offset_sum = self._scratch("offset_sum", (h * w, g), np.float32)
        lib.qc_fs_tables_u8(px, h * w, c, g, m, l.dsub, cbt, wmean, counts, shared, T, Q, scale, offset_sum)
        t1 = time.perf_counter()
        lib.qc_pq_conv_fastscan(Q, scale, offset_sum, h, w, g, m, packed, kh, kw, sh, sw, pt, pl, cout, bias,
                                py, oh, ow, act, LAYOUTS[self.layout])
        self._count(t0, t1)

    def _two_passes(self, px, py, h: int, w: int, c: int, yb: np.ndarray, pt: int, pl: int, sh: int, sw: int,
                    t0: float) -> None:
        """Two-pass fast-scan: the lookups on the uint8 tables, then on what their rounding left
        out (qc_fs_residual_u8), added: as precise as 16-bit tables, at twice the lookups.  The
        float tables of the band are kept for the residual, so its pixels share one step."""
        l = self.layer
        oh, ow, cout = yb.shape
        kh, kw = l.kernel
        g, m = l.groups, l.M
        npg, mp = h * w * g, -(-m // 4) * 4
        T = self._scratch("tables", (h * w, g * m, 16), np.float32)
        Q, R = (self._scratch(name, (h * w, g, mp, 16), np.uint8) for name in ("q", "residual"))
        scale, offset_sum, scale_r, offset_r = (self._scratch(name, (h * w, g), np.float32)
                                                for name in ("scale", "offset_sum", "scale_r", "offset_r"))
        cbt, _, bias, packed, _, _ = self._pointers()
        lib.qc_fs_tables_u8(px, h * w, c, g, m, l.dsub, cbt, ffi.NULL, ffi.NULL, 1, T, Q, scale, offset_sum)
        lib.qc_fs_residual_u8(T, npg, m, Q, scale, offset_sum, R, scale_r, offset_r)
        t1 = time.perf_counter()
        zero_bias = self._scratch("zero_bias", (cout,), zeroed=True)
        y2 = self._scratch_array("second_pass", yb.shape)
        args = (h, w, g, m, packed, kh, kw, sh, sw, pt, pl, cout)
        tail = (oh, ow, _ACT[None], LAYOUTS[self.layout])
        lib.qc_pq_conv_fastscan(Q, scale, offset_sum, *args, bias, py, *tail)
        lib.qc_pq_conv_fastscan(R, scale_r, offset_r, *args, zero_bias, _ptr(y2), *tail)
        np.add(yb, y2, out=yb)
        if l.activation == "relu":
            np.maximum(yb, 0.0, out=yb)
        elif l.activation == "relu6":
            np.clip(yb, 0.0, 6.0, out=yb)
        self._count(t0, t1)

    def _count(self, t0: float, t1: float) -> None:
        self.seconds["tables"] += t1 - t0
        self.seconds["lookups"] += time.perf_counter() - t1


def run_in_bands(prepared, x: np.ndarray, budget: int = TABLE_BUDGET_BYTES) -> np.ndarray:
    """A prepared lookup layer (PreparedPQ, widescan.PreparedWide) over a batch: per image, bands of
    output rows whose tables fit `budget` bytes, each handed to prepared._band."""
    l = prepared.layer
    x = np.asarray(x)
    if l.kind_of == "fc":
        x = x.reshape(x.shape[0], 1, 1, -1)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"{l.describe()}: expected an NHWC batch, got shape {x.shape}")
    n, h, w, c = x.shape
    if c != l.in_channels:
        raise ValueError(f"{l.describe()}: got {c} input channels")
    kh, kw = l.kernel
    sh, sw = l.stride
    (top, bottom, left, right), oh, ow = l.geometry(h, w)
    if min(top, bottom, left, right) < 0:
        raise ValueError(f"{l.describe()}: negative padding")
    if (kh, kw) == (1, 1) and (sh, sw) != (1, 1) and not (top or left):
        # A strided 1x1 reads a quarter of the pixels: build tables for those only.
        x = np.ascontiguousarray(x[:, ::sh, ::sw][:, :oh, :ow])
        n, h, w, c = x.shape
        sh = sw = 1
        top = left = 0
    y = empty_aligned((n, oh, ow, l.out_channels))
    rows = max(1, budget // max(1, prepared.table_bytes(w) * sh) - kh)
    for b in range(n):
        for oy0 in range(0, oh, rows):
            oy1 = min(oh, oy0 + rows)
            r0 = max(0, oy0 * sh - top)
            r1 = min(h, (oy1 - 1) * sh - top + kh)
            prepared._band(x[b, r0:r1], y[b, oy0:oy1], top + r0 - oy0 * sh, left, sh, sw)
    return y.reshape(n, -1) if l.kind_of == "fc" else y
