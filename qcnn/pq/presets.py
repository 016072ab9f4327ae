"""Named quantization presets per model, shipped as data (QuantSettings.to_dict() form).

A preset is a whole QuantSettings -- codebooks, error correction and its calibration (the bundled
photos, DEFAULT_CALIB_COUNT images) -- so one name is one model in the app, the command line,
the quantization cache and the README.

AlexNet:
  paper   the released configuration of the original Quantized-CNN implementation:
          conv1 C_s'=3 K=128; conv2-conv5 C_s'=8 K=128; fc6, fc7 C_s'=4 K=32; fc8 C_s'=1 K=16.
  fast4   C_s'=4, K=16 on conv2-conv5 and fc6-fc8, conv1 dense: the kernels' speed test.
  Both without error correction: the weights are random, so there is no accuracy to keep, and
  the speed test needs the codebooks' shapes only.
EfficientNet-Lite0 (found by qcnn.pq.search on the odd rows of imagenet-sample-500; see LITE0_NOTES):
  accurate  >= 5x whole-model compression, aiming at <= 1 point top-5 loss;
  fast      >= 1.5x theoretical speed-up, aiming at <= 3 points top-5 loss.
  fastscan  K = 16 (the fast-scan kernels) on the nine 14x14 and 7x7 layers where those kernels
            beat the dense product and the single-layer loss was smallest: the fastest measured
            Lite0 setting, at a clear accuracy cost (LITE0_NOTES).
"""
from __future__ import annotations

import copy

from .settings import QuantSettings


def _uniform(layers, dsub, ksub):
    return {name: {"dsub": dsub, "ksub": ksub} for name in layers}


_ALEXNET = {
    "paper": {"layers": {"conv1": {"dsub": 3, "ksub": 128}, **_uniform(("conv2", "conv3", "conv4", "conv5"), 8, 128),
                         **_uniform(("fc6", "fc7"), 4, 32), "fc8": {"dsub": 1, "ksub": 16}},
              "error_correction": False},
    "fast4": {"layers": {"conv1": None, **_uniform(("conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"), 4, 16)},
              "error_correction": False},
}

# Found by the search script on the odd data rows of imagenet-sample-500 (first 128 for calibration,
# the other 122 as probe images); (C_s', K) per layer.  Absent layers (always the stem and the
# depthwise convolutions) stay dense.  Measured figures: LITE0_NOTES.
_LITE0 = {
    "accurate": {"layers": {
        "b1.project": (1, 16), "b2.expand": (1, 16), "b2.project": (1, 16), "b3.project": (1, 16),
        "b4.expand": (1, 16), "b4.project": (1, 16), "b5.expand": (1, 16), "b5.project": (1, 16),
        "b6.expand": (1, 16), "b6.project": (1, 16), "b7.expand": (1, 16), "b7.project": (1, 16),
        "b8.expand": (1, 16), "b8.project": (1, 16), "b9.expand": (1, 16), "b9.project": (1, 16),
        "b10.expand": (2, 32), "b10.project": (4, 16), "b11.expand": (1, 16), "b11.project": (1, 16),
        "b12.expand": (2, 32), "b12.project": (1, 16), "b13.expand": (2, 32), "b13.project": (1, 16),
        "b14.expand": (2, 32), "b14.project": (1, 16), "b15.expand": (1, 16), "b15.project": (1, 16),
        "head": (1, 16), "fc": (2, 32)}},
    "fast": {"layers": {
        "b1.expand": (4, 64), "b2.expand": (2, 32), "b4.expand": (2, 32), "b4.project": (4, 16),
        "b5.expand": (2, 64), "b6.expand": (4, 64), "b6.project": (4, 16), "b7.expand": (4, 64),
        "b7.project": (4, 16), "b8.expand": (2, 64), "b8.project": (2, 16), "b9.expand": (4, 32),
        "b9.project": (4, 16), "b10.expand": (4, 32), "b10.project": (4, 16), "b11.expand": (2, 64),
        "b11.project": (2, 32), "b12.expand": (2, 64), "b12.project": (3, 32), "b13.expand": (2, 64),
        "b13.project": (4, 64), "b14.expand": (2, 64), "b14.project": (4, 64), "b15.expand": (2, 64),
        "b15.project": (2, 64), "head": (2, 64)}},
    "fastscan": {"layers": {
        "b6.expand": (4, 16), "b7.expand": (4, 16), "b9.expand": (4, 16), "b10.expand": (4, 16),
        "b12.expand": (4, 16), "b12.project": (4, 16), "b13.project": (4, 16), "b14.project": (4, 16),
        "fc": (2, 16)}},
}

