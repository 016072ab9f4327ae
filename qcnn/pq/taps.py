"""Subspaces across kernel offsets, for convolutions with few input channels (network stems).

The paper splits a convolution's input channels into subspaces and shares each codebook across
the kernel offsets.  With 3 input channels (AlexNet's conv1, 11x11; ResNet's stem, 7x7) that leaves
one subspace of at most 3 channels: a lookup per kernel offset, padded to the fast-scan kernel's
quads of 4 subspaces, and no speed-up.  Here such a convolution becomes a `Patches` node that lays
each output pixel's (KH, KW, C_in) window out as one vector, followed by a 1x1 convolution over
those vectors -- the same function -- whose subspaces are dsub consecutive window entries (dsub =
KW * C_in: one kernel row) with one codebook each.  The 1x1 layer is an ordinary PQ layer: every
kernel, the error correction, the cost model and the model files handle it as they are.

The rewrite keeps the convolution's node name on the 1x1 layer (the settings, the per-layer
reports and the app name layers by it); the patches node is called NAME + PATCHES_SUFFIX.
"""
from __future__ import annotations

from ..graph import Graph, Node
from ..layers import Conv2D, Layer, Patches
from .layer import PQSetting

PATCHES_SUFFIX = ".patches"


def check_taps(name: str, layer, setting: PQSetting) -> None:
    """Raise ValueError unless `layer` can take a subspaces-across-taps setting."""
    if not isinstance(layer, Conv2D) or layer.groups != 1 or layer.kernel == (1, 1):
        raise ValueError(f"layer {name!r} ({layer.describe()}): subspaces across kernel offsets need a "
                         "convolution with one group and a kernel larger than 1x1")
    kh, kw, cin, _ = layer.weight.shape
    if setting.dsub > kh * kw * cin:
        raise ValueError(f"layer {name!r}: C_s'={setting.dsub} exceeds its {kh}x{kw}x{cin} window")


def as_pointwise(layer: Conv2D) -> Conv2D:
    """The 1x1 convolution over (KH, KW, C_in) window vectors that computes `layer`."""
    kh, kw, cin, cout = layer.weight.shape
    return Conv2D(layer.weight.reshape(1, 1, kh * kw * cin, cout), layer.bias, (1, 1), (0, 0, 0, 0), 1,
                  layer.activation)


def expand_taps(graph: Graph, plan: dict[str, PQSetting | None]) -> tuple[Graph, dict[str, PQSetting | None]]:
    """`graph` with every layer whose setting runs across taps split into patches + 1x1 (the
    same network), and the plan with those settings made plain 1x1 settings.  Without such
    settings, the graph and plan themselves."""
    split = {n for n, s in plan.items() if s is not None and s.taps}
    if not split:
        return graph, plan
    nodes = []
    for node in graph:
        if node.name not in split:
            nodes.append(node)
            continue
        layer = node.layer
        check_taps(node.name, layer, plan[node.name])
        patches = node.name + PATCHES_SUFFIX
        nodes.append(Node(patches, Patches(layer.kernel, layer.stride, layer.pads), node.inputs))
        nodes.append(Node(node.name, as_pointwise(layer), (patches,)))
    plain = {n: (PQSetting(s.dsub, s.ksub) if n in split else s) for n, s in plan.items()}
    return Graph(nodes, graph.input_name, graph.output), plain


class WindowsReadInPlace(Layer):
    """A Patches node whose fast-scan consumer reads the windows from the image itself
    (qcnn.pq.engine.with_kernel): it passes the image on."""

    kind = "patches"

    def __init__(self, patches: Patches, reader: str):
        self.patches, self.reader = patches, reader

    def describe(self):
        return f"{self.patches.describe()}, read in place by {self.reader}"

    def out_shape(self, x):
        return self.patches.out_shape(x)       # what its reader computes on, as the cost model sees it

    def __call__(self, x):
        return x
