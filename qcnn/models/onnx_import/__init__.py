"""ONNX classifier -> our NHWC Graph and Model.

Reads what today's exporters write (PyTorch's dynamo and TorchScript exporters, tf2onnx, the ONNX
Model Zoo): opsets 7-21, constant folding of shape arithmetic and weight transposes, weights in
external data files, the operators of torchvision's and the zoo's classification CNNs.  Files are
untrusted: every problem -- not protobuf, truncated, hostile external data references, undefined
tensors, cycles, wrong or absurd shapes, unsupported operators -- becomes an OnnxImportError that
names the file and the reason (and the node and operator when one is to blame).

Parts: `tensors` (inline and external data, safely), `folding` (constants), `layout` (ONNX axes
vs the engine's NHWC arrays), `converter` (the operators), `fuse` (rewrites after conversion).
A model comes with class labels (`labels.txt` beside it, ImageNet's for 1000 outputs) and a
preprocessing preset guessed from the graph (qcnn.preprocess.PRESETS; `preprocess=` overrides it).
"""
from __future__ import annotations

import hashlib
import math
import os
import stat
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from ...graph import Graph
from ...labels import imagenet_labels
from ...preprocess import PRESETS, preset
from .. import Model
from .common import MAX_FILE_BYTES, OnnxImportError, errors_as, quote
from .converter import Converter
from .tensors import TensorReader

__all__ = ["OnnxImportError", "load_onnx", "graph_from_onnx", "guess_preprocess", "read_labels"]
MAX_LABELS_BYTES = 1 << 20


def load_onnx(path, preprocess: str | None = None, labels: str | os.PathLike | None = None) -> Model:
    """The model in an .onnx file.  `preprocess`: a preset name (default: guessed from the graph);
    `labels`: a text file with one class name per line (default: labels.txt beside the model, else
    ImageNet's names for 1000 classes, else "class i")."""
    path = Path(path)
    with errors_as(f"{path.name}: "):
        data = _read(path, MAX_FILE_BYTES, "model")
        proto = _parse(data)
        graph, (c, h, w), out_shape, converter = _convert(proto, path.parent)
        if sum(d != 1 for d in out_shape[1:]) > 1:
            raise OnnxImportError(f"output shape {list(out_shape)} is not a vector of class scores")
        classes = math.prod(out_shape[1:])
        if c != 3:
            raise OnnxImportError(f"input has {c} channels; photos give 3 (RGB)")
        if h != w:
            raise OnnxImportError(f"input is {h}x{w}; only square inputs are supported")
        names, label_source = _labels(path, labels, classes)
        if preprocess is None:
            preprocess, why = guess_preprocess(proto, converter.input_layout, path.name)
            how = f"{preprocess}, guessed: {why}"
        elif preprocess not in PRESETS:
            raise OnnxImportError(f"unknown preprocessing {preprocess!r}: use one of {', '.join(PRESETS)}")
        else:
            how = f"{preprocess}, as chosen"
        return Model(name=path.stem, graph=graph, preprocess=preset(preprocess, h), labels=names,
                     description=f"ONNX model {path.name} ({len(graph.nodes)} layers, {h}x{w} input, "
                                 f"{classes} classes, labels: {label_source}; preprocessing {how})",
                     identity={"name": path.stem, "sha256": hashlib.sha256(data).hexdigest()})


def graph_from_onnx(model: onnx.ModelProto | bytes, folder: str | os.PathLike | None = None) -> Graph:
    """The graph alone (its output in the engine's layout: 4-D as NHWC); external data files are
    looked up in `folder` (refused without one)."""
    with errors_as(""):
        proto = _parse(model) if isinstance(model, bytes) else model
        return _convert(proto, None if folder is None else Path(folder))[0]


def _convert(proto, folder):
    converter = Converter(proto, TensorReader(folder))
    graph, chw, out_shape = converter.convert()
    return graph, chw, out_shape, converter


def _read(path: Path, limit: int, what: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))   # a FIFO must not block the open
    except OSError as exc:
        raise OnnxImportError(f"cannot read {what} file ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise OnnxImportError(f"{what} file {quote(path.name)} is not a regular file")
        if st.st_size > limit:
            raise OnnxImportError(f"{what} file is {st.st_size} bytes, more than {limit}")
        data = f.read(limit + 1)
    if not data:
        raise OnnxImportError(f"{what} file is empty")
    return data


def _parse(data: bytes) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)   # never onnx.load: it would follow external-data paths
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise OnnxImportError(f"not an ONNX model (protobuf decoding failed: {exc})") from None
    return proto


def read_labels(path: str | os.PathLike, classes: int) -> tuple[str, ...]:
    """Class names from a text file, one per line; the count must match the model's outputs."""
    path = Path(path)
    text = _read(path, MAX_LABELS_BYTES, "labels").decode("utf-8", "replace")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != classes:
        raise OnnxImportError(f"labels file {quote(path.name)} has {len(names)} names for {classes} classes")
    return names


def _labels(path: Path, chosen, classes: int):
    if chosen is not None:
        return read_labels(chosen, classes), Path(chosen).name
    beside = path.parent / "labels.txt"
    if beside.is_file():
        return read_labels(beside, classes), "labels.txt beside the model"
    if classes == 1000:
        return imagenet_labels(), "ImageNet"
    if classes == 1001:   # TensorFlow's classifiers: class 0 is "background"
        return ("background", *imagenet_labels()), "ImageNet with background"
    return tuple(f"class {i}" for i in range(classes)), "none (numbered)"


def guess_preprocess(proto: onnx.ModelProto, input_layout: str = "NCHW", filename: str = "") -> tuple[str, str]:
    """(preset name, why) from what the file says about its origin."""
    producer = (proto.producer_name or "").lower()
    ops = {n.op_type for n in proto.graph.node}
    name = f"{proto.graph.name or ''} {filename}".lower()
    if "lite" in name:
        return "lite", "named like EfficientNet-Lite / TF-Lite models"
    if "tf2onnx" in producer or "keras" in producer or input_layout == "NHWC":
        return "tf", "TensorFlow model (tf2onnx / NHWC input)"
    if "caffe" in producer or "LRN" in ops and "pytorch" not in producer:
        return "caffe", "Caffe-era model (LRN, or converted from Caffe)"
    if "pytorch" in producer:
        return "torchvision", "exported by PyTorch"
    return "torchvision", "the most common convention"
