"""Models: the dense graph plus what it takes to turn a photo into class probabilities."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..budget import check_budget
from ..graph import Graph
from ..layers import Softmax, softmax
from ..preprocess import Preprocess


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    prob: float


@dataclass
class Classification:
    top: list[Prediction]
    latency_ms: float                  # network forward pass only, preprocessing excluded
    probs: np.ndarray = field(repr=False, default=None)


@dataclass(eq=False)
class Model:
    name: str
    graph: Graph
    preprocess: Preprocess
    labels: tuple[str, ...]
    description: str = ""
    speed_test_only: bool = False       # random weights: labels are meaningless
    identity: dict = field(default_factory=dict)   # what the weights are (name, sha256) for model files

    def __post_init__(self):
        # Every source of models passes here: a graph whose work or memory per image exceeds the
        # budget (qcnn.budget) is refused before anything runs it.
        check_budget(self.graph, (self.preprocess.crop, self.preprocess.crop))
        # Whether the graph already ends in a softmax (ONNX models often do).
        self.outputs_probs = isinstance(self.graph[self.graph.output].layer, Softmax)

    @property
    def input_size(self) -> int:
        return self.preprocess.crop

    def label(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else f"class {index}"

    def probabilities(self, logits_or_probs: np.ndarray) -> np.ndarray:
        out = logits_or_probs.reshape(logits_or_probs.shape[0], -1)
        return out if self.outputs_probs else softmax(out)

    def predict(self, x: np.ndarray, graph: Graph | None = None, on_layer=None) -> np.ndarray:
        """Class probabilities (N, classes) for a preprocessed NHWC batch."""
        return self.probabilities((graph or self.graph).forward(x, on_layer=on_layer))

    def top_k(self, probs: np.ndarray, k: int = 5) -> list[Prediction]:
        order = np.argsort(-probs, kind="stable")[:k]
        return [Prediction(int(i), self.label(int(i)), float(probs[i])) for i in order]

    def classify(self, image: Image.Image, top: int = 5, graph: Graph | None = None) -> Classification:
        x = self.preprocess(image)
        t0 = time.perf_counter()
        probs = self.predict(x, graph)[0]
        latency = (time.perf_counter() - t0) * 1e3
        return Classification(self.top_k(probs, top), latency, probs)


BUILTIN = ("efficientnet-lite0", "resnet18", "resnet50", "alexnet")


def load_model(spec: str | os.PathLike) -> Model:
    """A built-in model by name, or an ONNX file by path."""
    spec = os.fspath(spec)
    if spec == "efficientnet-lite0":
        from .efficientnet_lite import efficientnet_lite0
        return efficientnet_lite0()
    if spec in ("resnet18", "resnet50"):
        from .resnet import resnet
        return resnet(spec)
    if spec == "alexnet":
        from .alexnet import alexnet
        return alexnet()
    if spec.lower().endswith(".onnx") or os.path.exists(spec):
        if os.path.exists(spec) and not os.path.isfile(spec):     # a FIFO would block the reader forever
            raise ValueError(f"model {spec}: not a regular file")
        from .onnx_import import load_onnx
        return load_onnx(spec)
    raise ValueError(f"unknown model {spec!r}: use one of {', '.join(BUILTIN)} or a path to an .onnx file")
