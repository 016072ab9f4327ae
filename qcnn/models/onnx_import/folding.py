"""Constant folding: the operators that exporters use on constants (shape arithmetic, weight
transposes, casts) evaluated in numpy at import time.

Only cheap operators are folded (no MatMul or Conv of constants: a hostile file could ask for
hours of work), and every result is bounded in size before it is made.  Each function takes the
node's inputs (numpy arrays, None for an omitted optional input), its attributes and the opset,
and returns the list of outputs.
"""
from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from .common import MAX_CONST_ELEMENTS, OnnxImportError
from .tensors import DTYPES, normalise


def _bound(shape) -> tuple:
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape) or math.prod(shape) > MAX_CONST_ELEMENTS:
        raise OnnxImportError(f"computes a constant of shape {list(shape)[:8]}, absurdly large")
    return shape


def ints(a, what="value") -> list[int]:
    if a is None:
        return []
    a = np.asarray(a)
    if a.dtype.kind not in "iub":
        raise OnnxImportError(f"{what} must be integers")
    return [int(v) for v in a.reshape(-1)]


def axis(a: int, rank: int) -> int:
    if not -rank <= a < max(rank, 1):
        raise OnnxImportError(f"axis {a} is out of range for rank {rank}")
    return a % max(rank, 1)


def axes_arg(ins, attrs, index: int, opset_moved: int, opset: int) -> list[int] | None:
    """Axes given as attribute (before `opset_moved`) or as input `index` (from then on)."""
    if opset >= opset_moved:
        return ints(ins[index], "axes") if len(ins) > index and ins[index] is not None else None
    return list(attrs["axes"]) if "axes" in attrs else None


def broadcast(*shapes) -> tuple:
    try:
        shape = np.broadcast_shapes(*(tuple(s) for s in shapes))
    except ValueError:
        raise OnnxImportError(f"shapes {[list(s)[:8] for s in shapes]} do not broadcast") from None
    return _bound(shape)


def reshape_target(shape, target, allowzero: bool) -> tuple:
    """ONNX Reshape's target with 0 (copy the input's dimension) and -1 (the rest) resolved."""
    out = []
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            if i >= len(shape):
                raise OnnxImportError(f"reshape target {target} copies dimension {i}, which {list(shape)} lacks")
            d = shape[i]
        out.append(d)
    if out.count(-1) > 1 or any(d < -1 for d in out):
        raise OnnxImportError(f"reshape target {target} is invalid")
    total = math.prod(shape)
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        if known == 0 or total % known:
            raise OnnxImportError(f"cannot reshape {list(shape)} to {target}")
        out[out.index(-1)] = total // known
    if math.prod(out) != total:
        raise OnnxImportError(f"cannot reshape {list(shape)} to {target}")
    return tuple(out)


def slice_params(shape, starts, ends, axes, steps):
    """Per axis (start, stop, step) as Python slices, clamped by ONNX's rules."""
    rank = len(shape)
    axes = list(range(len(starts))) if not axes else [axis(a, rank) for a in axes]
    steps = steps or [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps) or len(set(axes)) != len(axes):
        raise OnnxImportError("slice starts, ends, axes and steps do not match")
    out = [(0, d, 1) for d in shape]
    for a, s, e, st in zip(axes, starts, ends, steps):
        d = shape[a]
        if st == 0:
            raise OnnxImportError("slice step 0")
        s = s + d if s < 0 else s
        e = e + d if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), d), min(max(e, 0), d)
        else:
            s, e = min(max(s, 0), d - 1), min(max(e, -1), d - 1)
        out[a] = (s, None if e < 0 else e, st)
    return out


def slice_inputs(ins, attrs, opset):
    if opset < 10:
        return list(attrs.get("starts", [])), list(attrs.get("ends", [])), list(attrs.get("axes", [])), []
    return (ints(ins[1], "starts"), ints(ins[2], "ends"), ints(ins[3] if len(ins) > 3 else None, "axes"),
            ints(ins[4] if len(ins) > 4 else None, "steps"))


