"""Write PyTorch's legacy (pre-1.6) checkpoint format without torch, for tests.

The bytes are what `torch.save(obj, f, _use_new_zipfile_serialization=False)` writes: the
standard pickler at protocol 2 with tensors reduced to `torch._utils._rebuild_tensor_v2` and
storages as persistent ids naming `torch.<Type>Storage` classes.  Those globals are pickled by
name, so stand-in `torch` and `torch._utils` modules are put in sys.modules while writing.

`legacy_bytes(state)`: numpy arrays in `state` (nested dicts, lists, plain values) become tensors,
each on its own storage.  `View(key, size, stride, offset)` places a tensor on a storage given in
`storages` (to write shared, strided or lying views); `numel_claims` makes a storage's persistent
id claim another element count than its data has.
"""
from __future__ import annotations

import collections
import contextlib
import io
import pickle
import struct
import sys
import types

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TYPES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
          np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
          np.dtype(np.int32): "IntStorage", np.dtype(np.int16): "ShortStorage", np.dtype(np.int8): "CharStorage",
          np.dtype(np.uint8): "ByteStorage", np.dtype(np.bool_): "BoolStorage"}


class View:
    def __init__(self, key, size, stride, offset=0):
        self.key, self.size, self.stride, self.offset = key, tuple(size), tuple(stride), offset


class _StorageRef:
    def __init__(self, key, array):
        self.key, self.array = key, array


def _fake_torch():
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    for name in _TYPES.values():
        setattr(torch, name, type(name, (), {"__module__": "torch"}))

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled, never called")
    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    return torch, utils


@contextlib.contextmanager
def _torch_modules():
    torch, utils = _fake_torch()
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    try:
        yield torch, utils
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def legacy_bytes(state, storages: dict | None = None, numel_claims: dict | None = None) -> bytes:
    storages = {k: np.array(v, order="C") for k, v in (storages or {}).items()}
    claims = numel_claims or {}
    refs: dict[str, _StorageRef] = {k: _StorageRef(k, v) for k, v in storages.items()}
    used: list[str] = []
    views: dict[int, object] = {}

    with _torch_modules() as (torch, utils):
        class Tensor:
            def __init__(self, ref, size, stride, offset):
                self.ref, self.size, self.stride, self.offset = ref, size, stride, offset

            def __reduce__(self):
                return utils._rebuild_tensor_v2, (self.ref, self.offset, self.size, self.stride, False,
                                                  collections.OrderedDict())

        def convert(obj):
            if isinstance(obj, np.ndarray):
                key = f"s{len(refs)}"
                a = np.array(obj, order="C")          # (ascontiguousarray would make 0-d 1-d)
                refs[key] = _StorageRef(key, a)
                strides = tuple(s // a.itemsize for s in a.strides) if a.size else (1,) * a.ndim
                return Tensor(refs[key], tuple(a.shape), strides, 0)
            if isinstance(obj, View):       # one tensor per View object: repeats pickle as memo references
                if id(obj) not in views:
                    views[id(obj)] = Tensor(refs[obj.key], obj.size, obj.stride, obj.offset)
                return views[id(obj)]
            if isinstance(obj, collections.OrderedDict):
                return collections.OrderedDict((k, convert(v)) for k, v in obj.items())
            if isinstance(obj, dict):
                return {k: convert(v) for k, v in obj.items()}
            if isinstance(obj, list):
                return [convert(v) for v in obj]
            return obj

        class Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                if isinstance(obj, _StorageRef):
                    if obj.key not in used:
                        used.append(obj.key)
                    numel = claims.get(obj.key, obj.array.size)
                    return ("storage", getattr(torch, _TYPES[obj.array.dtype]), obj.key, "cpu", numel, None)
                return None

        out = io.BytesIO()
        for header in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True,
                                            "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(header, out, protocol=2)
        Pickler(out, protocol=2).dump(convert(state))
        pickle.dump(used, out, protocol=2)
        for key in used:
            a = refs[key].array
            out.write(struct.pack("<q", claims.get(key, a.size)))
            out.write(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
        return out.getvalue()
