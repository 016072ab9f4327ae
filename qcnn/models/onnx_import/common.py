"""What every part of the importer shares: the one error type, the limits, name hygiene."""
from __future__ import annotations

import re

MAX_FILE_BYTES = 2 ** 31 - 1     # protobuf's own limit; anything bigger needs external data
MAX_SIDE = 4096                  # input height/width, any kernel, stride or single padding
MAX_ELEMENTS = 1 << 28           # per-image elements of any tensor (1 GiB of float32)
MAX_CONST_ELEMENTS = 1 << 26     # any constant the graph computes (shape arithmetic, Expand, ...)
MAX_TENSOR_BYTES = 4 << 30       # all initializers and constants together, external data included
MAX_PARAMS = 1 << 30             # weights of the converted graph (4 GiB of float32)
MAX_MACS = 1 << 38               # multiply-adds of one image through the converted graph (VGG-16: 1.5e10)
MAX_TOTAL_ELEMENTS = 1 << 30     # all layer outputs of one image added up (bounds peak memory: 4 GiB)
MAX_NODES = 100_000
MAX_POOL_AREA = 1 << 16
OPSETS = range(7, 22)            # the default-domain opsets this importer knows (7 to 21)


class OnnxImportError(ValueError):
    """The ONNX file cannot be turned into a qcnn graph; the message says why."""


class errors_as:
    """Turns any failure inside into OnnxImportError with `prefix`: hostile files must not crash callers."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or not isinstance(exc, Exception):
            return False
        if isinstance(exc, OnnxImportError):
            raise OnnxImportError(f"{self.prefix}{exc}") from None
        if isinstance(exc, MemoryError):
            raise OnnxImportError(f"{self.prefix}model too large for memory") from None
        # A case the checks missed (numpy/protobuf errors on strange input): still a clean error.
        raise OnnxImportError(f"{self.prefix}invalid ONNX model ({type(exc).__name__}: {exc})") from exc


def sanitise(name) -> str:
    if isinstance(name, bytes):   # protobuf hands out invalid UTF-8 strings as bytes
        name = name.decode("utf-8", "replace")
    return re.sub(r"[^A-Za-z0-9_.:/-]", "_", name)[:80]


def quote(name) -> str:
    """A tensor or file name as it may appear in a message (bounded, printable)."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    name = "".join(c if c.isprintable() else "?" for c in str(name))
    return f"'{name[:120]}{'...' if len(name) > 120 else ''}'"
