"""Which implementation runs each product-quantized layer: the numpy reference, exact float-table
lookups or fast-scan uint8 lookups (C kernels), or the dense kernels on weights reconstructed from
the codebooks.  The choice changes speed, not the model: files and caches hold the canonical
layers, and a graph is re-targeted here when it is loaded.

Lookups win when a layer's subspaces are wide and it has many output channels (AlexNet's conv2-5
and FC layers); with C_s' = 1 or 2 and few output channels, building the tables costs more than
the dense product, and reconstruction is faster.  "auto" times the candidates on one input."""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from ..graph import Graph, Node
from .kernels import fastscan_supported
from .layer import PQLayer

KERNELS = ("reference", "exact", "fastscan", "reconstructed", "auto")
DESCRIPTIONS = {
    "reference": "numpy reference (the paper's test phase, slow)",
    "exact": "exact float tables (C, SIMD permutes/gathers)",
    "fastscan": "fast-scan: uint8 tables, 4-bit codes, byte shuffles or permutes (C); K > 16 layers fall back to exact",
    "reconstructed": "weights reconstructed from the codebooks at load, run by the dense kernels (no lookups)",
    "auto": "per layer the fastest of fast-scan (K <= 16), exact and reconstructed, timed at load",
}


def impl_for(layer: PQLayer, kernel: str) -> str:
    """The implementation `kernel` means for this layer ("auto" untimed: fast-scan where it can)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose from {', '.join(KERNELS)}")
    if kernel in ("fastscan", "auto"):
        return "fastscan" if fastscan_supported(layer) else "exact"
    return kernel


def _retarget(layer: PQLayer, impl: str) -> PQLayer:
    layer = dataclasses.replace(layer, impl=impl)
    if impl != "reference":
        layer.prepared()
    return layer


def fastest_layers(graph: Graph, input_hw: tuple[int, int], repeats: int = 3, seed: int = 0) -> dict[str, PQLayer]:
    """For each PQ layer, the retargeted layer whose implementation ran its input fastest (best of
    `repeats`) in one forward pass of a random input of input_hw pixels, already prepared."""
    x = np.random.default_rng(seed).standard_normal((1, *input_hw, 3)).astype(np.float32)
    env, chosen = {graph.input_name: x}, {}
    for node in graph:
        args = [env[i] for i in node.inputs]
        layer = node.layer
        if isinstance(layer, PQLayer):
            timed = {}
            for impl in (["fastscan"] if fastscan_supported(layer) else []) + ["exact", "reconstructed"]:
                candidate = _retarget(layer, impl)
                best = float("inf")
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    candidate(*args)
                    best = min(best, time.perf_counter() - t0)
                timed[impl] = (best, candidate)
            layer = chosen[node.name] = min(timed.values(), key=lambda t: t[0])[1]
        env[node.name] = layer(*args)
    return chosen


def with_kernel(graph: Graph, kernel: str, input_hw: tuple[int, int] | None = None) -> Graph:
    """A graph whose PQ layers run `kernel`; layouts for the C kernels are made here, once.
    With "auto" and an input size, each layer gets the implementation timed fastest."""
    timed = fastest_layers(graph, input_hw) if kernel == "auto" and input_hw else {}
    nodes = []
    for node in graph:
        layer = node.layer
        if isinstance(layer, PQLayer):
            layer = timed.get(node.name) or _retarget(layer, impl_for(layer, kernel))
        nodes.append(Node(node.name, layer, node.inputs))
    return Graph(nodes, graph.input_name, graph.output)


def kernel_map(graph: Graph) -> dict[str, str]:
    """What each PQ layer of `graph` runs (for the cost model's `kernel` column)."""
    return {n.name: n.layer.impl for n in graph if isinstance(n.layer, PQLayer)}
