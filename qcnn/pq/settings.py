"""What a quantized model is made from: one settings type for the command line, the app, the
presets, the search, the quantization cache and the .qcnn files.

A QuantSettings names the codebook shape of every layer -- one setting for all convolutions,
one for all FC layers, and per-layer overrides (None: the layer stays dense) -- and everything
that decides the fitted codebooks: the k-means seed and restarts, whether and how hard error
correction runs, and the calibration images it runs on.  The kernel and the thread count are not
here: they change how fast a quantized model runs, not what it computes.

Serialised (to_dict) it is the JSON of `qcnn quantize --config FILE`, of the presets and of the
`settings` entry of a .qcnn file's metadata; from_dict also reads the QuantConfig files of
earlier versions ("layers" only: the rest of the network dense) and the app's older "per_layer".
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..layers import Conv2D, Dense
from .layer import PQSetting
from .taps import check_taps

# Bump when the same settings would make a different model (k-means, error correction, ...): the
# quantization cache keys on it, so a model another version made is never reused.
QUANTIZER_VERSION = 2

# Error correction's calibration: by default the 6 bundled photos and crops of them, 16 in all.
# Measured with Lite0 'accurate' on all 500 images of the ImageNet sample: 16 gave 84.6 / 95.4 %
# (top-1 agreement with dense 92.4 %), 128 gave 83.0 / 95.6 % (90.8 %) in 2.5x the time and 5x
# the memory (1.3 GB): crops of six photos add little.  With a folder of real photos raise it.
DEFAULT_CALIB_COUNT = 16

_FIELDS = ("conv", "fc", "layers", "error_correction", "iterations", "max_rows", "kmeans_init", "shrinkage",
           "seed", "calib_folder", "calib_count")
# Only error correction reads these: without it they do not change the model.
_CORRECTION_FIELDS = ("iterations", "max_rows", "shrinkage", "calib_folder", "calib_count")


def setting_from(value) -> PQSetting | None:
    """A PQSetting from None, a PQSetting, {"dsub": C_s', "ksub": K} or (C_s', K)."""
    if value is None or isinstance(value, PQSetting):
        return value
    if isinstance(value, dict) and set(value) in ({"dsub", "ksub"}, {"dsub", "ksub", "taps"}):
        return PQSetting(_int(value["dsub"], "dsub"), _int(value["ksub"], "ksub"), value.get("taps", False))
    if isinstance(value, (list, tuple)) and len(value) in (2, 3):
        return PQSetting(_int(value[0], "dsub"), _int(value[1], "ksub"), *value[2:])
    raise ValueError(f"bad PQ setting {value!r}: use {{'dsub': C_s', 'ksub': K}} (and 'taps': true) or null")


def setting_dict(value: PQSetting | None) -> dict | None:
    # "taps" only when set: the settings, hence the cache keys, of everything else stay as they were.
    if value is None:
        return None
    return {"dsub": value.dsub, "ksub": value.ksub, **({"taps": True} if value.taps else {})}


def setting_text(value: PQSetting | None) -> str:
    if value is None:
        return "dense"
    return f"C_s'={value.dsub} K={value.ksub}" + (" across taps" if value.taps else "")


def _int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"quantization settings: {what} must be an integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class QuantizableLayer:
    name: str
    kind: str              # "conv" or "fc"
    shape: str             # e.g. "1x1 320->1280"
    in_channels: int       # per group: what C_s' splits
    depthwise: bool = False


def quantizable_layers(model_or_graph, include_depthwise: bool = False) -> list[QuantizableLayer]:
    """The Conv2D (depthwise only when asked) and Dense nodes, in network order."""
    graph = getattr(model_or_graph, "graph", model_or_graph)
    out = []
    for node in graph:
        layer = node.layer
        if isinstance(layer, Dense):
            out.append(QuantizableLayer(node.name, "fc", f"{layer.in_channels}->{layer.out_channels}",
                                        layer.in_channels))
        elif isinstance(layer, Conv2D) and (include_depthwise or not layer.depthwise):
            kh, kw, cin_g, cout = layer.weight.shape
            out.append(QuantizableLayer(node.name, "conv", f"{kh}x{kw} {cin_g * layer.groups}->{cout}", cin_g,
                                        bool(layer.depthwise)))
    return out


@dataclass(frozen=True)
class QuantSettings:
    """How to product-quantize a model (see the module doc); immutable, compared by value."""

    conv: PQSetting | None = None      # every convolution except the depthwise ones
    fc: PQSetting | None = None        # every fully connected layer
    layers: tuple[tuple[str, PQSetting | None], ...] = ()   # per-layer overrides, None: dense
    error_correction: bool = True
    iterations: int = 4                # error-correction sweeps per layer
    max_rows: int = 8192               # sampled output positions per layer for error correction
    kmeans_init: int = 1               # k-means restarts (the best is kept)
    shrinkage: float = 1.0             # weight of the pull towards the dense weights (qcnn.pq.correct)
    seed: int = 0
    calib_folder: str | None = None    # calibration images; None: the bundled sample photos
    calib_count: int = DEFAULT_CALIB_COUNT

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "conv", setting_from(self.conv))
        set_(self, "fc", setting_from(self.fc))
        if any(s is not None and s.taps for s in (self.conv, self.fc)):
            raise ValueError("quantization settings: subspaces across kernel offsets ('taps') are set per layer")
        items = self.layers.items() if isinstance(self.layers, dict) else self.layers
        layers = {}
        for item in items:
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
                raise ValueError(f"quantization settings: bad per-layer entry {item!r}")
            layers[item[0]] = setting_from(item[1])
        set_(self, "layers", tuple(sorted(layers.items())))
        if not isinstance(self.error_correction, bool):
            raise ValueError("quantization settings: error_correction must be true or false")
        for name, low in (("iterations", 0), ("max_rows", 1), ("kmeans_init", 1), ("calib_count", 1), ("seed", 0)):
            value = _int(getattr(self, name), name)
            if value < low:
                raise ValueError(f"quantization settings: {name} must be >= {low}, got {value}")
            set_(self, name, value)
        if self.seed >= 2**32:
            raise ValueError("quantization settings: seed must be below 2**32")
        if (isinstance(self.shrinkage, bool) or not isinstance(self.shrinkage, (int, float))
                or not math.isfinite(self.shrinkage) or self.shrinkage < 0):
            raise ValueError(f"quantization settings: shrinkage must be a number >= 0, got {self.shrinkage!r}")
        set_(self, "shrinkage", float(self.shrinkage))
        if self.calib_folder is not None and not isinstance(self.calib_folder, str):
            raise ValueError("quantization settings: calib_folder must be a folder name or null")

    # ---- what each layer gets
    @property
    def correcting(self) -> bool:
        return self.error_correction and self.iterations > 0

    def layer_setting(self, name: str, kind: str) -> PQSetting | None:
        overrides = dict(self.layers)
        if name in overrides:
            return overrides[name]
        return self.conv if kind == "conv" else self.fc

    def plan(self, model_or_graph) -> dict[str, PQSetting | None]:
        """Every quantizable layer and every overridden layer -> its setting (None: dense), in
        network order.  Names the network lacks, or layers that cannot be quantized, raise."""
        graph = getattr(model_or_graph, "graph", model_or_graph)
        names = {n.name for n in graph}
        overrides = dict(self.layers)
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"quantization settings name unknown layers: {unknown}")
        kinds = {q.name: q.kind for q in quantizable_layers(graph, include_depthwise=True)}
        out = {}
        for node in graph:
            if node.name in overrides:
                if overrides[node.name] is not None and node.name not in kinds:
                    raise ValueError(f"layer {node.name!r} ({node.layer.describe()}) cannot be product-quantized")
                if overrides[node.name] is not None and overrides[node.name].taps:
                    check_taps(node.name, node.layer, overrides[node.name])
                out[node.name] = overrides[node.name]
            elif node.name in kinds and not getattr(node.layer, "depthwise", False):
                out[node.name] = self.conv if kinds[node.name] == "conv" else self.fc
        return out

    def quantized(self, model_or_graph) -> dict[str, PQSetting]:
        """The layers that get codebooks, in network order."""
        return {k: v for k, v in self.plan(model_or_graph).items() if v is not None}

    # ---- editing
    def replace(self, **changes) -> "QuantSettings":
        return dataclasses.replace(self, **changes)

    def with_layer(self, name: str, setting: PQSetting | None) -> "QuantSettings":
        return self.replace(layers={**dict(self.layers), name: setting})

    def canonical(self) -> "QuantSettings":
        """The same model with the fields it does not depend on at their defaults: without error
        correction the correction's options and its calibration do not matter."""
        if self.correcting:
            return self
        default = QuantSettings()
        return self.replace(error_correction=False, **{f: getattr(default, f) for f in _CORRECTION_FIELDS})

    # ---- JSON
    def to_dict(self) -> dict:
        return {"conv": setting_dict(self.conv), "fc": setting_dict(self.fc),
                "layers": {n: setting_dict(s) for n, s in self.layers},
                "error_correction": self.error_correction, "iterations": self.iterations,
                "max_rows": self.max_rows, "kmeans_init": self.kmeans_init, "shrinkage": self.shrinkage,
                "seed": self.seed, "calib_folder": self.calib_folder, "calib_count": self.calib_count}

    @classmethod
    def from_dict(cls, d: dict) -> "QuantSettings":
        """Strict: unknown keys are an error (a typo would otherwise be silently ignored)."""
        if not isinstance(d, dict):
            raise ValueError("quantization settings: expected a JSON object")
        d = dict(d)
        if "per_layer" in d:                  # the app's files before this format
            if "layers" in d:
                raise ValueError("quantization settings: both 'layers' and 'per_layer'")
            d["layers"] = d.pop("per_layer")
        unknown = set(d) - set(_FIELDS)
        if unknown:
            raise ValueError(f"quantization settings: unknown keys {sorted(unknown)}; known: {', '.join(_FIELDS)}")
        if not isinstance(d.get("layers", {}), dict):
            raise ValueError("quantization settings: 'layers' must be an object (layer name -> setting or null)")
        return cls(**d)

    def describe(self) -> str:
        s = setting_text
        if self.conv is None and self.fc is None and self.layers:
            text = f"{sum(v is not None for _, v in self.layers)} layers set one by one"
        else:
            text = f"conv {s(self.conv)}, fc {s(self.fc)}"
            if self.layers:
                text += f", {len(self.layers)} layer override(s)"
        if self.correcting:
            source = "bundled photos" if self.calib_folder is None else self.calib_folder
            text += f", error correction ({self.calib_count} images, {source})"
        return text


