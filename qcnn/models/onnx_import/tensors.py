"""Initializer and constant data, inline or in external files, read safely.

ONNX lets a tensor's bytes live in another file (`external_data`: location, offset, length), as
PyTorch's default exporter writes every model above a few MB.  A model file is untrusted, so the
reference may only name a regular file inside the model's own folder: a relative path without
`..`, not absolute, no drive letter or backslash, and no symlink that resolves outside the folder.
Offset and length are checked against the file's size and the tensor's shape before a byte is
read, and all tensors together must stay under MAX_TENSOR_BYTES.  Every error names the tensor and
the file.
"""
from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path

import numpy as np
from onnx import TensorProto, numpy_helper

from .common import MAX_ELEMENTS, MAX_TENSOR_BYTES, OnnxImportError, quote

# ONNX element type -> little-endian numpy dtype of its raw bytes
DTYPES = {TensorProto.FLOAT: "<f4", TensorProto.FLOAT16: "<f2", TensorProto.DOUBLE: "<f8",
          TensorProto.INT32: "<i4", TensorProto.INT64: "<i8", TensorProto.INT8: "i1", TensorProto.UINT8: "u1",
          TensorProto.INT16: "<i2", TensorProto.UINT16: "<u2", TensorProto.UINT32: "<u4",
          TensorProto.UINT64: "<u8", TensorProto.BOOL: "?"}
_DIGITS = re.compile(r"[0-9]{1,19}")


def declared_bytes(t: TensorProto) -> int:
    """Bytes the tensor's dims and type call for (the tensor is refused if the type is unknown)."""
    if t.data_type not in DTYPES:
        return 0
    return math.prod(t.dims) * np.dtype(DTYPES[t.data_type]).itemsize


def normalise(a: np.ndarray) -> np.ndarray:
    """float32, int64 or bool: the three kinds the importer computes with."""
    if a.dtype.kind == "b":
        return a.astype(bool, copy=False)
    return a.astype(np.int64 if a.dtype.kind in "iu" else np.float32, copy=False)


class TensorReader:
    """Reads initializers of one model; `folder` is the model's directory (None: bytes given, so
    external data cannot be resolved and is refused)."""

    def __init__(self, folder: Path | None, limit: int = MAX_TENSOR_BYTES):
        self.folder = None if folder is None else os.path.realpath(folder)
        self.limit = limit
        self.total = 0

    def account(self, t: TensorProto, what: str) -> None:
        """Count a tensor against the total before anything is read."""
        self.total += declared_bytes(t)
        if self.total > self.limit:
            raise OnnxImportError(f"{what}: the model's tensors add up to more than {self.limit >> 20} MiB "
                                  "(the limit for one model)")

    def array(self, t: TensorProto, what: str) -> np.ndarray:
        if t.data_type not in DTYPES:
            raise OnnxImportError(f"{what} has unsupported data type {t.data_type}")
        if any(d < 0 for d in t.dims) or math.prod(t.dims) > MAX_ELEMENTS:
            raise OnnxImportError(f"{what} has absurd dimensions {list(t.dims)[:8]}")
        if t.data_location == TensorProto.EXTERNAL or len(t.external_data):
            a = self._external(t, what).reshape(tuple(t.dims))
        else:
            try:
                a = numpy_helper.to_array(t)
            except Exception as exc:  # data shorter or longer than the dimensions say
                raise OnnxImportError(f"{what}: data does not match its shape {list(t.dims)} ({exc})") from None
        return normalise(a)

    def _external(self, t: TensorProto, what: str) -> np.ndarray:
        info = {e.key: e.value for e in t.external_data}
        where = info.get("location", "")
        if not where:
            raise OnnxImportError(f"{what}: external data without a file location")
        shown = quote(where)
        if self.folder is None:
            raise OnnxImportError(f"{what}: its data is in external file {shown}, which needs the model's folder "
                                  "(open the model from a file)")
        parts = where.split("/")
        if ("\\" in where or "\0" in where or where.startswith("/") or os.path.isabs(where)
                or re.match(r"^[A-Za-z]:", where) or where.startswith("~")):
            raise OnnxImportError(f"{what}: external data file {shown} is not a relative path inside the "
                                  "model's folder")
        if ".." in parts:
            raise OnnxImportError(f"{what}: external data file {shown} leaves the model's folder ('..')")
        if not all(parts):
            raise OnnxImportError(f"{what}: external data file {shown} is not a plain relative path")
        path = os.path.realpath(os.path.join(self.folder, where))
        if os.path.commonpath([path, self.folder]) != self.folder:
            raise OnnxImportError(f"{what}: external data file {shown} resolves outside the model's folder "
                                  "(symbolic link)")
        for key in ("offset", "length"):
            if key in info and not _DIGITS.fullmatch(info[key]):
                raise OnnxImportError(f"{what}: external data {key} {quote(info[key])} is not a byte count")
        offset = int(info.get("offset", 0))
        need = declared_bytes(t)
        if "length" in info and int(info["length"]) != need:
            raise OnnxImportError(f"{what}: external data length {info['length']} does not match its shape "
                                  f"{list(t.dims)} ({need} bytes)")
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise OnnxImportError(f"{what}: cannot open external data file {shown} ({exc.strerror})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OnnxImportError(f"{what}: external data file {shown} is not a regular file")
            if offset + need > st.st_size:
                raise OnnxImportError(f"{what}: external data at offset {offset}, {need} bytes, runs past the end "
                                      f"of {shown} ({st.st_size} bytes)")
            out = np.empty(math.prod(t.dims), DTYPES[t.data_type])
            view, got = memoryview(out).cast("B"), 0
            while got < need:     # straight into the array, no intermediate bytes
                n = os.preadv(fd, [view[got:got + (1 << 26)]], offset + got)
                if n <= 0:
                    raise OnnxImportError(f"{what}: external data file {shown} ended early (changed while read?)")
                got += n
            return out
        finally:
            os.close(fd)
