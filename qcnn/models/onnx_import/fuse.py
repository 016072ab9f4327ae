"""Graph rewrites after conversion: fewer, cheaper nodes computing the same thing.

- layer normalisation as the TorchScript exporter decomposes it (mean, subtract, square, mean,
  add eps, square root, divide) over the last axis -> one LayerNorm, with the scale and shift after it;
- x * sigmoid(x) -> SiLU, x * hardsigmoid(x) (alpha 1/6, beta 1/2) -> hard-swish, and the erf form
  of GELU, x * (erf(x / sqrt 2) + 1) / 2, as PyTorch's exporters write them -> one activation;
- batch norm, bias additions and per-channel scales (Affine) into the conv / FC before them, a
  ReLU / ReLU6 into the conv / FC before it (both fused in the C kernels' store), consecutive
  Affines into one;
- a Pad into the next conv / pool; per-channel affines left over, with a ReLU after them, into one
  C pass;
- element-wise activations overwrite their input when they are its only reader and it is a fresh
  array made by a conv, FC, add or affine node (never the network input or a view of it);
- nodes nothing reads are dropped.
"""
from __future__ import annotations

import dataclasses
import math
from collections import Counter

import numpy as np

from ... import layers as L
from ...graph import Node

_FRESH = (L.Conv2D, L.Dense, L.Add, L.Affine, L.ChannelAffine, L.Binary, L.Concat, L.GlobalAvgPool, L.Pool2D)


def _readers(nodes, output) -> Counter:
    readers = Counter(i for n in nodes for i in n.inputs)
    readers[output] += 1
    return readers


def _live(nodes: list[Node], output: str) -> list[Node]:
    needed, kept = {output}, []
    for node in reversed(nodes):
        if node.name in needed:
            kept.append(node)
            needed.update(node.inputs)
    return kept[::-1]


def _scalar_affine(layer, scale=None, shift=None) -> bool:
    """Whether `layer` is an Affine x * scale + shift with these scalar values (None: any)."""
    if not isinstance(layer, L.Affine):
        return False
    sc, sh = np.asarray(layer.scale), np.asarray(layer.shift)
    if sc.size == 0 or np.ptp(sc) or np.ptp(sh):
        return False
    return ((scale is None or math.isclose(float(sc.flat[0]), scale, rel_tol=1e-6))
            and (shift is None or math.isclose(float(sh.flat[0]), shift, rel_tol=1e-6, abs_tol=1e-12)))


def _activations(nodes: list[Node], output: str) -> list[Node]:
    """SiLU, hard-swish and GELU written as several nodes -> one Unary node."""
    by_name = {n.name: n for n in nodes}
    readers = _readers(nodes, output)
    replace: dict[str, Node] = {}
    consumers: dict[str, list[Node]] = {}
    for n in nodes:
        for i in set(n.inputs):
            consumers.setdefault(i, []).append(n)

    def single(name):
        return readers[name] == 1 and name != output

    for node in nodes:
        layer = node.layer
        if not (isinstance(layer, L.Binary) and layer.op == "mul" and layer.const is None and len(node.inputs) == 2):
            continue
        a, b = node.inputs
        for x, g in ((a, b), (b, a)):
            gate = by_name.get(g)
            if gate is None or not single(g) or gate.inputs != (x,) or not isinstance(gate.layer, L.Unary):
                continue
            if gate.layer.name == "sigmoid":
                replace[node.name] = Node(node.name, L.Unary("silu"), (x,))
            elif (gate.layer.name == "hardsigmoid" and math.isclose(gate.layer.alpha, 1 / 6, rel_tol=1e-5)
                  and math.isclose(gate.layer.beta, 0.5)):
                replace[node.name] = Node(node.name, L.Unary("hardswish"), (x,))
            break
        if node.name in replace:
            continue
        # GELU, x * (1 + erf(x / sqrt 2)) / 2, with the halving anywhere: on the gate (dynamo:
        # Affine(0.5, 0.5) after the merge), on x, or after the product.
        for x, g in ((a, b), (b, a)):
            gate = by_name.get(g)
            if gate is None or not single(g) or not _scalar_affine(gate.layer):
                continue
            erf = by_name.get(gate.inputs[0])
            if erf is None or not single(erf.name) or not (isinstance(erf.layer, L.Unary) and erf.layer.name == "erf"):
                continue
            scaled = by_name.get(erf.inputs[0])
            if scaled is None or not single(scaled.name) or not _scalar_affine(scaled.layer, 1 / math.sqrt(2), 0.0):
                continue
            source, half = scaled.inputs[0], by_name.get(x)
            if x == source and _scalar_affine(gate.layer, 0.5, 0.5):
                replace[node.name] = Node(node.name, L.Unary("gelu"), (source,))
            elif _scalar_affine(gate.layer, 1.0, 1.0) and x == source:
                after = [r for r in consumers.get(node.name, ()) if r.inputs == (node.name,)
                         and _scalar_affine(r.layer, 0.5, 0.0)]
                if single(node.name) and after:
                    replace[after[0].name] = Node(after[0].name, L.Unary("gelu"), (source,))
            elif (_scalar_affine(gate.layer, 1.0, 1.0) and half is not None and half.inputs == (source,)
                  and single(x) and _scalar_affine(half.layer, 0.5, 0.0)):
                replace[node.name] = Node(node.name, L.Unary("gelu"), (source,))
            break
    if not replace:
        return nodes
    return _live([replace.get(n.name, n) for n in nodes], output)


