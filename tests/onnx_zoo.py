"""torchvision's CNNs as PyTorch's exporters wrote them, from the weight-free skeletons in
tests/data/onnx/ (made by scripts/export_torchvision_onnx.py), filled with seeded random weights.

`materialise(name, mode, folder)` writes the model back as the exporter laid it out: for the dynamo
exporter the graph plus `<file>.data` at the exporter's own offsets, for the TorchScript exporter a
single file.  Weights are drawn per role so activations stay O(1) through a hundred layers: He
scaling for conv / matrix weights (fan-in from the consuming node), batch-norm statistics near
(0, 1), small biases.
"""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

DATA = Path(__file__).resolve().parent / "data" / "onnx"


def available() -> list[tuple[str, str]]:
    return sorted(tuple(p.name[:-len(".onnx.gz")].rsplit(".", 1)) for p in DATA.glob("*.onnx.gz"))


def export_failures() -> dict[str, str]:
    path = DATA / "export-failures.json"
    return json.loads(path.read_text()) if path.exists() else {}


def skeleton(name: str, mode: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.ParseFromString(gzip.decompress((DATA / f"{name}.{mode}.onnx.gz").read_bytes()))
    return model


def _roles(graph) -> dict[str, tuple[str, int, object]]:
    """initializer name -> (op type, input index, node) of its first reader, or of a batch norm
    reading it as variance or scale (the TorchScript exporter shares identical initializers, so
    one tensor may be a mean here and a variance there: it must stay positive)."""
    roles = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if node.op_type == "BatchNormalization" and i in (1, 4):
                roles[name] = (node.op_type, 4, node)
            roles.setdefault(name, (node.op_type, i, node))
    return roles


def _fill(t: TensorProto, role, rng) -> np.ndarray:
    shape = tuple(t.dims)
    op, index, node = role if role else ("", 0, None)
    n = math.prod(shape)
    if op == "BatchNormalization":
        if index == 1:
            v = rng.uniform(0.5, 1.5, n)
        elif index == 4:
            v = rng.uniform(0.5, 2.0, n)
        else:
            v = rng.normal(0, 0.1, n)
    elif op == "LayerNormalization":
        v = rng.uniform(0.5, 1.5, n) if index == 1 else rng.normal(0, 0.1, n)
    elif len(shape) >= 2 and op in ("Conv", "Gemm", "MatMul", "Transpose"):
        if op == "Conv":
            fan_in = math.prod(shape[1:])
        elif op == "Gemm":
            trans = any(a.name == "transB" and a.i for a in node.attribute)
            fan_in = shape[1] if trans else shape[0]
        elif op == "Transpose":        # a weight transposed before its MatMul: (out, in)
            fan_in = shape[-1]
        else:
            fan_in = shape[0]
        v = rng.standard_normal(n, dtype=np.float32) * np.float32(math.sqrt(2.0 / fan_in))
    elif op == "Mul" and len(shape) >= 1:      # layer scale (ConvNeXt)
        v = rng.uniform(0.5, 1.5, n)
    else:                                      # biases and the like
        v = rng.normal(0, 0.1, n)
    dtype = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64}[t.data_type]
    return v.astype(dtype).reshape(shape)


def _calibrate(model: onnx.ModelProto, arrays: dict[str, np.ndarray], rounds: int = 2) -> None:
    """Data-dependent initialisation: on a random image (onnxruntime, a few rounds, as each changes
    what the later layers see) scale every convolution's weights and bias so its output varies as
    much as its input (unit gain), and set each batch norm's running mean and variance to its
    input's statistics.  Random weights otherwise let deep networks' activations grow a
    million-fold (both exporters fold batch norms into the convolutions), where float rounding
    alone would separate two correct engines."""
    import onnxruntime as ort
    counts: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            counts[name] = counts.get(name, 0) + 1

    kept = {t.name: t for t in model.graph.initializer if t.name not in arrays}

    def own(name):
        if name in kept and counts[name] == 1 and kept[name].data_type == TensorProto.FLOAT:
            arrays[name] = numpy_helper.to_array(kept.pop(name)).copy()   # a small bias, kept in the skeleton
        return name in arrays and counts[name] == 1

    convs = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and own(n.input[1])]
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization" and own(n.input[3]) and own(n.input[4])]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[1:]
    for n in convs:
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(n.input[0]))
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(n.output[0]))
    for n in bns:
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(n.input[0]))
    dims = [d.dim_value or 1 for d in probe.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(7).standard_normal(dims).astype(np.float32)
    for _ in range(rounds):
        for t in probe.graph.initializer:
            if t.name in arrays:
                del t.external_data[:]
                t.data_location = TensorProto.DEFAULT
                t.raw_data = arrays[t.name].tobytes()
        sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        outs = sess.run(None, {sess.get_inputs()[0].name: x})[1:]
        for i, n in enumerate(convs):
            gain = float(outs[2 * i + 1].std()) / max(float(outs[2 * i].std()), 1e-12)
            if math.isfinite(gain) and gain > 0:
                for name in n.input[1:3]:
                    if name and own(name):   # a bias shared by several convs (deduplicated) stays
                        arrays[name] = (arrays[name] / gain).astype(arrays[name].dtype)
        for n, y in zip(bns, outs[2 * len(convs):]):
            axes = tuple(i for i in range(y.ndim) if i != 1)
            arrays[n.input[3]] = y.mean(axis=axes).astype(arrays[n.input[3]].dtype)
            arrays[n.input[4]] = (y.var(axis=axes) + 1e-3).astype(arrays[n.input[4]].dtype)


def materialise(name: str, mode: str, folder: Path, seed: int = 0) -> Path:
    """Write the filled model into `folder`; returns the .onnx path."""
    model = skeleton(name, mode)
    stripped = set(json.loads(next(p.value for p in model.metadata_props if p.key == "qcnn.stripped")))
    roles = _roles(model.graph)
    rng = np.random.default_rng(seed)
    arrays = {t.name: _fill(t, roles.get(t.name), rng) for t in model.graph.initializer if t.name in stripped}
    if sum(n.op_type == "Conv" for n in model.graph.node) > 12:   # He scaling suffices for AlexNet and VGG
        _calibrate(model, arrays)
    files: dict[str, list] = {}
    for t in model.graph.initializer:
        if t.name not in arrays:
            continue
        if t.data_location == TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            files.setdefault(info["location"], []).append((int(info.get("offset", 0)), arrays[t.name]))
        else:
            t.ClearField("float_data")
            t.raw_data = arrays[t.name].tobytes()
    path = folder / f"{name}.{mode}.onnx"
    path.write_bytes(model.SerializeToString())
    for location, pieces in files.items():
        buf = np.zeros(max(off + a.nbytes for off, a in pieces), np.uint8)
        for off, a in pieces:
            buf[off:off + a.nbytes] = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        buf.tofile(folder / location)
    return path


def ort_session(path: Path, threads: int = 1):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
