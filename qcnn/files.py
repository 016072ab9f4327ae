"""Opening the files users name (images, models, labels, configs): regular files only.

A named pipe given as an input blocks `open()` until some writer appears, which may be never; a
device such as /dev/zero never ends.  So inputs are opened without blocking (O_NONBLOCK, where the
platform has it) and refused unless they are regular files; only then is blocking I/O switched
back on.  The refusal is an OSError, so callers that already report `strerror` say why.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import stat
from typing import Any, BinaryIO

__all__ = ["NotARegularFile", "open_regular", "open_text", "read_regular", "read_json", "write_json_atomic"]

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class NotARegularFile(OSError):
    """The path names a directory, pipe, socket or device rather than a file."""

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(errno.EISDIR if kind == "a directory" else errno.EINVAL,
                         f"is {kind}, not a regular file", path)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """`open(path, "rb")` for regular files; NotARegularFile (an OSError) for anything else."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    if not hasattr(os, "O_NONBLOCK"):          # Windows: no FIFOs to block on, but devices exist
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFile(os.fspath(path), _kind(mode))
    try:
        fd = os.open(path, flags)
    except OSError:
        mode = None
        with contextlib.suppress(OSError):           # a socket cannot be opened at all (ENXIO)
            mode = os.stat(path).st_mode
        if mode is not None and not stat.S_ISREG(mode):
            raise NotARegularFile(os.fspath(path), _kind(mode)) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFile(os.fspath(path), _kind(mode))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike) -> bytes:
    with open_regular(path) as f:
        return f.read()


def open_text(path: str | os.PathLike, encoding: str = "utf-8") -> io.TextIOWrapper:
    """A regular file opened as text (universal newlines left to the csv module: newline="")."""
    return io.TextIOWrapper(open_regular(path), encoding=encoding, newline="")


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """A JSON file's value; ValueError naming the file and the reason for any failure (not found, not
    a regular file, not UTF-8, not JSON, NaN/Infinity, nesting too deep)."""
    name = os.fspath(path)

    def constant(c):
        raise ValueError(f"{c} is not JSON")

    try:
        text = read_regular(path).decode("utf-8")
        return json.loads(text, parse_constant=constant)
    except OSError as exc:
        raise ValueError(f"{what} {name}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{what} {name}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} {name}: not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None
    except ValueError as exc:
        raise ValueError(f"{what} {name}: {exc}") from None
    except RecursionError:
        raise ValueError(f"{what} {name}: JSON nested too deeply") from None


def write_json_atomic(path: str | os.PathLike, value: Any) -> None:
    """Write `value` as JSON to `path` so that readers, and an interruption at any point, see either
    the old file (or none) or the whole new one: a temporary file beside it, then a rename."""
    import tempfile
    name = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(name))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(name)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(value, f, indent=1, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