# For models without presets: C_s'=2, K=32 with error correction kept EfficientNet-Lite0 at 81 %
# top-1 (dense 88 %) on 100 images of the ImageNet sample; C_s'=4 or K=16 on every conv layer
# broke it (< 30 %), with or without.
DEFAULT_SETTINGS = QuantSettings(conv=PQSetting(2, 32), fc=PQSetting(2, 32))


def settings_from_metadata(metadata: dict, graph) -> tuple[QuantSettings, bool]:
    """(settings, known) of a .qcnn file: its `settings` entry (this and the app's earlier
    format), a `config` entry (the command line's earlier format, calibration beside it), or,
    for a file that says nothing, the layers as they are, without error correction (known=False)."""
    from .layer import PQLayer
    meta = metadata if isinstance(metadata, dict) else {}
    try:
        if isinstance(meta.get("settings"), dict):
            return QuantSettings.from_dict(meta["settings"]), True
        if isinstance(meta.get("config"), dict):
            old = dict(meta["config"])
            count = meta.get("calibration_count")
            calib = meta.get("calibration")
            if isinstance(count, int) and count > 0:
                old["calib_count"] = count
            if isinstance(calib, str) and calib != "bundled samples":
                old["calib_folder"] = calib
            return QuantSettings.from_dict(old), True
    except (TypeError, ValueError):
        pass
    layers = {n.name: n.layer.setting for n in graph if isinstance(n.layer, PQLayer)}
    return QuantSettings(layers=layers, error_correction=False), False
