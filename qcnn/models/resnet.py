"""ImageNet ResNet-18 and ResNet-50 (torchvision architecture) from the compressed weights of
Stock et al., "And the Bit Goes Down" (ICLR 2020), shipped in assets/models/kill-the-bits/.

Their file stores every conv layer but the first, and the FC layer, product-quantized: one shared
codebook (`centroids`, K x block, float16) per layer and one code per block (`assignments`).  In
their unrolled weight matrix, (C_in * k * k) rows by C_out columns, a block is `block` consecutive
rows of one column, i.e. consecutive (input channel, kernel row, kernel column) values of one
output channel: a 3x3 block of 9 is one input channel's kernel, 18 is two channels, 1x1 and FC
blocks are 4 or 8 consecutive input channels.  Assignments run block-major: code
`b * C_out + o` is block b of output channel o.  The batch norms store only weight and bias
(running statistics at their defaults, mean 0 and variance 1; eps 1e-5).

We rebuild every dense weight in float32 from its codebook and codes, check every shape against
the architecture, fold the batch norms into the convolutions and cache the result
(qcnn.models.weights_cache); torchvision's preprocessing.  The rebuilt dense network is what the
dense engine runs and what our own product quantizer starts from.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..graph import Graph, Node
from ..labels import imagenet_labels
from ..layers import Activation, Add, Affine, Conv2D, Dense, Flatten, GlobalAvgPool, Pool2D, fold_batch_norm
from ..paths import ASSETS
from ..pq.layer import PQLayer
from ..preprocess import Preprocess
from . import Model
from .torch_pickle import CheckpointError, load_legacy_state_dict
from .weights_cache import cached_conversion

WEIGHTS_DIR = ASSETS / "models" / "kill-the-bits"
BN_EPS = 1e-5
CONVERTER_VERSION = 1      # of convert()'s output: bump when it changes
MAX_FILE_BYTES = 64 << 20  # the shipped files are 1.7 and 3.6 MB
# torchvision: resize the short side to 256 (bilinear), centre crop 224, ImageNet mean / std.
PREPROCESS = Preprocess(resize=256, crop=224, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375),
                        resample="bilinear")


@dataclass(frozen=True)
class Arch:
    name: str
    file: str
    bottleneck: bool
    blocks: tuple[int, int, int, int]
    title: str

    @property
    def expansion(self) -> int:
        return 4 if self.bottleneck else 1


ARCHS = {
    "resnet18": Arch("resnet18", "resnet18_small_blocks.pth", False, (2, 2, 2, 2),
                     "ResNet-18, ImageNet-1k (Stock et al. 2020 compressed weights, small blocks)"),
    "resnet50": Arch("resnet50", "resnet50_large_blocks.pth", True, (3, 4, 6, 3),
                     "ResNet-50, ImageNet-1k (Stock et al. 2020 compressed weights, large blocks)"),
}


@dataclass(frozen=True)
class ConvSpec:
    """One convolution of the architecture: its name, shape, stride, its batch norm and whether a
    ReLU follows it directly."""
    name: str
    c_out: int
    c_in: int
    k: int
    stride: int
    bn: str
    relu: bool


def blocks(arch: Arch):
    """(block name, its convolutions, downsample conv or None) in network order."""
    inplanes = 64
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), arch.blocks), 1):
        for i in range(count):
            p = f"layer{stage}.{i}"
            stride = 2 if (i == 0 and stage > 1) else 1
            out = planes * arch.expansion
            if arch.bottleneck:
                convs = [ConvSpec(f"{p}.conv1", planes, inplanes, 1, 1, f"{p}.bn1", True),
                         ConvSpec(f"{p}.conv2", planes, planes, 3, stride, f"{p}.bn2", True),
                         ConvSpec(f"{p}.conv3", out, planes, 1, 1, f"{p}.bn3", False)]
            else:
                convs = [ConvSpec(f"{p}.conv1", planes, inplanes, 3, stride, f"{p}.bn1", True),
                         ConvSpec(f"{p}.conv2", out, planes, 3, 1, f"{p}.bn2", False)]
            down = (ConvSpec(f"{p}.downsample", out, inplanes, 1, stride, f"{p}.downsample.1", False)
                    if stride != 1 or inplanes != out else None)
            yield p, convs, down
            inplanes = out


def compressed_layers(arch: Arch) -> dict[str, tuple[int, int, int]]:
    """File key -> (C_out, C_in, k) of every layer stored as codebook + codes."""
    out = {}
    for _, convs, down in blocks(arch):
        for c in convs + ([down] if down else []):
            key = f"{c.name}.0" if c is down else c.name
            out[key] = (c.c_out, c.c_in, c.k)
    out["fc"] = (1000, 512 * arch.expansion, 1)
    return out


def batch_norms(arch: Arch) -> dict[str, int]:
    out = {"bn1": 64}
    for _, convs, down in blocks(arch):
        out.update({c.bn: c.c_out for c in convs + ([down] if down else [])})
    return out


# -- reading and checking the file -------------------------------------------------------------------
def _array(entry, key, what, kinds, shape=None) -> np.ndarray:
    v = entry.get(key) if isinstance(entry, dict) else None
    if not isinstance(v, np.ndarray) or v.dtype.kind not in kinds:
        raise ValueError(f"{what}: '{key}' is not a tensor of the expected type")
    if shape is not None and v.shape != shape:
        raise ValueError(f"{what}: '{key}' has shape {v.shape}, expected {shape}")
    if v.dtype.kind == "f" and not np.isfinite(v).all():
        raise ValueError(f"{what}: '{key}' holds non-finite values")
    return v


def decode_layer(entry: dict, name: str, c_out: int, c_in: int, k: int, is_conv: bool = True) -> np.ndarray:
    """The dense weight (C_out, C_in, k, k), or (C_out, C_in) for the FC layer, float32."""
    centroids = _array(entry, "centroids", name, "f")
    assignments = _array(entry, "assignments", name, "iu")
    n_blocks = entry.get("n_blocks")
    if centroids.ndim != 2 or centroids.shape[0] < 1:
        raise ValueError(f"{name}: centroids have shape {centroids.shape}, expected (K, block size)")
    block = centroids.shape[1]
    if entry.get("k") != k or entry.get("is_conv") is not is_conv:
        raise ValueError(f"{name}: stored kernel size/kind ({entry.get('k')}, is_conv={entry.get('is_conv')}) "
                         f"differ from the architecture's ({k}, is_conv={is_conv})")
    if type(n_blocks) is not int or n_blocks * block != c_in * k * k:
        raise ValueError(f"{name}: {n_blocks} blocks of {block} do not make {c_in} input channels "
                         f"x {k}x{k} of the architecture")
    if assignments.shape != (n_blocks * c_out,):
        raise ValueError(f"{name}: {assignments.shape[0] if assignments.ndim == 1 else assignments.shape} "
                         f"assignments, expected {n_blocks} blocks x {c_out} output channels")
    codes = assignments.astype(np.int64)
    if codes.size and (codes.min() < 0 or codes.max() >= len(centroids)):
        bad = int(codes.min() if codes.min() < 0 else codes.max())
        raise ValueError(f"{name}: assignment {bad} out of range for {len(centroids)} centroids")
    w = centroids.astype(np.float32)[codes]                      # (n_blocks * C_out, block)
    w = w.reshape(n_blocks, c_out, block).transpose(1, 0, 2)     # column o = blocks b = 0.. in order
    return np.ascontiguousarray(w.reshape((c_out, c_in, k, k) if is_conv else (c_out, c_in)))


def convert(sd: dict, arch: Arch) -> dict[str, np.ndarray]:
    """Their state dict -> BN-folded NHWC/HWIO float32 weights keyed by our node names.
    Raises ValueError naming the layer and what is wrong."""
    if not isinstance(sd, dict):
        raise ValueError("not a state dict")
    bns = batch_norms(arch)
    layers = compressed_layers(arch)
    expected = {"conv1", "fc_bias", *bns, *layers}
    if set(sd) != expected:
        extra, missing = sorted(set(map(str, sd)) - expected), sorted(expected - set(sd))
        raise ValueError(f"not a compressed {arch.name}: " + "; ".join(
            part for part in (f"missing {', '.join(missing[:4])}" if missing else "",
                              f"unexpected {', '.join(extra[:4])}" if extra else "") if part))

    def bn(name):
        c = bns[name]
        gamma = _array(sd[name], "weight", name, "f", (c,)).astype(np.float32)
        beta = _array(sd[name], "bias", name, "f", (c,)).astype(np.float32)
        return gamma, beta, np.zeros(c, np.float32), np.ones(c, np.float32), BN_EPS

    out = {}

    def fold(node, oihw, bn_name):
        out[f"{node}.weight"], out[f"{node}.bias"] = fold_batch_norm(oihw.transpose(2, 3, 1, 0), None, *bn(bn_name))

    fold("conv1", _array(sd["conv1"], "weight", "conv1", "f", (64, 3, 7, 7)).astype(np.float32), "bn1")
    for _, convs, down in blocks(arch):
        for c in convs + ([down] if down else []):
            key = f"{c.name}.0" if c is down else c.name
            fold(c.name, decode_layer(sd[key], key, c.c_out, c.c_in, c.k), c.bn)
    c_out, c_in, _ = layers["fc"]
    out["fc.weight"] = np.ascontiguousarray(decode_layer(sd["fc"], "fc", c_out, c_in, 1, is_conv=False).T)
    out["fc.bias"] = _array(sd["fc_bias"], "bias", "fc_bias", "f", (c_out,)).astype(np.float32)
    return out


def weights_path(name: str) -> Path:
    return WEIGHTS_DIR / ARCHS[name].file


def read_weights(path: Path, arch: Arch) -> dict[str, np.ndarray]:
    """Decode, check and fold a compressed file (no cache); CheckpointError names file and reason."""
    return _checked(_read_bytes(path), path, arch)[1]


def _read_bytes(path: Path) -> bytes:
    try:
        if not path.is_file():
            raise CheckpointError(str(path), "not a regular file" if path.exists() else "file not found")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise CheckpointError(str(path), f"larger than {MAX_FILE_BYTES >> 20} MB: not one of the shipped files")
        return path.read_bytes()
    except OSError as exc:
        raise CheckpointError(str(path), exc.strerror or str(exc)) from None


def _checked(raw: bytes, path: Path, arch: Arch) -> tuple[dict, dict[str, np.ndarray]]:
    """(their state dict, our weights) of a file's bytes, every shape and code checked."""
    sd = load_legacy_state_dict(raw, str(path))
    try:
        return sd, convert(sd, arch)
    except ValueError as exc:
        raise CheckpointError(str(path), str(exc)) from None


