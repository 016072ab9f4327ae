"""The converted-weights cache: float32 arrays made once from a model's shipped file, kept as .npz.

One entry per (converter, converter version, source file sha256), named
`<converter>-<sha256[:16]>-v<version>.npz` in the cache directory.  Each entry holds, beside the
arrays, a `__meta__` record (JSON) saying which converter and version made it from which file and
the shape and dtype of every array.

Faults lose nothing and stop nothing:
- an entry that is truncated, damaged (zip CRC), from another converter version or file, or not
  as its record says, is removed and rebuilt;
- entries are written to a temporary file in the same directory and renamed into place, so two
  processes converting at once each publish a complete file (the last one wins) and a killed
  conversion leaves at most a temporary file, removed by a later write once it is stale;
- a cache directory that cannot be written (read-only, full, not a directory) means no caching:
  the weights are converted at every start and a warning on the `qcnn` logger says why (one
  line on stderr when the program configured no logging).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import time
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from ..paths import cache_dir

META = "__meta__"
MAX_ENTRY_BYTES = 1 << 30        # larger than any built-in model's float32 weights (ResNet-50: 102 MB)
STALE_TEMP_SECONDS = 3600


log = logging.getLogger(__name__)


def entry_path(converter: str, digest: str, version: int) -> Path:
    return cache_dir() / f"{converter}-{digest[:16]}-v{version}.npz"


def _meta(converter: str, digest: str, version: int, arrays: dict[str, np.ndarray]) -> dict:
    return {"converter": converter, "version": version, "source_sha256": digest,
            "arrays": {k: [list(v.shape), v.dtype.str] for k, v in arrays.items()}}


def _read(path: Path, converter: str, digest: str, version: int) -> dict[str, np.ndarray]:
    """The entry's arrays; raises (any exception) when it is absent or not exactly what it says."""
    with zipfile.ZipFile(path) as z:                   # bound what a damaged directory could ask for
        if sum(i.file_size for i in z.infolist()) > MAX_ENTRY_BYTES:
            raise ValueError("entry larger than any converted model")
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(bytes(z[META]).decode("utf-8"))
        arrays = {k: z[k] for k in z.files if k != META}    # reading each member checks its CRC
    if meta != _meta(converter, digest, version, arrays):
        raise ValueError("entry made by another converter version or from another file")
    return arrays


def _save(f, arrays: dict[str, np.ndarray], meta: dict) -> None:
    np.savez(f, **arrays, **{META: np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)})


def _write(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    if path.parent.exists() and not path.parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob(f".{path.name}.*.tmp"):     # left by killed conversions
        try:
            if time.time() - old.stat().st_mtime > STALE_TEMP_SECONDS:
                old.unlink()
        except OSError:
            pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            _save(f, arrays, meta)
            f.flush()
            os.fsync(f.fileno())          # the rename must never publish a file still in flight
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def cached_conversion(converter: str, digest: str, version: int,
                      convert: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays `convert()` makes from the source file with sha256 `digest`, from the cache
    when a sound entry exists; `version` names the converter's output format (bump it whenever
    convert() would give different arrays)."""
    try:
        path = entry_path(converter, digest, version)
    except Exception as exc:                  # no usable cache location at all
        log.warning(f"no cache directory ({exc}); converting {converter} weights at every start")
        return convert()
    try:
        return _read(path, converter, digest, version)
    except (FileNotFoundError, NotADirectoryError):
        pass                                  # not made yet (or no directory): convert
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        try:
            path.unlink()
            log.warning(f"{path}: damaged cache entry removed ({reason}); rebuilding")
        except OSError as gone:
            log.warning(f"{path}: damaged cache entry ({reason}) cannot be removed "
                        f"({gone.strerror or gone}); converting without the cache")
            return convert()
    arrays = convert()
    try:
        _write(path, arrays, _meta(converter, digest, version, arrays))
    except OSError as exc:
        log.warning(f"cannot cache converted {converter} weights in {path.parent} "
                    f"({exc.strerror or exc}); converting them at every start")
    return arrays
