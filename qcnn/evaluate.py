"""Accuracy of one or more engines on a labelled image folder."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .dataset import read_labels
from .imageio import ImageLoadError, load_image
from .models import Model


@dataclass
class EngineScore:
    top1: float = 0.0
    top5: float = 0.0
    latency_ms: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return float(np.median(self.latency_ms)) if self.latency_ms else float("nan")


@dataclass
class Evaluation:
    images: int
    scores: dict[str, EngineScore]
    skipped: list[str]                 # unreadable images, with the reason
    probs: dict[str, np.ndarray]       # engine -> (images, classes)
    labels: np.ndarray


def evaluate(model: Model, labels_csv: str | Path, images_dir: str | Path | None = None,
             engines: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None,
             limit: int | None = None, progress: Callable[[int, int], None] | None = None) -> Evaluation:
    """Top-1/top-5 of each engine (name -> function from a preprocessed batch to probabilities).
    Engines run interleaved on each image so that their latencies see the same machine state."""
    engines = engines or {"dense": model.predict}
    rows = read_labels(labels_csv, images_dir)[:limit]
    probs = {name: [] for name in engines}
    latency = {name: [] for name in engines}
    labels, skipped = [], []
    for i, (path, label) in enumerate(rows):
        try:
            x = model.preprocess(load_image(path))
        except ImageLoadError as exc:
            skipped.append(str(exc))
            continue
        for name, run in engines.items():
            t0 = time.perf_counter()
            probs[name].append(run(x)[0])
            latency[name].append((time.perf_counter() - t0) * 1e3)
        labels.append(label)
        if progress:
            progress(i + 1, len(rows))
    if not labels:
        raise ValueError(f"{labels_csv}: none of the {len(rows)} images it lists could be read"
                         + (f" ({skipped[0]})" if skipped else ""))
    y = np.asarray(labels)
    scores, stacked = {}, {}
    for name in engines:
        p = np.asarray(probs[name]).reshape(len(y), -1)
        stacked[name] = p
        scores[name] = EngineScore(*accuracy(p, y), latency[name])
    return Evaluation(len(y), scores, skipped, stacked, y)


def accuracy(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Top-1 and top-5 accuracy of (images, classes) probabilities."""
    if not len(labels):
        return 0.0, 0.0
    top5 = np.argsort(-probs, axis=1, kind="stable")[:, :5]
    return float(np.mean(top5[:, 0] == labels)), float(np.mean((top5 == labels[:, None]).any(axis=1)))
