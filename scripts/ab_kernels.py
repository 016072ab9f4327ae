"""Dense forward of a model with two builds of the C kernels, interleaved in one process: the
installed extension ("new") against another build's (the "old" .so given, e.g. built from another
checkout with `python qcnn/_build_kernels.py` there), swapped in as qcnn.kernels.lib between passes,
with onnxruntime fp32 timed in the same loop.  Both builds see the same inputs, caches and machine
noise, so their ratio is what a change bought; -v adds the per-layer medians of both.

    python scripts/ab_kernels.py OLD/qcnn/_kernels.cpython-311-x86_64-linux-gnu.so \\
        --model efficientnet-lite0 --isa avx2 --runs 100 -v

The layers look the library up at each call (kernels.lib); the prepared calls (PointwiseOp,
DepthwiseOp) hold pointers to their weights only, so swapping is safe between forward passes.
"""
from __future__ import annotations

import argparse
import collections
import importlib.machinery
import importlib.util
import time

import numpy as np

from qcnn import bench as B
from qcnn import kernels
from qcnn.models import load_model


def load_extension(path: str):
    loader = importlib.machinery.ExtensionFileLoader("other_build._kernels", path)
    spec = importlib.util.spec_from_loader("other_build._kernels", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module.lib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", help="the other build's _kernels*.so")
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--isa", default="avx2", choices=["scalar", "avx2", "avx512"])
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("-v", action="store_true", help="per-layer medians too")
    args = ap.parse_args()

    new_lib, old_lib = kernels.lib, load_extension(args.old)
    code = {"scalar": 0, "avx2": 1, "avx512": 2}[args.isa]
    for lib in (new_lib, old_lib):
        lib.qc_set_isa(code)
    model = load_model(args.model)
    graph = model.graph
    inputs = B.bench_inputs(model, B.default_images(), 16)
    ort = B.onnxruntime_engines(graph, (model.input_size,) * 2, inputs, int8=False)[0].get("onnxruntime fp32")

    def forward(lib, x, on_layer=None):
        kernels.lib = lib
        try:
            return graph.forward(x, on_layer=on_layer)
        finally:
            kernels.lib = new_lib

    for x in inputs[:3]:
        a, b = forward(old_lib, x), forward(new_lib, x)
        print(f"max |new - old| / max |old| = {float(np.abs(a - b).max() / np.abs(a).max()):.3g}")
    engines = [("old", lambda x: forward(old_lib, x)), ("new", lambda x: forward(new_lib, x))]
    if ort is not None:
        engines.append(("ort", ort))
    times = collections.defaultdict(list)
    layers = collections.defaultdict(lambda: collections.defaultdict(list))
    for i in range(args.runs):
        x = inputs[i % len(inputs)]
        for name, f in engines[i % len(engines):] + engines[:i % len(engines)]:   # rotate who goes first
            t0 = time.perf_counter()
            f(x)
            times[name].append(time.perf_counter() - t0)
        if args.v:
            for name, lib in (("old", old_lib), ("new", new_lib)):
                forward(lib, x, lambda node, s, name=name: layers[node.name][name].append(s))
    med = {name: float(np.median(t)) * 1e3 for name, t in times.items()}
    line = f"{args.model} {args.isa}: old {med['old']:.2f} ms, new {med['new']:.2f} ms, new/old {med['new'] / med['old']:.3f}"
    if "ort" in med:
        line += f"; onnxruntime fp32 {med['ort']:.2f} ms, old/ort {med['old'] / med['ort']:.3f}, new/ort {med['new'] / med['ort']:.3f}"
    print(line)
    if args.v:
        for node in graph:
            o, n = (float(np.median(layers[node.name][k])) * 1e3 for k in ("old", "new"))
            print(f"  {node.name:14s} {node.layer.describe():34s} old {o:.3f}  new {n:.3f}  {o / n:.2f}x")


if __name__ == "__main__":
    main()
