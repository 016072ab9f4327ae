"""Named quantization presets per model, shipped as data (QuantSettings.to_dict() form).

A preset is a whole QuantSettings -- codebooks, error correction and its calibration (the bundled
photos, DEFAULT_CALIB_COUNT images) -- so one name is one model in the app, the command line,
the quantization cache and the README.

AlexNet:
  paper   the released configuration of the original Quantized-CNN implementation:
          conv1 C_s'=3 K=128; conv2-conv5 C_s'=8 K=128; fc6, fc7 C_s'=4 K=32; fc8 C_s'=1 K=16.
  fast4   C_s'=4, K=16 on conv2-conv5 and fc6-fc8, conv1 dense: the kernels' speed test.
  fast4-conv1  fast4 with conv1 quantized too, its subspaces across kernel offsets (qcnn.pq.taps:
          C_s'=33, one 11-tap kernel row of 3 channels, K=16): every conv and FC layer runs lookups.
  All without error correction: the weights are random, so there is no accuracy to keep, and
  the speed test needs the codebooks' shapes only.
EfficientNet-Lite0 (found by qcnn.pq.search on the odd rows of imagenet-sample-500; see LITE0_NOTES):
  accurate  >= 5x whole-model compression, aiming at <= 1 point top-5 loss;
  fast      >= 1.5x theoretical speed-up, aiming at <= 3 points top-5 loss.
  fastscan  K = 16 (the fast-scan kernels) on the nine 14x14 and 7x7 layers where those kernels
            beat the dense product and the single-layer loss was smallest: the fastest measured
            Lite0 setting, at a clear accuracy cost (LITE0_NOTES).
ResNet-18, ResNet-50 (RESNET18_NOTES):
  accurate  ResNet-18: every conv and the FC layer at C_s'=1, K=16, found by qcnn.pq.search with the
            `accurate` ladder: top-5 within 1 point, ~7.6x smaller, no faster than dense.  ResNet-50:
            layer4's convolutions and the FC layer at C_s'=2, K=16 (not searched; 2.0 points short);
  fast      (the default) C_s'=2, K=16 on layer4 and layer3.1's (ResNet-50: layer3's) 3x3
            convolutions, <= 3 points top-5.
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
    "fast4-conv1": {"layers": {"conv1": {"dsub": 33, "ksub": 16, "taps": True},
                               **_uniform(("conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"), 4, 16)},
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

# ResNet-18 and ResNet-50: C_s'=2, K=16 (the fast-scan kernels' codebooks) on the layers named,
# the rest dense; error correction on 64 inputs made from the bundled photos (16 overfit the 7x7
# layers: RESNET18_NOTES below).
# ResNet-18's layers came from the search's sensitivity table (`python -m qcnn.pq.search
# --ladder fastscan`) walked greedily by MEASURED per-layer time (fast) or by storage (accurate):
# scripts/measured_search.py.  ResNet-50's follow the same rule by stage (no search of its own yet).
_R18_LAYER4 = ("layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2")
_RESNET_CALIB = 64
# `accurate`: what `python -m qcnn.pq.search --ladder accurate` chose on the odd rows (every layer,
# C_s'=1 K=16: RESNET18_NOTES); the preset calibrates on the bundled photos like the others.
_R18_ALL = ("conv1",) + tuple(f"layer{s}.{b}.conv{c}" for s in range(1, 5) for b in range(2) for c in (1, 2)) \
    + tuple(f"layer{s}.0.downsample" for s in range(2, 5)) + ("fc",)
_RESNET18 = {
    "accurate": {"layers": _uniform(_R18_ALL, 1, 16), "calib_count": _RESNET_CALIB},
    "fast": {"layers": _uniform(_R18_LAYER4 + ("layer3.1.conv1", "layer3.1.conv2"), 2, 16),
             "calib_count": _RESNET_CALIB},
}
_R50_LAYER4 = tuple(f"layer4.{b}.{c}" for b in range(3) for c in ("conv1", "conv2", "conv3")) + ("layer4.0.downsample",)
_RESNET50 = {
    "accurate": {"layers": _uniform(_R50_LAYER4 + ("fc",), 1, 16), "calib_count": _RESNET_CALIB},
    "fast": {"layers": _uniform(_R50_LAYER4 + ("fc",) + tuple(f"layer3.{b}.conv2" for b in range(6)), 2, 16),
             "calib_count": _RESNET_CALIB},
}

PRESETS: dict[str, dict[str, dict]] = {"alexnet": _ALEXNET, "efficientnet-lite0": _LITE0,
                                       "resnet18": _RESNET18, "resnet50": _RESNET50}

# Evaluation: `qcnn eval --model M --preset P --kernel reconstructed --images ../shared/imagenet-sample-500
# --labels EVEN.csv`, EVEN.csv = the header and the even data rows of labels.csv (250 images); the
# presets calibrate on the bundled photos, never on the sample.  Compression: dense float32 weights
# over the .qcnn file (what the app shows as "smaller").  Speed-up: `qcnn bench --model M --preset P`
# (kernel auto, one thread, dense and quantized interleaved) on this 2-core machine while two
# other sessions ran searches and evaluations beside it (dense ResNet-18 took 282 ms per image
# instead of ~75 ms quiet): the ratio is what it measured, not a quiet-machine figure.
# How they were chosen: the search's K = 16 sensitivity table (`python -m qcnn.pq.search --model
# resnet18 --objective speed --ladder fastscan --calib 64 --sensitivity sens.json`, odd rows), walked
# greedily by measured per-layer time (scripts/measured_search.py --dry-run); whole-model checks on
# the odd rows showed the estimate far too kind (14 moves, C_s' up to 8: probe KL 0.87 with 16
# calibration inputs, 0.63 with 64, 0.43 with 64 odd-row images; keep5 0.82-0.90), so the presets
# keep to C_s' = 2 on the layers that pay most.  The measured per-layer times disagree with the
# multiply-add count the search optimises: layer1 (56x56) gains 1.2x at C_s' = 4 where theory says
# 3.6x (building the tables costs as much as the lookups save), the stride-2 layer2.0.conv1 runs
# slower than dense, and layer4's 3x3 products (memory bound, 9.4 MB of weights each) gain 10-50x.
# ResNet-18 `accurate` (since 2026-12-02): `python -m qcnn.pq.search --model resnet18 --labels
# ../shared/imagenet-sample-500/labels.csv --objective compression --ladder accurate --calib 64
# --min-agree 0.92 --min-keep5 0.99 --sensitivity sens.json` (odd rows: 64 calibration, 186 probe;
# 22.8 min wall, 8.2 min CPU on the loaded host) kept the whole greedy path, all 21 layers at
# C_s'=1 K=16: probe agreement 93.5 %, keep5 100 %, KL 0.030; on the even rows (calibrated on the
# odd ones) 74.8 / 92.0 % against dense 76.8 / 92.4, 7.61x smaller.  Why C_s'=1: on layer4 alone
# (odd rows, bundled calibration, 64 inputs) C_s'=2 K=16 gave agreement 82.4 % / KL 0.165 (256
# calibration inputs: 85.6 % / 0.139; no error correction: 78.8 % / 0.352), C_s'=1 K=16 96.0 % /
# 0.007.  ResNet-50 layer4 + FC at C_s'=1 K=16 measured on the odd rows only (bundled calibration):
# 72.0 / 92.4 % against dense 70.8 / 92.8, agreement 94.4 %, 2.35x smaller -- not yet evaluated on
# the even rows, so not the preset.
# Before, with C_s'=2 K=16 on layer4 only, neither model reached the `accurate` goal (top-5 within
# 1 point of the float model): every candidate tried lost 1.6-3.2 points of top-5 on ResNet-18 (250 images: one image is 0.4 points,
# so the presets' top-5 differences are noise; agreement and KL order them) and 2.0 on ResNet-50.
# The candidates were picked by odd-row checks and then ALSO compared on the even rows (layer4
# with or without the FC layer, calibration 16 or 64): the evaluation is not blind to that choice.
# Also tried on ResNet-18 (even rows): layer4 + FC 72.0 / 90.4 %, agreement 80.4 %; ResNet-50
# layer3 + layer4 + FC (30 layers) with 16 calibration inputs 67.6 / 89.6 %, layer4 + FC with 16
# 73.6 / 92.8 %.
# `fastscan` accuracy (`qcnn eval --kernel fastscan`, even rows) of ResNet-18 `fast`: 73.6 / 90.8 %,
# agreement 84.0 %, the same as reconstructed, since the tables' rounding bias is corrected (before:
# 16.4 / 34.4 %).  `auto`'s plan (qcnn.pq.engine: output error at most 3 % and the quantization's
# own, 3.2 % here) runs fast-scan on layer4's four convolutions (2.6 %): 72.8 / 90.8 %, agreement
# 84.0 % (AVX2 EPYC).  The measured speed-ups below are from an earlier plan that ran fast-scan on
# all six layers (what `--kernel fastscan` gives).
RESNET18_NOTES = {
    "dense": {"top1": 0.768, "top5": 0.924},
    # The preset itself (bundled calibration, 64 inputs), `qcnn eval --preset accurate` (kernel auto:
    # the plan allows 1.57 %, the quantization's own, and runs layer4.1.conv2 fast-scan at 0.66 %:
    # 75.6 / 91.6 %, agreement 92.4 %; with 3 % alone it ran two layers fast-scan at 1.8 %: 75.2 /
    # 90.8 %; all reconstructed: 75.6 / 91.6 %, 92.8 %): median 192.0 vs dense 192.8 ms
    # per image on the loaded host, i.e. no speed-up; quantized in 973 s wall (208 s CPU, loaded).
    # The search's own evaluation (calibrated on the odd rows): 74.8 / 92.0 %.
    "accurate": {"top1": 0.756, "top5": 0.916, "agreement": 0.928, "kl": 0.0315, "eval_images": 250,
                 "compression": 7.58, "measured_speedup": 1.00},
    "fast": {"top1": 0.728, "top5": 0.908, "agreement": 0.84, "kl": 0.202, "eval_images": 250, "compression": 4.06,
             # kernel auto (fast-scan on the six layers), 3 x 30 images; fastscan 1.33x, exact 0.84x,
             # reconstructed 1.02x (same load)
             "measured_speedup": 1.38, "quantize_cpu_s": 48},
}
RESNET50_NOTES = {
    "dense": {"top1": 0.792, "top5": 0.940},
    # layer4 + fc at the `accurate` ladder's C_s'=1 K=16 (what the ResNet-18 search chose for every
    # layer), checked on the odd rows first (72.0 / 92.4 % vs dense 70.8 / 92.8 %), not searched:
    # `qcnn eval --model resnet50 --config {layer4 + fc: dsub 1, ksub 16, calib_count 64} --kernel
    # reconstructed` on the even rows; file 43.4 MB vs 102.2 MB float32; quantized in 147 s.
    # (Before, C_s'=2 K=16 on the same layers: 74.0 / 92.0 %, agreement 84.4 %, 2.61x.)
    "accurate": {"top1": 0.760, "top5": 0.940, "agreement": 0.936, "kl": 0.0113, "eval_images": 250,
                 "compression": 2.35},
    "fast": {"top1": 0.720, "top5": 0.920, "agreement": 0.804, "kl": 0.294, "eval_images": 250,
             "compression": 3.93, "measured_speedup": 1.26},     # kernel auto, 2 x 10 images
}

#: Measured figures per model and preset (the app's quantized panel shows "agreement" of those
#: that have it).
NOTES: dict[str, dict[str, dict]] = {"efficientnet-lite0": LITE0_NOTES, "resnet18": RESNET18_NOTES,
                                     "resnet50": RESNET50_NOTES}


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
DEFAULT_PRESET = {"alexnet": "fast4", "efficientnet-lite0": "accurate", "resnet18": "fast", "resnet50": "fast"}
