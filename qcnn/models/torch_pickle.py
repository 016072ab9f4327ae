"""Read PyTorch's legacy (pre-1.6, non-zip) checkpoint format without torch.

The file is a sequence of pickles: magic number, protocol version, system
info, the state dict (storages referenced through persistent ids), the list
of storage keys, then for each key an int64 element count followed by the
raw little-endian data.  Unpickling is restricted to the few globals a state
dict needs; anything else (the usual code-execution gadgets) is refused.
"""
from __future__ import annotations

import collections
import io
import pickle
import struct

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class CheckpointError(ValueError):
    pass


class _Storage:
    def __init__(self, dtype, numel):
        self.dtype, self.numel, self.data = np.dtype(dtype), numel, None


class _StorageType:
    def __init__(self, name):
        self.dtype = _STORAGE_DTYPES[name]


class _Tensor:
    """Placeholder until the storages' bytes have been read."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def to_numpy(self) -> np.ndarray:
        s = self.storage
        if not self.size:
            return s.data[self.offset:self.offset + 1].reshape(()).copy()
        extent = self.offset + sum((n - 1) * st for n, st in zip(self.size, self.stride)) + 1
        if self.offset < 0 or min(self.stride) < 0 or extent > s.numel:
            raise CheckpointError("tensor view exceeds its storage")
        item = s.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            s.data[self.offset:], shape=self.size, strides=[st * item for st in self.stride], writeable=False)
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_tensor(storage, offset, size, stride):
    if not isinstance(storage, _Storage):
        raise CheckpointError("tensor built on something that is not a storage")
    return _Tensor(storage, int(offset), size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f):
        super().__init__(f)
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return {"_rebuild_tensor_v2": _rebuild_tensor_v2, "_rebuild_tensor": _rebuild_tensor}[name]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise CheckpointError(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid):
        # ("storage", type, key, location, numel[, view_metadata]); views are not used by state dicts
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and (len(pid) == 5 or pid[5] is None)):
            raise CheckpointError(f"unsupported persistent id {pid!r:.80}")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
            raise CheckpointError("malformed storage reference")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, numel)
        return self.storages[key]


def _plain_load(f):
    # The header pickles hold only ints, strings, dicts and lists.
    class Plain(pickle.Unpickler):
        def find_class(self, module, name):
            raise CheckpointError(f"refusing to load global {module}.{name}")
    return Plain(f).load()


def _to_arrays(obj):
    if isinstance(obj, _Tensor):
        return obj.to_numpy()
    if isinstance(obj, dict):
        return {k: _to_arrays(v) for k, v in obj.items()}
    return obj


def load_legacy_state_dict(data: bytes) -> dict[str, np.ndarray]:
    f = io.BytesIO(data)
    try:
        if _plain_load(f) != LEGACY_MAGIC:
            raise CheckpointError("not a legacy PyTorch checkpoint (bad magic number)")
        _plain_load(f)  # protocol version
        _plain_load(f)  # system info
        unpickler = _RestrictedUnpickler(f)
        state = unpickler.load()
        keys = _plain_load(f)
    except CheckpointError:
        raise
    except Exception as exc:  # truncated or garbled pickle stream
        raise CheckpointError(f"corrupt checkpoint: {exc}") from exc
    if not isinstance(keys, list) or set(map(str, keys)) != set(unpickler.storages):
        raise CheckpointError("storage key list does not match the state dict")
    for key in keys:
        storage = unpickler.storages[str(key)]
        header = f.read(8)
        if len(header) != 8:
            raise CheckpointError("truncated storage data")
        (count,) = struct.unpack("<q", header)
        nbytes = storage.numel * storage.dtype.itemsize
        if count != storage.numel:
            raise CheckpointError(f"storage {key}: {count} elements on disk, {storage.numel} expected")
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise CheckpointError("truncated storage data")
        storage.data = np.frombuffer(raw, dtype=storage.dtype.newbyteorder("<"))
    if not isinstance(state, dict):
        raise CheckpointError("checkpoint does not hold a state dict")
    return _to_arrays(state)
