"""The quantized model file (`.qcnn`): a network, its PQ layers and what it takes to run it.

Layout (all integers little-endian):

    offset  size  field
    0       8     magic  b"QCNN\\x00\\r\\n\\x1a"  (NUL, CRLF and ^Z catch text-mode transfers)
    8       2     format version, u16 (this module reads and writes version 1)
    10      4     header length H, u32 (at most 4 MiB)
    14      H     header: UTF-8 JSON object, see below
    14+H    D     array section: the arrays' bytes back to back, in the header's order, no padding
    14+H+D  32    SHA-256 of every byte before it

Header keys:
    model       {"name", "description", "speed_test_only", "identity"} of the Model
    preprocess  Preprocess.to_dict()
    labels      list of class names
    graph       {"input", "output", "nodes": [{"name", "type", "inputs", "attrs"[, "pq"]}, ...]}
                in execution order; "type" is the layer class name, "attrs" its scalar fields
                (non-finite floats as "inf"/"-inf"); PQ layers add "pq": {"dsub", "ksub", "bits"}
    metadata    the caller's JSON object (error correction, calibration source, kernels, ...)
    arrays      [{"name": "<node>.<field>", "dtype", "shape", "offset", "length"[, "bits"]}, ...]
                offsets count from the start of the array section

Arrays are float32 (weights, biases, codebooks), float16 (codebooks saved with
float16_codebooks=True, widened to float32 at load) or uint8 with "bits" (PQ codes).  Codes
are bit-packed at bits = ceil(log2 K) per code: the codes, flattened in C order from the canonical
(KH, KW, M, C_out) array, form a bit stream in which code i occupies stream bits i*bits ..
(i+1)*bits - 1, least significant bit first, and stream bit j is bit (j mod 8) of byte j // 8
(numpy's bitorder="little").  The last byte's unused high bits are zero.

Why SHA-256 rather than CRC32: 28 more bytes and ~2 ms per MB on load buy a check no accidental
corruption gets past, and a digest that can double as the file's identity.  It is not a signature:
whoever can edit the file can recompute it, so loading still validates everything else.

Metadata keys this package writes and reads have a schema too (`METADATA`: settings, config,
model_identity, source, ...); other keys are the caller's own, any JSON.

Loading reads the file once (regular files only: a FIFO would block forever) and validates before
building anything: magic, version, sizes, checksum, the header's schema (every type, every value's
range, unique node names, inputs that exist, pooling pads smaller than the window), the metadata's
schema, every array's dtype, shape, place, exact length and finite values, every code < K, then
builds the layers (PQLayer.validate), the Graph (wiring) and the Model, which checks every layer
fits the tensor it reads and that the work and memory per image stay within qcnn.budget's limits.
Any failure is a ModelFileError; no allocation exceeds a small multiple of the file's size.

Saving runs the same checks on what it is about to write (so it never writes a file the reader
refuses), then writes a temporary file beside the target and renames it over the target: the
target is always the old file or the complete new one.  A failed or interrupted save removes its
temporary; one killed outright cannot, so each temporary names its process and the next save of
that file removes those whose process is gone.  (O_TMPFILE would avoid the name altogether, but
linking it into place through /proc is refused on some kernels.)
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import secrets
import struct
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .. import layers as L
from ..budget import BudgetError
from ..files import NotARegularFile, open_regular
from ..graph import Graph, Node
from ..models import Model
from ..preprocess import Preprocess
from .layer import PQLayer, PQSetting

MAGIC = b"QCNN\x00\r\n\x1a"
VERSION = 1
_PREFIX = struct.Struct("<8sHI")          # magic, version, header length
_DIGEST = 32
MAX_HEADER = 4 * 2**20
_CHUNK = 2**20                            # codes (un)packed per step: bounds the temporaries


class ModelFileError(ValueError):
    """A model file cannot be read or written; `path` names it, `reason` says why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)      # both in args, so the error survives pickling
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"model file '{self.path}': {self.reason}"


class _Invalid(Exception):
    """Raised inside the parser; load_model_file adds the path."""


# --------------------------------------------------------------------------- code packing

