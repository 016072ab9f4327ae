"""Where an ONNX tensor's axes live in the engine's arrays.

ONNX describes a tensor by its logical shape (NCHW for images); the engine keeps images NHWC.  An
activation is therefore a logical shape plus `perm`: logical axis i is array axis perm[i].  A
Transpose only changes perm (free); a layer that needs another layout gets one Reshape layer that
transposes; a Reshape moves no data when the groups of axes it merges or splits already lie side
by side in memory -- so PyTorch's channel shuffle (reshape, transpose, reshape) costs one copy, the
shuffle itself, and a flatten after global pooling none.  The batch is logical and array axis 0,
always, and stays out of every reshape and transpose.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .common import OnnxImportError


@dataclass(frozen=True)
class Act:
    """An activation: our tensor `name`, its ONNX shape (batch 1) and where each axis lives."""

    name: str
    shape: tuple[int, ...]
    perm: tuple[int, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def physical(self) -> tuple[int, ...]:
        out = [0] * self.rank
        for i, p in enumerate(self.perm):
            out[p] = self.shape[i]
        return tuple(out)

    @property
    def order(self) -> tuple[int, ...]:
        """order[k]: the logical axis at array axis k."""
        return inverse(self.perm)


def inverse(perm) -> tuple[int, ...]:
    out = [0] * len(perm)
    for i, p in enumerate(perm):
        out[p] = i
    return tuple(out)


def canonical(rank: int) -> tuple[int, ...]:
    """The engine's layout for a logical rank: NCHW images as NHWC, anything else as is."""
    return (0, 3, 1, 2) if rank == 4 else tuple(range(rank))


def transpose_for(x: Act, perm) -> tuple[int, ...] | None:
    """Array transpose taking x to layout `perm`, or None when only size-1 axes move (a view)."""
    order = inverse(perm)
    t = tuple(x.perm[order[k]] for k in range(x.rank))
    phys = x.physical
    moved = [a for a in t if phys[a] != 1]
    return None if moved == sorted(moved) else t


@dataclass(frozen=True)
class ReshapePlan:
    transpose: tuple[int, ...] | None     # array transpose before the reshape, or None
    physical: tuple[int, ...]             # the new array shape (batch included)
    perm: tuple[int, ...]                 # the new activation's layout


def plan_reshape(x: Act, new: tuple[int, ...]) -> ReshapePlan:
    """How to turn activation x into logical shape `new` (same element count, new[0] the batch)."""
    old = x.shape
    if not new or new[0] != 1 or math.prod(new) != math.prod(old):
        raise OnnxImportError(f"reshape of {list(old)} to {list(new)} would mix the batch with other axes")
    old_axes = [i for i in range(1, len(old)) if old[i] != 1]
    new_axes = [j for j in range(1, len(new)) if new[j] != 1]
    groups = []
    i = j = 0
    while i < len(old_axes):
        go, gn = [old_axes[i]], [new_axes[j]]
        po, pn = old[go[0]], new[gn[0]]
        while po != pn:
            if po < pn:
                i += 1
                go.append(old_axes[i])
                po *= old[old_axes[i]]
            else:
                j += 1
                gn.append(new_axes[j])
                pn *= new[new_axes[j]]
        groups.append((go, gn))
        i += 1
        j += 1
    # Each group's old axes must be adjacent in memory and in logical order; groups keep the memory
    # order of their first axis.  Anything else needs a transpose first.
    groups.sort(key=lambda g: min(x.perm[a] for a in g[0]))
    wanted = [a for go, _ in groups for a in go]
    current = sorted(old_axes, key=lambda a: x.perm[a])
    transpose = None
    if wanted != current:
        ones = [a for a in sorted(range(1, len(old)), key=lambda a: x.perm[a]) if old[a] == 1]
        transpose = tuple(x.perm[a] for a in [0, *wanted, *ones])
    sequence = [b for _, gn in groups for b in gn]   # new non-1 axes in memory order
    rank = len(new)
    for candidate in (canonical(rank), tuple(range(rank))):
        order = inverse(candidate)
        if [b for b in order if new[b] != 1 and b != 0] == sequence:
            perm = candidate
            break
    else:
        ones = [b for b in range(1, rank) if new[b] == 1]
        perm = inverse([0, *sequence, *ones])
    physical = [0] * rank
    for b, p in enumerate(perm):
        physical[p] = new[b]
    return ReshapePlan(transpose, tuple(physical), tuple(perm))
