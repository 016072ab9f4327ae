"""Our NHWC Graph -> an NCHW ONNX model that onnxruntime runs.

Used as an independent reference in the tests and as a peer engine in the benchmark.  Every padding
("same" included) is written out explicitly for the given input size, so the file means exactly one
thing; that is why spatial sizes are tracked through the graph.  Rank-4 outputs come out NCHW.

The layers of imported networks (layers.Unary ... layers.Take) work on the engine's arrays as they
are; in the ONNX file a 4-D array (N, A, B, C) is the tensor (N, C, A, B), as images are, so those
layers are written between a Transpose to the array layout and one back.
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
        elif isinstance(layer, L.Affine) and np.ndim(layer.scale) <= 1:
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
            # channels in NCHW, features in (N, F); other ranks are arrays as they are: the last axis
            self.op("Concat", xs, name, name, axis=1 if len(shape) in (1, 3) else len(shape))
            self.shapes[name] = ((sum(s[0] for s in shapes), *shape[1:]) if len(shape) in (1, 3) else
                                 (*shape[:-1], sum(s[-1] for s in shapes)))
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
            # our softmax is over channels (NCHW axis 1), or the last axis of other arrays
            self.op("Softmax", xs, name, name, axis=1 if len(shape) in (1, 3) else -1)
            self.shapes[name] = shape
        elif isinstance(layer, L.Activation):
            self.activation(name, xs[0], name, layer.name)
            self.shapes[name] = shape
        elif isinstance(layer, L.Clip):
            self.activation(name, xs[0], name, "clip", layer.lo, layer.hi)
            self.shapes[name] = shape
        elif not self.imported(layer, name, xs, shape):
            raise ValueError(f"node {name!r}: cannot export {type(layer).__name__} to ONNX")

    # -- the layers of imported networks ----------------------------------------------------------------
    def const(self, name: str, value: np.ndarray) -> str:
        """A constant in array layout as the ONNX tensor it broadcasts against (4-D: NCHW)."""
        value = np.asarray(value, np.float32)
        if value.ndim == 4:
            value = value.transpose(0, 3, 1, 2)
        return self.init(name, value)

    def to_array(self, x: str, name: str) -> str:
        if len(self.shapes[x]) == 3:
            return self.op("Transpose", [x], f"{name}.{x}.nhwc", f"{name}.{x}.nhwc", perm=[0, 2, 3, 1])
        return x

    def from_array(self, y: str, name: str, physical: tuple) -> None:
        """Output `name` from the array-layout result `y`; records its shape."""
        if len(physical) == 3:
            h, w, c = physical
            self.op("Transpose", [y], name, f"{name}.nchw", perm=[0, 3, 1, 2])
            self.shapes[name] = (c, h, w)
        else:
            self.op("Identity", [y], name, f"{name}.out")
            self.shapes[name] = tuple(physical)

    def physical(self, x: str) -> tuple:
        s = self.shapes[x]
        return (s[1], s[2], s[0]) if len(s) == 3 else s

    def unary(self, name: str, x: str, out: str, layer) -> None:
        k = layer.name
        if k in ("sigmoid", "tanh", "erf"):
            self.op({"sigmoid": "Sigmoid", "tanh": "Tanh", "erf": "Erf"}[k], [x], out, name)
        elif k == "silu":
            self.op("Mul", [x, self.op("Sigmoid", [x], f"{name}.gate", f"{name}.gate")], out, name)
        elif k == "hardsigmoid":
            self.op("HardSigmoid", [x], out, name, alpha=float(layer.alpha), beta=float(layer.beta))
        elif k == "hardswish":
            gate = self.op("HardSigmoid", [x], f"{name}.gate", f"{name}.gate", alpha=1 / 6, beta=0.5)
            self.op("Mul", [x, gate], out, name)
        elif k == "leakyrelu":
            self.op("LeakyRelu", [x], out, name, alpha=float(layer.alpha))
        elif k == "elu":
            self.op("Elu", [x], out, name, alpha=float(layer.alpha))
        elif k == "gelu":
            t = self.op("Mul", [x, self.init(f"{name}.rsqrt2", np.float32(1 / np.sqrt(2)))], f"{name}.t", f"{name}.t")
            t = self.op("Erf", [t], f"{name}.erf", f"{name}.erf")
            t = self.op("Add", [t, self.init(f"{name}.one", np.float32(1))], f"{name}.p", f"{name}.p")
            t = self.op("Mul", [x, t], f"{name}.xp", f"{name}.xp")
            self.op("Mul", [t, self.init(f"{name}.half", np.float32(0.5))], out, name)
        else:
            raise ValueError(f"{name}: cannot export activation {k!r}")

    def imported(self, layer, name: str, xs: list, shape) -> bool:
        ins = [self.physical(x) for x in xs]
        if isinstance(layer, L.Unary):
            self.unary(name, xs[0], name, layer)
            self.shapes[name] = shape
        elif isinstance(layer, L.Binary):
            op = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min", "pow": "Pow"}[layer.op]
            if layer.const is None:
                self.op(op, xs, name, name)
            else:
                c = self.const(f"{name}.const", layer.const)
                self.op(op, [c, xs[0]] if layer.const_first else [xs[0], c], name, name)
            out = layer.out_shape(*ins)
            self.shapes[name] = (out[2], out[0], out[1]) if len(out) == 3 else out
        elif isinstance(layer, L.PRelu):
            self.op("PRelu", [xs[0], self.const(f"{name}.slope", layer.slope)], name, name)
            self.shapes[name] = shape
        elif isinstance(layer, L.ChannelAffine):   # per channel: NCHW axis 1 of images, else the last axis
            per = (-1, 1, 1) if len(shape) == 3 else (-1,)
            t = self.op("Mul", [xs[0], self.init(f"{name}.scale", layer.scale.reshape(per))], f"{name}.mul", f"{name}.mul")
            t = self.op("Add", [t, self.init(f"{name}.shift", layer.shift.reshape(per))],
                        name if layer.activation is None else f"{name}.add", f"{name}.add")
            if layer.activation is not None:
                self.activation(f"{name}.act", t, name, layer.activation)
            self.shapes[name] = shape
        elif isinstance(layer, L.Affine) and np.ndim(layer.scale) > 1:
            t = self.op("Mul", [xs[0], self.const(f"{name}.scale", layer.scale)], f"{name}.mul", f"{name}.mul")
            self.op("Add", [t, self.const(f"{name}.shift", layer.shift)], name, name)
            self.shapes[name] = shape
        else:
            return self.array_layer(layer, name, xs, ins)
        return True

    def array_layer(self, layer, name: str, xs: list, ins: list) -> bool:
        """Layers defined on the array layout: Transpose in, the op, Transpose out."""
        a = [self.to_array(x, name) for x in xs]
        y = f"{name}.y"
        if isinstance(layer, L.Reshape):
            x = a[0]
            if layer.perm is not None:
                x = self.op("Transpose", [x], f"{name}.t", f"{name}.t", perm=list(layer.perm))
            self.op("Reshape", [x, self.init(f"{name}.shape", np.array([0, *layer.shape], np.int64))], y, name)
        elif isinstance(layer, L.Slice):
            s = layer.slices
            big = np.iinfo(np.int64).max
            starts = [p[0] for p in s]
            ends = [(-big if p[2] < 0 else big) if p[1] is None else p[1] for p in s]
            self.op("Slice", [a[0], self.init(f"{name}.starts", np.array(starts, np.int64)),
                              self.init(f"{name}.ends", np.array(ends, np.int64)),
                              self.init(f"{name}.axes", np.arange(1, len(s) + 1, dtype=np.int64)),
                              self.init(f"{name}.steps", np.array([p[2] for p in s], np.int64))], y, name)
        elif isinstance(layer, L.Reduce):
            op = {"mean": "ReduceMean", "max": "ReduceMax", "min": "ReduceMin", "sum": "ReduceSum"}[layer.op]
            axes = list(layer.axes)
            if self.opset >= 18 or op == "ReduceSum":
                self.op(op, [a[0], self.init(f"{name}.axes", np.array(axes, np.int64))], y, name,
                        keepdims=int(layer.keepdims))
            else:
                self.op(op, [a[0]], y, name, axes=axes, keepdims=int(layer.keepdims))
        elif isinstance(layer, L.LayerNorm):
            ins_ = [a[0], self.init(f"{name}.scale", layer.scale)]
            if layer.bias is not None:
                ins_.append(self.init(f"{name}.bias", layer.bias))
            if self.opset < 17:
                raise ValueError(f"{name}: LayerNormalization needs opset >= 17")
            self.op("LayerNormalization", ins_, y, name, axis=-layer.axes, epsilon=float(layer.eps))
        elif isinstance(layer, L.SoftmaxAxis):
            self.op("LogSoftmax" if layer.log else "Softmax", a, y, name, axis=layer.axis)
        elif isinstance(layer, L.ConcatAxis):
            self.op("Concat", a, y, name, axis=layer.axis)
        elif isinstance(layer, L.PadND):
            pads = [0, *(p[0] for p in layer.pads), 0, *(p[1] for p in layer.pads)]
            ins_ = [a[0], self.init(f"{name}.pads", np.array(pads, np.int64))]
            if layer.mode == "constant":
                ins_.append(self.init(f"{name}.value", np.float32(layer.value)))
            self.op("Pad", ins_, y, name, mode=layer.mode)
        elif isinstance(layer, L.Take):
            g = self.op("Gather", [a[0], self.init(f"{name}.index", layer.index)], f"{name}.g", name, axis=layer.axis)
            if layer.shape is not None:
                g = self.op("Reshape", [g, self.init(f"{name}.shape", np.array([0, *layer.shape], np.int64))],
                            f"{name}.r", f"{name}.r")
            self.op("Identity", [g], y, f"{name}.y")
        else:
            return False
        self.from_array(y, name, layer.out_shape(*ins))
        return True
