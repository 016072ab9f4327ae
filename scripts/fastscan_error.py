"""Fast-scan's error against the exact lookups on real layer inputs, with and without the rounding
correction of qc_fs_tables_u8 (pq_fastscan.c): EfficientNet-Lite0 1x1 layers quantized at C_s' = 1,
K = 16 and AlexNet's conv2-5 at C_s' = 4, K = 16 (k-means only), on the activations of a bundled
photo.  Errors are relative to the exact output: max |err| / max |y| and RMS(err) / RMS(y).

    python scripts/fastscan_error.py [--photo assets/samples/coffee.jpg] [--isa avx2]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from qcnn import kernels  # noqa: E402
from qcnn.imageio import load_image  # noqa: E402
from qcnn.models import load_model  # noqa: E402
from qcnn.pq import kernels as K  # noqa: E402
from qcnn.pq.layer import PQSetting  # noqa: E402
from qcnn.pq.quantize import quantize_layer  # noqa: E402

LAYERS = {"efficientnet-lite0": (["b2.project", "b5.project", "b11.expand", "b15.project", "head"], PQSetting(1, 16)),
          "alexnet": (["conv2", "conv3", "conv5", "fc6"], PQSetting(4, 16))}


def errors(y: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    e = y - exact
    return float(np.abs(e).max() / np.abs(exact).max()), float(np.sqrt(np.mean(e ** 2)) / np.sqrt(np.mean(exact ** 2)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photo", default="assets/samples/coffee.jpg")
    ap.add_argument("--isa", default=None)
    args = ap.parse_args(argv)
    if args.isa:
        kernels.set_isa(args.isa)
    print(f"SIMD variant {kernels.isa()}; photo {args.photo}")
    print(f"{'model':<19} {'layer':<12} {'M':>5} {'cout':>5}   {'before max':>10} {'rms':>7}   {'after max':>9} {'rms':>7}")
    for name, (layers, setting) in LAYERS.items():
        model = load_model(name)
        x = model.preprocess(load_image(args.photo))
        for layer_name in layers:
            node = model.graph[layer_name]
            inp = model.graph.forward(x, until=node.inputs[0])
            dense = node.layer
            pq = quantize_layer(dense, setting, error_correction=False)
            pq = dataclasses.replace(pq, activation=None)       # compare before the activation
            exact = K.PreparedPQ(pq, "exact")(inp)
            out = []
            for debias in (False, True):
                prepared = K.PreparedPQ(pq, "fastscan")
                prepared.debias = debias
                out += errors(prepared(inp), exact)
            print(f"{name:<19} {layer_name:<12} {pq.M:>5} {pq.out_channels:>5}   {out[0]:10.4f} {out[1]:7.4f}   "
                  f"{out[2]:9.4f} {out[3]:7.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