def _layer_norms(nodes: list[Node], output: str, ranks: dict[str, int]) -> list[Node]:
    by_name = {n.name: n for n in nodes}
    readers = _readers(nodes, output)
    replace: dict[str, Node] = {}

    def producer(name, cls, single=True):
        node = by_name.get(name)
        if node is None or not isinstance(node.layer, cls) or (single and (readers[name] != 1 or name == output)):
            return None
        return node

    for node in nodes:
        layer = node.layer
        if not (isinstance(layer, L.Binary) and layer.op == "div" and layer.const is None):
            continue
        d, s = node.inputs
        root = producer(s, L.Binary)
        if root is None or root.layer.op != "pow" or root.layer.const is None or root.layer.const.size != 1 \
                or float(root.layer.const.reshape(())) != 0.5 or root.layer.const_first:
            continue
        eps = producer(root.inputs[0], L.Affine)
        if eps is None or not _scalar_affine(eps.layer, 1.0):
            continue
        var = producer(eps.inputs[0], L.Reduce)
        sq = var and producer(var.inputs[0], L.Binary)
        diff = by_name.get(d)
        if (var is None or var.layer.op != "mean" or sq is None or sq.layer.op != "mul" or sq.inputs != (d, d)
                or diff is None or not isinstance(diff.layer, L.Binary) or diff.layer.op != "sub"
                or diff.layer.const is not None or readers[d] != 3):
            continue
        x, m = diff.inputs
        mean = producer(m, L.Reduce)
        rank = ranks.get(x)
        if (mean is None or mean.inputs != (x,) or mean.layer.op != "mean" or rank is None
                or not mean.layer.axes == var.layer.axes == (rank - 1,) or not mean.layer.keepdims
                or not var.layer.keepdims):
            continue
        c = np.float32(float(np.asarray(eps.layer.shift).reshape(-1)[0]))
        replace[node.name] = Node(node.name, L.LayerNorm(np.ones(1, np.float32), None, float(c), 1), (x,))
    if not replace:
        return nodes
    return _live([replace.get(n.name, n) for n in nodes], output)


def _absorb(producer, consumer):
    """`producer` with `consumer` (its only reader) merged in, or None."""
    if isinstance(producer, L.LayerNorm) and isinstance(consumer, L.Affine) and producer.axes == 1:
        scale, shift = np.asarray(consumer.scale), np.asarray(consumer.shift)
        if scale.ndim == shift.ndim == 1:
            bias = 0 if producer.bias is None else producer.bias
            return L.LayerNorm((producer.scale * scale).astype(np.float32), (bias * scale + shift).astype(np.float32),
                               producer.eps, 1)
        return None
    if isinstance(producer, L.Affine) and isinstance(consumer, L.Affine):
        if np.ndim(producer.scale) == np.ndim(consumer.scale) == 1 or np.size(consumer.scale) == 1:
            return L.Affine((producer.scale * consumer.scale).astype(np.float32),
                            (producer.shift * consumer.scale + consumer.shift).astype(np.float32))
        return None
    if not isinstance(producer, (L.Conv2D, L.Dense)) or producer.activation is not None:
        return None
    if isinstance(consumer, L.Affine):            # batch norm / bias: scale the output channels
        scale, shift = np.asarray(consumer.scale), np.asarray(consumer.shift)
        if scale.ndim != 1 or shift.ndim != 1 or {scale.size, shift.size} - {1, producer.out_channels}:
            return None
        scale = np.broadcast_to(scale, (producer.out_channels,))
        shift = np.broadcast_to(shift, (producer.out_channels,))
        bias = shift if producer.bias is None else producer.bias * scale + shift
        return dataclasses.replace(producer, weight=producer.weight * scale, bias=bias)
    if isinstance(consumer, L.Activation):
        return dataclasses.replace(producer, activation=consumer.name)
    return None


