"""The comparison workbench: the state the desktop app shows, without any Qt.

One dense model and, next to it, its product-quantized graph with the settings that made it.
Everything the app does to that state lives here, so it can be tested (and scripted) without a
display; the app only decides *which thread* calls what.

Thread-safety is by construction rather than by locks: graphs are never changed once built, so a
worker can run any graph it was handed while another worker builds the next one.  The methods
that compute (`run_engine`, `quantize`, `evaluate`, `footprint`) take what they need as arguments
or read one attribute once; the methods that change the state (`set_model`, `adopt`) are called
from one thread (the app's GUI thread) with results the workers produced.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from . import threads
from .graph import Graph
from .imageio import image_files, load_image
from .models import Model, Prediction, load_model
from .paths import ASSETS, SAMPLES, cache_dir
from .pq import engine
from .pq.layer import PQLayer
from .evaluate import evaluate
from .pq.cost import cost_report
from .pq.modelfile import ModelFileError, load_model_file, pairing_problem, save_model
from .pq.quantize import Cancelled   # also what quantize_model raises: one class to catch
from .pq.quantize import calibration_batch, calibration_for, file_metadata, quantize_model, reconstructed
from .pq.settings import (DEFAULT_SETTINGS, QUANTIZER_VERSION, QuantizableLayer, QuantSettings,  # noqa: F401
                          quantizable_layers, setting_dict, settings_from_metadata)

BUILTIN_MODELS = {
    "efficientnet-lite0": "EfficientNet-Lite0 (ImageNet)",
    "resnet18": "ResNet-18 (ImageNet)",
    "resnet50": "ResNet-50 (ImageNet)",
    "alexnet": "AlexNet — speed test only (random weights)",
}
ENGINES = ("dense", "quantized")
KERNELS = {"reference": "reference (numpy)", "exact": "exact (C)", "fastscan": "fast-scan (C, 4-bit)",
           "fastscan2": "fast-scan, two passes (C, 4-bit, ~16-bit tables)",
           "widescan": "wide-scan (C, K = 17..256)",
           "reconstructed": "reconstructed (dense kernels)",
           "auto": "auto (fastest within budget)"}
SHIPPED = ASSETS / "quantized"     # quantized models built ahead (ResNet-18 `fast`: no wait when chosen)
STALE_TEMP_SECONDS = 3600      # a save's temporary file this old was left by a killed process


def sample_images(folder: Path = SAMPLES) -> list[Path]:
    """The image files of a folder, by name (the bundled samples by default)."""
    return image_files(folder) if Path(folder).is_dir() else []


# --------------------------------------------------------------------------- kernels

def kernel_choices() -> list[tuple[str, str, bool, str]]:
    """(name, label, available, tooltip) for each kernel the quantized engine can run."""
    out = []
    for name in engine.KERNELS:
        problem = kernel_problem(name)
        out.append((name, KERNELS.get(name, name), not problem,
                    engine.DESCRIPTIONS[name] if not problem else f"unavailable: {problem}"))
    return out


@functools.lru_cache(maxsize=None)
def kernel_problem(name: str) -> str:
    """Why kernel `name` cannot run here ("" when it can): it is tried on a tiny PQ layer, so a
    stale C build shows up as a disabled choice rather than a failing engine."""
    from .graph import Node
    try:
        layer = PQLayer("conv", np.zeros((1, 2, 16, 2), np.float32), np.zeros((1, 1, 2, 4), np.uint8), 4)
        graph = with_kernel(Graph([Node("pq", layer, ("input",))]), name)
        graph.forward(np.zeros((1, 3, 3, 4), np.float32))
    except Exception as exc:
        return str(exc) or type(exc).__name__
    return ""


def default_kernel() -> str:
    """"auto" (per layer the fastest implementation) when it runs here, else the numpy reference."""
    return "auto" if not kernel_problem("auto") else "reference"


def with_kernel(graph: Graph, name: str, input_size: int | None = None, plan: dict | None = None) -> Graph:
    """`graph` with its PQ layers running kernel `name` (files and caches keep the canonical form);
    "auto" follows `plan` (auto_plan), exact lookups without one."""
    return engine.with_kernel(graph, name, None if input_size is None else (input_size, input_size), plan)


kernel_map = engine.kernel_map


# --------------------------------------------------------------------------- settings
# One settings type for everything (qcnn.pq.settings.QuantSettings, re-exported here with
# DEFAULT_SETTINGS, quantizable_layers and QuantizableLayer for the app).

def presets(model: Model) -> dict[str, QuantSettings]:
    """The quantizer's named presets for this model (qcnn.pq.presets), each a whole QuantSettings."""
    from .pq import presets as p
    out = {}
    for name in p.preset_names(model.name):
        try:
            settings = p.preset(model.name, name)
            settings.plan(model.graph)
        except ValueError:
            continue                          # a preset naming layers this model lacks: not offered
        out[name] = settings
    return out


