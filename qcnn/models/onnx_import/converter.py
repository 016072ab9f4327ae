"""ONNX graph -> qcnn Graph: walk the nodes in dependency order, fold what is constant, convert
the operators on activations into NHWC layers (see layout.py for how axes are tracked).

Shapes are known statically (batch 1) so every problem -- wrong shapes, unknown operators, absurd
sizes -- shows up at import, naming the node and its operator.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from ... import layers as L
from ...graph import Graph, Node
from . import folding as F
from .common import (MAX_CONST_ELEMENTS, MAX_ELEMENTS, MAX_MACS, MAX_NODES, MAX_PARAMS, MAX_POOL_AREA, MAX_SIDE,
                     MAX_TOTAL_ELEMENTS, OPSETS, OnnxImportError, quote, sanitise)
from .fuse import simplify
from .layout import Act, canonical, inverse, plan_reshape, transpose_for
from .tensors import TensorReader

DEFAULT_SIZE = 224               # for inputs whose height/width are dynamic

_A = onnx.AttributeProto
# The type each attribute we read must have: a float where an int belongs would only fail at run time.
_ATTR_TYPES = {**dict.fromkeys(("kernel_shape", "strides", "pads", "dilations", "shape", "value_ints", "perm",
                                "axes", "split", "starts", "ends"), {_A.INTS}),
               **dict.fromkeys(("group", "ceil_mode", "count_include_pad", "storage_order", "transA", "transB",
                                "axis", "size", "allowzero", "training_mode", "spatial", "value_int", "keepdims",
                                "to", "start", "end", "num_outputs", "noop_with_empty_axes", "stash_type"),
                               {_A.INT}),
               **dict.fromkeys(("alpha", "beta", "bias", "epsilon", "min", "max", "value_float", "gamma",
                                "ratio"), {_A.FLOAT}),
               **dict.fromkeys(("auto_pad", "mode", "approximate"), {_A.STRING}),
               "value_floats": {_A.FLOATS}, "value": {_A.FLOAT, _A.TENSOR}}
_UNARY = {"Sigmoid": "sigmoid", "HardSwish": "hardswish", "Tanh": "tanh", "Erf": "erf"}
_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow", "Max": "max", "Min": "min"}


def attributes(node) -> dict:
    out = {}
    for a in node.attribute:
        if a.name in _ATTR_TYPES and a.type not in _ATTR_TYPES[a.name]:
            raise OnnxImportError(f"attribute '{sanitise(a.name)}' has the wrong type")
        if a.type in (_A.GRAPH, _A.GRAPHS):
            raise OnnxImportError("subgraphs (If, Loop, Scan) are not supported")
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
    return out


def toposort(nodes, available: set[str]) -> list:
    """Nodes in dependency order (file order where free); undefined tensors and cycles are errors."""
    producer = {}
    for i, node in enumerate(nodes):
        for out in node.output:
            if out and (out in producer or out in available):
                raise OnnxImportError(f"tensor {quote(out)} is defined more than once")
            if out:
                producer[out] = i
    needs = []
    for node in nodes:
        missing = [x for x in node.input if x and x not in available and x not in producer]
        if missing:
            raise OnnxImportError(f"node {quote(node.name)} ({sanitise(node.op_type)}) reads {quote(missing[0])}, "
                                  "which no node, initializer or input provides")
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


@dataclass(frozen=True)
class Flat:
    """An activation flattened whole, batch included (PyTorch's as_strided writes Reshape(-1) then
    Gather): only a Gather may read it, and must leave the batch axis first."""

    source: Act


def transposed(m: np.ndarray, block: int = 512) -> np.ndarray:
    """m.T as a contiguous copy, block by block: a plain transposed copy of a 25088 x 4096 FC
    weight strides through memory and took 5 s here, blocks that stay in cache a fraction."""
    rows, cols = m.shape
    if rows * cols < 1 << 20:
        return np.ascontiguousarray(m.T)
    out = np.empty((cols, rows), m.dtype)
    for i in range(0, rows, block):
        for j in range(0, cols, block):
            out[j:j + block, i:i + block] = m[i:i + block, j:j + block].T
    return out


class Converter:
    def __init__(self, proto: onnx.ModelProto, reader: TensorReader):
        self.proto = proto
        self.reader = reader
        g = proto.graph
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.inits = {t.name: t for t in g.initializer}
        self.consts: dict[str, np.ndarray] = {}   # ONNX constant tensors (converted when first read)
        self.acts: dict[str, Act] = {}            # ONNX activation tensors
        self.flat: dict[str, Act] = {}            # activations flattened with their batch (see Flat)
        self.nodes: list[Node] = []
        self.names = {"input"}
        self.name_counts: dict[str, int] = {}
        self.relayouts: dict[tuple, Act] = {}
        self.ranks: dict[str, int] = {}           # our node -> rank of its array
        self.where = ""
        self.node = None
        self.params = 0
        self.macs = 0
        self.elements = 0
        self.input_layout = "NCHW"

    # -- whole graph -------------------------------------------------------------------------------
    def convert(self):
        g = self.proto.graph
        if not self.proto.HasField("graph") or not g.node:
            raise OnnxImportError("no graph nodes (empty or not an ONNX model)")
        if self.opset not in OPSETS:
            raise OnnxImportError(f"opset {self.opset} is outside the opsets this importer knows "
                                  f"({OPSETS.start}-{OPSETS.stop - 1}); export with another opset_version")
        if len(g.node) > MAX_NODES:
            raise OnnxImportError(f"{len(g.node)} nodes: more than {MAX_NODES}")
        if len(g.sparse_initializer):
            raise OnnxImportError("sparse initializers are not supported")
        for t in g.initializer:
            self.reader.account(t, f"initializer {quote(t.name)}")
        inputs = [v for v in g.input if v.name not in self.inits]
        if len(inputs) != 1:
            raise OnnxImportError(f"expected one image input, found {len(inputs)}")
        c, h, w = self._input(inputs[0])
        if len(g.output) != 1:
            raise OnnxImportError(f"expected one output, found {len(g.output)}")
        self.produced = {o for n in g.node for o in n.output}
        for index, node in enumerate(toposort(list(g.node), {inputs[0].name, *self.inits})):
            self.where = f"node {quote(node.name or f'{node.op_type}_{index}')} ({sanitise(node.op_type)})"
            self.node = node
            self._node(node, index)
        self.where = "graph output"
        out = self._act(g.output[0].name)
        out = self._relayout(out, canonical(out.rank))
        if out.name == "input":   # the graph computes nothing (some layout changes at most): one view
            self.node = None
            out = self._emit(L.Reshape(out.physical[1:]), [out], out.shape, out.perm)
        if self.params > MAX_PARAMS:
            raise OnnxImportError(f"{self.params} weights: more than the limit of {MAX_PARAMS}")
        nodes, output = simplify(self.nodes, out.name, self.ranks)
        return Graph(nodes, "input", output), (c, h, w), out.shape

    def _input(self, vi):
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or t.elem_type != TensorProto.FLOAT:
            raise OnnxImportError(f"input {quote(vi.name)} must be a float32 tensor")
        dims = t.shape.dim
        if not t.HasField("shape") or len(dims) != 4:
            raise OnnxImportError(f"input {quote(vi.name)} must be a 4-D image tensor, got rank {len(dims)}")
        d = [x.dim_value if x.HasField("dim_value") and x.dim_value > 0 else None for x in dims[1:]]
        # tf2onnx keeps TensorFlow's NHWC input and transposes it to NCHW right after: channels last.
        readers = [n for n in self.proto.graph.node if vi.name in n.input]
        nhwc = bool(readers) and all(n.op_type == "Transpose" and [a.ints for a in n.attribute if a.name == "perm"]
                                     == [[0, 3, 1, 2]] for n in readers)
        c, h, w = (d[2], d[0], d[1]) if nhwc else d
        if c is None:
            raise OnnxImportError(f"input {quote(vi.name)} has a dynamic channel count")
        h, w = h or DEFAULT_SIZE, w or DEFAULT_SIZE
        if max(h, w) > MAX_SIDE or c > MAX_SIDE:
            raise OnnxImportError(f"input {quote(vi.name)} has absurd dimensions {c}x{h}x{w}")
        if nhwc:
            self.input_layout = "NHWC"
            self.acts[vi.name] = Act("input", (1, h, w, c), (0, 1, 2, 3))
        else:
            self.acts[vi.name] = Act("input", (1, c, h, w), canonical(4))
        return c, h, w

    # -- values ------------------------------------------------------------------------------------
    def fail(self, msg: str):
        raise OnnxImportError(f"{self.where}: {msg}")

    def _value(self, name: str):
        """An activation (Act), a constant (ndarray) or None for an omitted optional input."""
        if not name:
            return None
        if name in self.acts:
            return self.acts[name]
        if name in self.flat:
            return Flat(self.flat[name])
        if name in self.consts:
            return self.consts[name]
        if name in self.inits:
            self.consts[name] = self.reader.array(self.inits[name], f"initializer {quote(name)}")
            return self.consts[name]
        if name in self.produced:
            self.fail(f"reads {quote(name)}, an output this importer does not compute")
        self.fail(f"reads {quote(name)}, which nothing defines")

    def _act(self, name: str) -> Act:
        v = self._value(name)
        if isinstance(v, Flat):
            self.fail(f"reads {quote(name)}, an activation flattened together with its batch axis (only a "
                      "Gather may read that)")
        if not isinstance(v, Act):
            self.fail(f"reads constant {quote(name)} where an activation is expected")
        return v

    def _const(self, name: str, what: str = "input") -> np.ndarray:
        v = self._value(name)
        if not isinstance(v, np.ndarray):
            self.fail(f"{what} {quote(name)} must be a constant (an initializer or computed from constants)")
        return v

    def _input_const(self, i: int, what: str = "input"):
        ins = self.node.input
        return self._const(ins[i], what) if len(ins) > i and ins[i] else None

    def _scalar(self, i: int, default: float) -> float:
        v = self._input_const(i)
        if v is None:
            return default
        if v.size != 1:
            self.fail(f"input {i} must be a scalar")
        return float(v.reshape(()))

    def _emit(self, layer, inputs: list[Act], shape, perm=None, output: int = 0) -> Act:
        shape = tuple(int(d) for d in shape)
        if any(d < 1 for d in shape) or math.prod(shape) > MAX_ELEMENTS:
            self.fail(f"output shape {list(shape)} is empty or absurdly large")
        if len(self.nodes) >= MAX_NODES:
            self.fail(f"more than {MAX_NODES} layers")
        self.elements += math.prod(shape)
        if self.elements > MAX_TOTAL_ELEMENTS:
            self.fail(f"the layers' outputs add up to more than {MAX_TOTAL_ELEMENTS} values per image")
        base = sanitise(self.node.name) if self.node is not None and self.node.name else None
        base = base or (f"{self.node.op_type}_{len(self.nodes)}" if self.node is not None else "layout")
        name, k = base, self.name_counts.get(base, 1)
        while name in self.names:   # counting on from the last clash: no quadratic walk on repeated names
            k += 1
            name = f"{base}_{k}"
        self.name_counts[base] = k
        self.names.add(name)
        self.params += sum(v.size for v in layer.params().values())
        self.nodes.append(Node(name, layer, tuple(a.name for a in inputs)))
        self.ranks[name] = len(shape)
        act = Act(name, shape, tuple(perm) if perm is not None else canonical(len(shape)))
        if self.node is not None and len(self.node.output) > output and self.node.output[output]:
            self.acts[self.node.output[output]] = act
        return act

    def _alias(self, x: Act, output: int = 0) -> None:
        self.acts[self.node.output[output]] = x

    def _relayout(self, x: Act, perm) -> Act:
        perm = tuple(perm)
        if x.perm == perm:
            return x
        key = (x.name, perm)
        if key not in self.relayouts:
            physical = tuple(x.shape[i] for i in inverse(perm))
            layer = L.Reshape(physical[1:], transpose_for(x, perm))
            node, self.node = self.node, None     # a layout node belongs to no ONNX output
            try:
                self.relayouts[key] = self._emit(layer, [x], x.shape, perm)
            finally:
                self.node = node
        return self.relayouts[key]

    def _reshape(self, x: Act, new, output: int = 0) -> None:
        new = tuple(int(d) for d in new)
        if len(new) == 1 and x.shape[0] == 1:
            self.flat[self.node.output[output]] = x
            return
        if x.shape[0] != 1 or not new or new[0] != 1:
            self.fail(f"reshapes {list(x.shape)} to {list(new)}: the batch axis must stay first")
        plan = plan_reshape(x, new)
        if plan.transpose is None and plan.physical == x.physical:
            self.acts[self.node.output[output]] = Act(x.name, new, plan.perm)
            return
        if x.perm == canonical(4) and len(new) == 2 and plan.transpose in (None, (0, 3, 1, 2)):
            return self._emit(L.Flatten(), [x], new, (0, 1), output)   # the classic NCHW flatten
        self._emit(L.Reshape(plan.physical[1:], plan.transpose), [x], new, plan.perm, output)

    def _phys_axis(self, x: Act, axis: int) -> int:
        a = F.axis(axis, x.rank)
        if a == 0:
            self.fail("operates on the batch axis")
        return x.perm[a]

    def _const_physical(self, x: Act, c: np.ndarray) -> np.ndarray:
        """A constant broadcast against activation x, in x's array layout (rank of x)."""
        if c.ndim > x.rank:
            self.fail(f"constant of shape {list(c.shape)} has more axes than the activation {list(x.shape)}")
        c = c.reshape((1,) * (x.rank - c.ndim) + c.shape)
        if c.shape[0] != 1:
            self.fail(f"constant of shape {list(c.shape)} varies along the batch axis")
        F.broadcast(x.shape, c.shape)
        return np.ascontiguousarray(c.transpose(x.order)).astype(np.float32)

    # -- operators ---------------------------------------------------------------------------------
    def _node(self, node, index: int) -> None:
        if node.domain not in ("", "ai.onnx"):
            raise OnnxImportError(f"{self.where} uses unsupported operator "
                                  f"{sanitise(node.domain)}.{sanitise(node.op_type)}")
        if not node.output or not node.output[0]:
            self.fail("has no output")
        a = self._attrs(node)
        op = node.op_type
        if op == "Constant":
            what = f"constant {quote(node.output[0])}"
            self.consts[node.output[0]] = F.constant_value(a, lambda t: self.reader.array(t, what))
            return
        values = [self._value(n) for n in node.input]
        acts = [v for v in values if isinstance(v, (Act, Flat))]
        if not acts:
            try:
                outs = F.fold(op, values, a, self.opset, len(node.output))
            except KeyError:
                self.fail("uses an operator on constants that this importer does not evaluate")
            except (ValueError, TypeError, IndexError) as exc:
                self.fail(f"cannot be evaluated on its constant inputs ({exc})")
            for name, value in zip(node.output, outs):
                if name:
                    if value.size > MAX_CONST_ELEMENTS:
                        self.fail("computes an absurdly large constant")
                    self.consts[name] = value
            return
        if op in ("Shape", "Size") and isinstance(values[0], Act):
            x = values[0]
            shape = np.array(x.shape, np.int64)
            self.consts[node.output[0]] = (np.array(shape.prod(), np.int64) if op == "Size" else
                                           shape[slice(a.get("start", 0), a.get("end", x.rank))])
            return
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            raise OnnxImportError(f"{self.where} uses unsupported operator {sanitise(op)}")
        try:
            handler(values, a)
        except OnnxImportError:
            raise
        except ValueError as exc:   # a layer refusing its parameters
            self.fail(str(exc))

    def _attrs(self, node) -> dict:
        try:
            return attributes(node)
        except OnnxImportError as exc:
            self.fail(str(exc))

    # convolution and dense ------------------------------------------------------------------------
    def _image(self, x) -> Act:
        if not isinstance(x, Act) or x.rank != 4:
            self.fail(f"needs a 4-D image activation, got {'a constant' if not isinstance(x, Act) else list(x.shape)}")
        return self._relayout(x, canonical(4))

    def _window(self, a: dict, h: int, w: int, kernel, kind: str):
        """(stride, pads) for a conv/pool; pads in our (top, bottom, left, right) order or "same"."""
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            self.fail(f"dilations {list(a['dilations'])[:4]} are not supported")
        stride = tuple(a.get("strides", [1, 1]))
        if len(stride) != 2 or min(stride) < 1 or max(stride) > MAX_SIDE:
            self.fail(f"strides {list(stride)[:4]} are invalid (need two values >= 1)")
        kh, kw = kernel
        auto = a.get("auto_pad", "NOTSET")
        if auto == "SAME_UPPER":    # extra pixel after: exactly TensorFlow's SAME, which our layers do
            return stride, "same"
        if auto == "SAME_LOWER":    # extra pixel before: resolve now from the known input size
            (top, bottom), (left, right) = L.same_pads(h, kh, stride[0]), L.same_pads(w, kw, stride[1])
            return stride, (bottom, top, right, left)   # TF SAME with before and after swapped
        if auto == "VALID":
            return stride, (0, 0, 0, 0)
        if auto != "NOTSET":
            self.fail(f"unknown auto_pad {auto!r:.40}")
        p = a.get("pads", [0, 0, 0, 0])
        if len(p) != 4 or min(p) < 0 or max(p) > MAX_SIDE:
            self.fail(f"pads {list(p)[:8]} are invalid for a 2-D {kind}")
        return stride, (p[0], p[2], p[1], p[3])   # ONNX [top, left, bottom, right]

    def _op_Conv(self, v, a):
        x = self._image(v[0])
        _, c, h, w = x.shape
        weight = self._const(self.node.input[1], "weight")
        if weight.ndim != 4:
            self.fail(f"weight of shape {list(weight.shape)}: only 2-D convolutions are supported")
        o, cin_g, kh, kw = weight.shape
        groups = a.get("group", 1)
        if groups < 1 or cin_g * groups != c or o % groups:
            self.fail(f"weight {list(weight.shape)} with group={groups} does not fit {c} input channels")
        if list(a.get("kernel_shape", [kh, kw])) != [kh, kw]:
            self.fail(f"kernel_shape {list(a['kernel_shape'])[:4]} disagrees with weight {list(weight.shape)}")
        if max(kh, kw) > MAX_SIDE:
            self.fail(f"kernel {kh}x{kw} is absurdly large")
        stride, pads = self._window(a, h, w, (kh, kw), "convolution")
        bias = self._input_const(2, "bias")
        if bias is not None and bias.size != o:
            self.fail(f"bias has {bias.size} values for {o} output channels")
        layer = L.Conv2D(weight.transpose(2, 3, 1, 0), None if bias is None else bias.reshape(-1), stride, pads, groups)
        (t, b, l, r), oh, ow = layer.geometry(h, w)
        # The padded input and the patch matrix are materialised at run time: refuse absurd ones now.
        if max(c * (h + t + b) * (w + l + r), oh * ow * kh * kw * c) > MAX_ELEMENTS:
            self.fail(f"a {kh}x{kw} convolution of a {c}x{h}x{w} input is absurdly large")
        self._work(oh * ow * kh * kw * cin_g * o)
        self._emit(layer, [x], (1, o, oh, ow))

    def _work(self, macs: int) -> None:
        self.macs += macs
        if self.macs > MAX_MACS:
            self.fail(f"the graph needs more than {MAX_MACS} multiply-adds per image")

    def _matrix(self, x: Act, weight: np.ndarray, bias) -> None:
        """x @ weight (+ bias) over x's last logical axis."""
        if weight.ndim != 2 or weight.shape[0] != x.shape[-1]:
            self.fail(f"weight of shape {list(weight.shape)} does not take {x.shape[-1]} inputs")
        self._work(math.prod(x.shape) * weight.shape[1])
        if x.rank == 2:
            return self._emit(L.Dense(weight, bias), [self._relayout(x, (0, 1))], (1, weight.shape[1]))
        if x.rank != 4:
            self.fail(f"matrix product of a rank-{x.rank} activation is not supported")
        # Over the last logical axis: as a 1x1 convolution over whatever axis lies last in memory.
        if x.perm[-1] != 3:
            x = self._relayout(x, (0, 1, 2, 3))
        layer = L.Conv2D(weight.reshape(1, 1, *weight.shape), bias)
        self._emit(layer, [x], (*x.shape[:-1], weight.shape[1]), x.perm)

    def _op_Gemm(self, v, a):
        x = v[0]
        if not isinstance(x, Act) or x.rank != 2 or a.get("transA", 0):
            self.fail("needs an (N, features) activation as input A (flatten it first; transA=0)")
        b = self._const(self.node.input[1], "weight B")
        if b.ndim != 2:
            self.fail(f"weight B of shape {list(b.shape)} is not a matrix")
        weight = transposed(b) if a.get("transB", 0) else b    # (C_in, C_out)
        if a.get("alpha", 1.0) != 1.0:
            weight = weight * np.float32(a["alpha"])
        c = self._input_const(2, "bias C")
        bias = None
        if c is not None and a.get("beta", 1.0) != 0:
            if c.size not in (1, weight.shape[1]) or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
                self.fail(f"bias C of shape {list(c.shape)} does not broadcast to {weight.shape[1]} outputs")
            bias = a.get("beta", 1.0) * np.broadcast_to(c.reshape(-1), (weight.shape[1],))
        self._matrix(x, weight, bias)

    def _op_MatMul(self, v, a):
        if not isinstance(v[0], Act) or isinstance(v[1], Act):
            self.fail("only activation x constant matrix products are supported")
        self._matrix(v[0], v[1], None)

    # element-wise -----------------------------------------------------------------------------------
    def _same_shape(self, x: Act, layer) -> None:
        self._emit(layer, [x], x.shape, x.perm)

    def _op_Relu(self, v, a):
        self._same_shape(self._act(self.node.input[0]), L.Activation("relu"))

    def _unary(self, name, alpha=0.0, beta=0.0):
        self._same_shape(self._act(self.node.input[0]), L.Unary(name, float(alpha), float(beta)))

    def _op_Sigmoid(self, v, a):
        self._unary("sigmoid")

    def _op_HardSwish(self, v, a):
        self._unary("hardswish")

    def _op_Tanh(self, v, a):
        self._unary("tanh")

    def _op_Erf(self, v, a):
        self._unary("erf")

    def _op_HardSigmoid(self, v, a):
        self._unary("hardsigmoid", a.get("alpha", 0.2), a.get("beta", 0.5))

    def _op_LeakyRelu(self, v, a):
        self._unary("leakyrelu", a.get("alpha", 0.01))

    def _op_Elu(self, v, a):
        self._unary("elu", a.get("alpha", 1.0))

    def _op_Gelu(self, v, a):
        if a.get("approximate", "none") != "none":
            self.fail(f"approximate={a['approximate']!r:.20} GELU is not supported (only the erf form)")
        self._unary("gelu")

    def _op_Neg(self, v, a):
        x = self._act(self.node.input[0])
        c = x.physical[-1]
        self._same_shape(x, L.Affine(np.full(c, -1, np.float32), np.zeros(c, np.float32)))

    def _op_Clip(self, v, a):
        x = self._act(self.node.input[0])
        # Old opsets give the bounds as attributes, opset 11+ as optional constant inputs.
        lo = a.get("min", self._scalar(1, -math.inf))
        hi = a.get("max", self._scalar(2, math.inf))
        if lo == 0 and hi == 6:
            layer = L.Activation("relu6")
        elif lo == 0 and hi == math.inf:
            layer = L.Activation("relu")
        else:
            layer = L.Clip(lo, hi)
        self._same_shape(x, layer)

    def _op_PRelu(self, v, a):
        x = self._act(self.node.input[0])
        self._same_shape(x, L.PRelu(self._const_physical(x, self._const(self.node.input[1], "slope"))))

    def _binary(self, v, op: str):
        if len(v) != 2:
            self.fail(f"takes 2 inputs, got {len(v)}")
        xa, xb = v
        if isinstance(xa, Act) and isinstance(xb, Act):
            if xa.rank != xb.rank:
                self.fail(f"combines activations of shapes {list(xa.shape)} and {list(xb.shape)}")
            if xa.perm != xb.perm:   # bring the other one to the canonical layout's side
                if xb.perm == canonical(xb.rank):
                    xa = self._relayout(xa, xb.perm)
                else:
                    xb = self._relayout(xb, xa.perm)
            shape = F.broadcast(xa.shape, xb.shape)
            self._work(math.prod(shape))
            if op == "add" and xa.shape == xb.shape:
                return self._emit(L.Add(), [xa, xb], shape, xa.perm)
            return self._emit(L.Binary(op), [xa, xb], shape, xa.perm)
        x, c, const_first = (xa, xb, False) if isinstance(xa, Act) else (xb, xa, True)
        if c.dtype.kind not in "fiub":
            self.fail("constant operand of unsupported type")
        cp = self._const_physical(x, c)
        shape = F.broadcast(x.shape, c.reshape((1,) * (x.rank - c.ndim) + c.shape).shape)
        channels = x.physical[-1]
        per_channel = shape == x.shape and all(d == 1 for d in cp.shape[:-1]) and cp.shape[-1] in (1, channels)
        if per_channel and op in ("add", "sub", "mul", "div"):
            vec = np.broadcast_to(cp.reshape(-1), (channels,)).astype(np.float32)
            ones, zeros = np.ones(channels, np.float32), np.zeros(channels, np.float32)
            scale, shift = {("add", False): (ones, vec), ("add", True): (ones, vec),
                            ("sub", False): (ones, -vec), ("sub", True): (-ones, vec),
                            ("mul", False): (vec, zeros), ("mul", True): (vec, zeros),
                            ("div", False): ((1 / vec.astype(np.float64)).astype(np.float32), zeros)
                            }.get((op, const_first), (None, None))
            if scale is not None:
                return self._emit(L.Affine(scale, shift), [x], shape, x.perm)
        if op == "pow" and not const_first and cp.size == 1 and float(cp.reshape(())) == 2.0:
            return self._emit(L.Binary("mul"), [x, x], shape, x.perm)   # squares exactly, fast
        self._emit(L.Binary(op, cp, const_first), [x], shape, x.perm)

    def _op_Add(self, v, a):
        self._binary(v, "add")

    def _op_Sub(self, v, a):
        self._binary(v, "sub")

    def _op_Mul(self, v, a):
        self._binary(v, "mul")

    def _op_Div(self, v, a):
        self._binary(v, "div")

    def _op_Pow(self, v, a):
        self._binary(v, "pow")

    def _op_Max(self, v, a):
        self._binary(v, "max")

    def _op_Min(self, v, a):
        self._binary(v, "min")

    def _op_Sqrt(self, v, a):
        self._binary([self._act(self.node.input[0]), np.float32(0.5).reshape(())], "pow")

    def _op_Reciprocal(self, v, a):
        self._binary([np.ones((), np.float32), self._act(self.node.input[0])], "div")

    def _op_Sum(self, v, a):
        # Caffe2-converted zoo ResNets write residual adds as Sum; n inputs become a chain of Adds.
        if len(v) == 1:
            return self._alias(self._act(self.node.input[0]))
        out, acc = self.node.output[0], v[0]
        for y in v[1:]:
            self._binary([acc, y], "add")
            acc = self.acts[out]

    def _op_BatchNormalization(self, v, a):
        if a.get("training_mode", 0) or a.get("spatial", 1) != 1:
            self.fail("only inference-mode, spatial batch normalization is supported")
        x = self._act(self.node.input[0])
        if len(v) < 5:
            self.fail("needs scale, bias, mean and variance")
        gamma, beta, mean, var = (self._const(n, "statistic").reshape(-1).astype(np.float64)
                                  for n in self.node.input[1:5])
        c = x.shape[1]
        if any(s.size != c for s in (gamma, beta, mean, var)):
            self.fail(f"statistics do not have one value per channel of {list(x.shape)}")
        scale = gamma / np.sqrt(var + a.get("epsilon", 1e-5))
        shift = beta - mean * scale
        if x.perm[1] == x.rank - 1:   # channels last in memory: an Affine, folded into the conv before
            return self._same_shape(x, L.Affine(scale.astype(np.float32), shift.astype(np.float32)))
        shape = [1] * x.rank
        shape[x.perm[1]] = c
        self._same_shape(x, L.Affine(scale.astype(np.float32).reshape(shape), shift.astype(np.float32).reshape(shape)))

    # pooling and normalisation ------------------------------------------------------------------------
    def _pool(self, v, a, mode):
        x = self._image(v[0])
        _, c, h, w = x.shape
        kernel = tuple(a.get("kernel_shape", ()))
        if len(kernel) != 2 or min(kernel) < 1 or max(kernel) > MAX_SIDE:
            self.fail(f"kernel_shape {list(kernel)[:4]} is not a 2-D kernel")
        if a.get("storage_order", 0):
            self.fail("storage_order=1 is not supported")
        stride, pads = self._window(a, h, w, kernel, "pool")
        full = (0, 0, 0, 0) if pads == "same" else pads   # "same" padding always fits the kernel
        if max(full[:2]) >= kernel[0] or max(full[2:]) >= kernel[1]:   # as onnxruntime demands
            self.fail(f"pads {list(full)} must be smaller than the kernel {list(kernel)}")
        if kernel[0] > h + full[0] + full[1] or kernel[1] > w + full[2] + full[3]:
            self.fail(f"kernel {list(kernel)} is larger than the padded {h}x{w} input")
        padded = c * (h + full[0] + full[1]) * (w + full[2] + full[3])
        if kernel[0] * kernel[1] > MAX_POOL_AREA or padded > MAX_ELEMENTS:
            self.fail(f"kernel {list(kernel)} or padding {list(full)} is absurdly large")
        layer = L.Pool2D(mode, kernel, stride, pads, bool(a.get("ceil_mode", 0)), bool(a.get("count_include_pad", 0)))
        _, oh, ow = layer.geometry(h, w)
        self._work(oh * ow * c * kernel[0] * kernel[1])
        self._emit(layer, [x], (1, c, oh, ow))

    def _op_MaxPool(self, v, a):
        self._pool(v, a, "max")

    def _op_AveragePool(self, v, a):
        self._pool(v, a, "avg")

    def _op_GlobalAveragePool(self, v, a):
        x = self._image(v[0])
        self._emit(L.GlobalAvgPool(), [x], (1, x.shape[1], 1, 1))

    def _op_GlobalMaxPool(self, v, a):
        x = self._image(v[0])
        self._emit(L.Reduce("max", (1, 2), True), [x], (1, x.shape[1], 1, 1))

    def _reduce(self, v, a, op):
        x = self._act(self.node.input[0])
        axes = F.axes_arg(v, a, 1, 13 if op == "sum" else 18, self.opset)
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return self._alias(x)
            axes = list(range(1, x.rank))
        axes = sorted({F.axis(ax, x.rank) for ax in axes})
        if 0 in axes:
            self.fail("reduces over the batch axis")
        keep = bool(a.get("keepdims", 1))
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        phys = tuple(sorted(x.perm[ax] for ax in axes))
        if op == "mean" and x.rank == 4 and x.perm == canonical(4) and axes == [2, 3]:
            out = self._emit(L.GlobalAvgPool(), [x], shape)
        else:
            out = self._emit(L.Reduce(op, phys, True), [x], shape, x.perm)
        if not keep:   # dropping size-1 axes is a free reshape
            self._reshape(out, tuple(d for i, d in enumerate(x.shape) if i not in axes))

    def _op_ReduceMean(self, v, a):
        self._reduce(v, a, "mean")

    def _op_ReduceMax(self, v, a):
        self._reduce(v, a, "max")

    def _op_ReduceMin(self, v, a):
        self._reduce(v, a, "min")

    def _op_ReduceSum(self, v, a):
        self._reduce(v, a, "sum")

    def _op_LRN(self, v, a):
        x = self._image(v[0])
        if not 1 <= a.get("size", 0) <= MAX_SIDE:
            self.fail(f"size {a.get('size')} is invalid")
        self._same_shape(x, L.LRN(a["size"], a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0)))

    def _op_LayerNormalization(self, v, a):
        x = self._act(self.node.input[0])
        first = F.axis(a.get("axis", -1), x.rank)
        if first == 0:
            self.fail("normalizes over the batch axis")
        k = x.rank - first
        if x.perm[first:] != tuple(range(x.rank - k, x.rank)):   # the normalized axes must lie last
            order = [i for i in range(x.rank) if i < first] + list(range(first, x.rank))
            x = self._relayout(x, inverse(order))
        norm_shape = x.shape[first:]
        scale = self._const(self.node.input[1], "scale")
        bias = self._input_const(2, "bias")
        try:
            scale = np.broadcast_to(scale, norm_shape).astype(np.float32)
            bias = None if bias is None else np.broadcast_to(bias, norm_shape).astype(np.float32)
        except ValueError:
            self.fail(f"scale or bias does not fit the normalized shape {list(norm_shape)}")
        self._same_shape(x, L.LayerNorm(scale, bias, float(a.get("epsilon", 1e-5)), k))

    def _softmax(self, v, a, log: bool):
        x = self._act(self.node.input[0])
        axis = F.axis(a.get("axis", 1 if self.opset < 13 else -1), x.rank)
        if self.opset < 13:
            # Before opset 13 the axis means "flatten from here": one real axis among them at most.
            real = [i for i in range(axis, x.rank) if x.shape[i] != 1]
            if len(real) > 1:
                self.fail(f"softmax over axes {axis}.. of {list(x.shape)} (opset {self.opset}) is not supported")
            axis = real[0] if real else axis
        if axis == 0:
            self.fail("softmax over the batch axis")
        phys = x.perm[axis]
        if not log and phys == x.rank - 1:
            return self._same_shape(x, L.Softmax())
        self._same_shape(x, L.SoftmaxAxis(phys, log))

    def _op_Softmax(self, v, a):
        self._softmax(v, a, False)

    def _op_LogSoftmax(self, v, a):
        self._softmax(v, a, True)

    # layout --------------------------------------------------------------------------------------------
    def _op_Identity(self, v, a):
        self._alias(self._act(self.node.input[0]))

    def _op_Dropout(self, v, a):
        self._alias(self._act(self.node.input[0]))   # inference: identity

    def _op_Cast(self, v, a):
        if a.get("to") not in (TensorProto.FLOAT, None):
            self.fail("casts an activation to a type other than float32")
        self._alias(self._act(self.node.input[0]))

    def _op_Flatten(self, v, a):
        x = self._act(self.node.input[0])
        axis = F.axis(a.get("axis", 1), x.rank + 1)
        if axis == 0:
            self.fail("flattens the batch into the features (axis 0)")
        self._reshape(x, (math.prod(x.shape[:axis]), math.prod(x.shape[axis:])))

    def _op_Reshape(self, v, a):
        x = self._act(self.node.input[0])
        target = F.ints(v[1], "shape") if len(v) > 1 and v[1] is not None else list(a.get("shape", []))
        self._reshape(x, F.reshape_target(x.shape, target, bool(a.get("allowzero", 0))))

    def _op_Squeeze(self, v, a):
        x = self._act(self.node.input[0])
        axes = F.axes_arg(v, a, 1, 13, self.opset)
        if axes is None:
            axes = [i for i, d in enumerate(x.shape) if d == 1 and i]
        axes = [F.axis(ax, x.rank) for ax in axes]
        if 0 in axes or any(x.shape[ax] != 1 for ax in axes):
            self.fail(f"squeezes axes {axes} of {list(x.shape)} (only non-batch axes of size 1)")
        self._reshape(x, tuple(d for i, d in enumerate(x.shape) if i not in axes))

    def _op_Unsqueeze(self, v, a):
        x = self._act(self.node.input[0])
        axes = F.axes_arg(v, a, 1, 13, self.opset) or []
        rank = x.rank + len(axes)
        axes = sorted(F.axis(ax, rank) for ax in axes)
        if 0 in axes or len(set(axes)) != len(axes):
            self.fail(f"unsqueezes axes {axes} (only after the batch axis, each once)")
        shape = list(x.shape)
        for ax in axes:
            shape.insert(ax, 1)
        self._reshape(x, tuple(shape))

    def _op_Transpose(self, v, a):
        x = self._act(self.node.input[0])
        perm = list(a.get("perm", range(x.rank)[::-1]))
        if sorted(perm) != list(range(x.rank)) or perm[0] != 0:
            self.fail(f"transposes with perm {perm[:8]} (the batch axis must stay first)")
        self._alias(Act(x.name, tuple(x.shape[p] for p in perm), tuple(x.perm[p] for p in perm)))

    def _op_Gather(self, v, a):
        idx = self._const(self.node.input[1], "indices") if len(v) > 1 else None
        if idx is None or idx.dtype.kind not in "iu":
            self.fail("needs constant integer indices")
        if isinstance(v[0], Flat):
            x = v[0].source
            n = math.prod(x.shape)
            if F.axis(a.get("axis", 0), 1) != 0 or idx.size and (idx.min() < -n or idx.max() >= n):
                self.fail(f"gathers out of range of the {n} flattened elements")
            if idx.ndim == 0 or idx.shape[0] != 1:
                self.fail(f"gathers {list(idx.shape)} elements of a flattened activation: the batch axis must "
                          "stay first")
            # each logical (flat) index -> its offset in one image's array
            offsets = np.arange(n).reshape(x.physical).transpose(x.perm).reshape(-1)
            pick = offsets[idx % n].reshape(-1)
            flat = self._emit(L.Reshape((n,)), [x], (1, n), (0, 1))
            if pick.size == n and np.array_equal(pick, np.arange(n)):
                return self._reshape_to(flat, idx.shape)
            return self._emit(L.Take(pick, 1, idx.shape[1:]), [flat], idx.shape, tuple(range(idx.ndim)))
        x = self._act(self.node.input[0])
        axis = F.axis(a.get("axis", 0), x.rank)
        if axis == 0:
            self.fail("gathers along the batch axis")
        if idx.size and (idx.min() < -x.shape[axis] or idx.max() >= x.shape[axis]):
            self.fail(f"index out of range for dimension {x.shape[axis]}")
        idx = idx % x.shape[axis]
        shape = x.shape[:axis] + idx.shape + x.shape[axis + 1:]
        if idx.ndim == 1:   # the axis stays where it is
            return self._emit(L.Take(idx, x.perm[axis]), [x], shape, x.perm)
        x = self._relayout(x, tuple(range(x.rank)))
        self._emit(L.Take(idx, axis), [x], shape, tuple(range(len(shape))))

    def _reshape_to(self, x: Act, shape) -> None:
        """Output 0 is x's data (memory order) as logical `shape`, identity layout."""
        self._emit(L.Reshape(tuple(shape[1:])), [x], shape, tuple(range(len(shape))))

    def _op_Concat(self, v, a):
        if not all(isinstance(x, Act) for x in v):
            self.fail("concatenates constants with activations")
        xs = list(v)
        rank = xs[0].rank
        axis = F.axis(a.get("axis", 1), rank)
        if axis == 0 or any(x.rank != rank for x in xs):
            self.fail("concatenates along the batch axis or activations of different ranks")
        perm = next((x.perm for x in xs if x.perm == canonical(rank)), xs[0].perm)
        xs = [self._relayout(x, perm) for x in xs]
        if any(x.shape[:axis] + x.shape[axis + 1:] != xs[0].shape[:axis] + xs[0].shape[axis + 1:] for x in xs):
            self.fail(f"input shapes {[list(x.shape) for x in xs][:4]} differ outside axis {axis}")
        if len(xs) == 1:
            return self._alias(xs[0])
        shape = list(xs[0].shape)
        shape[axis] = sum(x.shape[axis] for x in xs)
        phys = perm[axis]
        self._emit(L.Concat() if phys == rank - 1 else L.ConcatAxis(phys), xs, shape, perm)

    def _slice(self, x: Act, params) -> L.Slice:
        """A Slice layer from per-logical-axis (start, stop, step)."""
        if params[0] != (0, x.shape[0], 1):
            self.fail("slices the batch axis")
        phys = [None] * x.rank
        for i, p in enumerate(params):
            phys[x.perm[i]] = p
        return L.Slice(tuple(phys[1:]))

    def _op_Slice(self, v, a):
        x = self._act(self.node.input[0])
        params = F.slice_params(x.shape, *F.slice_inputs(v, a, self.opset))
        shape = tuple(len(range(*slice(*p).indices(d))) for p, d in zip(params, x.shape))
        if shape == x.shape and all(p[2] == 1 for p in params):
            return self._alias(x)
        self._emit(self._slice(x, params), [x], shape, x.perm)

    def _op_Split(self, v, a):
        x = self._act(self.node.input[0])
        axis = F.axis(a.get("axis", 0), x.rank)
        sizes = F.split_sizes(x.shape[axis], v, a, self.opset, len(self.node.output))
        start = 0
        for i, size in enumerate(sizes):
            params = [(0, d, 1) for d in x.shape]
            params[axis] = (start, start + size, 1)
            start += size
            shape = list(x.shape)
            shape[axis] = size
            if self.node.output[i]:
                self._emit(self._slice(x, params), [x], shape, x.perm, output=i)

    def _op_Pad(self, v, a):
        x = self._act(self.node.input[0])
        mode = a.get("mode", "constant")
        if mode not in ("constant", "reflect", "edge"):
            self.fail(f"pad mode {mode!r:.20} is not supported")
        if self.opset < 11:
            pads, value = list(a.get("pads", [])), float(a.get("value", 0.0))
        else:
            pads, value = F.ints(v[1] if len(v) > 1 else None, "pads"), self._scalar(2, 0.0)
        axes = F.ints(v[3], "axes") if len(v) > 3 and v[3] is not None else list(range(x.rank))
        axes = [F.axis(ax, x.rank) for ax in axes]
        if len(pads) != 2 * len(axes) or len(set(axes)) != len(axes):
            self.fail(f"pads {pads[:16]} do not fit axes {axes}")
        begin, end = [0] * x.rank, [0] * x.rank
        for i, ax in enumerate(axes):
            begin[ax], end[ax] = pads[i], pads[i + len(axes)]
        if begin[0] or end[0] or min(begin + end) < 0 or max(begin + end) > MAX_SIDE:
            self.fail(f"pads {pads[:16]}: only non-negative padding of non-batch axes is supported")
        if mode == "reflect" and any(b >= d or e >= d for b, e, d in zip(begin, end, x.shape)):
            self.fail("reflect padding wider than the input")
        shape = tuple(d + b + e for d, b, e in zip(x.shape, begin, end))
        if x.rank == 4 and mode == "constant" and begin[1] == end[1] == 0:
            x = self._relayout(x, canonical(4))
            return self._emit(L.Pad((begin[2], end[2], begin[3], end[3]), value), [x], shape)
        phys = [None] * x.rank
        for i in range(x.rank):
            phys[x.perm[i]] = (begin[i], end[i])
        self._emit(L.PadND(tuple(phys[1:]), mode, value), [x], shape, x.perm)
