"""Cost model of a dense or product-quantized network: multiply-adds, storage and run-time memory.

Counted as the paper (Wu et al., CVPR 2016, Sec. 3 and Table 1) counts them, per conv/FC layer:

    dense conv      OH*OW*C_out*KH*KW*C_in/G multiply-adds, 32 bits per weight and per bias
    PQ table        P*G*M*K*dsub multiply-adds: one inner product of every input pixel's subvector
                    with every codeword of its subspace (P input pixels, see below)
    PQ lookup-adds  OH*OW*C_out*KH*KW*M: each output sums one table entry per (offset, subspace)
    PQ storage      32*G*M*K*dsub (codebooks) + ceil(log2 K)*KH*KW*M*C_out (codes) + 32*C_out (bias)

An FC layer is a 1x1 convolution on a 1x1 map.  The theoretical speed-up is
dense multiply-adds / (table multiply-adds + lookup-adds), the paper's ratio.

P, strided convolutions: the table is built only for the input pixels some window actually reads.
The paper builds it for every input pixel, which is the same whenever the windows cover the input
(stride <= kernel, as in every AlexNet layer); a 1x1 stride-2 convolution reads only a quarter of
its input, so only that quarter is counted.  Padding pixels are zeros and never need a table row.

Only conv and FC layers are counted in multiply-adds: pooling, LRN, activations and the like do the
same small amount of work in both networks.  Their parameters (Affine) do count in storage.

Shapes come from `infer_shapes`, which follows each layer type's size rule, so it works on graphs
whose quantized layers cannot run yet and costs nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import layers as L
from ..graph import Graph, Node
from .layer import PQLayer, PQSetting
from .taps import as_pointwise, check_taps, expand_taps

Shape = tuple[int, ...]     # (H, W, C) for feature maps, (F,) after flattening; batch excluded


# --------------------------------------------------------------------------- shapes

def _spatial(shape: Shape, what: str) -> Shape:
    if len(shape) != 3:
        raise ValueError(f"{what} needs an H x W x C input, got {shape}")
    return shape


def _out_shape(layer: L.Layer, ins: list[Shape]) -> Shape:
    x = ins[0]
    if isinstance(layer, (L.Conv2D, PQLayer)) and not (isinstance(layer, PQLayer) and layer.kind_of == "fc"):
        h, w, c = _spatial(x, layer.describe())
        if c != layer.in_channels:
            raise ValueError(f"{layer.describe()}: gets {c} input channels")
        _, oh, ow = layer.geometry(h, w)
        return oh, ow, layer.out_channels
    if isinstance(layer, (L.Dense, PQLayer)):           # Dense and FC PQ layers flatten their input
        if math.prod(x) != layer.in_channels:
            raise ValueError(f"{layer.describe()}: gets {math.prod(x)} inputs")
        return (layer.out_channels,)
    if isinstance(layer, L.Pool2D):
        h, w, c = _spatial(x, layer.describe())
        _, oh, ow = layer.geometry(h, w)
        return oh, ow, c
    if isinstance(layer, L.GlobalAvgPool):
        return 1, 1, _spatial(x, "global avgpool")[2]
    if isinstance(layer, L.Pad):
        h, w, c = _spatial(x, "pad")
        top, bottom, left, right = layer.pads
        return h + top + bottom, w + left + right, c
    if isinstance(layer, L.Flatten):
        return (math.prod(x),)
    if isinstance(layer, L.Add):
        return tuple(np.broadcast_shapes(*ins))
    if isinstance(layer, L.Concat):
        if len({s[:-1] for s in ins}) != 1:
            raise ValueError(f"concat of shapes {ins}")
        return (*x[:-1], sum(s[-1] for s in ins))
    if isinstance(layer, L.Affine):
        return tuple(np.broadcast_shapes(x, np.shape(layer.scale), np.shape(layer.shift)))
    if isinstance(layer, (L.Activation, L.Clip, L.LRN, L.Softmax)):
        return x
    if hasattr(layer, "out_shape"):                     # the layers of imported networks
        return tuple(layer.out_shape(*ins))
    raise ValueError(f"no shape rule for layer type {type(layer).__name__}")


def infer_shapes(graph: Graph, input_hw: tuple[int, int], channels: int = 3) -> dict[str, Shape]:
    """Every tensor's shape (batch excluded) for an H x W x `channels` input.

    Raises ValueError when a layer does not fit what it reads (channel counts, window sizes)."""
    shapes = {graph.input_name: (int(input_hw[0]), int(input_hw[1]), int(channels))}
    for node in graph.nodes:
        try:
            shapes[node.name] = _out_shape(node.layer, [shapes[i] for i in node.inputs])
        except ValueError as exc:
            raise ValueError(f"node {node.name!r}: {exc}") from None
    return shapes


def _read_extent(size: int, kernel: int, stride: int, lo: int, out: int) -> int:
    """How many of `size` input rows (or columns) at least one window reads."""
    read = np.zeros(size, bool)
    starts = np.arange(out) * stride - lo
    for i in range(kernel):
        idx = starts + i
        read[idx[(idx >= 0) & (idx < size)]] = True
    return int(read.sum())


# --------------------------------------------------------------------------- per-layer costs

@dataclass
class LayerCost:
    name: str
    kind: str                       # "conv" or "fc" for weight layers, the layer's kind otherwise
    out_shape: Shape
    dense_macs: int
    dense_bits: int
    setting: PQSetting | None = None    # None: the layer runs dense
    table_macs: int = 0
    lookup_adds: int = 0
    quant_bits: int = 0
    table_bytes: int = 0            # this layer's lookup tables, H_in*W_in*G*M*K float32, batch 1
    kernel: str = "dense"           # what the layer runs; the kernels fill in their choice

    @property
    def quantized(self) -> bool:
        return self.setting is not None

    @property
    def quant_macs(self) -> int:
        return self.table_macs + self.lookup_adds if self.quantized else self.dense_macs

    @property
    def speedup(self) -> float:
        return _ratio(self.dense_macs, self.quant_macs)

    @property
    def compression(self) -> float:
        return _ratio(self.dense_bits, self.quant_bits)

    def to_json(self) -> dict:
        s = self.setting
        return {"name": self.name, "kind": self.kind, "quantized": self.quantized,
                "setting": None if s is None else {"dsub": s.dsub, "ksub": s.ksub, "bits": s.bits,
                                                   **({"taps": True} if s.taps else {})},
                "dense_macs": self.dense_macs, "table_macs": self.table_macs, "lookup_adds": self.lookup_adds,
                "quant_macs": self.quant_macs, "speedup": self.speedup, "dense_bits": self.dense_bits,
                "quant_bits": self.quant_bits, "compression": self.compression,
                "table_bytes": self.table_bytes, "out_shape": list(self.out_shape), "kernel": self.kernel}


def _ratio(a: int, b: int) -> float:
    return a / b if b else 1.0


def _dense_cost(name: str, layer, out: Shape) -> LayerCost:
    """A Conv2D or Dense layer that stays dense: the same cost in both networks."""
    if isinstance(layer, L.Dense):
        kind, macs = "fc", layer.in_channels * layer.out_channels
    else:
        kh, kw, cin_g, cout = layer.weight.shape
        kind, macs = "conv", out[0] * out[1] * cout * kh * kw * cin_g
    bits = 32 * sum(v.size for v in layer.params().values())
    return LayerCost(name, kind, out, macs, bits, quant_bits=bits)


def _pq_cost(name: str, layer: PQLayer, x: Shape, out: Shape) -> LayerCost:
    g, m, k, d = layer.codebooks.shape
    kh, kw, _, cout = layer.codes.shape
    bias = 0 if layer.bias is None else layer.bias.size
    setting = layer.setting
    if layer.kind_of == "fc":
        pixels_read = pixels = 1
        oh = ow = 1
    else:
        h, w, _ = x
        pads, oh, ow = layer.geometry(h, w)
        sh, sw = layer.stride
        pixels_read = (_read_extent(h, kh, sh, pads[0], oh) * _read_extent(w, kw, sw, pads[2], ow))
        pixels = h * w
    return LayerCost(
        name, layer.kind_of, out,
        dense_macs=oh * ow * cout * kh * kw * (layer.in_channels // g),
        dense_bits=32 * (kh * kw * (layer.in_channels // g) * cout + bias),
        setting=setting,
        table_macs=pixels_read * g * m * k * d,
        lookup_adds=oh * ow * cout * kh * kw * m,
        quant_bits=32 * g * m * k * d + setting.bits * kh * kw * m * cout + 32 * bias,
        table_bytes=pixels * g * m * k * 4,
        kernel="reference")


def layer_costs(graph: Graph, shapes: dict[str, Shape]) -> list[LayerCost]:
    """One entry per node that has weights (conv, FC, PQ, affine), in graph order."""
    costs = []
    for node in graph.nodes:
        layer, out = node.layer, shapes[node.name]
        x = shapes[node.inputs[0]] if node.inputs else None
        if isinstance(layer, PQLayer):
            cost = _pq_cost(node.name, layer, x, out)
            source = node.inputs[0]
            if source != graph.input_name and graph[source].layer.kind == "patches":   # qcnn.pq.taps
                cost.setting = PQSetting(cost.setting.dsub, cost.setting.ksub, taps=True)
            costs.append(cost)
        elif isinstance(layer, (L.Conv2D, L.Dense)):
            costs.append(_dense_cost(node.name, layer, out))
        elif layer.params():
            bits = 32 * sum(v.size for v in layer.params().values())
            costs.append(LayerCost(node.name, layer.kind, out, 0, bits, quant_bits=bits))
    return costs


def peak_activation_bytes(graph: Graph, shapes: dict[str, Shape], itemsize: int = 4) -> int:
    """Largest total size of live tensors (batch 1) while running the graph.

    Follows Graph.forward: a node's output is allocated while its inputs are alive, then every
    tensor whose last reader this was is freed (the graph output never is).  Temporaries inside a
    layer (padding, im2col copies) are not counted."""
    last = {}
    for i, node in enumerate(graph.nodes):
        for name in node.inputs:
            last[name] = i
    size = {name: math.prod(s) * itemsize for name, s in shapes.items()}
    live = size[graph.input_name]
    peak = live
    for i, node in enumerate(graph.nodes):
        live += size[node.name]
        peak = max(peak, live)
        live -= sum(size[n] for n in set(node.inputs) if last[n] == i and n != graph.output)
    return peak


# --------------------------------------------------------------------------- report

@dataclass
class CostReport:
    layers: list[LayerCost]
    input_shape: Shape
    dense_macs: int                 # whole network, conv and FC layers
    quant_macs: int                 # table builds + lookup-adds, plus the layers left dense
    dense_bits: int
    quant_bits: int
    dense_weight_bytes: int         # run-time memory: the arrays as the engine holds them
    quant_weight_bytes: int         # (canonical PQ layout: float32 codebooks, one byte per code)
    dense_activation_bytes: int     # peak live activations, batch 1
    quant_activation_bytes: int
    table_bytes: int                # the largest PQ layer's lookup tables, batch 1
    table_layer: str | None = None  # ... and which layer that is

    @property
    def theoretical_speedup(self) -> float:
        return _ratio(self.dense_macs, self.quant_macs)

    @property
    def compression(self) -> float:
        return _ratio(self.dense_bits, self.quant_bits)

    @property
    def dense_runtime_bytes(self) -> int:
        return self.dense_weight_bytes + self.dense_activation_bytes

    @property
    def quant_runtime_bytes(self) -> int:
        # Tables live one layer at a time, so only the largest adds to the peak.
        return self.quant_weight_bytes + self.quant_activation_bytes + self.table_bytes

    def to_json(self) -> dict:
        return {"input_shape": list(self.input_shape),
                "theoretical_speedup": self.theoretical_speedup, "compression": self.compression,
                "dense_macs": self.dense_macs, "quant_macs": self.quant_macs,
                "dense_bits": self.dense_bits, "quant_bits": self.quant_bits,
                "memory": {"dense_weight_bytes": self.dense_weight_bytes,
                           "quant_weight_bytes": self.quant_weight_bytes,
                           "dense_activation_bytes": self.dense_activation_bytes,
                           "quant_activation_bytes": self.quant_activation_bytes,
                           "table_bytes": self.table_bytes, "table_layer": self.table_layer,
                           "dense_runtime_bytes": self.dense_runtime_bytes,
                           "quant_runtime_bytes": self.quant_runtime_bytes},
                "layers": [c.to_json() for c in self.layers]}


def _weight_bytes(graph: Graph) -> int:
    return sum(v.nbytes for v in graph.params().values())


def cost_report(graph: Graph, input_hw: tuple[int, int], dense_graph: Graph | None = None,
                kernels: dict[str, str] | None = None, channels: int = 3) -> CostReport:
    """Costs of `graph` (quantized or not) on an input of input_hw pixels.

    Dense figures are what each PQ layer's dense equivalent would cost.  Given `dense_graph` (the
    network before quantization), the dense figures come from it instead: per layer by node name,
    and the totals from its own layers and memory.  `kernels` maps node names to the kernel each
    runs, for the `kernel` column."""
    shapes = infer_shapes(graph, input_hw, channels)
    costs = layer_costs(graph, shapes)
    for c in costs:
        if kernels and c.name in kernels:
            c.kernel = kernels[c.name]
    quant_activations = peak_activation_bytes(graph, shapes)
    if dense_graph is None:
        dense_costs, dense_weights, dense_activations = costs, None, quant_activations
    else:
        dense_shapes = infer_shapes(dense_graph, input_hw, channels)
        dense_costs = layer_costs(dense_graph, dense_shapes)
        dense_weights = _weight_bytes(dense_graph)
        dense_activations = peak_activation_bytes(dense_graph, dense_shapes)
        by_name = {c.name: c for c in dense_costs}
        for c in costs:
            if c.name in by_name:
                c.dense_macs, c.dense_bits = by_name[c.name].dense_macs, by_name[c.name].dense_bits
    dense_bits = sum(c.dense_bits for c in dense_costs)
    biggest = max((c for c in costs if c.quantized), key=lambda c: c.table_bytes, default=None)
    return CostReport(
        layers=costs, input_shape=shapes[graph.input_name],
        dense_macs=sum(c.dense_macs for c in dense_costs), quant_macs=sum(c.quant_macs for c in costs),
        dense_bits=dense_bits, quant_bits=sum(c.quant_bits for c in costs),
        dense_weight_bytes=dense_bits // 8 if dense_weights is None else dense_weights,
        quant_weight_bytes=_weight_bytes(graph),
        dense_activation_bytes=dense_activations, quant_activation_bytes=quant_activations,
        table_bytes=biggest.table_bytes if biggest else 0, table_layer=biggest.name if biggest else None)


# --------------------------------------------------------------------------- text

def _mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:.2f} MiB"


def format_table(report: CostReport) -> str:
    """An aligned per-layer table with totals and the run-time memory, for the command line."""
    head = ("layer", "kind", "C_s'/K", "output", "dense MMAC", "PQ MMAC", "speed-up",
            "dense KiB", "PQ KiB", "compr.", "kernel")
    rows = []
    for c in report.layers:
        s = c.setting
        rows.append((c.name, c.kind, f"{s.dsub}/{s.ksub}" if s else "-", "x".join(map(str, c.out_shape)),
                     f"{c.dense_macs / 1e6:.2f}", f"{c.quant_macs / 1e6:.2f}", f"{c.speedup:.2f}x",
                     f"{c.dense_bits / 8192:.1f}", f"{c.quant_bits / 8192:.1f}", f"{c.compression:.2f}x",
                     c.kernel))
    total = ("total", "", "", "", f"{report.dense_macs / 1e6:.2f}", f"{report.quant_macs / 1e6:.2f}",
             f"{report.theoretical_speedup:.2f}x", f"{report.dense_bits / 8192:.1f}",
             f"{report.quant_bits / 8192:.1f}", f"{report.compression:.2f}x", "")
    widths = [max(len(r[i]) for r in (head, *rows, total)) for i in range(len(head))]

    def line(r):   # names and labels left-aligned, numbers right-aligned
        return "  ".join(v.ljust(w) if i in (0, 1, 2, 10) else v.rjust(w)
                         for i, (v, w) in enumerate(zip(r, widths))).rstrip()

    body = [line(r) for r in (head, *rows, total)]
    rule = "-" * max(map(len, body))
    table = [body[0], rule, *body[1:-1], rule, body[-1]]
    r = report
    table += ["",
              f"run-time memory (batch 1): dense {_mb(r.dense_runtime_bytes)} "
              f"(weights {_mb(r.dense_weight_bytes)}, peak activations {_mb(r.dense_activation_bytes)})",
              f"                           quantized {_mb(r.quant_runtime_bytes)} "
              f"(weights {_mb(r.quant_weight_bytes)}, peak activations {_mb(r.quant_activation_bytes)}, "
              f"largest lookup table {_mb(r.table_bytes)}" + (f" in {r.table_layer})" if r.table_layer else ")")]
    return "\n".join(table)


def planned_layer(layer, setting: PQSetting) -> PQLayer:
    """A PQ layer of the shape `setting` gives a Conv2D or Dense layer, with all-zero codebooks and
    codes: everything the cost model reads, without k-means."""
    if isinstance(layer, L.Dense):
        w, kind, geometry = layer.weight[None, None], "fc", {}
    elif isinstance(layer, L.Conv2D):
        w, kind = layer.weight, "conv"
        geometry = {"stride": layer.stride, "pads": layer.pads, "groups": layer.groups}
    else:
        raise ValueError(f"{layer.describe()} cannot be product-quantized")
    kh, kw, cin_g, cout = w.shape
    g = geometry.get("groups", 1)
    m = -(-cin_g // setting.dsub)
    return PQLayer(kind, np.zeros((g, m, setting.ksub, setting.dsub), np.float32),
                   np.zeros((kh, kw, m, cout), np.uint8), cin_g * g, layer.bias,
                   activation=layer.activation, **geometry)


def planned_graph(graph: Graph, settings: dict[str, PQSetting | None]) -> Graph:
    """`graph` with the layers named in `settings` replaced by their planned PQ layers."""
    graph, settings = expand_taps(graph, settings)
    return Graph([Node(n.name, planned_layer(n.layer, settings[n.name]) if settings.get(n.name) else n.layer,
                       n.inputs) for n in graph.nodes], graph.input_name, graph.output)


class SettingCosts:
    """Costs of candidate settings, layer by layer and for whole configurations, on one graph and
    input size: what a search weighs, by the same formulas the reports use."""

    def __init__(self, graph: Graph, input_hw: tuple[int, int]):
        self.graph, self.input_hw = graph, tuple(input_hw)
        self.shapes = infer_shapes(graph, input_hw)

    def layer(self, name: str, setting: PQSetting | None) -> LayerCost:
        node = self.graph[name]
        out = self.shapes[name]
        if setting is None:
            return _dense_cost(name, node.layer, out)
        x = self.shapes[node.inputs[0]]
        layer = node.layer
        if setting.taps:
            check_taps(name, layer, setting)
            x = L.Patches(layer.kernel, layer.stride, layer.pads).out_shape(x)
            cost = _pq_cost(name, planned_layer(as_pointwise(layer), PQSetting(setting.dsub, setting.ksub)), x, out)
            cost.setting = setting
            return cost
        return _pq_cost(name, planned_layer(layer, setting), x, out)

    def report(self, settings: dict[str, PQSetting | None]) -> CostReport:
        return cost_report(planned_graph(self.graph, settings), self.input_hw, dense_graph=self.graph)
