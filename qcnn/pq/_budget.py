"""Theoretical cost of dense and product-quantized layers, private to the search.

Deliberately simple (the reported figures come from qcnn/pq/cost.py):
  dense MACs   OH*OW*C_out*KH*KW*C_in/g                 (conv, depthwise and FC alike)
  PQ MACs      H*W*G*M*K*dsub   (lookup tables, every input pixel)
             + OH*OW*C_out*KH*KW*M   (table look-ups and adds)
  dense bits   32 per parameter
  PQ bits      32*G*M*K*dsub (codebooks) + ceil(log2 K)*KH*KW*M*C_out (codes) + 32*C_out (bias)
Nodes other than conv and FC (pooling, adds, ...) count no MACs; their parameters count as dense.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Graph
from ..layers import Conv2D, Dense
from .layer import PQSetting


@dataclass(frozen=True)
class LayerShape:
    kh: int
    kw: int
    cin_g: int
    cout: int
    groups: int
    in_pixels: int          # H*W of the input
    out_pixels: int         # OH*OW
    has_bias: bool

    def dense_macs(self) -> int:
        return self.out_pixels * self.cout * self.kh * self.kw * self.cin_g

    def pq_macs(self, s: PQSetting) -> int:
        m = -(-self.cin_g // s.dsub)
        return self.in_pixels * self.groups * m * s.ksub * s.dsub + self.out_pixels * self.cout * self.kh * self.kw * m

    def weight_bits(self) -> int:
        return 32 * self.kh * self.kw * self.cin_g * self.cout

    def pq_weight_bits(self, s: PQSetting) -> int:
        m = -(-self.cin_g // s.dsub)
        return 32 * self.groups * m * s.ksub * s.dsub + s.bits * self.kh * self.kw * m * self.cout


def layer_shapes(graph: Graph, input_shape: tuple[int, int, int]) -> dict[str, LayerShape]:
    """Geometry of every conv and FC node for one input of (H, W, C)."""
    env = {graph.input_name: np.zeros((1,) + tuple(input_shape), np.float32)}
    out = {}
    for node in graph:
        args = [env[i] for i in node.inputs]
        y = node.layer(*args)
        layer = node.layer
        if isinstance(layer, Conv2D):
            kh, kw, cin_g, cout = layer.weight.shape
            out[node.name] = LayerShape(kh, kw, cin_g, cout, layer.groups, args[0].shape[1] * args[0].shape[2],
                                        y.shape[1] * y.shape[2], layer.bias is not None)
        elif isinstance(layer, Dense):
            out[node.name] = LayerShape(1, 1, layer.in_channels, layer.out_channels, 1, 1, 1, layer.bias is not None)
        env[node.name] = y
    return out


@dataclass
class Totals:
    dense_macs: int
    macs: int
    dense_bits: int
    bits: int

    @property
    def speedup(self) -> float:
        return self.dense_macs / self.macs

    @property
    def compression(self) -> float:
        return self.dense_bits / self.bits


def totals(graph: Graph, shapes: dict[str, LayerShape], settings: dict[str, PQSetting | None]) -> Totals:
    """Whole-network MACs and parameter bits, dense and with `settings` applied."""
    dense_macs = sum(s.dense_macs() for s in shapes.values())
    dense_bits = 32 * graph.num_params()
    macs, bits = dense_macs, dense_bits
    for name, setting in settings.items():
        if setting is None:
            continue
        s = shapes[name]
        macs += s.pq_macs(setting) - s.dense_macs()
        bits += s.pq_weight_bits(setting) - s.weight_bits()
    return Totals(dense_macs, macs, dense_bits, bits)
