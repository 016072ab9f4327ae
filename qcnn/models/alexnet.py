"""AlexNet (Caffe bvlc_alexnet architecture) with seeded random weights: the network of the paper's
speed test.  Its labels are meaningless; everything that shows it says "speed test only"."""
from __future__ import annotations

import numpy as np

from ..graph import Graph, Node
from ..layers import LRN, Conv2D, Dense, Flatten, Pool2D
from ..labels import imagenet_labels
from ..preprocess import Preprocess
from . import Model

SPEED_TEST_NOTE = "speed test only (random weights)"
# Caffe: BGR, 0..255 minus the ImageNet mean, 256x256 warp then a 227 centre crop.
PREPROCESS = Preprocess(resize=256, crop=227, mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0),
                        channel_order="BGR", resample="bilinear", warp=True)
# name, kernel, C_in/group, C_out, stride, pad, groups
CONVS = (("conv1", 11, 3, 96, 4, 0, 1), ("conv2", 5, 48, 256, 1, 2, 2), ("conv3", 3, 256, 384, 1, 1, 1),
         ("conv4", 3, 192, 384, 1, 1, 2), ("conv5", 3, 192, 256, 1, 1, 2))
FCS = (("fc6", 9216, 4096), ("fc7", 4096, 4096), ("fc8", 4096, 1000))


def alexnet_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """He-scaled Gaussian weights, so activations stay near unit scale through the network
    (conv1 also absorbs the 0..255 input range) and the logits give a non-degenerate softmax."""
    rng = np.random.default_rng(seed)
    w = {}
    gain = {"conv1": 1 / 64}
    for name, k, cin, cout, *_ in CONVS:
        std = np.sqrt(2 / (k * k * cin)) * gain.get(name, 1.0)
        w[name + ".weight"] = (rng.standard_normal((k, k, cin, cout), np.float32) * std).astype(np.float32)
        w[name + ".bias"] = np.full(cout, 0.01, np.float32)
    for name, cin, cout in FCS:
        std = np.sqrt(2 / cin) * gain.get(name, 1.0)
        w[name + ".weight"] = (rng.standard_normal((cin, cout), np.float32) * std).astype(np.float32)
        w[name + ".bias"] = np.zeros(cout, np.float32)
    return w


def build_graph(w: dict[str, np.ndarray]) -> Graph:
    nodes, x = [], "input"

    def add(name, layer):
        nonlocal x
        nodes.append(Node(name, layer, (x,)))
        x = name

    for name, k, cin, cout, stride, pad, groups in CONVS:
        add(name, Conv2D(w[name + ".weight"], w[name + ".bias"], (stride, stride), (pad,) * 4, groups, "relu"))
        if name in ("conv1", "conv2"):
            add(name.replace("conv", "norm"), LRN(5, 1e-4, 0.75, 1.0))
        if name in ("conv1", "conv2", "conv5"):
            add(name.replace("conv", "pool"), Pool2D("max", (3, 3), (2, 2), ceil_mode=True))
    add("flatten", Flatten())
    for name, *_ in FCS:
        add(name, Dense(w[name + ".weight"], w[name + ".bias"], None if name == "fc8" else "relu"))
    return Graph(nodes)


def alexnet(seed: int = 0) -> Model:
    return Model(name="alexnet", graph=build_graph(alexnet_weights(seed)), preprocess=PREPROCESS,
                 labels=imagenet_labels(), description=f"AlexNet (Caffe bvlc_alexnet architecture), {SPEED_TEST_NOTE}",
                 speed_test_only=True, identity={"name": "alexnet", "seed": seed})
