"""ONNX classifier (NCHW) -> our NHWC Graph and Model.

Covers the operators of the classic ONNX-zoo CNNs (AlexNet, VGG, ResNet, MobileNet, SqueezeNet).
Files are untrusted: every problem -- not protobuf, truncated, external data, undefined tensors,
cycles, wrong or absurd shapes, unsupported operators -- becomes an OnnxImportError that names the
file and the reason.  Shapes are tracked statically (batch 1, NCHW as ONNX sees them) so errors show
up at import, not in the middle of a forward pass.
"""
from __future__ import annotations

import dataclasses
import hashlib
import heapq
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from ..graph import Graph, Node
from ..labels import imagenet_labels
from ..layers import (LRN, Activation, Add, Affine, Clip, Concat, Conv2D, Dense, Flatten, GlobalAvgPool, Pad,
                      Pool2D, Softmax, same_pads)
from ..preprocess import Preprocess
from . import Model

MAX_FILE_BYTES = 2 ** 31 - 1     # protobuf's own limit; anything bigger needs external data
MAX_SIDE = 4096                  # input height/width and any single padding
MAX_ELEMENTS = 1 << 28           # per-image elements of any tensor (1 GiB of float32)
DEFAULT_SIZE = 224               # for inputs whose height/width are dynamic
# torchvision's ImageNet normalisation, which most zoo models were trained with.
TORCHVISION_MEAN = (123.675, 116.28, 103.53)
TORCHVISION_STD = (58.395, 57.12, 57.375)
MAX_POOL_AREA = 1 << 16          # pooling loops over kernel offsets in Python
_DTYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT32, TensorProto.INT64}
# Inputs each operator needs before its handler may index them (the rest need one).
_MIN_INPUTS = {"Constant": 0, "Conv": 2, "Gemm": 2, "MatMul": 2, "Add": 2, "BatchNormalization": 5}


class OnnxImportError(ValueError):
    """The ONNX file cannot be turned into a qcnn graph; the message says why."""


def load_onnx(path) -> Model:
    path = Path(path)
    with _errors(f"{path.name}: "):
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise OnnxImportError(f"file is {size} bytes, larger than any ONNX protobuf can be")
            data = path.read_bytes()
        except OSError as exc:
            raise OnnxImportError(f"cannot read file ({exc.strerror or exc})") from None
        if not data:
            raise OnnxImportError("file is empty")
        graph, (c, h, w), classes = _Converter(_parse(data)).convert()
        if c != 3:
            raise OnnxImportError(f"input has {c} channels; photos give 3 (RGB)")
        if h != w:
            raise OnnxImportError(f"input is {h}x{w}; only square inputs are supported")
        labels = imagenet_labels() if classes == 1000 else tuple(f"class {i}" for i in range(classes))
        # torchvision convention: bilinear resize of the short side to 256/224 of the crop.
        preprocess = Preprocess(resize=round(h * 256 / 224), crop=h, mean=TORCHVISION_MEAN, std=TORCHVISION_STD,
                                resample="bilinear")
        return Model(name=path.stem, graph=graph, preprocess=preprocess, labels=labels,
                     description=f"ONNX model {path.name} ({len(graph.nodes)} layers, {h}x{w} input, "
                                 f"{classes} classes)",
                     identity={"name": path.stem, "sha256": hashlib.sha256(data).hexdigest()})


def graph_from_onnx(model: onnx.ModelProto | bytes) -> Graph:
    with _errors(""):
        return _Converter(_parse(model) if isinstance(model, bytes) else model).convert()[0]