def split_sizes(length: int, ins, attrs, opset, outputs: int) -> list[int]:
    if opset >= 13 and len(ins) > 1 and ins[1] is not None:
        sizes = ints(ins[1], "split")
    elif "split" in attrs:
        sizes = list(attrs["split"])
    else:
        n = attrs.get("num_outputs", outputs)
        if n < 1:
            raise OnnxImportError("split into no outputs")
        part = -(-length // n)
        sizes = [min(part, max(length - i * part, 0)) for i in range(n)]
    if len(sizes) != outputs or sum(sizes) != length or min(sizes) < 0:
        raise OnnxImportError(f"split sizes {sizes} do not cut {length} into {outputs} outputs")
    return sizes


def _int_div(a, b):
    if np.asarray(a).dtype.kind in "iu" and np.asarray(b).dtype.kind in "iu":
        if np.any(np.asarray(b) == 0):
            raise OnnxImportError("integer division by zero")
        q = np.abs(a) // np.abs(b)
        return np.where((np.asarray(a) < 0) != (np.asarray(b) < 0), -q, q)   # truncates, as ONNX does
    return np.divide(a, b)


_ELEMENTWISE = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _int_div, "Pow": np.power,
                "Equal": np.equal, "Less": np.less, "Greater": np.greater, "LessOrEqual": np.less_equal,
                "GreaterOrEqual": np.greater_equal, "And": np.logical_and, "Or": np.logical_or,
                "Mod": np.fmod}
_UNARY = {"Neg": np.negative, "Abs": np.abs, "Sqrt": np.sqrt, "Reciprocal": np.reciprocal, "Floor": np.floor,
          "Ceil": np.ceil, "Not": np.logical_not, "Relu": lambda a: np.maximum(a, 0), "Exp": np.exp,
          "Sigmoid": lambda a: 1 / (1 + np.exp(-a)), "Tanh": np.tanh, "Log": np.log, "Sign": np.sign}