# --------------------------------------------------------------------------- frames and runs

@dataclass
class Prepared:
    crop: Image.Image          # what the network sees, before normalisation
    x: np.ndarray              # (1, H, W, 3) float32 network input
    source_size: tuple[int, int]


class Frame:
    """One picture to classify with both engines.  Decoded and preprocessed once, by whichever
    engine's thread gets to it first; the other one waits for that and reuses it."""

    def __init__(self, load: Callable[[], Image.Image], name: str, serial: int = 0):
        self.name = name
        self.serial = serial
        self._load = load
        self._lock = threading.Lock()
        self._done: dict[int, Prepared | BaseException] = {}

    @classmethod
    def from_image(cls, image: Image.Image, name: str, serial: int = 0) -> "Frame":
        return cls(lambda: image, name, serial)

    @classmethod
    def from_path(cls, path: str | os.PathLike, serial: int = 0) -> "Frame":
        return cls(lambda: load_image(path), Path(path).name, serial)

    @classmethod
    def from_bytes(cls, data: bytes, name: str, serial: int = 0) -> "Frame":
        return cls(lambda: load_image(data), name, serial)

    def prepare(self, model: Model) -> Prepared:
        key = id(model.preprocess)
        with self._lock:
            if key not in self._done:
                try:
                    self._done[key] = _prepare(model, self._load())
                except Exception as exc:            # remembered: the other engine reports the same
                    self._done[key] = exc
            done = self._done[key]
        if isinstance(done, BaseException):
            raise done
        return done


def _prepare(model: Model, image: Image.Image) -> Prepared:
    # Crop once and normalise the crop, rather than calling preprocess(image) too, which would
    # resize the full image a second time.  test_workbench checks this equals preprocess(image).
    pre = model.preprocess
    crop = pre.crop_image(image)
    x = np.asarray(crop, dtype=np.float32)
    if pre.channel_order == "BGR":
        x = x[..., ::-1]
    x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return Prepared(crop, x[None].astype(np.float32, copy=False), image.size)


@dataclass
class LayerTime:
    name: str
    kind: str
    ms: float


@dataclass
class EngineRun:
    engine: str                # "dense" or "quantized"
    frame: str
    serial: int
    top: list[Prediction]
    latency_ms: float          # forward pass, per-layer hooks included
    layers: list[LayerTime]
    probs: np.ndarray = field(repr=False, default=None)
    crop: Image.Image | None = field(repr=False, default=None)


def run_engine(model: Model, graph: Graph, frame: Frame, engine: str, top: int = 5) -> EngineRun:
    """Classify `frame` with `graph`, timing every node (graph.forward's on_layer hook)."""
    prepared = frame.prepare(model)
    layers: list[LayerTime] = []

    def hook(node, seconds):
        layers.append(LayerTime(node.name, node.layer.kind, seconds * 1e3))

    t0 = time.perf_counter()
    probs = model.predict(prepared.x, graph, on_layer=hook)[0]
    latency = (time.perf_counter() - t0) * 1e3
    return EngineRun(engine, frame.name, frame.serial, model.top_k(probs, top), latency, layers, probs,
                     prepared.crop)


def agree(dense: EngineRun | None, quantized: EngineRun | None) -> bool | None:
    """Top-1 agreement of the two engines on the same frame; None when one is missing."""
    if dense is None or quantized is None or dense.serial != quantized.serial:
        return None
    return dense.top[0].index == quantized.top[0].index


