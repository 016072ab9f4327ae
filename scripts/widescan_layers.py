"""Per-layer speed of wide-scan vs exact vs dense (reconstructed) lookups on a quantized model's PQ
layers with K > 16, one thread, interleaved, medians; and wide-scan's error relative to exact on
each layer's real input (the model's own activations of one photo-sized input).
Usage: python scripts/widescan_layers.py FILE.qcnn [REPEATS]   (QCNN_ISA=avx2 to cap the variants)"""
import statistics
import sys
import time

import numpy as np

from qcnn import kernels
from qcnn.pq import engine
from qcnn.pq.layer import PQLayer
from qcnn.pq.modelfile import load_model_file
from qcnn.threads import set_num_threads


def main(path: str, repeats: int = 15) -> None:
    set_num_threads(1)
    model, _ = load_model_file(path)
    graph = model.graph
    size = model.input_size
    x = np.random.default_rng(0).standard_normal((1, size, size, 3)).astype(np.float32)
    dense_graph = engine.with_kernel(graph, "reconstructed")
    inputs = {}
    pq_names = {n.name for n in graph if isinstance(n.layer, PQLayer)}
    env = {graph.input_name: x}
    for node in dense_graph:
        args = [env[i] for i in node.inputs]
        if node.name in pq_names:
            inputs[node.name] = args
        env[node.name] = node.layer(*args)
    print(f"{path}: isa {kernels.isa()}, {repeats} interleaved repeats, medians (ms)")
    print(f"{'layer':14s} {'setting':28s} {'dense':>8s} {'exact':>8s} {'wide':>8s} {'tables':>7s} {'looks':>7s} "
          f"{'d/wide':>7s} {'e/wide':>7s} {'maxrel':>8s} {'rmsrel':>8s}")
    for node in graph:
        layer = node.layer
        if not isinstance(layer, PQLayer) or layer.ksub <= 16:
            continue
        impls = {k: engine._retarget(layer, k) for k in ("reconstructed", "exact", "widescan")}
        args = inputs[node.name]
        times = {k: [] for k in impls}
        split = {"tables": [], "lookups": []}
        for k, l in impls.items():
            l(*args)
        for _ in range(repeats):
            for k, l in impls.items():
                if k == "widescan":
                    l.prepared().seconds.update(tables=0.0, lookups=0.0)
                t0 = time.perf_counter()
                l(*args)
                times[k].append(time.perf_counter() - t0)
                if k == "widescan":
                    for s in split:
                        split[s].append(l.prepared().seconds[s])
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        exact, wide = impls["exact"](*args), impls["widescan"](*args)
        scale = np.abs(exact).max()
        maxrel = np.abs(wide - exact).max() / scale
        rmsrel = np.sqrt(np.mean((wide - exact) ** 2)) / np.sqrt(np.mean(exact ** 2))
        print(f"{node.name:14s} {layer.describe()[-28:]:28s} {med['reconstructed']:8.3f} {med['exact']:8.3f} "
              f"{med['widescan']:8.3f} {statistics.median(split['tables'])*1e3:7.3f} "
              f"{statistics.median(split['lookups'])*1e3:7.3f} {med['reconstructed']/med['widescan']:6.2f}x "
              f"{med['exact']/med['widescan']:6.2f}x {maxrel:8.2e} {rmsrel:8.2e}")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
