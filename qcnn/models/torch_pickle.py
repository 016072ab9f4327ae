"""Read PyTorch's legacy (pre-1.6, non-zip) checkpoint format without torch, as a hostile file.

The file is a sequence of pickles: magic number, protocol version, system info, the state dict
(storages referenced through persistent ids), the list of storage keys, then for each key an int64
element count followed by the raw little-endian data.

The pickles are run by a small pickle machine of our own rather than by `pickle.Unpickler`, so
that every step is bounded by the file: only the ~35 opcodes a state dict needs are known (no
DUP, no sets, no frozensets, no object construction beyond the allow-list); globals are limited
to the storage types, the tensor/parameter rebuild functions and OrderedDict; dictionary keys
must be strings or integers (a tuple key would let shared memo references make hashing
exponential); the memo holds at most MAX_MEMO entries; a storage may not claim more bytes than
the file holds, a tensor no more elements than its storage, nor all tensors together more than
MAX_TENSOR_RATIO times the storage bytes (a stride-0 view of a 1-element storage would otherwise
materialise gigabytes from a few hundred bytes); the resulting structure is walked once per
object (shared references are converted once, cycles refused) no deeper than MAX_DEPTH.
Every failure is one exception type, CheckpointError, naming the file and the reason.
"""
from __future__ import annotations

import collections
import math
import struct

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
MAX_MEMO = 1 << 16          # memo entries per pickle (the ResNet-50 state dict uses ~1,900)
MAX_DEPTH = 32              # nesting of the loaded structure (state dicts use 3-4)
MAX_DIMS = 8                # tensor dimensions
MAX_TENSOR_RATIO = 2        # materialised tensor bytes per storage byte in the file


class CheckpointError(ValueError):
    """A checkpoint could not be read; ``path`` names the source, ``reason`` says why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path, self.reason = path, reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class _Bad(Exception):
    """Internal: a reason, before the file name is attached."""


# -- the objects a state dict is made of -----------------------------------------------------------
class _Storage:
    def __init__(self, dtype, numel):
        self.dtype, self.numel, self.data = np.dtype(dtype), numel, None


class _StorageType:
    def __init__(self, name):
        self.dtype = _STORAGE_DTYPES[name]


class _Tensor:
    """Placeholder until the storages' bytes have been read."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    @property
    def numel(self) -> int:
        return math.prod(self.size)

    def to_numpy(self) -> np.ndarray:
        s = self.storage
        if self.numel == 0:
            return np.zeros(self.size, s.dtype)
        extent = self.offset + sum((n - 1) * st for n, st in zip(self.size, self.stride)) + 1
        if extent > s.numel:
            raise _Bad(f"tensor of shape {self.size} at offset {self.offset} exceeds its storage of {s.numel}")
        item = s.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            s.data[self.offset:], shape=self.size, strides=[st * item for st in self.stride], writeable=False)
        return np.array(view, order="C")         # a copy; keeps 0-d tensors 0-d


