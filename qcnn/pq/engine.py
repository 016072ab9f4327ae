"""Which implementation runs each product-quantized layer: the numpy reference, exact float-table
lookups or fast-scan uint8 lookups (C kernels).  The choice changes speed, not the model: files
and caches hold the canonical layers, and a graph is re-targeted here when it is loaded."""
from __future__ import annotations

import dataclasses

from ..graph import Graph, Node
from .kernels import fastscan_supported
from .layer import PQLayer

KERNELS = ("reference", "exact", "fastscan", "auto")
DESCRIPTIONS = {
    "reference": "numpy reference (the paper's test phase, slow)",
    "exact": "exact float tables (C, SIMD permutes/gathers)",
    "fastscan": "fast-scan: uint8 tables, 4-bit codes, byte shuffles (C); K > 16 layers fall back to exact",
    "auto": "fast-scan where K <= 16, exact elsewhere",
}


def impl_for(layer: PQLayer, kernel: str) -> str:
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose from {', '.join(KERNELS)}")
    if kernel in ("fastscan", "auto"):
        return "fastscan" if fastscan_supported(layer) else "exact"
    return kernel


def with_kernel(graph: Graph, kernel: str) -> Graph:
    """A graph whose PQ layers run `kernel`; layouts for the C kernels are made here, once."""
    nodes = []
    for node in graph:
        layer = node.layer
        if isinstance(layer, PQLayer):
            layer = dataclasses.replace(layer, impl=impl_for(layer, kernel))
            if layer.impl != "reference":
                layer.prepared()
        nodes.append(Node(node.name, layer, node.inputs))
    return Graph(nodes, graph.input_name, graph.output)


def kernel_map(graph: Graph) -> dict[str, str]:
    """What each PQ layer of `graph` runs (for the cost model's `kernel` column)."""
    return {n.name: n.layer.impl for n in graph if isinstance(n.layer, PQLayer)}
