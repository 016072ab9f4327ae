"""The network graph: named nodes in execution order, run on NHWC float32 arrays."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import layers as L
from .threads import ensure_thread_limit

# on_layer(node, seconds) is called after each node when profiling.
LayerHook = Callable[["Node", float], None]


@dataclass(eq=False)
class Node:
    name: str
    layer: L.Layer
    inputs: tuple[str, ...]

    @property
    def output(self) -> str:
        return self.name


class Graph:
    """A DAG in topological order.  Tensors are referred to by the name of the node that makes them;
    the network input is called `input_name`.
    """

    def __init__(self, nodes: list[Node], input_name: str = "input", output: str | None = None):
        self.nodes = list(nodes)
        self.input_name = input_name
        self.output = output or self.nodes[-1].name
        self._check()
        self._plan()
        self._index = {n.name: i for i, n in enumerate(self.nodes)}

    def _check(self):
        known = {self.input_name}
        for node in self.nodes:
            missing = [i for i in node.inputs if i not in known]
            if missing:
                raise ValueError(f"node {node.name!r} reads {missing} before they are computed")
            if node.name in known:
                raise ValueError(f"duplicate tensor name {node.name!r}")
            known.add(node.name)
        if self.output not in known:
            raise ValueError(f"graph output {self.output!r} is not computed")
        if self.output == self.input_name:
            raise ValueError(f"graph output {self.output!r} is its input: no node computes it")

    def _plan(self):
        # Free each intermediate right after its last reader, so peak memory stays small.
        last = {}
        for i, node in enumerate(self.nodes):
            for name in node.inputs:
                last[name] = i
        self._free_after = [[n for n in dict.fromkeys(node.inputs) if last[n] == i and n != self.output]
                            for i, node in enumerate(self.nodes)]

    def __iter__(self):
        return iter(self.nodes)

    def __getitem__(self, name: str) -> Node:
        # An index, not a scan: callers look up every layer by name, which a scan makes quadratic
        # (tens of seconds for a model file of 28,000 nodes).  Rebuilt if `nodes` was edited.
        i = self._index.get(name)
        if i is None or i >= len(self.nodes) or self.nodes[i].name != name:
            self._index = {n.name: i for i, n in enumerate(self.nodes)}
            i = self._index.get(name)
            if i is None:
                raise KeyError(name)
        return self.nodes[i]

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    def forward(self, x: np.ndarray, on_layer: LayerHook | None = None, until: str | None = None) -> np.ndarray:
        """Run the network; `until` stops early and returns that node's output."""
        ensure_thread_limit()
        env = {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}
        target = until or self.output
        for node, dead in zip(self.nodes, self._free_after):
            args = [env[i] for i in node.inputs]
            if on_layer is None:
                env[node.name] = node.layer(*args)
            else:
                t0 = time.perf_counter()
                env[node.name] = node.layer(*args)
                on_layer(node, time.perf_counter() - t0)
            if node.name == target:
                return env[node.name]
            for name in dead:
                del env[name]
        raise KeyError(target)

    __call__ = forward

    def params(self) -> dict[str, np.ndarray]:
        return {f"{n.name}.{k}": v for n in self.nodes for k, v in n.layer.params().items()}

    def num_params(self) -> int:
        return sum(v.size for v in self.params().values())

    def fuse_activations(self) -> "Graph":
        """A new graph with each ReLU/ReLU6 folded into the conv or FC node before it, when nothing
        else reads that node.  This graph and its layers are left unchanged."""
        nodes, renamed = [], {}
        for node in self.nodes:
            node = Node(node.name, node.layer, tuple(renamed.get(i, i) for i in node.inputs))
            prev = nodes[-1] if nodes else None
            if (isinstance(node.layer, L.Activation) and prev is not None and node.inputs == (prev.name,)
                    and isinstance(prev.layer, (L.Conv2D, L.Dense)) and prev.layer.activation is None
                    and len(self.consumers(prev.name)) == 1 and prev.name != self.output):
                prev.layer = copy.copy(prev.layer)
                prev.layer.activation = node.layer.name
                renamed[node.name] = prev.name
                continue
            nodes.append(node)
        return Graph(nodes, self.input_name, renamed.get(self.output, self.output))
