"""Export torchvision's classification CNNs with PyTorch's two ONNX exporters and keep weight-free
skeletons of the files for the tests (tests/data/onnx/, read by tests/onnx_zoo.py).

Needs PyTorch, which qcnn never depends on: run it in a throwaway venv, e.g.

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 onnx onnxscript
    /tmp/torchvenv/bin/python scripts/export_torchvision_onnx.py [--out tests/data/onnx] [--only resnet18 ...]

Two files per model, as users get them:
- `<name>.dynamo.onnx`: the default exporter (`dynamo=True`, opset 18) with `external_data=True`,
  so the weights live in `<name>.dynamo.onnx.data` beside the graph;
- `<name>.script.onnx`: the TorchScript exporter (`dynamo=False`, opset 13), one file, with a
  dynamic batch axis as its tutorials show.

A skeleton keeps the graph, every initializer's name, shape and type, and the external-data
references (file, offset, length) exactly as the exporter wrote them; float initializers of more
than SMALL elements lose their data (listed in the metadata entry `qcnn.stripped`), smaller ones
and all integer ones (shape arithmetic) are kept.  Per-node metadata (stack traces) and doc
strings are dropped; the file is gzipped.  The tests fill the stripped tensors with seeded random
weights, write them back where the exporter put them, and compare qcnn with onnxruntime.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import traceback
from pathlib import Path

import onnx
from onnx import TensorProto

SMALL = 64
# name -> (constructor keyword arguments, input side)
MODELS = {
    "alexnet": ({}, 224),
    "vgg11": ({}, 224),
    "resnet18": ({}, 224),
    "resnext50_32x4d": ({}, 224),
    "squeezenet1_1": ({}, 224),
    "densenet121": ({}, 224),
    "googlenet": ({"aux_logits": False, "init_weights": True}, 224),
    "inception_v3": ({"aux_logits": False, "init_weights": True}, 299),
    "mobilenet_v2": ({}, 224),
    "mobilenet_v3_small": ({}, 224),
    "mnasnet0_5": ({}, 224),
    "shufflenet_v2_x0_5": ({}, 224),
    "efficientnet_b0": ({}, 224),
    "efficientnet_v2_s": ({}, 224),
    "regnet_y_400mf": ({}, 224),
    "convnext_tiny": ({}, 224),
}


def export(name: str, folder: Path, mode: str) -> Path:
    import torch
    import torchvision

    kwargs, side = MODELS[name]
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, **kwargs).eval()
    x = torch.randn(1, 3, side, side)
    path = folder / f"{name}.{mode}.onnx"
    with torch.no_grad():
        if mode == "dynamo":
            torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=18, external_data=True,
                              input_names=["input"], output_names=["logits"])
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=13, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return path


def skeleton(path: Path) -> onnx.ModelProto:
    """The exported model without its large float data (external references kept as written)."""
    model = onnx.load(str(path), load_external_data=False)
    stripped = []
    for t in model.graph.initializer:
        count = 1
        for d in t.dims:
            count *= d
        if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE) and count > SMALL:
            stripped.append(t.name)
            if t.data_location != TensorProto.EXTERNAL:
                t.ClearField("raw_data")
                t.ClearField("float_data")
                t.ClearField("double_data")
                t.ClearField("int32_data")
        elif t.data_location == TensorProto.EXTERNAL:   # small tensors keep their values, inline
            data = onnx.numpy_helper.to_array(t, base_dir=str(path.parent))
            t.CopyFrom(onnx.numpy_helper.from_array(data, t.name))
    for node in model.graph.node:
        node.ClearField("metadata_props")
        node.doc_string = ""
    for f in model.functions:
        for node in f.node:
            node.ClearField("metadata_props")
    model.graph.doc_string = ""
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = "qcnn.stripped", json.dumps(stripped)
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests/data/onnx")
    parser.add_argument("--only", nargs="*", default=sorted(MODELS))
    parser.add_argument("--modes", nargs="*", default=["dynamo", "script"])
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = {}
    for name in args.only:
        for mode in args.modes:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    path = export(name, Path(tmp), mode)
                    model = skeleton(path)
                except Exception as exc:   # the exporter's own failure: recorded, not ours to fix
                    failed[f"{name}.{mode}"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                    traceback.print_exc()
                    continue
            target = args.out / f"{name}.{mode}.onnx.gz"
            target.write_bytes(gzip.compress(model.SerializeToString(), 9, mtime=0))
            print(f"{target.name}: {target.stat().st_size} bytes", flush=True)
    # What the exporters refused, kept across partial runs (--only) so the tests can say so.
    record = args.out / "export-failures.json"
    known = json.loads(record.read_text()) if record.exists() else {}
    known = {k: v for k, v in known.items() if k.split(".")[0] not in args.only or k.split(".")[1] not in args.modes}
    record.write_text(json.dumps({**known, **failed}, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