class LayerTimings:
    """Recent per-layer and whole-frame times of each engine, for the measured speed-ups, and the
    top-1 agreement of the frames both engines classified since the quantized model changed."""

    def __init__(self, keep: int = 30):
        self.keep = keep
        self._runs = {e: deque(maxlen=keep) for e in ENGINES}
        self._latency = {e: deque(maxlen=keep) for e in ENGINES}
        self.agreed = self.compared = 0

    def clear(self, engine: str | None = None) -> None:
        for e in ([engine] if engine else ENGINES):
            self._runs[e].clear()
            self._latency[e].clear()
        self.agreed = self.compared = 0        # either side changed: earlier frames say nothing of it

    def add(self, run: EngineRun) -> None:
        self._runs[run.engine].append({t.name: t.ms for t in run.layers})
        self._latency[run.engine].append(run.latency_ms)

    def add_pair(self, agrees: bool | None) -> None:
        """One frame both engines classified (None: only one did, nothing to count)."""
        if agrees is not None:
            self.compared += 1
            self.agreed += bool(agrees)

    def speedup(self) -> float | None:
        """Median dense / median quantized latency of the recent frames; None before both ran."""
        d, q = self._latency["dense"], self._latency["quantized"]
        if not d or not q:
            return None
        return float(np.median(d)) / max(float(np.median(q)), 1e-9)

    def median_ms(self, engine: str) -> dict[str, float]:
        runs = list(self._runs[engine])
        names = {n for r in runs for n in r}
        return {n: float(np.median([r[n] for r in runs if n in r])) for n in names}

    def speedups(self) -> dict[str, float]:
        """Measured dense/quantized time per layer, over the recent frames of both engines."""
        d, q = self.median_ms("dense"), self.median_ms("quantized")
        return {n: d[n] / q[n] for n in d if n in q and q[n] > 0}


# --------------------------------------------------------------------------- quantized models

@dataclass
class Quantized:
    graph: Graph                 # canonical (reference) PQ graph, as saved
    settings: QuantSettings
    path: Path                   # the .qcnn file it is stored in
    file_bytes: int
    metadata: dict
    from_cache: bool = False
    seconds: float = 0.0         # time it took to make (or load)
    note: str = ""               # what happened to the cache, when it matters (damaged, not writable)

    @property
    def made_seconds(self) -> float | None:
        """How long quantizing took when the model was made (also for a cached one)."""
        value = self.metadata.get("quantize_seconds") if isinstance(self.metadata, dict) else None
        return float(value) if isinstance(value, (int, float)) else None


@dataclass
class Footprint:
    dense_storage_bytes: int         # dense weights, 32 bits each (what the CLI counts)
    quant_file_bytes: int            # the saved .qcnn file
    report: object                   # qcnn.pq.cost.CostReport (same call as `qcnn cost`)

    @property
    def storage_ratio(self) -> float:
        return self.dense_storage_bytes / self.quant_file_bytes if self.quant_file_bytes else float("nan")


def _times(ratio: float, more: str, less: str) -> str:
    """2.61 -> "2.6× faster"; 0.8 -> "1.2× slower" (a ratio below one said the other way round)."""
    return f"{ratio:.1f}× {more}" if ratio >= 1 else f"{1 / ratio:.1f}× {less}"


def demo_line(speedup: float | None, storage_ratio: float | None, agreed: int = 0, compared: int = 0,
              reference: tuple[float, int] | None = None) -> str:
    """The quantized panel's line for an audience: how much faster (median latencies measured
    here), smaller (file sizes) and how often it agrees with dense (top-1 on the frames shown,
    and `reference` = (agreement, images) measured by `qcnn eval` when the preset's notes have it)."""
    parts = ["speed-up: measuring…" if speedup is None or not speedup > 0 else _times(speedup, "faster", "slower")]
    if storage_ratio is not None and storage_ratio > 0 and np.isfinite(storage_ratio):
        parts.append(_times(storage_ratio, "smaller", "larger"))
    here = f"{agreed} of {compared} shown" if compared else ""
    if reference is not None:
        agreement, images = reference
        parts.append(f"agrees with dense on {100 * agreement:.0f} % of {images} ImageNet photos"
                     + (f" ({here})" if here else ""))
    elif compared:
        parts.append(f"agrees with dense on {100 * agreed / compared:.0f} % of photos ({here})")
    return ", ".join(parts)


