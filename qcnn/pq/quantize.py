"""Model-level product quantization: calibration data and the layer-by-layer driver.

quantize_model() takes a QuantSettings (qcnn.pq.settings) and never touches the Model or Graph it
is given: it returns a new Graph whose unquantized nodes share the (never mutated) layer objects
of the original.  Cancellation raises Cancelled at the next check, before anything is returned,
so there is nothing to roll back.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..graph import Graph, Node
from ..paths import SAMPLES
from ..threads import ensure_thread_limit
from .correct import ConvView, correct, sample_rows
from .kmeans import init_codebooks
from .layer import PQLayer, PQSetting
from .settings import QUANTIZER_VERSION, QuantSettings
from .taps import expand_taps

# progress(layer_name, step, fraction): step is "kmeans", "correct", "forward" or "done";
# fraction is the overall fraction of the work done, 0..1, non-decreasing.
Progress = Callable[[str, str, float], None]


class Cancelled(Exception):
    """Quantization was cancelled; the input model is untouched and no result exists."""


def _checker(cancel) -> Callable[[], None]:
    if cancel is None:
        return lambda: None
    is_set = cancel.is_set if hasattr(cancel, "is_set") else cancel

    def check():
        if is_set():
            raise Cancelled("quantization cancelled")
    return check


# ----------------------------------------------------------------------------- one layer

def quantize_layer(layer, setting: PQSetting, x_quant: np.ndarray | None = None, x_dense: np.ndarray | None = None,
                   *, error_correction: bool = True, iterations: int = 4, seed: int = 0, max_rows: int = 8192,
                   kmeans_init: int = 1, shrinkage: float = 1.0, check: Callable[[], None] | None = None,
                   on_step: Callable[[str, float], None] | None = None) -> PQLayer:
    """A PQLayer for a Conv2D or Dense layer.  With error correction, x_quant are the layer's inputs
    in the partly quantized network and x_dense its inputs in the dense one (the targets)."""
    view = ConvView.of(layer)
    kh, kw, cin_g, cout = view.weight.shape
    books, codes = init_codebooks(view.weight, view.groups, setting, seed=seed, n_init=kmeans_init, check=check,
                                  on_step=None if on_step is None else (lambda f: on_step("kmeans", f)))
    bias = view.bias
    if error_correction and iterations > 0:
        if x_quant is None or x_dense is None:
            raise ValueError("error correction needs calibration inputs")
        rng = np.random.default_rng(seed)
        x, y = sample_rows(view, x_quant, x_dense, max_rows, rng)
        g, cout_g = view.groups, cout // view.groups
        m = codes.shape[2]
        grouped_codes = codes.reshape(kh * kw, m, g, cout_g).transpose(2, 0, 1, 3)       # (G, O, M, C/g)
        res = correct(x, y, books, grouped_codes, view.grouped_weight(),
                      None if bias is None else bias.reshape(g, cout_g), iterations=iterations,
                      shrinkage=shrinkage, check=check,
                      on_step=None if on_step is None else (lambda f: on_step("correct", f)))
        books = res.codebook
        codes = res.codes.transpose(1, 2, 0, 3).reshape(kh, kw, m, cout)
        bias = None if res.bias is None else res.bias.reshape(cout)
    return PQLayer(view.kind_of, books, codes, cin_g * view.groups, bias=bias, stride=view.stride,
                   pads=view.pads, groups=view.groups, activation=view.activation)


def fit_options(settings: QuantSettings) -> dict:
    """quantize_layer's keyword arguments for `settings`."""
    return {"error_correction": settings.correcting, "iterations": settings.iterations, "seed": settings.seed,
            "max_rows": settings.max_rows, "kmeans_init": settings.kmeans_init, "shrinkage": settings.shrinkage}


# ----------------------------------------------------------------------------- whole model

def _run(layer, args: list[np.ndarray], chunk: int = 32) -> np.ndarray:
    """layer(*args) in batches of images, so im2col temporaries stay small."""
    n = args[0].shape[0]
    if n <= chunk:
        return layer(*args)
    first = layer(*[a[:chunk] for a in args])
    out = np.empty((n,) + first.shape[1:], first.dtype)
    out[:chunk] = first
    for s in range(chunk, n, chunk):
        out[s:s + chunk] = layer(*[a[s:s + chunk] for a in args])
    return out


def quantize_model(model, settings: QuantSettings, calib: np.ndarray | None = None,
                   progress: Progress | None = None, cancel=None) -> Graph:
    """A new Graph with the layers `settings` names product-quantized, in network order.

    With error correction each layer is fitted on its inputs in the network quantized so far,
    against the dense network's responses, so it also corrects the error accumulated below it.
    `calib` is a preprocessed NHWC batch; without one it is made from the settings' calibration
    images (calibration_for: needs a Model, not only a Graph).  `cancel` is an Event-like object
    (is_set()) or a callable returning True to stop, which raises Cancelled."""
    graph: Graph = getattr(model, "graph", model)
    check = _checker(cancel)
    graph, todo = expand_taps(graph, settings.quantized(graph))
    correcting = settings.correcting
    if correcting and calib is None:
        if not hasattr(model, "preprocess"):
            raise ValueError("error correction needs a calibration batch")
        calib = calibration_for(model, settings)
    ensure_thread_limit()

    # Work units for the progress fraction: a layer's weight count (a proxy for its k-means and
    # correction cost) plus, when correcting, one unit per node for the forward passes.
    weights = {n: graph[n].layer.weight.size for n in todo}
    total = float(sum(weights.values()) or 1)
    fwd_unit = 0.25 * total / len(graph.nodes) if correcting else 0.0
    total += fwd_unit * len(graph.nodes) if correcting else 0.0
    shown = [0.0]

    def report(name: str, step: str, units: float) -> None:
        # Absolute work units -> overall fraction, never going backwards.
        shown[0] = max(shown[0], min(1.0, units / total))
        if progress:
            progress(name, step, shown[0])

    check()
    options = fit_options(settings)
    if not correcting:
        new_layers, done = {}, 0.0
        for name, setting in todo.items():
            check()
            w = weights[name]
            new_layers[name] = quantize_layer(graph[name].layer, setting, **options, check=check,
                                              on_step=lambda step, f, name=name, w=w, base=done:
                                              report(name, step, base + f * w))
            done += w
    else:
        new_layers = _quantize_corrected(graph, todo, options, np.asarray(calib, np.float32), check, report,
                                         weights, fwd_unit)
    check()
    nodes = [Node(n.name, new_layers.get(n.name, n.layer), tuple(n.inputs)) for n in graph]
    if progress:
        progress("", "done", 1.0)
    return Graph(nodes, graph.input_name, graph.output)