class _errors:
    """Turns any failure inside into OnnxImportError with `prefix`: hostile files must not crash callers."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or not isinstance(exc, Exception):
            return False
        if isinstance(exc, OnnxImportError):
            raise OnnxImportError(f"{self.prefix}{exc}") from None
        # A case the checks below missed (numpy/protobuf errors on strange input): still a clean error.
        raise OnnxImportError(f"{self.prefix}invalid ONNX model ({type(exc).__name__}: {exc})") from exc


def _parse(data: bytes) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)   # never onnx.load: it would follow external-data paths
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise OnnxImportError(f"not an ONNX model (protobuf decoding failed: {exc})") from None
    return proto


def _sanitise(name) -> str:
    if isinstance(name, bytes):   # protobuf hands out invalid UTF-8 strings as bytes
        name = name.decode("utf-8", "replace")
    return re.sub(r"[^A-Za-z0-9_.:/-]", "_", name)[:80]


def _toposort(nodes, available: set[str]) -> list:
    """Nodes in dependency order (file order where free); undefined tensors and cycles are errors."""
    producer = {}
    for i, node in enumerate(nodes):
        for out in node.output:
            if out and (out in producer or out in available):
                raise OnnxImportError(f"tensor '{out}' is defined more than once")
            if out:
                producer[out] = i
    needs = []
    for node in nodes:
        missing = [x for x in node.input if x and x not in available and x not in producer]
        if missing:
            raise OnnxImportError(f"node '{node.name}' ({node.op_type}) reads '{missing[0]}', which no node, "
                                  "initializer or input provides")
        needs.append({producer[x] for x in node.input if x and x not in available})
    users = [[] for _ in nodes]
    for i, deps in enumerate(needs):
        for j in deps:
            users[j].append(i)
    waiting = [len(d) for d in needs]
    ready = [i for i, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for j in users[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) < len(nodes):
        raise OnnxImportError("the nodes form a cycle")
    return order


def _array(t: onnx.TensorProto, what: str) -> np.ndarray:
    if t.data_location == TensorProto.EXTERNAL or len(t.external_data):
        where = {e.key: e.value for e in t.external_data}.get("location", "?")
        raise OnnxImportError(f"{what} refers to external data file '{where}'; external data is not supported "
                              "(save the model as a single file)")
    if t.data_type not in _DTYPES:
        raise OnnxImportError(f"{what} has unsupported data type {t.data_type}")
    if any(d < 0 for d in t.dims) or math.prod(t.dims) > MAX_ELEMENTS:
        raise OnnxImportError(f"{what} has absurd dimensions {list(t.dims)}")
    try:
        a = numpy_helper.to_array(t)
    except Exception as exc:  # data shorter or longer than the dimensions say
        raise OnnxImportError(f"{what}: data does not match its shape {list(t.dims)} ({exc})") from None
    return a.astype(np.int64 if a.dtype.kind in "iu" else np.float32)


_A = onnx.AttributeProto
# The type each attribute we read must have: a float where an int belongs would only fail at run time.
_ATTR_TYPES = {**dict.fromkeys(("kernel_shape", "strides", "pads", "dilations", "shape", "value_ints"), {_A.INTS}),
               **dict.fromkeys(("group", "ceil_mode", "count_include_pad", "storage_order", "transA", "transB",
                                "axis", "size", "allowzero", "training_mode", "spatial", "value_int"), {_A.INT}),
               **dict.fromkeys(("alpha", "beta", "bias", "epsilon", "min", "max", "value_float"), {_A.FLOAT}),
               "auto_pad": {_A.STRING}, "mode": {_A.STRING}, "value_floats": {_A.FLOATS},
               "value": {_A.FLOAT, _A.TENSOR}}   # Pad (old opsets) / Constant


def _attrs(node) -> dict:
    out = {}
    for a in node.attribute:
        if a.name in _ATTR_TYPES and a.type not in _ATTR_TYPES[a.name]:
            raise OnnxImportError(f"node '{node.name}' ({node.op_type}): attribute '{a.name}' has the wrong type")
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


class _Converter:
    def __init__(self, proto: onnx.ModelProto):
        self.proto = proto
        g = proto.graph
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.inits = {t.name: t for t in g.initializer}
        self.consts: dict[str, np.ndarray] = {}   # ONNX constant tensors, converted when first read
        self.tensors: dict[str, str] = {}         # ONNX activation tensor -> our node name
        self.shapes: dict[str, tuple] = {}        # our node name -> ONNX shape (batch 1)
        self.nodes: list[Node] = []
        self.names = {"input"}
        self.where = ""                           # the ONNX node being converted, for messages

    # -- whole graph -------------------------------------------------------------------------------
    def convert(self):
        g = self.proto.graph
        if not self.proto.HasField("graph") or not g.node:
            raise OnnxImportError("no graph nodes (empty or not an ONNX model)")
        if len(g.sparse_initializer):
            raise OnnxImportError("sparse initializers are not supported")
        inputs = [v for v in g.input if v.name not in self.inits]
        if len(inputs) != 1:
            raise OnnxImportError(f"expected one image input, found {len(inputs)}")
        c, h, w = self._input_shape(inputs[0])
        self.tensors[inputs[0].name] = "input"
        self.shapes["input"] = (1, c, h, w)
        self.produced = {o for n in g.node for o in n.output}
        for index, node in enumerate(_toposort(list(g.node), {inputs[0].name, *self.inits})):
            self.where = f"node '{node.name or f'{node.op_type}_{index}'}'"
            self._node(node, index)
        if len(g.output) != 1:
            raise OnnxImportError(f"expected one output, found {len(g.output)}")
        self.where = "graph output"
        out = self._x(g.output[0].name)
        shape = self.shapes[out]
        if out == "input":
            raise OnnxImportError("the graph computes nothing")
        if len(shape) not in (2, 4) or math.prod(shape[2:]) != 1:
            raise OnnxImportError(f"output shape {list(shape)} is not a vector of class scores")
        nodes, out = _fold(self.nodes, out)
        return Graph(nodes, "input", out), (c, h, w), shape[1]

    def _input_shape(self, vi):
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or t.elem_type != TensorProto.FLOAT:
            raise OnnxImportError(f"input '{vi.name}' must be a float32 tensor")
        dims = t.shape.dim
        if not t.HasField("shape") or len(dims) != 4:
            raise OnnxImportError(f"input '{vi.name}' must be a 4-D NCHW image, got rank {len(dims)}")
        c, h, w = (d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims[1:])
        if c is None:
            raise OnnxImportError(f"input '{vi.name}' has a dynamic channel count")
        h, w = h or DEFAULT_SIZE, w or DEFAULT_SIZE
        if max(h, w) > MAX_SIDE or c > MAX_SIDE:
            raise OnnxImportError(f"input '{vi.name}' has absurd dimensions {c}x{h}x{w}")
        return c, h, w

    # -- helpers -----------------------------------------------------------------------------------
    def fail(self, msg: str):
        raise OnnxImportError(f"{self.where}: {msg}")

    def _x(self, name: str) -> str:
        """Our tensor for an ONNX activation input."""
        if name in self.tensors:
            return self.tensors[name]
        if name in self.consts or name in self.inits:
            self.fail(f"reads constant '{name}' where an activation is expected")
        if name in self.produced:
            self.fail(f"reads '{name}', an output this importer does not compute")
        self.fail(f"reads '{name}', which nothing defines")

    def _const(self, name: str, what: str = "") -> np.ndarray:
        if name not in self.consts:
            if name not in self.inits:
                self.fail(f"{what or 'input'} '{name}' must be a constant (initializer or Constant node)")
            self.consts[name] = _array(self.inits[name], f"initializer '{name}'")
        return self.consts[name]

    def _opt_const(self, node, i: int):
        return self._const(node.input[i]) if len(node.input) > i and node.input[i] else None

    def _scalar(self, node, i: int, default: float) -> float:
        v = self._opt_const(node, i)
        if v is None:
            return default
        if v.size != 1:
            self.fail(f"input {i} must be a scalar")
        return float(v.reshape(()))

    def _shape4(self, x: str):
        shape = self.shapes[x]
        if len(shape) != 4:
            self.fail(f"needs a 4-D NCHW input, got shape {list(shape)}")
        return shape

    def _emit(self, node, index: int, layer, inputs, shape) -> None:
        if any(d < 1 for d in shape) or math.prod(shape) > MAX_ELEMENTS:
            self.fail(f"output shape {list(shape)} is empty or absurdly large")
        base = _sanitise(node.name) or f"{node.op_type}_{index}"
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        self.nodes.append(Node(name, layer, tuple(inputs)))
        self.shapes[name] = tuple(shape)
        self.tensors[node.output[0]] = name

    def _alias(self, node, x: str) -> None:
        self.tensors[node.output[0]] = x

    def _channels(self, value: np.ndarray, shape, what: str) -> np.ndarray:
        """A constant that broadcasts per channel (axis 1) or as a scalar, as a (C,) vector."""
        c = shape[1]
        dims = (1,) * (len(shape) - value.ndim) + value.shape
        if (len(dims) != len(shape) or dims[1] not in (1, c)
                or any(d != 1 for i, d in enumerate(dims) if i != 1)):
            self.fail(f"{what} of shape {list(value.shape)} is not a per-channel constant for {list(shape)}")
        return np.broadcast_to(value.reshape(-1).astype(np.float32), (c,)).copy()

    def _window(self, a: dict, h: int, w: int, kernel, kind: str):
        """(stride, pads) for a conv/pool; pads in our (top, bottom, left, right) order or "same"."""
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            self.fail(f"dilations {a['dilations']} are not supported")
        stride = tuple(a.get("strides", [1, 1]))
        if len(stride) != 2 or min(stride) < 1 or max(stride) > MAX_SIDE:
            self.fail(f"strides {list(stride)} are invalid (need two values >= 1)")
        kh, kw = kernel
        auto = a.get("auto_pad", "NOTSET")
        if auto == "SAME_UPPER":    # extra pixel after: exactly TensorFlow's SAME, which our layers do
            return stride, "same"
        if auto == "SAME_LOWER":    # extra pixel before: resolve now from the known input size
            (top, bottom), (left, right) = same_pads(h, kh, stride[0]), same_pads(w, kw, stride[1])
            return stride, (bottom, top, right, left)   # TF SAME with before and after swapped
        if auto == "VALID":
            return stride, (0, 0, 0, 0)
        if auto != "NOTSET":
            self.fail(f"unknown auto_pad {auto!r}")
        p = a.get("pads", [0, 0, 0, 0])
        if len(p) != 4 or min(p) < 0 or max(p) > MAX_SIDE:
            self.fail(f"pads {list(p)} are invalid for a 2-D {kind}")
        return stride, (p[0], p[2], p[1], p[3])   # ONNX [top, left, bottom, right]

    # -- operators ---------------------------------------------------------------------------------
    def _node(self, node, index: int) -> None:
        # Only output 0 is converted; a node reading a secondary output (pool indices, dropout mask,
        # batch-norm running statistics) fails in _x with "an output this importer does not compute".
        if node.domain not in ("", "ai.onnx"):
            raise OnnxImportError(f"{self.where} uses unsupported operator {node.domain}.{node.op_type}")
        handler = getattr(self, f"_op_{node.op_type}", None)
        if handler is None:
            raise OnnxImportError(f"{self.where} uses unsupported operator {node.op_type}")
        if not node.output or not node.output[0]:
            self.fail("has no output")
        if len(node.input) < _MIN_INPUTS.get(node.op_type, 1):
            self.fail(f"{node.op_type} needs at least {_MIN_INPUTS.get(node.op_type, 1)} inputs")
        try:
            handler(node, index, _attrs(node))
        except OnnxImportError:
            raise
        except ValueError as exc:   # a layer refusing its parameters
            self.fail(str(exc))

    def _op_Constant(self, node, index, a):
        if isinstance(a.get("value"), onnx.TensorProto):
            value = _array(a["value"], f"constant '{node.output[0]}'")
        elif "value_float" in a or "value_int" in a:
            value = np.array(a.get("value_float", a.get("value_int")))
        elif "value_floats" in a or "value_ints" in a:
            value = np.array(a.get("value_floats", a.get("value_ints")))
        else:
            self.fail(f"constant kind {sorted(a)} is not supported")
        self.consts[node.output[0]] = value.astype(np.int64 if value.dtype.kind in "iu" else np.float32)

    def _op_Conv(self, node, index, a):
        x = self._x(node.input[0])
        _, c, h, w = self._shape4(x)
        weight = self._const(node.input[1], "weight")
        if weight.ndim != 4:
            self.fail(f"weight of shape {list(weight.shape)}: only 2-D convolutions are supported")
        o, cin_g, kh, kw = weight.shape
        groups = a.get("group", 1)
        if groups < 1 or cin_g * groups != c or o % groups:
            self.fail(f"weight {list(weight.shape)} with group={groups} does not fit {c} input channels")
        if list(a.get("kernel_shape", [kh, kw])) != [kh, kw]:
            self.fail(f"kernel_shape {a['kernel_shape']} disagrees with weight {list(weight.shape)}")
        stride, pads = self._window(a, h, w, (kh, kw), "convolution")
        bias = self._opt_const(node, 2)
        if bias is not None and bias.size != o:
            self.fail(f"bias has {bias.size} values for {o} output channels")
        layer = Conv2D(weight.transpose(2, 3, 1, 0), None if bias is None else bias.reshape(-1), stride, pads, groups)
        (t, b, l, r), oh, ow = layer.geometry(h, w)
        # The padded input and the patch matrix are materialised at run time: refuse absurd ones now.
        if max(c * (h + t + b) * (w + l + r), oh * ow * kh * kw * c) > MAX_ELEMENTS:
            self.fail(f"a {kh}x{kw} convolution of a {c}x{h}x{w} input is absurdly large")
        self._emit(node, index, layer, [x], (1, o, oh, ow))

    def _dense(self, node, index, x: str, weight: np.ndarray, bias):
        shape = self.shapes[x]
        if len(shape) != 2:
            self.fail(f"needs an (N, features) input, got shape {list(shape)}; flatten it first")
        if weight.ndim != 2 or weight.shape[0] != shape[1]:
            self.fail(f"weight of shape {list(weight.shape)} does not take {shape[1]} inputs")
        self._emit(node, index, Dense(weight, bias), [x], (1, weight.shape[1]))

    def _op_Gemm(self, node, index, a):
        if a.get("transA", 0):
            self.fail("transA=1 is not supported (input A must be the batch)")
        x = self._x(node.input[0])
        b = self._const(node.input[1], "weight B")
        if b.ndim != 2:
            self.fail(f"weight B of shape {list(b.shape)} is not a matrix")
        weight = a.get("alpha", 1.0) * (b.T if a.get("transB", 0) else b)    # (C_in, C_out)
        c = self._opt_const(node, 2)
        bias = None
        if c is not None and a.get("beta", 1.0) != 0:
            if c.size not in (1, weight.shape[1]) or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
                self.fail(f"bias C of shape {list(c.shape)} does not broadcast to {weight.shape[1]} outputs")
            bias = a.get("beta", 1.0) * np.broadcast_to(c.reshape(-1), (weight.shape[1],))
        self._dense(node, index, x, weight, bias)

    def _op_MatMul(self, node, index, a):
        self._dense(node, index, self._x(node.input[0]), self._const(node.input[1], "weight B"), None)

    def _op_Relu(self, node, index, a):
        x = self._x(node.input[0])
        self._emit(node, index, Activation("relu"), [x], self.shapes[x])

    def _op_Clip(self, node, index, a):
        x = self._x(node.input[0])
        # Old opsets give the bounds as attributes, opset 11+ as optional constant inputs.
        lo = a.get("min", self._scalar(node, 1, -math.inf))
        hi = a.get("max", self._scalar(node, 2, math.inf))
        if lo == 0 and hi == 6:
            layer = Activation("relu6")
        elif lo == 0 and hi == math.inf:
            layer = Activation("relu")
        else:
            layer = Clip(lo, hi)
        self._emit(node, index, layer, [x], self.shapes[x])

    def _pool(self, node, index, a, mode):
        x = self._x(node.input[0])
        _, c, h, w = self._shape4(x)
        kernel = tuple(a.get("kernel_shape", ()))
        if len(kernel) != 2 or min(kernel) < 1:
            self.fail(f"kernel_shape {list(kernel)} is not a 2-D kernel")
        if a.get("storage_order", 0):
            self.fail("storage_order=1 is not supported")
        stride, pads = self._window(a, h, w, kernel, "pool")
        full = (0, 0, 0, 0) if pads == "same" else pads   # "same" padding always fits the kernel
        if max(full[:2]) >= kernel[0] or max(full[2:]) >= kernel[1]:   # as onnxruntime demands
            self.fail(f"pads {list(full)} must be smaller than the kernel {list(kernel)}")
        if kernel[0] > h + full[0] + full[1] or kernel[1] > w + full[2] + full[3]:
            self.fail(f"kernel {list(kernel)} is larger than the padded {h}x{w} input")
        if kernel[0] * kernel[1] > MAX_POOL_AREA or c * (h + full[0] + full[1]) * (w + full[2] + full[3]) > MAX_ELEMENTS:
            self.fail(f"kernel {list(kernel)} or padding {list(full)} is absurdly large")
        layer = Pool2D(mode, kernel, stride, pads, bool(a.get("ceil_mode", 0)), bool(a.get("count_include_pad", 0)))
        # Output size from the layer itself on one channel, so static shapes match what will run.
        _, oh, ow, _ = layer(np.zeros((1, h, w, 1), np.float32)).shape
        self._emit(node, index, layer, [x], (1, c, oh, ow))

    def _op_MaxPool(self, node, index, a):
        self._pool(node, index, a, "max")

    def _op_AveragePool(self, node, index, a):
        self._pool(node, index, a, "avg")

    def _op_GlobalAveragePool(self, node, index, a):
        x = self._x(node.input[0])
        _, c, _, _ = self._shape4(x)
        self._emit(node, index, GlobalAvgPool(), [x], (1, c, 1, 1))

    def _op_LRN(self, node, index, a):
        x = self._x(node.input[0])
        self._shape4(x)
        if not 1 <= a.get("size", 0) <= MAX_SIDE:
            self.fail(f"size {a.get('size')} is invalid")
        layer = LRN(a["size"], a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0))
        self._emit(node, index, layer, [x], self.shapes[x])

    def _op_BatchNormalization(self, node, index, a):
        if a.get("training_mode", 0) or a.get("spatial", 1) != 1:
            self.fail("only inference-mode, spatial batch normalization is supported")
        x = self._x(node.input[0])
        shape = self.shapes[x]
        gamma, beta, mean, var = (self._const(n, "statistic").reshape(-1) for n in node.input[1:5])
        if any(v.size != shape[1] for v in (gamma, beta, mean, var)):
            self.fail(f"statistics do not have one value per channel of {list(shape)}")
        scale = gamma / np.sqrt(var.astype(np.float64) + a.get("epsilon", 1e-5))
        # An Affine node; _fold merges it into the convolution before it when nothing else reads that.
        self._emit(node, index, Affine(scale.astype(np.float32), (beta - mean * scale).astype(np.float32)),
                   [x], shape)

    def _op_Add(self, node, index, a):
        names = list(node.input[:2])
        is_tensor = [n in self.tensors for n in names]
        if all(is_tensor):
            xa, xb = (self._x(n) for n in names)
            if self.shapes[xa] != self.shapes[xb]:
                self.fail(f"adds shapes {list(self.shapes[xa])} and {list(self.shapes[xb])}; only equal shapes "
                          "(or a per-channel constant) are supported")
            self._emit(node, index, Add(), [xa, xb], self.shapes[xa])
        elif any(is_tensor):      # tensor + bias constant: a shift-only Affine (folds into a Conv/Gemm)
            x = self._x(names[is_tensor.index(True)])
            shift = self._channels(self._const(names[is_tensor.index(False)]), self.shapes[x], "addend")
            self._emit(node, index, Affine(np.ones_like(shift), shift), [x], self.shapes[x])
        else:
            self.fail("adds two constants")

    def _op_Sum(self, node, index, a):
        if len(node.input) != 2:   # Caffe2-converted zoo ResNets write residual adds as two-input Sum
            self.fail(f"sums {len(node.input)} inputs; only two are supported")
        self._op_Add(node, index, a)

    def _op_Concat(self, node, index, a):
        xs = [self._x(n) for n in node.input]
        shapes = [self.shapes[x] for x in xs]
        rank = len(shapes[0])
        axis = a.get("axis", 1)
        if axis not in (1, 1 - rank):
            self.fail(f"concatenates along axis {axis}; only channels (axis 1) are supported")
        if any(len(s) != rank or s[:1] + s[2:] != shapes[0][:1] + shapes[0][2:] for s in shapes):
            self.fail(f"input shapes {[list(s) for s in shapes]} differ outside the channel axis")
        if len(xs) == 1:
            return self._alias(node, xs[0])
        self._emit(node, index, Concat(), xs, (1, sum(s[1] for s in shapes), *shapes[0][2:]))

    def _flatten(self, node, index, x):
        shape = self.shapes[x]
        if len(shape) == 2:
            return self._alias(node, x)       # already (N, features)
        self._emit(node, index, Flatten(), [x], (1, math.prod(shape[1:])))

    def _op_Flatten(self, node, index, a):
        x = self._x(node.input[0])
        if a.get("axis", 1) != 1:
            self.fail(f"flattening from axis {a['axis']} is not supported (only axis 1)")
        self._flatten(node, index, x)

    def _op_Reshape(self, node, index, a):
        x = self._x(node.input[0])
        target = self._opt_const(node, 1) if len(node.input) > 1 else np.array(a.get("shape", []))
        target = [] if target is None else [int(v) for v in target.reshape(-1)]
        features = math.prod(self.shapes[x][1:])
        # Only the flatten idiom: (N, -1), (0, -1), (-1, F), (N, F), with N == 1 the batch we track.
        if (len(target) != 2 or target[0] not in (1, -1) + ((0,) if not a.get("allowzero", 0) else ())
                or target[1] not in (-1, features) or target == [-1, -1]):
            self.fail(f"reshapes {list(self.shapes[x])} to {target}; only flattening to (N, -1) is supported")
        self._flatten(node, index, x)

    def _op_Softmax(self, node, index, a):
        x = self._x(node.input[0])
        shape = self.shapes[x]
        axis = a.get("axis", 1 if self.opset < 13 else -1)
        axis = axis + len(shape) if axis < 0 else axis
        # Before opset 13 the axis means "flatten from here": over channels only when H = W = 1.
        if axis != 1 or not (len(shape) == 2 or self.opset >= 13 or math.prod(shape[2:]) == 1):
            self.fail(f"softmax over axis {axis} of {list(shape)} (opset {self.opset}) is not supported; "
                      "only over channels")
        self._emit(node, index, Softmax(), [x], shape)

    def _op_Pad(self, node, index, a):
        x = self._x(node.input[0])
        shape = self._shape4(x)
        if a.get("mode", "constant") != "constant":
            self.fail(f"pad mode {a['mode']!r} is not supported (only constant)")
        if "pads" in a:       # opset < 11: attributes
            pads, value = list(a["pads"]), float(a.get("value", 0.0))
        else:
            p = self._opt_const(node, 1)
            pads, value = ([] if p is None else [int(v) for v in p.reshape(-1)]), self._scalar(node, 2, 0.0)
        axes = self._opt_const(node, 3)
        axes = list(range(4)) if axes is None else [int(v) for v in axes.reshape(-1)]
        if any(not -4 <= ax < 4 for ax in axes):
            self.fail(f"axes {axes} are out of range for a 4-D input")
        axes = [ax % 4 for ax in axes]
        if len(pads) != 2 * len(axes):
            self.fail(f"pads {pads} do not fit axes {axes}")
        begin, end = [0] * 4, [0] * 4
        for i, ax in enumerate(axes):
            begin[ax], end[ax] = pads[i], pads[i + len(axes)]
        if begin[:2] != [0, 0] or end[:2] != [0, 0] or min(begin + end) < 0 or max(begin + end) > MAX_SIDE:
            self.fail(f"pads {pads}: only non-negative spatial padding is supported")
        _, c, h, w = shape
        self._emit(node, index, Pad((begin[2], end[2], begin[3], end[3]), value), [x],
                   (1, c, h + begin[2] + end[2], w + begin[3] + end[3]))

    def _op_Dropout(self, node, index, a):
        self._alias(node, self._x(node.input[0]))   # inference: identity

    def _op_Identity(self, node, index, a):
        self._alias(node, self._x(node.input[0]))


# -- folding ---------------------------------------------------------------------------------------
def _absorb(producer, consumer):
    """`producer` with `consumer` (its only reader) merged in, or None."""
    if not isinstance(producer, (Conv2D, Dense)) or producer.activation is not None:
        return None
    if isinstance(consumer, Affine):            # batch norm / bias: scale the output channels
        bias = consumer.shift if producer.bias is None else producer.bias * consumer.scale + consumer.shift
        return dataclasses.replace(producer, weight=producer.weight * consumer.scale, bias=bias)
    if isinstance(consumer, Activation):
        return dataclasses.replace(producer, activation=consumer.name)
    return None


def _absorb_pad(pad, consumer):
    """`consumer` with the Pad before it (its only reader) folded into its own padding, or None."""
    if not isinstance(pad, Pad) or not isinstance(consumer, (Conv2D, Pool2D)) or consumer.pads == "same":
        return None
    pads = tuple(p + q for p, q in zip(consumer.pads, pad.pads))
    if isinstance(consumer, Conv2D):
        return dataclasses.replace(consumer, pads=pads) if pad.value == 0 else None
    if consumer.ceil_mode:      # ceil mode decides the last window from the unpadded size: not the same
        return None
    if consumer.mode == "max" and pad.value == -math.inf:
        return dataclasses.replace(consumer, pads=pads)
    if consumer.mode == "avg" and pad.value == 0 and (consumer.count_include_pad or not any(consumer.pads)):
        return dataclasses.replace(consumer, pads=pads, count_include_pad=True)  # the zeros were real values
    return None


def _fold(nodes: list[Node], output: str):
    """Merge Pad into the next conv/pool, and batch norm, bias and ReLU into the conv/FC before them."""
    readers = Counter(i for n in nodes for i in n.inputs)
    readers[output] += 1
    kept: dict[str, Node] = {}            # insertion-ordered: the new node list
    renamed: dict[str, str] = {}
    for node in nodes:
        node = Node(node.name, node.layer, tuple(renamed.get(i, i) for i in node.inputs))
        prev = kept.get(node.inputs[0]) if len(node.inputs) == 1 else None
        if prev is not None and readers[prev.name] == 1:
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