def _absorb_pad(pad, consumer):
    """`consumer` with the Pad before it (its only reader) folded into its own padding, or None."""
    if not isinstance(pad, L.Pad) or not isinstance(consumer, (L.Conv2D, L.Pool2D)) or consumer.pads == "same":
        return None
    pads = tuple(p + q for p, q in zip(consumer.pads, pad.pads))
    if isinstance(consumer, L.Conv2D):
        return dataclasses.replace(consumer, pads=pads) if pad.value == 0 else None
    if consumer.ceil_mode:      # ceil mode decides the last window from the unpadded size: not the same
        return None
    if consumer.mode == "max" and pad.value == -math.inf:
        return dataclasses.replace(consumer, pads=pads)
    if consumer.mode == "avg" and pad.value == 0 and (consumer.count_include_pad or not any(consumer.pads)):
        return dataclasses.replace(consumer, pads=pads, count_include_pad=True)  # the zeros were real values
    return None


def _merge(nodes: list[Node], output: str):
    """Merge Pad into the next conv/pool, and batch norm, bias and ReLU into the conv/FC before them."""
    readers = _readers(nodes, output)
    kept: dict[str, Node] = {}            # insertion-ordered: the new node list
    renamed: dict[str, str] = {}
    for node in nodes:
        node = Node(node.name, node.layer, tuple(renamed.get(i, i) for i in node.inputs))
        prev = kept.get(node.inputs[0]) if len(node.inputs) == 1 else None
        if prev is not None and readers[prev.name] == 1 and prev.name != output:
            if (layer := _absorb(prev.layer, node.layer)) is not None:
                prev.layer = layer
                renamed[node.name] = prev.name
                readers[prev.name] = readers[node.name]
                continue
            if (layer := _absorb_pad(prev.layer, node.layer)) is not None:
                del kept[prev.name]
                node = Node(node.name, layer, prev.inputs)
        kept[node.name] = node
    return list(kept.values()), renamed.get(output, output)


def _channel_affines(nodes: list[Node], output: str):
    """Per-channel affines left over (no conv before them), with the ReLU / ReLU6 after them when
    they are its only input: one C pass (layers.ChannelAffine) instead of two or three numpy ones."""
    readers = _readers(nodes, output)
    kept: dict[str, Node] = {}
    renamed: dict[str, str] = {}
    for node in nodes:
        node = Node(node.name, node.layer, tuple(renamed.get(i, i) for i in node.inputs))
        layer = node.layer
        if isinstance(layer, L.Affine) and np.ndim(layer.scale) == np.ndim(layer.shift) == 1 \
                and np.size(layer.scale) == np.size(layer.shift):
            node = Node(node.name, L.ChannelAffine(layer.scale, layer.shift), node.inputs)
        prev = kept.get(node.inputs[0]) if len(node.inputs) == 1 else None
        if (prev is not None and isinstance(node.layer, L.Activation) and isinstance(prev.layer, L.ChannelAffine)
                and prev.layer.activation is None and readers[prev.name] == 1 and prev.name != output):
            prev.layer = dataclasses.replace(prev.layer, activation=node.layer.name)
            renamed[node.name] = prev.name
            readers[prev.name] = readers[node.name]
            continue
        kept[node.name] = node
    return list(kept.values()), renamed.get(output, output)


def _in_place(nodes: list[Node], output: str) -> list[Node]:
    readers = _readers(nodes, output)
    by_name = {n.name: n for n in nodes}
    for node in nodes:
        if isinstance(node.layer, L.Unary) and len(node.inputs) == 1:
            src = by_name.get(node.inputs[0])
            if src is not None and readers[src.name] == 1 and isinstance(src.layer, _FRESH):
                node.layer = dataclasses.replace(node.layer, inplace=True)
    return nodes


def simplify(nodes: list[Node], output: str, ranks: dict[str, int] | None = None):
    nodes = _live(nodes, output)
    nodes, output = _merge(nodes, output)       # first: consecutive affines become one for the patterns
    nodes = _layer_norms(nodes, output, ranks or {})
    nodes = _activations(nodes, output)
    nodes, output = _merge(nodes, output)
    nodes, output = _channel_affines(nodes, output)
    return _in_place(nodes, output), output