def model_key(model: Model) -> dict:
    """What identifies a model's weights for the cache."""
    return dict(model.identity) if model.identity else {"name": model.name, "params": _graph_digest(model.graph)}


def _graph_digest(graph: Graph) -> str:
    h = hashlib.sha256()
    for name, value in sorted(graph.params().items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


def _folder_fingerprint(folder: str | None) -> object:
    """The calibration images as the cache sees them: names and sizes (bundled ones included, so
    a changed sample set is a different model)."""
    path = SAMPLES if folder is None else Path(folder)
    files = sample_images(path)
    return ["bundled" if folder is None else os.path.abspath(folder), [(p.name, p.stat().st_size) for p in files]]


def cache_key(model: Model, settings: QuantSettings) -> str:
    """Same key <=> same model: the quantizer's version, the weights, what each layer gets, and
    every field the fit depends on (error correction's options and images only when it runs)."""
    canon = settings.canonical()
    fields = {k: v for k, v in canon.to_dict().items() if k not in ("conv", "fc", "layers", "calib_folder")}
    plan = {name: setting_dict(s) for name, s in canon.plan(model.graph).items()}
    calib = _folder_fingerprint(canon.calib_folder) if canon.correcting else None
    text = json.dumps({"quantizer": QUANTIZER_VERSION, "model": model_key(model), "plan": plan, "fit": fields,
                       "calibration": calib}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def plan_path(graph: Graph, metadata: dict | None) -> Path:
    """Where the kernel plan of a quantized model is cached, per SIMD level: keyed by the model's
    cache key (its settings and weights) or, for a file without one, by its quantized weights."""
    from .kernels import isa
    key = metadata.get("cache_key") if isinstance(metadata, dict) else None
    key = key if isinstance(key, str) and key.isalnum() else _graph_digest(graph)
    return cache_dir() / "plans" / f"{key}-{isa()}-v{engine.PLAN_VERSION}.json"


def auto_plan(model: Model, graph: Graph, metadata: dict | None = None, calib_folder: str | None = None,
              progress: Callable[[str, float], None] | None = None) -> dict:
    """The kernel plan "auto" follows for a quantized `graph` of `model` (qcnn.pq.engine.kernel_plan),
    measured once per model, settings, SIMD level and build of the kernels: from the .qcnn file's metadata
    ("kernel_plans", written by `qcnn quantize`), else from the plan cache, else measured on
    PLAN_IMAGES calibration images (calib_folder, else the bundled photos) and cached.  The
    returned plan's "source" says which."""
    from .kernels import isa
    stored = (metadata or {}).get("kernel_plans") if isinstance(metadata, dict) else None
    if isinstance(stored, dict) and not engine.plan_problem(graph, stored.get(isa())):
        return {**stored[isa()], "source": "stored in the model file"}
    path = plan_path(graph, metadata)
    with contextlib.suppress(OSError, ValueError):
        plan = json.loads(path.read_text())
        if not engine.plan_problem(graph, plan):
            return {**plan, "source": f"cached {path}"}
    if progress:
        progress("kernel plan: measuring fast-scan's error and the kernels' times", 0.0)
    calib = calibration_batch(model, calib_folder, count=engine.PLAN_IMAGES, seed=0)
    plan = engine.kernel_plan(graph, calib, dense=model.graph)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(plan, indent=1))
        os.replace(tmp, path)            # atomic: a reader sees no plan or the whole plan
        source = f"measured now, cached as {path}"
    except OSError as exc:
        source = f"measured now (plan cache not writable: {exc.strerror or exc})"
    return {**plan, "source": source}


def cache_path(model: Model, settings: QuantSettings) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model.name)[:40]
    return cache_dir() / "quantized" / f"{safe}-{cache_key(model, settings)}.qcnn"


def shipped_path(model: Model, settings: QuantSettings) -> Path:
    """Where a quantized model shipped with qcnn would be (assets/quantized, built by
    scripts/build-shipped-models.py): the cache's file name, so a stale one is never a match."""
    return SHIPPED / cache_path(model, settings).name