def file_metadata(settings: QuantSettings, seconds: float) -> dict:
    """What a .qcnn file says about how it was made (read back by settings_from_metadata)."""
    return {"settings": settings.to_dict(), "quantizer_version": QUANTIZER_VERSION,
            "quantize_seconds": round(seconds, 3)}


def _quantize_corrected(graph, todo, options, calib, check, report, weights, fwd_unit):
    """Walk the graph once, keeping each tensor for the dense and the partly quantized network.
    Until the first quantized layer both are the same arrays (no duplicate work or memory)."""
    last_use = {}
    for i, node in enumerate(graph.nodes):
        for name in node.inputs:
            last_use[name] = i
    dense = {graph.input_name: calib}
    quant = {graph.input_name: calib}
    new_layers = {}
    done = 0.0
    for i, node in enumerate(graph.nodes):
        check()
        xd = [dense[n] for n in node.inputs]
        xq = [quant[n] for n in node.inputs]
        dense[node.name] = yd = _run(node.layer, xd)
        setting = todo.get(node.name)
        if setting is not None:
            w = weights[node.name]
            base = done
            pq = quantize_layer(node.layer, setting, xq[0], xd[0], **options, check=check,
                                on_step=lambda step, f, name=node.name, w=w, base=base:
                                report(name, step, base + (0.2 * f if step == "kmeans" else 0.2 + 0.8 * f) * w))
            new_layers[node.name] = pq
            done += w
            # The reconstructed dense layer computes the same function as the lookup forward,
            # with BLAS instead of gathers.
            quant[node.name] = _run(pq.to_dense(), xq)
        elif all(a is b for a, b in zip(xq, xd)):
            quant[node.name] = yd
        else:
            quant[node.name] = _run(node.layer, xq)
        done += fwd_unit
        report(node.name, "forward", done)
        for name in node.inputs:
            if last_use[name] == i:
                dense.pop(name, None)
                quant.pop(name, None)
    return new_layers


def reconstructed(graph: Graph) -> Graph:
    """The same network with every PQLayer replaced by its reconstructed dense layer: identical
    outputs (up to float rounding) at BLAS speed, for accuracy evaluation."""
    return Graph([Node(n.name, n.layer.to_dense() if isinstance(n.layer, PQLayer) else n.layer, tuple(n.inputs))
                  for n in graph], graph.input_name, graph.output)


# ----------------------------------------------------------------------------- calibration data

def _augment(img, rng: np.random.Generator):
    """Random resized crop (8-100 % of the area, aspect 3/4..4/3) and a coin-flip mirror."""
    from PIL import Image
    w, h = img.size
    for _ in range(10):
        area = w * h * rng.uniform(0.08, 1.0)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            img = img.crop((left, top, left + cw, top + ch))
            break
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def calibration_for(model, settings: QuantSettings) -> np.ndarray:
    """The calibration batch `settings` name (folder or bundled photos, count, seed)."""
    return calibration_batch(model, folder=settings.calib_folder, count=settings.calib_count, seed=settings.seed)


def _choose(paths: list, count: int, rng: np.random.Generator) -> list:
    """The files a calibration batch of `count` uses as they are: all, or a seeded random subset."""
    if len(paths) > count:
        return [paths[i] for i in np.sort(rng.choice(len(paths), count, replace=False))]
    return list(paths)


def calibration_files(folder, count: int, seed: int = 0) -> list[Path]:
    """The image files of `folder` that calibration_batch(folder=folder, count, seed) uses as they
    are (the search keeps them out of its probe images)."""
    from ..imageio import image_files
    return _choose(image_files(folder or SAMPLES), count, np.random.default_rng(seed))


def calibration_batch(model, folder=None, count: int = 128, seed: int = 0, files=None) -> np.ndarray:
    """(count, H, W, 3) preprocessed calibration inputs; no labels needed.

    Images come from `files`, else `folder`, else the bundled samples.  Each image is used once as
    is; when there are fewer images than `count` the rest are random resized crops and flips of
    them (deterministic for a seed).  With more images than `count` a seeded random subset is used.
    Unreadable files are skipped."""
    from ..imageio import ImageLoadError, image_files, load_image
    paths = [Path(p) for p in files] if files is not None else image_files(folder or SAMPLES)
    rng = np.random.default_rng(seed)
    paths = _choose(paths, count, rng)
    images = []
    for p in paths:
        try:
            images.append(load_image(p))
        except ImageLoadError:
            continue
    if not images:
        raise ValueError(f"no readable calibration images in {folder or SAMPLES}")
    out = np.empty((count, model.input_size, model.input_size, 3), np.float32)
    for i in range(count):
        img = images[i % len(images)]
        out[i] = model.preprocess(img if i < len(images) else _augment(img, rng))[0]
    return out
