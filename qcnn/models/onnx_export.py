"""Our NHWC Graph -> an NCHW ONNX model that onnxruntime runs.

Used as an independent reference in the tests and as a peer engine in the benchmark.  Every padding
("same" included) is written out explicitly for the given input size, so the file means exactly one
thing; that is why spatial sizes are tracked through the graph.  Rank-4 outputs come out NCHW.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import layers as L
from ..graph import Graph


def graph_to_onnx(graph: Graph, input_hw: tuple[int, int] = (224, 224), opset: int = 17,
                  channels: int | None = None) -> onnx.ModelProto:
    """ONNX model with input `graph.input_name` of shape (N, C, H, W); the batch size stays free.

    `channels` defaults to what the first convolution reading the input expects (else 3).
    """
    if opset < 13:
        raise ValueError("export needs opset >= 13 (Clip/Pad inputs, channel-axis Softmax)")
    ex = _Exporter(opset)
    if channels is None:
        convs = [n.layer for n in graph.consumers(graph.input_name) if isinstance(n.layer, L.Conv2D)]
        channels = convs[0].in_channels if convs else 3
    h, w = input_hw
    ex.shapes[graph.input_name] = (channels, h, w)
    for node in graph:
        ex.node(node)
    out_shape = ex.shapes[graph.output]
    g = helper.make_graph(
        ex.nodes, "qcnn",
        [helper.make_tensor_value_info(graph.input_name, TensorProto.FLOAT, ["N", channels, h, w])],
        [helper.make_tensor_value_info(graph.output, TensorProto.FLOAT, ["N", *out_shape])],
        initializer=ex.inits)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(g, opset_imports=opsets, producer_name="qcnn")
    # The oldest IR version that allows this opset, so older runtimes accept the file too.
    model.ir_version = helper.find_min_ir_version_for(opsets)
    return model


class _Exporter:
    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.shapes: dict[str, tuple[int, ...]] = {}   # tensor -> (C, H, W) or (F,), batch left out

    def init(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs, output: str, name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=name, **attrs))
        return output

    def activation(self, name: str, x: str, out: str, kind: str | None, lo=0.0, hi=6.0) -> None:
        if kind == "relu":
            self.op("Relu", [x], out, name)
        elif kind in ("relu6", "clip"):
            bounds = [self.init(f"{name}.min", np.float32(lo)), self.init(f"{name}.max", np.float32(hi))]
            self.op("Clip", [x, *bounds], out, name)
        else:
            raise ValueError(f"{name}: unknown activation {kind!r}")

    def node(self, node) -> None:
        layer, name, xs = node.layer, node.name, list(node.inputs)
        shape = self.shapes[xs[0]]
        if isinstance(layer, L.Conv2D):
            c, h, w = shape
            (t, b, l, r), oh, ow = layer.geometry(h, w)
            ins = [xs[0], self.init(f"{name}.weight", layer.weight.transpose(3, 2, 0, 1))]  # HWIO -> OIHW
            if layer.bias is not None:
                ins.append(self.init(f"{name}.bias", layer.bias))
            # The ONNX node keeps our name (the importer gives it back); its tensor does when unfused.
            conv_out = name if layer.activation is None else f"{name}.preact"
            self.op("Conv", ins, conv_out, name, kernel_shape=list(layer.kernel), strides=list(layer.stride),
                    pads=[t, l, b, r], group=layer.groups)
            if layer.activation:
                self.activation(f"{name}.act", conv_out, name, layer.activation)
            self.shapes[name] = (layer.out_channels, oh, ow)
        elif isinstance(layer, L.Dense):
            x = xs[0]
            if len(shape) == 3:  # Dense on an image flattens it in NHWC order
                x = self.op("Transpose", [x], f"{name}.nhwc", f"{name}.nhwc", perm=[0, 2, 3, 1])
                x = self.op("Flatten", [x], f"{name}.flat", f"{name}.flat", axis=1)
            ins = [x, self.init(f"{name}.weight", layer.weight)]
            if layer.bias is not None:
                ins.append(self.init(f"{name}.bias", layer.bias))
            gemm_out = name if layer.activation is None else f"{name}.preact"
            self.op("Gemm", ins, gemm_out, name)
            if layer.activation:
                self.activation(f"{name}.act", gemm_out, name, layer.activation)
            self.shapes[name] = (layer.out_channels,)
        elif isinstance(layer, L.Pool2D):
            c, h, w = shape
            kh, kw = layer.kernel
            t, b, l, r = L.resolve_pads(layer.pads, h, w, kh, kw, *layer.stride)
            attrs = dict(kernel_shape=list(layer.kernel), strides=list(layer.stride), pads=[t, l, b, r],
                         ceil_mode=int(layer.ceil_mode))
            if layer.mode == "avg":
                attrs["count_include_pad"] = int(layer.count_include_pad)
            self.op("MaxPool" if layer.mode == "max" else "AveragePool", xs, name, name, **attrs)
            # The output size comes from our own layer (on one channel), so the two can never disagree.
            _, oh, ow, _ = layer(np.zeros((1, h, w, 1), np.float32)).shape
            self.shapes[name] = (c, oh, ow)
        elif isinstance(layer, L.GlobalAvgPool):
            self.op("GlobalAveragePool", xs, name, name)
            self.shapes[name] = (shape[0], 1, 1)
        elif isinstance(layer, L.LRN):
            self.op("LRN", xs, name, name, size=layer.size, alpha=float(layer.alpha), beta=float(layer.beta),
                    bias=float(layer.k))
            self.shapes[name] = shape
        elif isinstance(layer, L.Affine):
            # A batch norm with mean 0, variance 1 and eps 0 is exactly x * scale + shift, per channel,
            # and it is what the importer turns back into an Affine.
            c = shape[0]
            scale, shift = (np.broadcast_to(np.asarray(v, np.float32).reshape(-1), (c,)) for v in (layer.scale, layer.shift))
            stats = [self.init(f"{name}.scale", scale), self.init(f"{name}.shift", shift),
                     self.init(f"{name}.mean", np.zeros(c, np.float32)), self.init(f"{name}.var", np.ones(c, np.float32))]
            self.op("BatchNormalization", [xs[0], *stats], name, name, epsilon=0.0)
            self.shapes[name] = shape
        elif isinstance(layer, L.Add):
            self.op("Add", xs, name, name)
            self.shapes[name] = shape
        elif isinstance(layer, L.Concat):
            shapes = [self.shapes[x] for x in xs]
            self.op("Concat", xs, name, name, axis=1)  # channels in NCHW, features in (N, F)
            self.shapes[name] = (sum(s[0] for s in shapes), *shape[1:])
        elif isinstance(layer, L.Flatten):
            self.op("Flatten", xs, name, name, axis=1)  # NCHW order, exactly what our Flatten does
            self.shapes[name] = (math.prod(shape),)
        elif isinstance(layer, L.Pad):
            c, h, w = shape
            t, b, l, r = layer.pads
            pads = self.init(f"{name}.pads", np.array([0, 0, t, l, 0, 0, b, r], np.int64))
            value = self.init(f"{name}.value", np.float32(layer.value))
            self.op("Pad", [xs[0], pads, value], name, name, mode="constant")
            self.shapes[name] = (c, h + t + b, w + l + r)
        elif isinstance(layer, L.Softmax):
            self.op("Softmax", xs, name, name, axis=1)  # our softmax is over channels, NCHW axis 1
            self.shapes[name] = shape
        elif isinstance(layer, L.Activation):
            self.activation(name, xs[0], name, layer.name)
            self.shapes[name] = shape
        elif isinstance(layer, L.Clip):
            self.activation(name, xs[0], name, "clip", layer.lo, layer.hi)
            self.shapes[name] = shape
        else:
            raise ValueError(f"node {name!r}: cannot export {type(layer).__name__} to ONNX")