def folded_weights(name: str, path: Path | None = None) -> tuple[dict[str, np.ndarray], str]:
    """BN-folded float32 weights of `name` (from `path`, default the shipped file), cached by the
    file's sha256; and that sha256."""
    arch = ARCHS[name]
    path = Path(path) if path is not None else weights_path(name)
    raw = _read_bytes(path)
    digest = hashlib.sha256(raw).hexdigest()
    return cached_conversion(name, digest, CONVERTER_VERSION, lambda: _checked(raw, path, arch)[1]), digest


def build_graph(w: dict[str, np.ndarray], arch: Arch, pq: dict | None = None) -> Graph:
    """The network; convolutions named in `pq` (see authors_pq_layers) run as product-quantized
    layers, each followed by its batch norm (an Affine node) and ReLU."""
    nodes, pq = [], pq or {}

    def conv(c: ConvSpec, src: str) -> str:
        if c.name in pq:
            codebooks, codes, scale, shift = pq[c.name]
            nodes.append(Node(c.name, PQLayer("conv", codebooks, codes, c.c_in, stride=(c.stride, c.stride)), (src,)))
            nodes.append(Node(f"{c.name}.bn", Affine(scale, shift), (c.name,)))
            if not c.relu:
                return f"{c.name}.bn"
            nodes.append(Node(f"{c.name}.relu", Activation("relu"), (f"{c.name}.bn",)))
            return f"{c.name}.relu"
        pad = c.k // 2
        nodes.append(Node(c.name, Conv2D(w[f"{c.name}.weight"], w[f"{c.name}.bias"], (c.stride, c.stride),
                                         (pad,) * 4, 1, "relu" if c.relu else None), (src,)))
        return c.name

    conv(ConvSpec("conv1", 64, 3, 7, 2, "bn1", True), "input")
    nodes.append(Node("maxpool", Pool2D("max", (3, 3), (2, 2), (1, 1, 1, 1)), ("conv1",)))
    x = "maxpool"
    for p, convs, down in blocks(arch):
        y = x
        for c in convs:
            y = conv(c, y)
        identity = conv(down, x) if down else x
        nodes.append(Node(f"{p}.add", Add(), (y, identity)))
        nodes.append(Node(f"{p}.relu", Activation("relu"), (f"{p}.add",)))
        x = f"{p}.relu"
    nodes.append(Node("avgpool", GlobalAvgPool(), (x,)))
    nodes.append(Node("flatten", Flatten(), ("avgpool",)))
    nodes.append(Node("fc", Dense(w["fc.weight"], w["fc.bias"]), ("flatten",)))
    return Graph(nodes)


