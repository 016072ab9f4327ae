"""Per-layer speed of wide-scan vs exact vs dense (reconstructed weights) on a quantized model's PQ
layers with K > 16, one thread, interleaved, medians; and wide-scan's error against the exact
lookups on each layer's real input (the activations of a bundled photo), with and without the
rounding correction of the uint8 tables (qc_u8_debiased_offset, pq_fastscan.c).  Errors are
relative RMS(err) / RMS(exact), before the activation, bias included.

    python scripts/widescan_layers.py FILE.qcnn [--repeats 15] [--photo assets/samples/coffee.jpg] [--isa avx2]
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from qcnn import kernels  # noqa: E402
from qcnn.imageio import load_image  # noqa: E402
from qcnn.pq import engine  # noqa: E402
from qcnn.pq.layer import PQLayer  # noqa: E402
from qcnn.pq.modelfile import load_model_file  # noqa: E402
from qcnn.pq.widescan import PreparedWide, widescan_supported  # noqa: E402
from qcnn.threads import set_num_threads  # noqa: E402


def layer_inputs(model, x: np.ndarray) -> dict[str, list[np.ndarray]]:
    """Each PQ layer's inputs when the network, weights reconstructed, runs x."""
    graph = engine.with_kernel(model.graph, "reconstructed")
    pq_names = {n.name for n in model.graph if isinstance(n.layer, PQLayer)}
    env, inputs = {graph.input_name: x}, {}
    for node in graph:
        args = [env[i] for i in node.inputs]
        if node.name in pq_names:
            inputs[node.name] = args
        env[node.name] = node.layer(*args)
    return inputs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--photo", default="assets/samples/coffee.jpg")
    ap.add_argument("--isa", default=None)
    args = ap.parse_args(argv)
    set_num_threads(1)
    if args.isa:
        kernels.set_isa(args.isa)
    model, _ = load_model_file(args.model)
    x = model.preprocess(load_image(args.photo))
    inputs = layer_inputs(model, x)
    print(f"{args.model}: isa {kernels.isa()}, photo {args.photo}, {args.repeats} interleaved repeats, medians (ms)")
    print(f"{'layer':10s} {'M':>5s} {'K':>4s} {'cout':>5s} {'dense':>8s} {'exact':>8s} {'wide':>8s} {'tables':>7s} "
          f"{'looks':>7s} {'d/wide':>7s} {'e/wide':>7s}   {'rms raw':>8s} {'rms corr':>8s}")
    for node in model.graph:
        layer = node.layer
        if not isinstance(layer, PQLayer) or not widescan_supported(layer):
            continue
        impls = {k: engine._retarget(layer, k) for k in ("reconstructed", "exact", "widescan")}
        a = inputs[node.name]
        times = {k: [] for k in impls}
        split = {"tables": [], "lookups": []}
        for lay in impls.values():
            lay(*a)
        for _ in range(args.repeats):
            for k, lay in impls.items():
                if k == "widescan":
                    lay.prepared().seconds.update(tables=0.0, lookups=0.0)
                t0 = time.perf_counter()
                lay(*a)
                times[k].append(time.perf_counter() - t0)
                if k == "widescan":
                    for s in split:
                        split[s].append(lay.prepared().seconds[s])
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        plain = dataclasses.replace(layer, activation=None)       # compare before the activation
        exact = engine._retarget(plain, "exact")(*a)
        errs = []
        for debias in (False, True):
            wide = PreparedWide(plain)
            wide.debias = debias
            errs.append(engine.relative_error(wide(*a), exact))
        print(f"{node.name:10s} {layer.M:5d} {layer.ksub:4d} {layer.out_channels:5d} {med['reconstructed']:8.3f} "
              f"{med['exact']:8.3f} {med['widescan']:8.3f} {statistics.median(split['tables']) * 1e3:7.3f} "
              f"{statistics.median(split['lookups']) * 1e3:7.3f} {med['reconstructed'] / med['widescan']:6.2f}x "
              f"{med['exact'] / med['widescan']:6.2f}x   {errs[0] * 100:7.2f}% {errs[1] * 100:7.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