# Evaluation on the even data rows of imagenet-sample-500 (250 images, never used for calibration
# or search), calibration on the first 128 odd rows, weights reconstructed: scripts/preset_accuracy.py.
# top1/top5: quantizer version 2 (qcnn.pq.settings.QUANTIZER_VERSION), seed 0; mean over seeds 0-2
# beside them -- one image is 0.4 points, and the seed alone moves a preset by up to 4.4 points
# top-1.  The search found the presets with version 1 (accurate 87.6 / 98.0, fast 84.0 / 96.8,
# fastscan 80.8 / 92.4 at seed 0; means over seeds 0-2: 86.9 / 97.6, 81.5 / 96.1, 79.9 / 92.8).
# Speed-up and compression as the search counted them (table builds over every input pixel;
# `qcnn cost` counts only the pixels a strided layer reads, so it reports slightly more).
LITE0_NOTES = {
    "dense": {"top1": 0.892, "top5": 0.972},
    "accurate": {"top1": 0.880, "top5": 0.972, "mean_top1": 0.864, "mean_top5": 0.973,
                 "compression": 5.24, "speedup": 1.00,
                 "command": "python -m qcnn.pq.search --labels ../shared/imagenet-sample-500/labels.csv "
                            "--objective compression --target 5.2 --max-kl 0.15 --sensitivity sens.json"},
    "fast": {"top1": 0.820, "top5": 0.968, "mean_top1": 0.829, "mean_top5": 0.961,
             "compression": 2.12, "speedup": 1.51,
             "command": "python -m qcnn.pq.search --labels ../shared/imagenet-sample-500/labels.csv "
                        "--objective speed --target 1.51 --max-kl 0.5 --sensitivity sens.json"},
    # Chosen by hand from measured per-layer kernel speed and the search's K = 16 sensitivity table.
    # With the fast-scan kernels (uint8 tables; quantizer version 1): 79.6 / 92.4.
    # Measured 1.10x faster than dense end to end (`qcnn bench --preset fastscan`); adding the
    # sensitive layers too (head, b15, b11, b8.expand at C_s' = 2) reached 1.20x at 53.6 / 79.6.
    "fastscan": {"top1": 0.784, "top5": 0.932, "mean_top1": 0.795, "mean_top5": 0.932, "measured_speedup": 1.10},
}

PRESETS: dict[str, dict[str, dict]] = {"alexnet": _ALEXNET, "efficientnet-lite0": _LITE0}

#: Measured figures per model and preset (the app's quantized panel shows "agreement" of those
#: that have it).
NOTES: dict[str, dict[str, dict]] = {"efficientnet-lite0": LITE0_NOTES}


def measured(model_name: str, settings: QuantSettings) -> dict | None:
    """The notes of the preset that `settings` is (NOTES), None for other settings."""
    for name in preset_names(model_name):
        if preset(model_name, name) == settings:
            return NOTES.get(model_name, {}).get(name)
    return None


def preset_names(model_name: str) -> list[str]:
    return sorted(PRESETS.get(model_name, {}))


def preset(model_name: str, name: str) -> QuantSettings:
    """The named preset's settings."""
    table = PRESETS.get(model_name, {})
    if name not in table:
        raise ValueError(f"no preset {name!r} for {model_name}: choose from {', '.join(sorted(table)) or 'none'}")
    return QuantSettings.from_dict(copy.deepcopy(table[name]))


#: The preset commands use when none is given: AlexNet's the paper's speed test (fast-scan
#: layers), EfficientNet-Lite0's the one the app starts with.
DEFAULT_PRESET = {"alexnet": "fast4", "efficientnet-lite0": "accurate"}