def authors_pq_layers(sd: dict, arch: Arch) -> dict[str, tuple[np.ndarray, ...]]:
    """The authors' compressed 1x1 convolutions in PQLayer's canonical layout, with their batch
    norms as (scale, shift): conv name -> (codebooks, codes, scale, shift).

    Their blocks of `block` consecutive input channels are our subspaces (C_s' = block,
    M = n_blocks); their one codebook per layer is replicated into each subspace; their codes
    (block-major) are already (M, C_out).  Their 3x3 blocks span kernel taps (a codeword is one
    channel's 3x3 kernel, or two), which our layout cannot hold, and their FC codebooks have
    1024-2048 codewords (ours: at most 256): those stay dense.  `sd` must have passed convert()."""
    out = {}
    for _, convs, down in blocks(arch):
        for c in convs + ([down] if down else []):
            entry = sd[f"{c.name}.0" if c is down else c.name]
            centroids = entry["centroids"].astype(np.float32)
            if c.k != 1 or not 2 <= len(centroids) <= 256:
                continue
            m, block = entry["n_blocks"], centroids.shape[1]
            codebooks = np.ascontiguousarray(np.broadcast_to(centroids, (1, m, *centroids.shape)))
            codes = entry["assignments"].reshape(1, 1, m, c.c_out).astype(np.uint8)
            scale = sd[c.bn]["weight"].astype(np.float32) / np.float32(np.sqrt(1 + BN_EPS))  # mean 0, var 1
            out[c.name] = (codebooks, codes, scale, sd[c.bn]["bias"].astype(np.float32))
    return out


def authors_pq_model(name: str, path: Path | None = None) -> tuple[Model, Graph]:
    """The dense model and, beside it, the network as the authors' file stores it: their
    compressed 1x1 layers run as lookups (authors_pq_layers), everything else dense."""
    arch = ARCHS[name]
    path = Path(path) if path is not None else weights_path(name)
    raw = _read_bytes(path)
    sd, weights = _checked(raw, path, arch)
    model = _model(name, weights, hashlib.sha256(raw).hexdigest())
    return model, build_graph(weights, arch, authors_pq_layers(sd, arch))


def _model(name: str, weights: dict[str, np.ndarray], digest: str) -> Model:
    return Model(name=name, graph=build_graph(weights, ARCHS[name]), preprocess=PREPROCESS, labels=imagenet_labels(),
                 description=ARCHS[name].title, identity={"name": name, "sha256": digest})


def resnet(name: str, path: Path | None = None) -> Model:
    """Built-in `resnet18` or `resnet50` (weights from `path`, default the shipped file)."""
    return _model(name, *folded_weights(name, path))