def fold(op: str, ins: list, attrs: dict, opset: int, outputs: int) -> list[np.ndarray]:
    """Outputs of `op` on constant inputs; raises KeyError when `op` is not folded."""
    x = ins[0] if ins else None
    if op in ("Identity", "Dropout"):
        return [x] + [np.ones(x.shape, bool)] * (outputs - 1)
    if op in _ELEMENTWISE:
        broadcast(*(np.shape(a) for a in ins[:2]))
        with np.errstate(all="ignore"):
            return [normalise(np.asarray(_ELEMENTWISE[op](ins[0], ins[1])))]
    if op in _UNARY:
        with np.errstate(all="ignore"):
            return [normalise(np.asarray(_UNARY[op](x)))]
    if op in ("Max", "Min", "Sum", "Mean"):
        broadcast(*(np.shape(a) for a in ins))
        f = {"Max": np.maximum, "Min": np.minimum, "Sum": np.add, "Mean": np.add}[op]
        out = ins[0]
        for a in ins[1:]:
            out = f(out, a)
        return [normalise(out / len(ins) if op == "Mean" else out)]
    if op == "Cast":
        to = attrs.get("to")
        if to not in DTYPES:
            raise OnnxImportError(f"cast to unsupported type {to}")
        return [normalise(x.astype(DTYPES[to]))]
    if op == "CastLike":
        return [normalise(x.astype(ins[1].dtype))]
    if op == "Shape":
        rank = x.ndim
        start, end = attrs.get("start", 0), attrs.get("end", rank)
        return [np.array(x.shape[slice(start, end)], np.int64)]
    if op == "Size":
        return [np.array(x.size, np.int64)]
    if op == "Gather":
        a = axis(attrs.get("axis", 0), x.ndim)
        idx = np.asarray(ins[1])
        if idx.dtype.kind not in "iu":
            raise OnnxImportError("gather indices must be integers")
        if idx.size and (idx.min() < -x.shape[a] or idx.max() >= x.shape[a]):
            raise OnnxImportError(f"gather index out of range for dimension {x.shape[a]}")
        _bound(x.shape[:a] + idx.shape + x.shape[a + 1:])
        return [np.take(x, idx, axis=a)]
    if op == "Unsqueeze":
        axes = axes_arg(ins, attrs, 1, 13, opset) or []
        rank = x.ndim + len(axes)
        axes = sorted(axis(a, rank) for a in axes)
        if len(set(axes)) != len(axes):
            raise OnnxImportError("unsqueeze axes repeat")
        shape = list(x.shape)
        for a in axes:
            shape.insert(a, 1)
        return [x.reshape(shape)]
    if op == "Squeeze":
        axes = axes_arg(ins, attrs, 1, 13, opset)
        axes = [i for i, d in enumerate(x.shape) if d == 1] if axes is None else [axis(a, x.ndim) for a in axes]
        if any(x.shape[a] != 1 for a in axes):
            raise OnnxImportError(f"squeezes a dimension that is not 1 in {list(x.shape)}")
        return [x.reshape([d for i, d in enumerate(x.shape) if i not in axes])]
    if op == "Concat":
        arrays = [np.asarray(a) for a in ins if a is not None]
        a = axis(attrs.get("axis", 0), arrays[0].ndim)
        if any(b.ndim != arrays[0].ndim for b in arrays):
            raise OnnxImportError("concatenates constants of different ranks")
        _bound((sum(b.size for b in arrays),))
        dtype = np.result_type(*arrays)
        return [normalise(np.concatenate([b.astype(dtype) for b in arrays], axis=a))]
    if op == "Reshape":
        target = ints(ins[1], "shape") if opset >= 5 else list(attrs.get("shape", []))
        return [x.reshape(reshape_target(x.shape, target, bool(attrs.get("allowzero", 0))))]
    if op == "Flatten":
        a = axis(attrs.get("axis", 1), x.ndim + 1)
        return [x.reshape(math.prod(x.shape[:a]), -1)]
    if op == "Transpose":
        perm = list(attrs.get("perm", range(x.ndim)[::-1]))
        if sorted(perm) != list(range(x.ndim)):
            raise OnnxImportError(f"transpose perm {perm} does not fit rank {x.ndim}")
        return [np.ascontiguousarray(x.transpose(perm))]
    if op == "Slice":
        params = slice_params(x.shape, *slice_inputs(ins, attrs, opset))
        return [x[tuple(slice(*p) for p in params)]]
    if op == "Split":
        a = axis(attrs.get("axis", 0), x.ndim)
        sizes = split_sizes(x.shape[a], ins, attrs, opset, outputs)
        return np.split(x, np.cumsum(sizes)[:-1], axis=a)
    if op == "ConstantOfShape":
        shape = _bound(ints(x, "shape"))
        value = attrs.get("value")
        fill = np.zeros(1, np.float32) if value is None else value
        return [np.full(shape, fill.reshape(-1)[0], dtype=fill.dtype)]
    if op == "Expand":
        shape = broadcast(x.shape, ints(ins[1], "shape"))
        return [np.broadcast_to(x, shape).copy()]
    if op == "Tile":
        reps = ints(ins[1], "repeats")
        if len(reps) != x.ndim or min(reps, default=1) < 0:
            raise OnnxImportError("tile repeats do not fit")
        _bound([d * r for d, r in zip(x.shape, reps)])
        return [np.tile(x, reps)]
    if op == "Range":
        start, limit, delta = (np.asarray(a).reshape(()) for a in ins[:3])
        if delta == 0:
            raise OnnxImportError("range with step 0")
        _bound((max(math.ceil((float(limit) - float(start)) / float(delta)), 0),))
        return [normalise(np.arange(start, limit, delta))]
    if op == "Where":
        broadcast(*(np.shape(a) for a in ins[:3]))
        return [normalise(np.where(ins[0], ins[1], ins[2]))]
    if op in ("ReduceProd", "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin"):
        axes = axes_arg(ins, attrs, 1, 13 if op == "ReduceSum" else 18, opset)
        axes = None if not axes else tuple(axis(a, x.ndim) for a in axes)
        f = {"ReduceProd": np.prod, "ReduceSum": np.sum, "ReduceMean": np.mean, "ReduceMax": np.max,
             "ReduceMin": np.min}[op]
        return [normalise(np.asarray(f(x, axis=axes, keepdims=bool(attrs.get("keepdims", 1)))))]
    if op == "Clip":
        lo = attrs.get("min", ins[1] if len(ins) > 1 and ins[1] is not None else -np.inf)
        hi = attrs.get("max", ins[2] if len(ins) > 2 and ins[2] is not None else np.inf)
        return [normalise(np.clip(x, lo, hi))]
    raise KeyError(op)


def constant_value(attrs: dict, read_tensor) -> np.ndarray:
    """The value of a Constant node (any of its attribute forms)."""
    if isinstance(attrs.get("value"), TensorProto):
        return read_tensor(attrs["value"])
    for key in ("value_float", "value_int", "value_floats", "value_ints"):
        if key in attrs:
            return normalise(np.array(attrs[key], np.float32 if "float" in key else np.int64))
    raise OnnxImportError(f"constant kind {sorted(attrs)} is not supported")