def _int_tuple(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or len(value) > MAX_DIMS or not all(
            type(v) is int and v >= 0 for v in value):
        raise _Bad(f"tensor {what} is not a tuple of at most {MAX_DIMS} non-negative integers")
    return value


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    # _rebuild_tensor_v2 adds requires_grad, backward hooks and metadata: none matter here.
    if not isinstance(storage, _Storage):
        raise _Bad("tensor built on something that is not a storage")
    if type(offset) is not int or offset < 0:
        raise _Bad("tensor offset is not a non-negative integer")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise _Bad("tensor size and stride differ in length")
    tensor = _Tensor(storage, offset, size, stride)
    if tensor.numel > storage.numel:
        raise _Bad(f"tensor of shape {size} has more elements than its storage ({storage.numel})")
    return tensor


def _rebuild_parameter(data, requires_grad=False, hooks=None, *_ignored):
    if not isinstance(data, _Tensor):
        raise _Bad("parameter built on something that is not a tensor")
    return data


def _ordered_dict(*args):
    if args:
        raise _Bad("OrderedDict built with arguments")
    return collections.OrderedDict()


_GLOBALS = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


# -- the pickle machine ----------------------------------------------------------------------------
class _Load:
    """One checkpoint being read: the bytes, a read position and the storages seen so far."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0
        self.storages: dict[str, _Storage] = {}
        self.storage_bytes = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _Bad("truncated pickle stream")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def line(self) -> str:
        end = self.data.find(b"\n", self.pos, self.pos + 256)
        if end < 0:
            raise _Bad("unterminated or overlong global name")
        text = self.data[self.pos:end]
        self.pos = end + 1
        try:
            return text.decode("ascii")
        except UnicodeDecodeError:
            raise _Bad("global name is not ASCII") from None

    def storage(self, pid) -> _Storage:
        # ("storage", type, key, location, numel[, view_metadata]); views are not used by state dicts
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and (len(pid) == 5 or pid[5] is None)):
            raise _Bad("unsupported persistent id (not a plain storage reference)")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(storage_type, _StorageType) or type(numel) is not int or numel < 0:
            raise _Bad("malformed storage reference")
        if not isinstance(key, str):
            raise _Bad("storage key is not a string")
        if key in self.storages:
            if self.storages[key].dtype != storage_type.dtype or self.storages[key].numel != numel:
                raise _Bad(f"storage {key} referenced with two different types or sizes")
            return self.storages[key]
        nbytes = numel * np.dtype(storage_type.dtype).itemsize
        self.storage_bytes += nbytes
        if self.storage_bytes > len(self.data):
            raise _Bad(f"storages claim {self.storage_bytes} bytes, more than the file's {len(self.data)}")
        self.storages[key] = _Storage(storage_type.dtype, numel)
        return self.storages[key]

    def unpickle(self, allow_globals: bool):
        """Run one pickle from the current position; return its object."""
        stack: list = []
        marks: list[int] = []
        memo: dict[int, object] = {}

        def pop_mark() -> list:
            if not marks:
                raise _Bad("pickle pops a mark it never set")
            start = marks.pop()
            items = stack[start:]
            del stack[start:]
            return items

        def pop():
            if not stack:
                raise _Bad("pickle stack underflow")
            return stack.pop()

        def put(index: int):
            if not stack:
                raise _Bad("pickle memoizes an empty stack")
            if index not in memo and len(memo) >= MAX_MEMO:
                raise _Bad(f"pickle memo holds more than {MAX_MEMO} entries")
            memo[index] = stack[-1]

        def get(index: int):
            if index not in memo:
                raise _Bad("pickle refers to a memo entry it never stored")
            stack.append(memo[index])

        def set_items(target, items):
            if not isinstance(target, dict) or len(items) % 2:
                raise _Bad("dictionary items set on something that is not a dictionary")
            for k, v in zip(items[::2], items[1::2]):
                if type(k) not in (str, int, bool):
                    raise _Bad("dictionary key is not a string or an integer")
                target[k] = v

        while True:
            op = self.take(1)[0]
            if op == 0x80:                                   # PROTO
                self.take(1)
            elif op == 0x2E:                                 # STOP
                if len(stack) != 1 or marks:
                    raise _Bad("pickle ends with a malformed stack")
                return stack[0]
            elif op == 0x28:                                 # MARK
                marks.append(len(stack))
            elif op == 0x7D:                                 # EMPTY_DICT
                stack.append({})
            elif op == 0x5D:                                 # EMPTY_LIST
                stack.append([])
            elif op == 0x29:                                 # EMPTY_TUPLE
                stack.append(())
            elif op == 0x74:                                 # TUPLE
                stack.append(tuple(pop_mark()))
            elif op in (0x85, 0x86, 0x87):                   # TUPLE1..3
                n = op - 0x84
                if len(stack) < n:
                    raise _Bad("pickle stack underflow")
                items = tuple(stack[-n:])
                del stack[-n:]
                stack.append(items)
            elif op in (0x58, 0x8C):                         # BINUNICODE, SHORT_BINUNICODE
                n = struct.unpack("<I", self.take(4))[0] if op == 0x58 else self.take(1)[0]
                try:
                    stack.append(self.take(n).decode("utf-8"))
                except UnicodeDecodeError:
                    raise _Bad("string is not valid UTF-8") from None
            elif op == 0x71:                                 # BINPUT
                put(self.take(1)[0])
            elif op == 0x72:                                 # LONG_BINPUT
                put(struct.unpack("<I", self.take(4))[0])
            elif op == 0x94:                                 # MEMOIZE
                put(len(memo))
            elif op == 0x68:                                 # BINGET
                get(self.take(1)[0])
            elif op == 0x6A:                                 # LONG_BINGET
                get(struct.unpack("<I", self.take(4))[0])
            elif op == 0x4A:                                 # BININT
                stack.append(struct.unpack("<i", self.take(4))[0])
            elif op == 0x4B:                                 # BININT1
                stack.append(self.take(1)[0])
            elif op == 0x4D:                                 # BININT2
                stack.append(struct.unpack("<H", self.take(2))[0])
            elif op == 0x8A:                                 # LONG1
                stack.append(int.from_bytes(self.take(self.take(1)[0]), "little", signed=True))
            elif op == 0x47:                                 # BINFLOAT
                stack.append(struct.unpack(">d", self.take(8))[0])
            elif op == 0x4E:                                 # NONE
                stack.append(None)
            elif op in (0x88, 0x89):                         # NEWTRUE, NEWFALSE
                stack.append(op == 0x88)
            elif op == 0x73:                                 # SETITEM
                value, key = pop(), pop()
                set_items(stack[-1] if stack else None, [key, value])
            elif op == 0x75:                                 # SETITEMS
                items = pop_mark()
                set_items(stack[-1] if stack else None, items)
            elif op == 0x61:                                 # APPEND
                value = pop()
                if not stack or not isinstance(stack[-1], list):
                    raise _Bad("append to something that is not a list")
                stack[-1].append(value)
            elif op == 0x65:                                 # APPENDS
                items = pop_mark()
                if not stack or not isinstance(stack[-1], list):
                    raise _Bad("append to something that is not a list")
                stack[-1].extend(items)
            elif op == 0x63:                                 # GLOBAL
                module, name = self.line(), self.line()
                if not allow_globals or (module, name) not in _GLOBALS:
                    raise _Bad(f"refusing to load global {module}.{name}")
                stack.append(_GLOBALS[module, name])
            elif op == 0x52:                                 # REDUCE
                args, func = pop(), pop()
                if not callable(func) or not isinstance(args, tuple):
                    raise _Bad("call of something that is not an allowed function")
                try:
                    stack.append(func(*args))
                except TypeError:
                    raise _Bad("allowed function called with the wrong arguments") from None
            elif op == 0x62:                                 # BUILD
                state = pop()
                # Only the `_metadata` of a state dict's OrderedDict comes this way; not needed.
                if not stack or not isinstance(stack[-1], collections.OrderedDict) or not isinstance(
                        state, (dict, type(None))):
                    raise _Bad("object state set on something that is not an OrderedDict")
            elif op == 0x51:                                 # BINPERSID
                if not allow_globals:
                    raise _Bad("storage reference outside the state dict")
                stack.append(self.storage(pop()))
            else:
                raise _Bad(f"unsupported pickle opcode 0x{op:02x} at byte {self.pos - 1}")


def _to_arrays(obj, seen: dict, depth: int = 0):
    """Tensors -> numpy, containers copied; each object converted once (shared references stay
    shared), cycles and deep nesting refused."""
    if depth > MAX_DEPTH:
        raise _Bad(f"structure nested deeper than {MAX_DEPTH}")
    if isinstance(obj, _Tensor):
        return obj.to_numpy()
    if not isinstance(obj, (dict, list, tuple)):
        return obj
    if id(obj) in seen:
        if seen[id(obj)] is None:
            raise _Bad("structure refers to itself")
        return seen[id(obj)]
    seen[id(obj)] = None
    if isinstance(obj, dict):
        out = {k: _to_arrays(v, seen, depth + 1) for k, v in obj.items()}
    else:
        out = type(obj)(_to_arrays(v, seen, depth + 1) for v in obj)
    seen[id(obj)] = out
    return out


def _tensors(obj, seen: set, found: list, depth: int = 0):
    """Every tensor reference in the structure (a tensor referenced twice counts twice)."""
    if depth > MAX_DEPTH:
        raise _Bad(f"structure nested deeper than {MAX_DEPTH}")
    if isinstance(obj, _Tensor):
        found.append(obj)
    elif isinstance(obj, (dict, list, tuple)) and id(obj) not in seen:
        seen.add(id(obj))
        for v in obj.values() if isinstance(obj, dict) else obj:
            _tensors(v, seen, found, depth + 1)


def _load(data: bytes):
    f = _Load(data)
    if f.unpickle(allow_globals=False) != LEGACY_MAGIC:
        raise _Bad("not a legacy PyTorch checkpoint (bad magic number)")
    f.unpickle(allow_globals=False)  # protocol version
    info = f.unpickle(allow_globals=False)
    if isinstance(info, dict) and info.get("little_endian") is False:
        raise _Bad("written on a big-endian machine: not supported")
    state = f.unpickle(allow_globals=True)
    keys = f.unpickle(allow_globals=False)
    if not isinstance(state, dict):
        raise _Bad("checkpoint does not hold a state dict")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) \
            or len(keys) != len(f.storages) or set(keys) != set(f.storages):
        raise _Bad("storage key list does not match the state dict")
    tensors: list[_Tensor] = []
    _tensors(state, set(), tensors)     # before reading data: refuse views that would blow up
    asked = sum(t.numel * t.storage.dtype.itemsize for t in tensors)
    if asked > MAX_TENSOR_RATIO * f.storage_bytes + 4096:
        raise _Bad(f"tensors ask for {asked} bytes from {f.storage_bytes} bytes of storage")
    for key in keys:
        storage = f.storages[key]
        (count,) = struct.unpack("<q", f.take(8))
        if count != storage.numel:
            raise _Bad(f"storage {key}: {count} elements on disk, {storage.numel} expected")
        raw = f.take(storage.numel * storage.dtype.itemsize)
        storage.data = np.frombuffer(raw, dtype=storage.dtype.newbyteorder("<"))
    return _to_arrays(state, {})


def load_legacy_state_dict(data: bytes, source: str = "checkpoint") -> dict:
    """The state dict of a legacy PyTorch file's bytes: tensors as numpy arrays, nested dicts and
    plain values as they are.  `source` names the file in errors."""
    try:
        return _load(bytes(data))
    except _Bad as exc:
        raise CheckpointError(str(source), str(exc)) from None
    except (struct.error, ValueError, TypeError, LookupError, OverflowError, MemoryError, RecursionError) as exc:
        raise CheckpointError(str(source), f"corrupt checkpoint ({type(exc).__name__})") from None