def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 bytes of `codes` at `bits` bits each, in the stream order of the module docstring."""
    flat = np.ascontiguousarray(codes, np.uint8).reshape(-1)
    if bits == 8:
        return flat.copy()
    out = np.empty(-(-flat.size * bits // 8), np.uint8)
    for start in range(0, flat.size, _CHUNK):   # _CHUNK is a multiple of 8: chunks start on a byte
        chunk = flat[start:start + _CHUNK]
        stream = np.unpackbits(chunk[:, None], axis=1, bitorder="little")[:, :bits]
        packed = np.packbits(stream.reshape(-1), bitorder="little")
        o = start * bits // 8
        out[o:o + packed.size] = packed
    return out


def unpack_codes(packed: np.ndarray, count: int, bits: int) -> np.ndarray:
    """The `count` codes that pack_codes wrote, as a flat uint8 array."""
    if packed.size != -(-count * bits // 8):
        raise ValueError(f"{packed.size} bytes cannot hold exactly {count} codes of {bits} bits")
    if bits == 8:
        return packed.copy()
    out = np.empty(count, np.uint8)
    for start in range(0, count, _CHUNK):
        n = min(_CHUNK, count - start)
        o = start * bits // 8
        stream = np.unpackbits(packed[o:o + -(-n * bits // 8)], count=n * bits, bitorder="little")
        out[start:start + n] = np.packbits(stream.reshape(n, bits), axis=1, bitorder="little")[:, 0]
    used = count * bits % 8
    if used and int(packed[-1]) >> used:
        raise ValueError("padding bits after the last code are not zero")
    return out


# --------------------------------------------------------------------------- header schema
# Each checker takes a parsed JSON value and returns the layer's value or raises _Invalid.

def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def check(v):
        if type(v) is not int or not lo <= v <= hi:    # type(): bool is an int subclass
            raise _Invalid(f"expected an integer in {lo}..{hi}, got {v!r:.40}")
        return v
    return check


def _one_of(*choices) -> Callable[[Any], Any]:
    def check(v):
        if v not in choices or type(v) not in (str, type(None)):
            raise _Invalid(f"expected one of {choices}, got {v!r:.40}")
        return v
    return check


def _ints(n: int, lo: int, hi: int) -> Callable[[Any], tuple]:
    item = _int(lo, hi)

    def check(v):
        if type(v) is not list or len(v) != n:
            raise _Invalid(f"expected a list of {n} integers, got {v!r:.40}")
        return tuple(item(x) for x in v)
    return check


def _real(v) -> float:
    if type(v) not in (int, float) or not math.isfinite(v):
        raise _Invalid(f"expected a finite number, got {v!r:.40}")
    return float(v)


def _extended_real(v) -> float:
    """A number, or "inf" / "-inf" (JSON has no infinity)."""
    if v in ("inf", "-inf") and type(v) is str:
        return float(v)
    return _real(v)


def _bool(v) -> bool:
    if type(v) is not bool:
        raise _Invalid(f"expected true or false, got {v!r:.40}")
    return v


def _str(v) -> str:
    if type(v) is not str:
        raise _Invalid(f"expected a string, got {v!r:.40}")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:           # a lone surrogate from a JSON escape: unprintable
        raise _Invalid(f"string {v!r:.40} is not valid Unicode") from None
    return v


_DIM = 2**16                              # bound on kernel sizes, strides and pads
_pair = _ints(2, 1, _DIM)
_count = _int(1, 2**24)
_pad4 = _ints(4, 0, _DIM)


def _pads(v):
    return v if v == "same" and type(v) is str else _pad4(v)


_activation = _one_of(*L.ACTIVATIONS)


@dataclass(frozen=True)
class _Arr:
    dtypes: tuple[str, ...]               # allowed stored dtypes; the layer always gets float32/uint8
    ndim: int | None
    optional: bool = False


_F32 = ("float32",)


@dataclass(frozen=True)
class _Spec:
    cls: type
    attrs: dict[str, Callable[[Any], Any]]
    arrays: dict[str, _Arr]
    arity: tuple[int, int] = (1, 1)       # min, max inputs


_MAX_INPUTS = 1024
_RANK = 8                                 # array rank of the imported networks' layers


def _int_list(lo: int, hi: int, max_len: int = _RANK) -> Callable[[Any], tuple]:
    item = _int(lo, hi)

    def check(v):
        if type(v) is not list or len(v) > max_len:
            raise _Invalid(f"expected a list of at most {max_len} integers, got {v!r:.40}")
        return tuple(item(x) for x in v)
    return check


def _perm(v):
    if v is None:
        return None
    perm = _int_list(0, _RANK - 1)(v)
    if sorted(perm) != list(range(len(perm))) or perm[:1] != (0,):
        raise _Invalid(f"expected a permutation keeping axis 0 first, got {v!r:.40}")
    return perm


def _slices(v):
    if type(v) is not list or len(v) >= _RANK:
        raise _Invalid(f"expected a list of slices, got {v!r:.40}")
    index = _int(-2**31, 2**31)
    out = []
    for s in v:
        if type(s) is not list or len(s) != 3 or s[2] == 0:
            raise _Invalid(f"expected [start, stop or null, step != 0], got {s!r:.40}")
        out.append((index(s[0]), None if s[1] is None else index(s[1]), index(s[2])))
    return tuple(out)


def _pad_pairs(v):
    if type(v) is not list or len(v) >= _RANK:
        raise _Invalid(f"expected a list of (before, after) pairs, got {v!r:.40}")
    return tuple(_ints(2, 0, _DIM)(p) for p in v)


_LAYERS: dict[str, _Spec] = {
    "Conv2D": _Spec(L.Conv2D, {"stride": _pair, "pads": _pads, "groups": _count, "activation": _activation},
                    {"weight": _Arr(_F32, 4), "bias": _Arr(_F32, 1, True)}),
    "Dense": _Spec(L.Dense, {"activation": _activation}, {"weight": _Arr(_F32, 2), "bias": _Arr(_F32, 1, True)}),
    "PQLayer": _Spec(PQLayer, {"kind_of": _one_of("conv", "fc"), "in_channels": _count, "stride": _pair,
                               "pads": _pads, "groups": _count, "activation": _activation},
                     {"codebooks": _Arr(("float32", "float16"), 4), "codes": _Arr(("uint8",), 4),
                      "bias": _Arr(_F32, 1, True)}),
    "Activation": _Spec(L.Activation, {"name": _one_of("relu", "relu6")}, {}),
    "Clip": _Spec(L.Clip, {"lo": _extended_real, "hi": _extended_real}, {}),
    "Pool2D": _Spec(L.Pool2D, {"mode": _one_of("max", "avg"), "kernel": _pair, "stride": _pair, "pads": _pads,
                               "ceil_mode": _bool, "count_include_pad": _bool}, {}),
    "GlobalAvgPool": _Spec(L.GlobalAvgPool, {}, {}),
    "LRN": _Spec(L.LRN, {"size": _int(1, _DIM), "alpha": _real, "beta": _real, "k": _real}, {}),
    "Affine": _Spec(L.Affine, {}, {"scale": _Arr(_F32, None), "shift": _Arr(_F32, None)}),
    "Add": _Spec(L.Add, {}, {}, (2, 2)),
    "Concat": _Spec(L.Concat, {}, {}, (1, _MAX_INPUTS)),
    "Flatten": _Spec(L.Flatten, {}, {}),
    "Patches": _Spec(L.Patches, {"kernel": _pair, "stride": _pair, "pads": _pads}, {}),
    "Pad": _Spec(L.Pad, {"pads": _pad4, "value": _extended_real}, {}),
    "Softmax": _Spec(L.Softmax, {}, {}),
    # the layers of imported ONNX networks (layers.Unary ...); Unary.inplace is never stored: a file
    # must not decide which arrays get overwritten
    "ChannelAffine": _Spec(L.ChannelAffine, {"activation": _activation}, {"scale": _Arr(_F32, 1), "shift": _Arr(_F32, 1)}),
    "Unary": _Spec(L.Unary, {"name": _one_of(*L.UNARY), "alpha": _real, "beta": _real}, {}),
    "Binary": _Spec(L.Binary, {"op": _one_of("add", "sub", "mul", "div", "max", "min", "pow"), "const_first": _bool},
                    {"const": _Arr(_F32, None, True)}, (1, 2)),
    "PRelu": _Spec(L.PRelu, {}, {"slope": _Arr(_F32, None)}),
    "Reshape": _Spec(L.Reshape, {"shape": _int_list(1, 2**30), "perm": _perm}, {}),
    "Slice": _Spec(L.Slice, {"slices": _slices}, {}),
    "Reduce": _Spec(L.Reduce, {"op": _one_of("mean", "max", "min", "sum"), "axes": _int_list(1, _RANK - 1),
                               "keepdims": _bool}, {}),
    "LayerNorm": _Spec(L.LayerNorm, {"eps": _real, "axes": _int(1, _RANK - 1)},
                       {"scale": _Arr(_F32, None), "bias": _Arr(_F32, None, True)}),
    "SoftmaxAxis": _Spec(L.SoftmaxAxis, {"axis": _int(-_RANK, _RANK - 1), "log": _bool}, {}),
    "ConcatAxis": _Spec(L.ConcatAxis, {"axis": _int(1, _RANK - 1)}, {}, (1, _MAX_INPUTS)),
    "PadND": _Spec(L.PadND, {"pads": _pad_pairs, "mode": _one_of("constant", "reflect", "edge"),
                             "value": _extended_real}, {}),
}

_PREPROCESS = {"resize": _int(1, _DIM), "crop": _int(1, _DIM), "mean": lambda v: tuple(map(_real, _list(v, 3))),
               "std": lambda v: tuple(map(_real, _list(v, 3))), "channel_order": _one_of("RGB", "BGR"),
               "resample": _one_of("bicubic", "bilinear"), "warp": _bool}


def _list(v, n: int | None = None) -> list:
    if type(v) is not list or (n is not None and len(v) != n):
        raise _Invalid(f"expected a list{'' if n is None else f' of {n}'}, got {v!r:.40}")
    return v


def _dict(v, what: str) -> dict:
    """Any JSON object (identity, metadata: the caller's own)."""
    if type(v) is not dict:
        raise _Invalid(f"{what}: expected an object, got {v!r:.40}")
    return v


def _object(v, what: str, keys: set[str], optional: set[str] = frozenset()) -> dict:
    """A JSON object with exactly `keys` (plus any of `optional`)."""
    if type(v) is not dict:
        raise _Invalid(f"{what}: expected an object, got {v!r:.40}")
    missing, unknown = keys - v.keys(), v.keys() - keys - optional
    if missing or unknown:
        raise _Invalid(f"{what}: " + (f"missing {sorted(missing)}" if missing else f"unknown keys {sorted(unknown)}"))
    return v


def _field(what: str, check, v):
    """check(v), with `what` named in the error."""
    try:
        return check(v)
    except _Invalid as exc:
        raise _Invalid(f"{what}: {exc}") from None


def _optional(check):
    return lambda v: None if v is None else check(v)


def _pq_setting(v) -> dict | None:
    if v is None:
        return None
    _object(v, "setting", {"dsub", "ksub"}, {"taps"})
    out = {"dsub": _field("dsub", _count, v["dsub"]), "ksub": _field("ksub", _int(2, 256), v["ksub"])}
    if "taps" in v:
        out["taps"] = _field("taps", _bool, v["taps"])
    return out


def _settings_by_layer(v) -> dict:
    for name, setting in _dict(v, "layers").items():
        _field(f"layer {name!r:.40}", _pq_setting, setting)
    return v


def _fields(**checks):
    """An object whose listed keys, where present, pass their checks (others are left alone)."""
    def check(v):
        _dict(v, "value")
        for key, field_check in checks.items():
            if key in v:
                _field(key, field_check, v[key])
        return v
    return check


def _nonnegative(v) -> float:
    if _real(v) < 0:
        raise _Invalid(f"expected a number >= 0, got {v!r:.40}")
    return v


def _kernel_plan_entry(v) -> dict:
    _object(v, "layer plan", {"kernel"}, {"error", "ms"})
    _field("kernel", _one_of("exact", "reconstructed", "fastscan", "fastscan2", "widescan"), v["kernel"])
    if "error" in v:
        _field("error", _optional(_nonnegative), v["error"])
    if "ms" in v:
        for impl, ms in _dict(v["ms"], "ms").items():
            _field(f"ms {impl!r:.20}", _nonnegative, ms)
    return v


def _kernel_plan(v) -> dict:
    """qcnn.pq.engine.kernel_plan(): what "auto" runs per layer, for one SIMD level."""
    _object(v, "kernel plan", {"version", "isa", "budget", "layers"}, {"images", "source", "output_error", "limit", "quantization_error",
                                                                "kernels"})
    _field("version", _int(0, 2**31), v["version"])
    _field("isa", _str, v["isa"])
    if "kernels" in v:
        _field("kernels", _str, v["kernels"])
    _field("budget", _nonnegative, v["budget"])
    if "images" in v:
        _field("images", _int(0, 2**31), v["images"])
    for key in ("output_error", "limit"):
        if key in v:
            _field(key, _nonnegative, v[key])
    if "quantization_error" in v:
        _field("quantization_error", _optional(_nonnegative), v["quantization_error"])
    for name, entry in _dict(v["layers"], "layers").items():
        _field(f"layer {name!r:.40}", _kernel_plan_entry, entry)
    return v


def _kernel_plans(v) -> dict:
    for isa, plan in _dict(v, "kernel_plans").items():
        _field(f"SIMD level {isa!r:.20}", _kernel_plan, plan)
    return v


_seed = _int(-2**63, 2**64)
#: Metadata keys qcnn writes and reads, and their schema: checked on load and on save, so the
#: readers (the workbench, eval, bench, the app) get the types they expect.  Other keys: any JSON.
METADATA: dict[str, Callable[[Any], Any]] = {
    # qcnn.pq.settings.QuantSettings.to_dict(); files of earlier versions name the overrides per_layer
    "settings": _fields(conv=_pq_setting, fc=_pq_setting, layers=_settings_by_layer, per_layer=_settings_by_layer,
                        error_correction=_bool, iterations=_int(0, 2**31), max_rows=_int(1, 2**62),
                        kmeans_init=_int(1, 2**31), shrinkage=_real, calib_folder=_optional(_str),
                        calib_count=_int(0, 2**31), seed=_seed),
    "quantizer_version": _int(0, 2**31),
    "config": _fields(layers=_settings_by_layer, error_correction=_bool, iterations=_int(0, 2**31), seed=_seed,
                      max_rows=_int(1, 2**62), kmeans_init=_int(1, 2**31), shrinkage=_real),
    "model_identity": _fields(name=_str),
    "source": _str,
    "cache_key": _str,
    "app": _str,
    "calibration_count": _int(0, 2**62),
    "quantize_seconds": _nonnegative,
    # kernel plans measured for this model ("auto"), by SIMD level name: qcnn.pq.engine.kernel_plan
    "kernel_plans": _kernel_plans,
}


def _check_metadata(v) -> dict:
    metadata = _dict(v, "metadata")
    for key, check in METADATA.items():
        if key in metadata:
            _field(f"metadata {key}", check, metadata[key])
    return metadata


# --------------------------------------------------------------------------- saving

def _json_value(v):
    """A layer attribute as JSON: tuples as lists, infinities as strings, numpy scalars as Python."""
    if isinstance(v, (tuple, list)):
        return [_json_value(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        if math.isnan(v):
            raise ValueError("NaN attribute")
        return "inf" if v > 0 else "-inf"
    return v


def _spec_name(layer: L.Layer) -> str:
    for name, spec in _LAYERS.items():
        if isinstance(layer, spec.cls):
            return name
    raise ValueError(f"layer type {type(layer).__name__} cannot be saved")


def _bytes_of(a: np.ndarray, dtype: str) -> np.ndarray:
    """The array's little-endian bytes as a flat uint8 view (a copy only when the dtype changes)."""
    return np.ascontiguousarray(a, np.dtype(dtype).newbyteorder("<")).reshape(-1).view(np.uint8)


def _serialise(model, graph: Graph, metadata: dict, float16_codebooks: bool):
    """(header bytes, list of array byte buffers)."""
    nodes, table, blobs, offset = [], [], [], 0

    def add(name, stored: np.ndarray, dtype: str, shape, bits=None):
        nonlocal offset
        entry = {"name": name, "dtype": dtype, "shape": list(shape), "offset": offset, "length": int(stored.size)}
        if bits is not None:
            entry["bits"] = bits
        table.append(entry)
        blobs.append(stored)
        offset += int(stored.size)

    for node in graph.nodes:
        layer, kind = node.layer, _spec_name(node.layer)
        spec = _LAYERS[kind]
        record = {"name": node.name, "type": kind, "inputs": list(node.inputs),
                  "attrs": {a: _json_value(getattr(layer, a)) for a in spec.attrs}}
        for role, arr in spec.arrays.items():
            a = getattr(layer, role)
            if a is None:
                continue
            name = f"{node.name}.{role}"
            if role == "codes":
                add(name, pack_codes(a, layer.setting.bits), "uint8", a.shape, layer.setting.bits)
            elif role == "codebooks" and float16_codebooks:
                with np.errstate(over="ignore"):        # overflow is reported just below
                    half = a.astype(np.float16)
                if not np.isfinite(half).all():
                    raise ValueError(f"{node.name}: codebook values exceed the float16 range")
                add(name, _bytes_of(half, "float16"), "float16", a.shape)
            else:
                add(name, _bytes_of(a, "float32"), "float32", a.shape)
        if isinstance(layer, PQLayer):
            s = layer.setting
            record["pq"] = {"dsub": s.dsub, "ksub": s.ksub, "bits": s.bits}
        nodes.append(record)

    header = {
        "model": {"name": model.name, "description": model.description,
                  "speed_test_only": bool(model.speed_test_only), "identity": dict(model.identity)},
        "preprocess": model.preprocess.to_dict(),
        "labels": list(model.labels),
        "graph": {"input": graph.input_name, "output": graph.output, "nodes": nodes},
        "metadata": dict(metadata or {}),
        "arrays": table,
    }
    # Compact and NaN-free: the header is strict JSON any reader can parse.
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    if len(text) > MAX_HEADER:
        raise ValueError(f"header is {len(text)} bytes, more than {MAX_HEADER} (labels or metadata too large?)")
    return text, blobs


def save_model(path: str | os.PathLike, model: Model, graph: Graph | None = None,
               metadata: dict | None = None, *, float16_codebooks: bool = False) -> int:
    """Write `graph` (default: model.graph, usually a quantized graph) as a model file.

    `model` supplies name, description, identity, preprocessing and labels; `metadata` is any
    JSON object to keep with it (the keys of METADATA must follow its schema).  What would be
    written is first checked as the reader checks it; then it is written atomically (module
    docstring), so `path` is either the old file or the complete new one.
    Returns the file's size in bytes."""
    path = os.fspath(path)
    graph = model.graph if graph is None else graph
    try:
        header, blobs = _serialise(model, graph, metadata, float16_codebooks)
        _check_as_reader(header, blobs)
    except _Invalid as exc:
        raise ModelFileError(path, f"cannot save: the file would not load: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ModelFileError(path, f"cannot save: {exc}") from exc
    directory = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(path).st_mode & 0o7777     # replacing a file keeps its permissions
    except OSError:
        mode = 0o644     # a private temporary's 0600 would hide the file from other users
    _remove_stale_temporaries(directory, os.path.basename(path))
    try:
        size = _write_atomically(path, directory, mode, (_PREFIX.pack(MAGIC, VERSION, len(header)), header, *blobs))
    except OSError as exc:
        raise ModelFileError(path, f"cannot write: {exc.strerror or exc}") from exc
    with contextlib.suppress(OSError):   # make the rename itself durable; not possible everywhere
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return size


def _check_as_reader(header: bytes, blobs: list[np.ndarray]) -> None:
    """Everything load_model_file checks, on the header and arrays about to be written."""
    by_offset, offset = {}, 0
    for blob in blobs:
        by_offset[offset] = blob
        offset += blob.size

    def fetch(start: int, length: int) -> np.ndarray:
        blob = by_offset.get(start)
        if blob is None or blob.size != length:
            raise _Invalid(f"array bytes at offset {start} do not match the table")
        return blob

    parsed = _parse_json(header)
    _build(parsed, _read_arrays(parsed.get("arrays"), fetch, offset))


def _temporary_name(directory: str, base: str) -> str:
    # The writer's process id in the name tells a later save whether the writer is still alive.
    return os.path.join(directory, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _write_atomically(path: str, directory: str, mode: int, chunks) -> int:
    tmp = _temporary_name(directory, os.path.basename(path))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        with os.fdopen(fd, "wb") as f:
            digest = hashlib.sha256()
            for chunk in chunks:
                f.write(chunk)
                digest.update(chunk)
            f.write(digest.digest())
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:     # including KeyboardInterrupt: never leave the temporary behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return size


_STALE_AFTER = 24 * 3600          # seconds: temporaries without a process id (older versions)


def _remove_stale_temporaries(directory: str, base: str) -> None:
    """Remove temporaries of `base` left by saves that were killed (their process is gone)."""
    pattern = re.compile(rf"\.{re.escape(base)}\.(?:(\d+)\.)?[0-9a-z_]+\.tmp")
    with contextlib.suppress(OSError):
        names = os.listdir(directory)
        for name in names:
            match = pattern.fullmatch(name)
            if match is None:
                continue
            full = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                if match.group(1) is not None:
                    if _alive(int(match.group(1))):
                        continue
                elif time.time() - os.stat(full).st_mtime < _STALE_AFTER:
                    continue
                os.unlink(full)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):
        return True                    # someone else's process, or not knowable: leave it
    return True


# --------------------------------------------------------------------------- loading

def load_model_file(path: str | os.PathLike) -> tuple[Model, dict]:
    """(Model whose graph holds PQLayer nodes for the quantized layers, the saved metadata)."""
    path = os.fspath(path)
    try:
        with open_regular(path) as f:
            data = f.read()
    except NotARegularFile as exc:
        raise ModelFileError(path, exc.strerror) from None
    except OSError as exc:
        raise ModelFileError(path, f"cannot read: {exc.strerror or exc}") from exc
    try:
        return _parse(data)
    except _Invalid as exc:
        raise ModelFileError(path, str(exc)) from None


def _parse(data: bytes) -> tuple[Model, dict]:
    if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        raise _Invalid("not a qcnn model file (bad magic)")
    if len(data) < _PREFIX.size + _DIGEST:
        raise _Invalid(f"truncated: {len(data)} bytes")
    _, version, header_len = _PREFIX.unpack_from(data)
    if version != VERSION:
        raise _Invalid(f"unsupported format version {version} (this qcnn reads version {VERSION})")
    body = len(data) - _DIGEST
    if hashlib.sha256(memoryview(data)[:body]).digest() != data[body:]:
        raise _Invalid("checksum mismatch: the file is corrupted or truncated")
    if header_len > min(MAX_HEADER, body - _PREFIX.size):
        raise _Invalid(f"header length {header_len} does not fit the file or exceeds {MAX_HEADER}")
    header = _parse_json(data[_PREFIX.size:_PREFIX.size + header_len])
    base = _PREFIX.size + header_len
    arrays = _read_arrays(header.get("arrays"), lambda offset, length: np.frombuffer(data, np.uint8, length, base + offset),
                          body - base)
    return _build(header, arrays)


def _no_constant(name):
    raise _Invalid(f"header JSON contains {name}")


def _unique_keys(pairs):
    d = dict(pairs)
    if len(d) != len(pairs):
        raise _Invalid("header JSON repeats a key")
    return d


def _parse_json(raw: bytes) -> dict:
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:   # RecursionError: hostile nesting depth
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:80]
        raise _Invalid(f"header is not valid JSON: {reason}") from None
    return _object(header, "header", {"model", "preprocess", "labels", "graph", "metadata", "arrays"})


def _read_arrays(table, fetch: Callable[[int, int], np.ndarray], size: int) -> dict[str, tuple]:
    """name -> (dtype, shape, bits, bytes as stored: packed codes stay packed), after checking every
    entry; fetch(offset, length) gives an entry's uint8 bytes from the `size`-byte array section."""
    arrays, end = {}, 0
    for i, entry in enumerate(_list(table)):
        what = f"array {i}"
        _object(entry, what, {"name", "dtype", "shape", "offset", "length"}, {"bits"})
        name = _field(what, _str, entry["name"])
        what = f"array {name!r}"
        if name in arrays:
            raise _Invalid(f"{what} appears twice")
        dtype = _field(what + " dtype", _one_of("float32", "float16", "uint8"), entry["dtype"])
        shape = _field(what + " shape", lambda v: tuple(_int(0, 2**40)(x) for x in _list(v)), entry["shape"])
        if len(shape) > 8:
            raise _Invalid(f"{what}: {len(shape)} dimensions")
        offset = _field(what + " offset", _int(0, 2**62), entry["offset"])
        length = _field(what + " length", _int(0, 2**62), entry["length"])
        count = math.prod(shape)
        if "bits" in entry:
            bits = _field(what + " bits", _int(1, 8), entry["bits"])
            if dtype != "uint8":
                raise _Invalid(f"{what}: only uint8 codes are bit-packed")
            expected = -(-count * bits // 8)
        else:
            expected = count * np.dtype(dtype).itemsize
        if length != expected:
            raise _Invalid(f"{what}: length {length}, but shape {list(shape)} needs {expected} bytes")
        # The writer packs arrays back to back in table order: anything else is damage.
        if offset < end:
            raise _Invalid(f"{what}: offset {offset} overlaps the previous array (ends at {end})")
        if offset > end:
            raise _Invalid(f"{what}: offset {offset} leaves a gap after the previous array (ends at {end})")
        if offset + length > size:
            raise _Invalid(f"{what}: bytes {offset}..{offset + length} lie outside the array section ({size} bytes)")
        end = offset + length
        arrays[name] = (dtype, shape, entry.get("bits"), fetch(offset, length))
    if end != size:
        raise _Invalid(f"array section is {size} bytes but its arrays take {end}")
    return arrays


def _take_array(arrays: dict, node: str, role: str, arr: _Arr, pq: dict | None):
    """The layer's float32 or uint8 array for `role`, checked and removed from `arrays`."""
    name = f"{node}.{role}"
    if name not in arrays:
        if arr.optional:
            return None
        raise _Invalid(f"node {node!r}: array {name!r} is missing")
    dtype, shape, bits, raw = arrays.pop(name)
    if dtype not in arr.dtypes or (role == "codes") != (bits is not None):
        raise _Invalid(f"array {name!r}: {dtype}{'' if bits is None else f' packed at {bits} bits'} "
                       f"is not allowed here")
    if arr.ndim is not None and len(shape) != arr.ndim:
        raise _Invalid(f"array {name!r}: expected {arr.ndim} dimensions, got shape {list(shape)}")
    if role == "codes":
        if bits != pq["bits"]:
            raise _Invalid(f"array {name!r}: packed at {bits} bits, the layer's setting says {pq['bits']}")
        try:
            codes = unpack_codes(raw, math.prod(shape), bits)
        except ValueError as exc:
            raise _Invalid(f"array {name!r}: {exc}") from None
        if codes.size and int(codes.max()) >= pq["ksub"]:
            raise _Invalid(f"array {name!r}: code {int(codes.max())} is >= K = {pq['ksub']}")
        return codes.reshape(shape)
    # Copy: the layer gets its own aligned, writeable array, not a view of the file's bytes.
    values = np.frombuffer(raw, np.dtype(dtype).newbyteorder("<")).astype(np.float32).reshape(shape)
    if not np.isfinite(values).all():
        raise _Invalid(f"array {name!r}: contains NaN or infinite values")
    return values


def _check_pq_setting(v, node: str) -> dict:
    pq = _object(v, f"node {node!r} pq", {"dsub", "ksub", "bits"})
    dsub = _field(f"node {node!r} dsub", _count, pq["dsub"])
    ksub = _field(f"node {node!r} ksub", _int(2, 256), pq["ksub"])
    bits = _field(f"node {node!r} bits", _int(1, 8), pq["bits"])
    if bits != PQSetting(dsub, ksub).bits:
        raise _Invalid(f"node {node!r}: {bits} bits per code, but K = {ksub} needs {PQSetting(dsub, ksub).bits}")
    return pq


def _build_node(record, arrays: dict, known: set[str]) -> Node:
    what = "node"
    _object(record, what, {"name", "type", "inputs", "attrs"}, {"pq"})
    name = _field("node name", _str, record["name"])
    what = f"node {name!r}"
    if not name or name in known:
        raise _Invalid(f"{what}: the name is empty or not unique")
    kind = record["type"]
    if type(kind) is not str or kind not in _LAYERS:
        raise _Invalid(f"{what}: unknown layer type {kind!r:.40}")
    spec = _LAYERS[kind]
    inputs = tuple(_field(f"{what} inputs", _str, i) for i in _list(record["inputs"]))
    if not spec.arity[0] <= len(inputs) <= spec.arity[1]:
        raise _Invalid(f"{what}: a {kind} layer takes {spec.arity[0]}..{spec.arity[1]} inputs, got {len(inputs)}")
    unknown_inputs = [i for i in inputs if i not in known]
    if unknown_inputs:
        raise _Invalid(f"{what}: reads {unknown_inputs}, which no earlier node computes")
    attrs = _object(record["attrs"], f"{what} attrs", set(spec.attrs))
    kwargs = {a: _field(f"{what} {a}", check, attrs[a]) for a, check in spec.attrs.items()}
    if kind == "Pool2D" and kwargs["pads"] != "same":
        kh, kw = kwargs["kernel"]
        if max(kwargs["pads"][:2]) >= kh or max(kwargs["pads"][2:]) >= kw:
            # as ONNX and Caffe require: a window lying wholly in the padding averages nothing
            raise _Invalid(f"{what}: pads {list(kwargs['pads'])} are not smaller than the {kh}x{kw} window")
    pq = None
    if kind == "PQLayer":
        if "pq" not in record:
            raise _Invalid(f"{what}: PQ setting missing")
        pq = _check_pq_setting(record["pq"], name)
    elif "pq" in record:
        raise _Invalid(f"{what}: a PQ setting on a {kind} layer")
    for role, arr in spec.arrays.items():
        kwargs[role] = _take_array(arrays, name, role, arr, pq)
    if pq is not None and kwargs["codebooks"].shape[2:] != (pq["ksub"], pq["dsub"]):
        raise _Invalid(f"{what}: codebooks {list(kwargs['codebooks'].shape)} do not match "
                       f"dsub = {pq['dsub']}, K = {pq['ksub']}")
    weight = kwargs.get("weight")
    if weight is not None and 0 in weight.shape:
        raise _Invalid(f"{what}: empty weight {list(weight.shape)}")
    # Conv2D and Dense do not check their bias; a wrong one would broadcast silently.
    bias = kwargs.get("bias")
    if weight is not None and bias is not None and bias.shape != weight.shape[-1:]:
        raise _Invalid(f"{what}: bias shape {list(bias.shape)} for {weight.shape[-1]} outputs")
    try:
        layer = spec.cls(**kwargs)        # PQLayer validates itself here, Conv2D its groups
    except (ValueError, TypeError, IndexError, ZeroDivisionError) as exc:
        raise _Invalid(f"{what}: {exc}") from None
    return Node(name, layer, inputs)


def _build(header: dict, arrays: dict) -> tuple[Model, dict]:
    info = _object(header["model"], "model", {"name", "description", "speed_test_only", "identity"})
    name = _field("model name", _str, info["name"])
    description = _field("model description", _str, info["description"])
    speed_test_only = _field("model speed_test_only", _bool, info["speed_test_only"])
    identity = _dict(info["identity"], "model identity")
    pre = _object(header["preprocess"], "preprocess", set(), set(_PREPROCESS))   # absent keys: defaults
    preprocess = Preprocess(**{k: _field(f"preprocess {k}", _PREPROCESS[k], v) for k, v in pre.items()})
    labels = tuple(_field("labels", _str, s) for s in _list(header["labels"]))
    metadata = _check_metadata(header["metadata"])

    g = _object(header["graph"], "graph", {"input", "output", "nodes"})
    input_name = _field("graph input", _str, g["input"])
    output = _field("graph output", _str, g["output"])
    records = _list(g["nodes"])
    if not records:
        raise _Invalid("the graph has no nodes")
    known, nodes = {input_name}, []
    for record in records:
        node = _build_node(record, arrays, known)
        known.add(node.name)
        nodes.append(node)
    if arrays:
        raise _Invalid(f"arrays {sorted(arrays)[:5]} belong to no layer")
    try:
        graph = Graph(nodes, input_name, output)
        # Every layer must fit what it reads, on the input the preprocessing makes, and the work and
        # memory per image stay within budget (e.g. absurd padding read with an absurd stride).
        model = Model(name=name, graph=graph, preprocess=preprocess, labels=labels, description=description,
                      speed_test_only=speed_test_only, identity=identity)
    except (BudgetError, ValueError) as exc:
        raise _Invalid(f"graph: {exc}") from None
    return model, metadata


# --------------------------------------------------------------------------- pairing

def pairing_problem(quantized: Model, dense: Model) -> str:
    """Why `quantized` (a loaded file) is not a quantization of `dense` ("" when it is): the same
    preprocessing, labels and graph wiring, the same layers where nothing was quantized, and PQ
    layers exactly where `dense` has conv or FC layers of the same geometry.  A file's metadata may
    name any model; only this says the two networks belong together."""
    if quantized.preprocess != dense.preprocess:
        return "its preprocessing differs"
    if tuple(quantized.labels) != tuple(dense.labels):
        return "its labels differ"
    q, d = quantized.graph, dense.graph
    if (q.input_name, q.output, len(q.nodes)) != (d.input_name, d.output, len(d.nodes)):
        return "its graph has other inputs, outputs or layers"
    for a, b in zip(q.nodes, d.nodes):
        if (a.name, a.inputs) != (b.name, b.inputs):
            return f"layer {a.name!r} is wired differently"
        why = _layer_difference(a.layer, b.layer)
        if why:
            return f"layer {a.name!r} {why}"
    return ""


def _layer_difference(mine: L.Layer, dense: L.Layer) -> str:
    if isinstance(mine, PQLayer):
        geometry = ((mine.kind_of, mine.in_channels, mine.out_channels, mine.kernel, mine.activation)
                    + ((tuple(mine.stride), mine.pads, mine.groups) if mine.kind_of == "conv" else ()))
        if isinstance(dense, L.Dense):
            theirs = ("fc", dense.in_channels, dense.out_channels, (1, 1), dense.activation)
        elif isinstance(dense, L.Conv2D):
            theirs = ("conv", dense.in_channels, dense.out_channels, dense.kernel, dense.activation,
                      tuple(dense.stride), dense.pads, dense.groups)
        else:
            return f"is quantized where the model has a {dense.kind} layer"
        return "" if geometry == theirs else "has another shape"
    if type(mine) is not type(dense):
        return f"is a {mine.kind} layer where the model has a {dense.kind} layer"
    for f in dataclasses.fields(mine):
        a, b = getattr(mine, f.name), getattr(dense, f.name)
        same = (np.array_equal(a, b) if isinstance(a, np.ndarray) or isinstance(b, np.ndarray)
                else a == b or (a != a and b != b))
        if not same:
            return f"differs in {f.name}"
    return ""
