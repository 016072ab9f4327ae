"""ImageNet-1k class names shipped in assets/."""
from __future__ import annotations

import csv
from functools import lru_cache

from .paths import ASSETS


@lru_cache(maxsize=None)
def imagenet_labels() -> tuple[str, ...]:
    with open(ASSETS / "imagenet_classes.csv", newline="", encoding="utf-8") as f:
        rows = sorted(((int(r["class_index"]), r["name"]) for r in csv.DictReader(f)))
    if [i for i, _ in rows] != list(range(1000)):
        raise RuntimeError("assets/imagenet_classes.csv must list classes 0..999")
    return tuple(name for _, name in rows)
