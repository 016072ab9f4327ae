"""What running a graph on one image will cost, computed from the graph alone, before it runs.

A model file or an ONNX import is untrusted: a few hundred bytes can describe a network that asks
for 48 GiB (a huge padding, read with a huge stride, makes a huge padded copy and a tiny output) or
minutes per image (an image-sized pooling window at stride 1).  Every model source holds a graph
to `LIMITS` before anything runs: `qcnn.models.Model` checks it when it is made (built-in models,
ONNX imports, `.qcnn` files, rebuilt dense models), and anyone else can call `check_budget`.

Work is counted in multiply-add equivalents per image: a conv or FC multiply-add counts 1, and the
operations that run far slower per element than a GEMM (pooling window reads, depthwise taps,
LRN terms, table builds, lookups, copies) count what they cost next to it, measured on this
project's machine (`_WEIGHT`).  Memory is the peak of live activations plus the largest temporary
any of the engine's implementations of the running layer makes (padded copies, im2col rows,
lookup tables of the numpy reference), at batch 1.

The limits are generous for real networks (VGG-19 at 224 px is 20 G multiply-adds and needs about
100 MiB here; ResNet-50 4.1 G) and refuse what would take longer than a few seconds per image or
more memory than a desktop has to spare.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import layers as L
from .graph import Graph

__all__ = ["Limits", "LIMITS", "Budget", "BudgetError", "estimate", "check_budget"]


@dataclass(frozen=True)
class Limits:
    work: float = 60e9             # multiply-add equivalents per image (one to a few seconds)
    memory: int = 2 * 2**30        # bytes: peak live activations + the largest layer temporary


LIMITS = Limits()

# Cost of one elementary step in GEMM multiply-adds, from single-thread rates measured here
# (AVX-512): conv GEMM 25-170 G multiply-adds/s; depthwise 2.5 G taps/s; pooling 2-3 G window
# reads/s on big windows; exact-table lookups at K = 128 0.7 G/s, fast-scan far faster; LRN,
# activations, padding 20-40 G elements/s.  The work limit is then "about a second per image".
# The numpy reference of PQ layers (kernel "reference", a test oracle) runs 100-300x slower
# than this counts.
_WEIGHT = {"mac": 1, "tap": 12, "window": 16, "lookup": 16, "element": 8}


class BudgetError(ValueError):
    """Running the graph would exceed the limits; the message says which layer and by how much."""


@dataclass(frozen=True)
class Budget:
    work: float                    # multiply-add equivalents per image
    memory: int                    # peak bytes at batch 1
    heaviest: str                  # the node doing the most work
    peak_at: str                   # the node running when memory peaks

    def problem(self, limits: Limits = LIMITS) -> str:
        """Why the budget exceeds `limits` ("" when it does not)."""
        if self.memory > limits.memory:
            return (f"running it would need {self.memory / 2**30:.1f} GiB of memory at layer {self.peak_at!r} "
                    f"(limit {limits.memory / 2**30:.1f} GiB)")
        if self.work > limits.work:
            return (f"running it would take {self.work / 1e9:.0f} G operations per image, mostly in layer "
                    f"{self.heaviest!r} (limit {limits.work / 1e9:.0f} G)")
        return ""


def _padded(h: int, w: int, c: int, pads) -> int:
    top, bottom, left, right = pads
    return (h + top + bottom) * (w + left + right) * c


def _node_cost(layer: L.Layer, ins: list[tuple], out: tuple) -> tuple[float, int]:
    """(work, temporary elements) of one node, the worst over the implementations that may run it."""
    from .pq.layer import PQLayer
    w = _WEIGHT
    n_out = math.prod(out)
    n_in = sum(math.prod(s) for s in ins)
    if isinstance(layer, PQLayer) and layer.kind_of == "fc":
        g, m, k, d = layer.codebooks.shape
        work = max(w["mac"] * layer.in_channels * layer.out_channels,          # reconstructed
                   w["mac"] * m * k * d + w["lookup"] * m * layer.out_channels)
        return work, m * k
    if isinstance(layer, (L.Conv2D, PQLayer)):
        h, wd, c = ins[0]
        pads, oh, ow = layer.geometry(h, wd)
        kh, kw = layer.kernel
        cin_g, cout = c // layer.groups, layer.out_channels
        macs = oh * ow * cout * kh * kw * cin_g
        padded = _padded(h, wd, c, pads)
        im2col = oh * ow * kh * kw * cin_g                # BLAS path, one group at a time
        if isinstance(layer, PQLayer):
            g, m, k, d = layer.codebooks.shape
            tables = (padded // c) * g * m * k            # the numpy reference's tables
            work = max(w["mac"] * macs,
                       w["mac"] * h * wd * g * m * k * d + w["lookup"] * oh * ow * cout * kh * kw * m)
            return work + w["element"] * padded, padded + max(im2col, 2 * tables)
        if isinstance(layer, L.Conv2D) and layer.depthwise:
            return w["tap"] * oh * ow * cout * kh * kw, 0
        return w["mac"] * macs + w["element"] * padded, padded + im2col
    if isinstance(layer, L.Dense):
        return w["mac"] * layer.in_channels * layer.out_channels, 0
    if isinstance(layer, L.Pool2D):
        h, wd, c = ins[0]
        pads, oh, ow = layer.geometry(h, wd)
        kh, kw = layer.kernel
        # The C kernel reads the windows in place; the numpy path (other dtypes) pads a copy.
        padded = (h + pads[0] + pads[1] + kh) * (wd + pads[2] + pads[3] + kw) * c
        return w["window"] * oh * ow * c * kh * kw, padded
    if isinstance(layer, L.LRN):
        return w["tap"] * n_out * layer.size, n_out + n_out // out[-1] * (out[-1] + layer.size)   # numpy path
    # Elementwise, copies, reductions: one pass over inputs and output.
    return w["element"] * (n_in + n_out), 0


def estimate(graph: Graph, input_hw: tuple[int, int], channels: int = 3) -> Budget:
    """Work and peak memory of one forward pass on an input of input_hw pixels (batch 1).
    Raises ValueError when a layer does not fit what it reads."""
    from .pq.cost import infer_shapes
    shapes = infer_shapes(graph, input_hw, channels)
    last = {}
    for i, node in enumerate(graph.nodes):
        for name in node.inputs:
            last[name] = i
    size = {name: math.prod(s) * 4 for name, s in shapes.items()}
    live = size[graph.input_name]
    work, peak, heaviest, most, peak_at = 0.0, live, graph.nodes[0].name, -1.0, graph.nodes[0].name
    for i, node in enumerate(graph.nodes):
        node_work, temp = _node_cost(node.layer, [shapes[n] for n in node.inputs], shapes[node.name])
        work += node_work
        if node_work > most:
            heaviest, most = node.name, node_work
        here = live + size[node.name] + 4 * temp
        if here > peak:
            peak, peak_at = here, node.name
        live += size[node.name]
        live -= sum(size[n] for n in set(node.inputs) if last[n] == i and n != graph.output)
    return Budget(work, peak, heaviest, peak_at)


def check_budget(graph: Graph, input_hw: tuple[int, int], channels: int = 3, limits: Limits = LIMITS) -> Budget:
    """estimate(), raising BudgetError when it exceeds `limits` (and ValueError when a layer does
    not fit its input)."""
    budget = estimate(graph, input_hw, channels)
    problem = budget.problem(limits)
    if problem:
        raise BudgetError(problem)
    return budget