def _remove_stale_temporaries(folder: Path) -> None:
    """Temporary files of saves killed before they could clean up (modelfile.save_model names
    them .NAME.XXXX.tmp); one an hour old belongs to no running save."""
    now = time.time()
    for tmp in folder.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > STALE_TEMP_SECONDS:
                tmp.unlink()


def progressive_stages(model: Model, settings: QuantSettings) -> list[QuantSettings]:
    """What to build, in order, to show a settings change as early as possible: with error
    correction, first the k-means-only model (quick; its own cache entry), then the corrected one.
    Just `settings` when it needs no error correction or is cached already."""
    if not settings.error_correction or cache_path(model, settings).is_file() or shipped_path(model, settings).is_file():
        return [settings]
    return [settings.replace(error_correction=False), settings]


# --------------------------------------------------------------------------- the workbench

class Workbench:
    """The current model, its dense graph, the quantized graph in use and how it runs."""

    def __init__(self, model: Model | None = None):
        self.model: Model | None = None
        self.dense_graph: Graph | None = None
        self.quantized: Quantized | None = None
        self.kernel = default_kernel()
        self.quant_graph: Graph | None = None      # quantized.graph as run with self.kernel
        self.dense_note = ""                       # when the dense graph is not the original
        self.source: str | None = None             # the ONNX file the model came from, if any
        self.timings = LayerTimings()
        if model is not None:
            self.set_model(model)

    # ---- models
    @staticmethod
    def load(spec: str | os.PathLike, preprocess: str | None = None, labels: str | os.PathLike | None = None) -> Model:
        """A built-in model by name or an ONNX file (the app calls this in a worker); `preprocess`
        and `labels` as in qcnn.models.load_model (ONNX files only)."""
        return load_model(spec, preprocess=preprocess, labels=labels)

    def set_model(self, model: Model, dense_graph: Graph | None = None, note: str = "",
                  source: str | os.PathLike | None = None) -> None:
        self.model = model
        self.source = os.fspath(source) if source is not None and os.path.isfile(source) else None
        self.dense_graph = dense_graph or model.graph
        self.dense_note = note
        self.quantized = None
        self.quant_graph = None
        self.timings.clear()

    def graph(self, engine: str) -> Graph | None:
        return self.dense_graph if engine == "dense" else self.quant_graph

    # ---- running
    def run(self, frame: Frame, engine: str, graph: Graph | None = None) -> EngineRun:
        graph = graph or self.graph(engine)
        if graph is None:
            raise RuntimeError(f"no {engine} graph yet")
        return run_engine(self.model, graph, frame, engine)

    def record(self, run: EngineRun) -> None:
        self.timings.add(run)

    @staticmethod
    def set_threads(n: int) -> None:
        threads.set_num_threads(n)

    # ---- quantizing
    def quantize(self, settings: QuantSettings, progress: Callable[[str, float], None] | None = None,
                 cancel: threading.Event | None = None, model: Model | None = None,
                 use_cache: bool = True) -> Quantized:
        """The quantized graph for `settings`: from the on-disk cache when it is there, else made
        (k-means, error correction) and saved there.  Changes nothing in the workbench; hand the
        result to `adopt`.  Raises Cancelled when `cancel` is set before it finishes.

        The cache never costs a result: a damaged or foreign entry is removed and made again, and
        a cache that cannot be written leaves the model uncached (Quantized.note says so).
        use_cache=False neither reads nor writes it."""
        model = model or self.model
        t0 = time.perf_counter()
        key = cache_key(model, settings)
        path = cache_path(model, settings)
        notes = []
        if use_cache:
            # The user's cache first, then what qcnn ships (read only: never removed when stale).
            cached = (self._load_cached(path, key, settings, notes)
                      or self._load_cached(shipped_path(model, settings), key, settings, notes, remove=False))
            if cached is not None:
                cached.seconds = time.perf_counter() - t0
                return cached
        report = progress or (lambda text, fraction: None)

        def on_progress(layer: str, step: str, fraction: float) -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled("quantization cancelled")
            report(f"{layer}: {step}" if layer else step, fraction)

        calib = None
        if settings.correcting:
            report("calibration images", 0.0)
            calib = calibration_for(model, settings)
        graph = quantize_model(model, settings, calib, progress=on_progress, cancel=cancel)
        seconds = time.perf_counter() - t0
        metadata = {"app": "qcnn", **file_metadata(settings, seconds), "cache_key": key,
                    "model_identity": model_key(model)}
        if self.source is not None and model is self.model:
            metadata["source"] = os.path.abspath(self.source)
        size = self._store(path, model, graph, metadata, notes) if use_cache else None
        if size is None:
            path, size = None, _file_size(model, graph, metadata)
        return Quantized(graph, settings, path, size, metadata, False, seconds, "; ".join(notes))

    @staticmethod
    def _load_cached(path: Path, key: str, settings: QuantSettings, notes: list[str],
                     remove: bool = True) -> Quantized | None:
        if not path.is_file():
            return None
        try:
            loaded, metadata = load_model_file(path)
            problem = None
            if metadata.get("cache_key") != key or metadata.get("quantizer_version") != QUANTIZER_VERSION:
                problem = "made for other settings or by another version"
        except (ModelFileError, OSError) as exc:
            problem = getattr(exc, "reason", None) or str(exc)
        if problem is not None:
            if remove:
                with contextlib.suppress(OSError):
                    path.unlink()
            notes.append(f"{'cached' if remove else 'shipped'} model {path.name} was unusable ({problem}): made again")
            return None
        return Quantized(loaded.graph, settings, path, path.stat().st_size, metadata, True)

    @staticmethod
    def _store(path: Path, model: Model, graph: Graph, metadata: dict, notes: list[str]) -> int | None:
        """Save into the cache (atomically: readers see the old file or the whole new one, and two
        processes saving the same model at once both leave a complete file); None if it cannot."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_temporaries(path.parent)
            return save_model(path, model, graph, metadata)
        except (ModelFileError, OSError) as exc:
            notes.append(f"quantization cache {path.parent} is not writable "
                         f"({getattr(exc, 'reason', None) or exc.strerror or exc}): not cached")
            return None

    def adopt(self, quantized: Quantized, kernel_graph: Graph | None = None, prepare: bool = True) -> None:
        """Use `quantized` from now on (the next frame runs it).  prepare=False: its kernel graph
        is made and run elsewhere (the app's engine process), so quant_graph stays None."""
        self.quantized = quantized
        self.quant_graph = (kernel_graph if kernel_graph is not None
                            else self.kernel_graph(self.kernel) if prepare
                            else None)
        self.timings.clear("quantized")

    def kernel_graph(self, name: str) -> Graph | None:
        """The quantized graph converted for kernel `name` (may take a moment: call it in a worker)."""
        if self.quantized is None:
            return None
        return with_kernel(self.quantized.graph, name, self.model.input_size,
                           self.plan_for(self.quantized) if name == "auto" else None)

    def plan_for(self, quantized: Quantized) -> dict:
        """The kernel plan of `quantized` ("auto"), measured once and cached (auto_plan)."""
        folder = quantized.settings.calib_folder if quantized.settings is not None else None
        return auto_plan(self.model, quantized.graph, quantized.metadata, folder)

    def set_kernel(self, name: str, graph: Graph | None) -> None:
        self.kernel = name
        if graph is not None:
            self.quant_graph = graph
        self.timings.clear("quantized")

    # ---- model files
    def open_model_file(self, path: str | os.PathLike) -> tuple[Model, Graph, Quantized, str]:
        """Read a .qcnn file: (dense model, dense graph, Quantized, note).  The dense side is the
        original built-in model when the file names one with the same weights; otherwise the
        dense network is rebuilt from the codebooks (said so in the note)."""
        loaded, metadata = load_model_file(path)
        identity = metadata.get("model_identity") or loaded.identity
        dense_model, note = None, ""
        name = (identity or {}).get("name")
        source = metadata.get("source")
        for spec in ([name] if name in BUILTIN_MODELS else []) + ([source] if isinstance(source, str) else []):
            try:
                candidate = load_model(spec) if spec in BUILTIN_MODELS or os.path.isfile(spec) else None
            except Exception:
                candidate = None                    # moved or changed: rebuild from the codebooks
            if candidate is not None and model_key(candidate) == identity:
                mismatch = pairing_problem(loaded, candidate)     # the metadata may name any model
                if not mismatch:
                    dense_model = candidate
                    break
                note = f"the file names {candidate.name}, but {mismatch}: "
        if dense_model is None:
            dense_model = Model(loaded.name, reconstructed(loaded.graph), loaded.preprocess, loaded.labels,
                                loaded.description, loaded.speed_test_only, dict(loaded.identity))
            note = (note or "the original network is not available: ") + "dense weights rebuilt from the codebooks"
        settings, known = settings_from_metadata(metadata, loaded.graph)
        if not known:
            note = "; ".join(filter(None, [note, "the file does not say how it was quantized"]))
        path = Path(path)
        q = Quantized(loaded.graph, settings, path, path.stat().st_size, metadata, True)
        return dense_model, dense_model.graph, q, note

    def save_model_file(self, path: str | os.PathLike) -> int:
        if self.quantized is None:
            raise RuntimeError("nothing quantized to save yet")
        return save_model(path, self.model, self.quantized.graph, self.quantized.metadata)

    # ---- footprints
    def footprint(self) -> Footprint | None:
        if self.quantized is None:
            return None
        return footprint(self.model, self.dense_graph, self.quantized, self.quant_graph)

    # ---- finding settings
    def find_settings(self, folder: str | os.PathLike, objective: str = "compression",
                      progress: Callable[[str, float], None] | None = None, cancel: threading.Event | None = None,
                      model: Model | None = None, **options):
        """Per-layer settings for the model from a folder of unlabelled photos, measured by agreement
        with the dense model (qcnn.pq.search.find_settings, whose keyword options pass through):
        a Found, whose `settings` go to `quantize` and whose `report` is a settings file."""
        from .pq.search import find_settings
        return find_settings(model or self.model, folder, objective, progress=progress, cancel=cancel, **options)

    @staticmethod
    def save_settings(path: str | os.PathLike, found) -> None:
        """Write what find_settings found as a settings file (`qcnn ... --config FILE` reads it),
        atomically."""
        from .pq.search import write_report
        write_report(path, found.report)

    # ---- evaluation
    def evaluate(self, labels_csv: str | os.PathLike, images_dir: str | os.PathLike | None = None,
                 progress: Callable[[int, int], None] | None = None, cancel: threading.Event | None = None,
                 limit: int | None = None):
        """Top-1/top-5 of both engines on a labelled folder (qcnn.evaluate)."""
        model, dense, quant = self.model, self.dense_graph, self.quant_graph
        engines = {"dense": lambda x: model.predict(x, dense)}
        if quant is not None:
            engines["quantized"] = lambda x: model.predict(x, quant)

        def on_progress(i, n):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            if progress:
                progress(i, n)

        return evaluate(model, labels_csv, images_dir, engines=engines, limit=limit, progress=on_progress)


def search_folder(photo: str | os.PathLike | None = None) -> Path:
    """Where to look for settings by default: the folder of the photo in view when it holds enough
    photos for a search, else the bundled samples."""
    from .pq.search import MIN_PHOTOS
    if photo is not None:
        folder = Path(photo).resolve().parent
        with contextlib.suppress(OSError):
            if len(image_files(folder)) >= MIN_PHOTOS:
                return folder
    return SAMPLES


def footprint(model: Model, dense_graph: Graph, quantized: Quantized, kernel_graph: Graph | None = None,
              kernels: dict[str, str] | None = None) -> Footprint:
    """Storage and cost of a quantized model: the numbers `qcnn cost` prints.  `kernel_graph`
    (the graph as it runs), or `kernels` (its kernel_map), fills in which kernel each layer uses."""
    kernels = kernel_map(kernel_graph) if kernel_graph is not None else kernels
    report = cost_report(quantized.graph, (model.input_size, model.input_size), dense_graph=dense_graph,
                         kernels=kernels)
    return Footprint(report.dense_bits // 8, quantized.file_bytes, report)


def _file_size(model: Model, graph: Graph, metadata: dict) -> int:
    """Bytes the model's .qcnn file takes, for a model the cache could not keep."""
    import tempfile
    try:
        with tempfile.TemporaryDirectory(prefix="qcnn-") as tmp:
            return save_model(os.path.join(tmp, "model.qcnn"), model, graph, metadata)
    except (ModelFileError, OSError):
        return 0
