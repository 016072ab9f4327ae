"""Fast-scan table build and lookup times per layer shape, per SIMD variant: the median of
--repeats calls of PreparedPQ(layer, "fastscan") on random codebooks of real layer shapes
(AlexNet fast4 and fast4-conv1, ResNet-18 at C_s' = 2, EfficientNet-Lite0 at C_s' = 1, K = 16).  Prints JSON lines, one per (isa,
layer), so that two builds can be run alternately and compared:

    PYTHONPATH=OTHER_CHECKOUT python scripts/fastscan_speed.py --isa avx2
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from qcnn import kernels
from qcnn.pq import kernels as K
from qcnn.pq.layer import PQLayer

# name: kind, C_in, C_out, kernel, pads, C_s', input side
SHAPES = {
    "alexnet.conv2": ("conv", 96, 256, 5, (2, 2, 2, 2), 4, 27),
    "alexnet.conv3": ("conv", 256, 384, 3, (1, 1, 1, 1), 4, 13),
    "alexnet.conv4": ("conv", 384, 384, 3, (1, 1, 1, 1), 4, 13),
    "alexnet.fc6": ("fc", 9216, 4096, 1, (0, 0, 0, 0), 4, 1),
    "alexnet.conv1-taps": ("conv", 363, 96, 1, (0, 0, 0, 0), 33, 55),   # fast4-conv1: 11x11x3 windows
    "resnet18.layer1": ("conv", 64, 64, 3, (1, 1, 1, 1), 2, 56),
    "resnet18.layer2": ("conv", 128, 128, 3, (1, 1, 1, 1), 2, 28),
    "resnet18.layer3": ("conv", 256, 256, 3, (1, 1, 1, 1), 2, 14),
    "resnet18.layer4": ("conv", 512, 512, 3, (1, 1, 1, 1), 2, 7),
    "lite0.b5.project": ("conv", 240, 80, 1, (0, 0, 0, 0), 1, 28),
    "lite0.b15.project": ("conv", 1152, 320, 1, (0, 0, 0, 0), 1, 7),
    "lite0.head": ("conv", 320, 1280, 1, (0, 0, 0, 0), 1, 7),
}


def layer_of(kind, cin, cout, k, pads, dsub, seed=0):
    rng = np.random.default_rng(seed)
    m = -(-cin // dsub)
    cb = rng.standard_normal((1, m, 16, dsub)).astype(np.float32)
    codes = rng.integers(0, 16, (k, k, m, cout)).astype(np.uint8)
    return PQLayer(kind, cb, codes, cin, rng.standard_normal(cout).astype(np.float32), (1, 1), pads, 1, None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--isa", required=True)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--only", nargs="*", help="layer names (default: all)")
    args = ap.parse_args(argv)
    isa = kernels.set_isa(args.isa)
    for name, (kind, cin, cout, k, pads, dsub, side) in SHAPES.items():
        if args.only and name not in args.only:
            continue
        prepared = K.PreparedPQ(layer_of(kind, cin, cout, k, pads, dsub), "fastscan")
        x = np.random.default_rng(1).standard_normal((1, side, side, cin)).astype(np.float32)
        x = x.reshape(1, -1) if kind == "fc" else x
        prepared(x)
        tables, lookups = [], []
        for _ in range(args.repeats):
            prepared.seconds = {"tables": 0.0, "lookups": 0.0}
            prepared(x)
            tables.append(prepared.seconds["tables"])
            lookups.append(prepared.seconds["lookups"])
        print(json.dumps({"isa": isa, "layer": name, "tables_ms": float(np.median(tables)) * 1e3,
                          "lookups_ms": float(np.median(lookups)) * 1e3}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
