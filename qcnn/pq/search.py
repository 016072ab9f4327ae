"""Per-layer sensitivity analysis and a greedy search for per-layer PQ settings.

Everything is measured against the dense model on unlabelled images:
  agree  top-1 agreement with the dense model,
  keep5  fraction of images whose dense top-1 class is still in the quantized top-5,
  kl     mean KL(dense || quantized) of the class distributions.

search():
  1. sensitivity: quantize one layer at a time with each setting of a ladder (error correction
     included, the rest of the network dense) and measure kl on the probe images;
  2. greedy path: from all-dense, repeatedly apply the single-layer change with the best ratio
     (saving in the objective -- MACs or bits -- per unit of added kl), until nothing saves more;
  3. check: binary-search the longest prefix of that path whose WHOLE model, quantized in
     network order with error correction, meets the accuracy budget on the probe images.
The result maximises the theoretical speed-up or compression the path reaches within the budget.

Run as a script (python -m qcnn.pq.search --help) to reproduce the shipped Lite0 presets.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..evaluate import accuracy
from ..graph import Graph
from .cost import SettingCosts
from .layer import PQSetting
from .quantize import _checker, fit_options, quantize_layer, quantize_model, reconstructed
from .settings import QuantSettings, quantizable_layers

# Candidate settings, most to least bits per weight (roughly).  K=256 is left out of the
# compression ladder: for Lite0's layers (C_out <= 1280) its codebooks cost more than it saves.
LADDERS = {
    "compression": [PQSetting(1, 16), PQSetting(2, 64), PQSetting(2, 32), PQSetting(3, 32), PQSetting(4, 64),
                    PQSetting(4, 32), PQSetting(4, 16)],
    "speed": [PQSetting(2, 64), PQSetting(2, 32), PQSetting(2, 16), PQSetting(3, 32), PQSetting(4, 64),
              PQSetting(4, 32), PQSetting(4, 16)],
    # Only settings the fast-scan kernel runs (K <= 16): measured speed follows the theory there,
    # while K > 16 layers run the exact kernel, several times slower per lookup.
    "fastscan": [PQSetting(2, 16), PQSetting(3, 16), PQSetting(4, 16), PQSetting(6, 16), PQSetting(8, 16)],
    # Near-lossless compression: one channel per subspace, 16 values per (channel, kernel offset).
    # On ResNet-18's layer4 it kept probe KL at 0.007 where C_s'=2, K=16 gave 0.17 (both error
    # corrected), for ~5 bits per weight instead of ~2.5: what an `accurate` preset is searched with.
    "accurate": [PQSetting(1, 16)],
}


@dataclass
class Budget:
    """Accuracy budget for the whole model on the probe images (unset limits are ignored)."""
    max_kl: float | None = None
    min_agree: float | None = None
    min_keep5: float | None = None

    def met(self, m: dict) -> bool:
        return ((self.max_kl is None or m["kl"] <= self.max_kl)
                and (self.min_agree is None or m["agree"] >= self.min_agree)
                and (self.min_keep5 is None or m["keep5"] >= self.min_keep5))


def agreement(ref_probs: np.ndarray, probs: np.ndarray) -> dict:
    top5 = np.argsort(-probs, axis=1, kind="stable")[:, :5]
    ref1 = ref_probs.argmax(1)
    kl = np.sum(ref_probs * (np.log(ref_probs + 1e-12) - np.log(probs + 1e-12)), axis=1)
    return {"agree": float(np.mean(top5[:, 0] == ref1)), "keep5": float(np.mean((top5 == ref1[:, None]).any(1))),
            "kl": float(np.mean(kl))}


def read_sensitivity(path) -> dict[str, dict[PQSetting, dict]]:
    """A sensitivity table saved by `--sensitivity` ({layer: {"CxK": {"agree", "keep5", "kl"}}}),
    checked; FileNotFoundError when there is none yet, ValueError naming the file otherwise."""
    from ..files import read_json
    if not os.path.lexists(path):
        raise FileNotFoundError(path)
    raw = read_json(path, "sensitivity table")

    def bad(why: str):
        raise ValueError(f"sensitivity table {path}: {why} (delete the file to measure it again)")

    if not isinstance(raw, dict):
        bad("expected an object of layers")
    table = {}
    for layer, row in raw.items():
        if not isinstance(row, dict):
            bad(f"layer {layer!r:.40}: expected an object of settings")
        table[layer] = {}
        for key, metrics in row.items():
            dsub, _, ksub = key.partition("x")
            if not (dsub.isdecimal() and ksub.isdecimal() and len(key) < 12):
                bad(f"layer {layer!r:.40}: setting {key!r:.20} is not C_s'xK")
            if not (isinstance(metrics, dict) and all(type(metrics.get(m)) in (int, float) for m in ("agree", "keep5", "kl"))):
                bad(f"layer {layer!r:.40} setting {key}: expected numbers agree, keep5 and kl")
            try:
                table[layer][PQSetting(int(dsub), int(ksub))] = metrics
            except ValueError as exc:
                bad(f"layer {layer!r:.40}: {exc}")
    return table


def _last_use(graph: Graph) -> dict[str, int]:
    last = {}
    for i, node in enumerate(graph.nodes):
        for name in node.inputs:
            last[name] = i
    return last


def _forward_from(graph: Graph, env: dict, start: int, replace: dict, last: dict, chunk: int = 32,
                  check: Callable[[], None] = lambda: None) -> np.ndarray:
    """Finish a forward pass from node `start` given the live tensors `env` (not modified), with some
    layers replaced; in image chunks to bound memory (and to stop soon when cancelled)."""
    n = next(iter(env.values())).shape[0]
    outs = []
    for s in range(0, n, chunk):
        check()
        local = {k: v[s:s + chunk] for k, v in env.items()}
        for i in range(start, len(graph.nodes)):
            node = graph.nodes[i]
            local[node.name] = replace.get(node.name, node.layer)(*[local[k] for k in node.inputs])
            for k in node.inputs:
                if last[k] == i and k != graph.output:
                    del local[k]
        outs.append(local[graph.output])
    return np.concatenate(outs)


def sensitivity(model, calib: np.ndarray, probe: np.ndarray, ladder: list[PQSetting], layers: list[str] | None = None,
                config: QuantSettings | None = None, progress: Callable[[str, str, float], None] | None = None,
                cancel=None, useful: Callable[[str, PQSetting], bool] | None = None) -> dict[str, dict[PQSetting, dict]]:
    """{layer: {setting: agreement metrics}}, each layer quantized alone (rest dense) and error
    corrected on `calib`, measured on `probe` (`config`: how to fit; its layers are ignored).  One
    pass through the dense network.  Settings for which useful(layer, setting) is False are
    skipped (e.g. ones that save nothing).  progress(layer, step, fraction) comes after each
    setting (step "C_s'xK") and once per layer (step "sensitivity"), so a big layer shows moving."""
    graph: Graph = model.graph
    options = fit_options(config or QuantSettings())
    check = _checker(cancel)
    layers = set(layers if layers is not None else [q.name for q in quantizable_layers(graph)])
    unknown = sorted(layers - {q.name for q in quantizable_layers(graph)})
    if unknown:
        raise ValueError(f"not quantizable layers of this model: {', '.join(unknown)[:200]}")
    last = _last_use(graph)
    ref = model.probabilities(graph.forward(probe))
    cal_env = {graph.input_name: calib}
    probe_env = {graph.input_name: probe}
    out, done = {}, 0
    for i, node in enumerate(graph.nodes):
        if node.name in layers:
            out[node.name] = {}
            x = cal_env[node.inputs[0]]
            todo = [s for s in ladder if useful is None or useful(node.name, s)]
            for j, setting in enumerate(todo):
                check()
                pq = quantize_layer(node.layer, setting, x, x, **options, check=check)
                probs = model.probabilities(_forward_from(graph, probe_env, i, {node.name: pq.to_dense()}, last,
                                                          check=check))
                out[node.name][setting] = agreement(ref, probs)
                if progress and j + 1 < len(todo):
                    progress(node.name, f"{setting.dsub}x{setting.ksub}", (done + (j + 1) / len(todo)) / len(layers))
            done += 1
            if progress:
                progress(node.name, "sensitivity", done / len(layers))
        check()
        for env in (cal_env, probe_env):
            env[node.name] = node.layer(*[env[k] for k in node.inputs])
            for k in node.inputs:
                if last[k] == i:
                    del env[k]
    return out


@dataclass
class SearchResult:
    config: QuantSettings
    metrics: dict                      # probe agreement of the chosen whole model
    speedup: float
    compression: float
    path: list[tuple[str, PQSetting]]  # greedy moves, in order
    checks: list[dict] = field(default_factory=list)


def greedy_path(sens: dict, cost: Callable[[str, PQSetting | None], float]) -> list[tuple[str, PQSetting]]:
    """Moves (layer, setting) by best saving per added kl, each saving something over the layer's
    current state; the kl of a layer alone is the additive sensitivity model."""
    state = {name: None for name in sens}
    kl_now = {name: 0.0 for name in sens}
    path = []
    while True:
        best, best_score = None, 0.0
        for name, options in sens.items():
            c_now = cost(name, state[name])
            for setting, m in options.items():
                saving = c_now - cost(name, setting)
                if saving <= 0:
                    continue
                score = saving / max(m["kl"] - kl_now[name], 1e-6)
                if score > best_score:
                    best, best_score = (name, setting), score
        if best is None:
            return path
        state[best[0]], kl_now[best[0]] = best[1], sens[best[0]][best[1]]["kl"]
        path.append(best)


SENSITIVITY_SHARE = 0.6      # of the progress fraction, when the sensitivity table is measured here


def longest_prefix(n: int, within_budget: Callable[[int], bool]) -> int:
    """The longest prefix length k <= n of a greedy path with within_budget(k), by bisection (the
    budget is assumed monotone along the path; k = 0, all dense, always qualifies)."""
    lo, hi = 0, n
    if within_budget(hi):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if within_budget(mid):
            lo = mid
        else:
            hi = mid
    return lo


def search(model, calib: np.ndarray, probe: np.ndarray, objective: str, budget: Budget,
           ladder: list[PQSetting] | None = None, sens: dict | None = None, config: QuantSettings | None = None,
           target: float | None = None, log: Callable[[str], None] = lambda s: None, cancel=None,
           layers: list[str] | None = None, sens_probe: int | None = None, sens_config: QuantSettings | None = None,
           progress: Callable[[str, float], None] | None = None, kernel: str | None = None) -> SearchResult:
    """Per-layer settings maximising `objective` ("speed" or "compression") within `budget`.
    With a `target` (speed-up or compression factor) the greedy path stops at the first step that
    reaches it: the result is then the most accurate point of the path that does, if within budget.
    `config` says how to fit (error correction, seed, ...); the result has its per-layer settings.

    `layers` restricts the search to those layers (the others stay dense); the sensitivity table is
    measured on the first `sens_probe` probe images (all by default) with `sens_config`'s fit
    (default: `config`'s).  progress(text, fraction) reports the whole search ("sensitivity: LAYER",
    then "checks: ..."), and `cancel` (an Event or a callable) stops it with Cancelled.

    The checks measure each whole model as `kernel` runs it (qcnn.pq.engine: "auto", "fastscan",
    ...); by default as the codebooks' float reconstruction, which the fast-scan kernels' 8-bit
    tables approximate: on ResNet-50 that approximation cost far more agreement than the search
    saw (README, "Finding settings without labels")."""
    if objective not in LADDERS:
        raise ValueError(f"objective must be one of {sorted(LADDERS)}")
    if len(calib) == 0 or len(probe) == 0:
        raise ValueError("the search needs at least one calibration and one probe image")
    check_cancel = _checker(cancel)
    report = progress or (lambda text, fraction: None)
    graph = model.graph
    config = (config or QuantSettings()).replace(conv=None, fc=None, layers=())
    ladder = ladder or LADDERS[objective]
    costs = SettingCosts(graph, probe.shape[1:3])

    def cost(name, setting):
        c = costs.layer(name, setting)
        return c.quant_macs if objective == "speed" else c.quant_bits

    def totals(settings):
        r = costs.report(settings)
        return r.theoretical_speedup, r.compression

    start = 0.0
    if sens is None:
        t0 = time.perf_counter()
        share = SENSITIVITY_SHARE

        def sens_progress(name, step, f):
            if step == "sensitivity":          # a layer done
                log(f"sensitivity {f * 100:5.1f}%  {name}")
            report(f"sensitivity: {name}", share * f)
        sens = sensitivity(model, calib, probe[:sens_probe] if sens_probe else probe, ladder, layers=layers,
                           config=sens_config or config, cancel=cancel,
                           useful=lambda n, s: cost(n, s) < cost(n, None), progress=sens_progress)
        log(f"sensitivity done in {time.perf_counter() - t0:.0f} s")
        start = share
    keep = set(layers) if layers is not None else None
    sens = {n: {s: m for s, m in opts.items() if s in ladder} for n, opts in sens.items()
            if keep is None or n in keep}

    path = greedy_path(sens, cost)
    if target is not None:
        for k in range(1, len(path) + 1):
            speedup, compression = totals(dict(path[:k]))
            if (speedup if objective == "speed" else compression) >= target:
                path = path[:k]
                break
    log(f"greedy path: {len(path)} moves")
    check_cancel()
    ref = model.probabilities(graph.forward(probe))
    cache: dict[int, dict] = {}
    checks = []
    # The binary search below checks the whole path, then halves: at most this many checks.
    expected = 1 + max(0, len(path) - 1).bit_length() if path else 0

    def settings_at(k):
        state = {}
        for name, setting in path[:k]:
            state[name] = setting
        return state

    def check(k):
        if k not in cache:
            t0 = time.perf_counter()
            cfg = config.replace(layers=settings_at(k))
            done = len(checks)
            base = start + (1 - start) * done / max(expected, done + 1)
            width = (1 - start) / max(expected, done + 1)
            report(f"checks: {done + 1} of about {expected}, the first {k} moves of the path", base)
            q = quantize_model(model, cfg, calib, cancel=cancel,
                               progress=lambda n, st, f: report(f"checks: {done + 1} of about {expected}, {n}",
                                                                base + 0.9 * width * f))
            check_cancel()
            if kernel in (None, "reconstructed"):
                run = reconstructed(q)
            else:
                from .engine import with_kernel
                run = with_kernel(q, kernel, tuple(probe.shape[1:3]))
            m = agreement(ref, model.probabilities(run.forward(probe)))
            speedup, compression = totals(cfg.plan(graph))
            m.update(step=k, speedup=speedup, compression=compression, seconds=time.perf_counter() - t0,
                     met=budget.met(m))
            cache[k] = m
            checks.append(m)
            log(f"check {k}/{len(path)}: speed-up {speedup:.2f}x compression {compression:.2f}x  "
                f"agree {m['agree']:.3f} keep5 {m['keep5']:.3f} kl {m['kl']:.4f}  {'ok' if m['met'] else 'over budget'}")
        return cache[k]["met"]

    lo = longest_prefix(len(path), check)
    final = config.replace(layers=settings_at(lo))
    speedup, compression = totals(final.plan(graph))
    metrics = cache.get(lo, {"agree": 1.0, "keep5": 1.0, "kl": 0.0})
    report("done", 1.0)
    return SearchResult(final, metrics, speedup, compression, path[:lo], checks)


# ----------------------------------------------------------------------------- without labels

# What a search needs no flags for.  Without labels, agreement with the dense model on the probe
# photos stands in for accuracy: a quantized model that changes the top-1 class of at most one photo
# in ten, and keeps the dense top-1 among its top 5 nearly always, is an "accurate"-style model (on
# labelled photos its top-1 differs from the dense model's by at most the share it disagrees on;
# README, "Finding settings without labels", has a measured case).  KL is left unbounded: its
# scale depends on the number of classes and on how confident the model is.
DEFAULT_BUDGET = Budget(min_agree=0.90, min_keep5=0.97)
DEFAULT_CALIB = 64          # at most, and at most half the folder
DEFAULT_PROBE = 128         # at most: the readable photos the calibration half leaves
DEFAULT_SENS_PROBE = 32     # probe photos the per-layer sensitivity table is measured on
MIN_PHOTOS = 4


@dataclass
class Found:
    """What find_settings found: the search result, the report a settings file holds (the settings
    under "config", which `qcnn eval/bench/quantize --config` and the app read), and the files of
    the folder that could not be read (each "cannot read image 'PATH': reason")."""
    result: SearchResult
    report: dict
    skipped: list[str]

    @property
    def settings(self) -> QuantSettings:
        return self.result.config


def split_folder(model, folder, calib_count: int | None = None, probe_count: int | None = None, seed: int = 0,
                 progress: Callable[[str, float], None] | None = None, cancel=None):
    """(calibration settings, probe batch, probe files, unreadable files) of an unlabelled folder.

    The calibration half is the seeded subset calibration_batch takes from the folder, so settings
    naming the folder and count (calib_folder, calib_count) reproduce exactly the calibration the
    search measured with; the probe images are readable photos outside it, in name order."""
    from ..imageio import ImageLoadError, image_files, load_image
    from .quantize import calibration_files
    check = _checker(cancel)
    folder = os.path.abspath(os.fspath(folder))
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: not a folder of photos")
    try:
        paths = image_files(folder)
    except OSError as exc:
        raise ValueError(f"{folder}: {exc.strerror or exc}") from None
    readable, skipped = [], []
    for i, path in enumerate(paths):
        check()
        if progress:
            progress(f"reading photos: {path.name}", i / max(1, len(paths)))
        try:
            load_image(path)
            readable.append(path)
        except ImageLoadError as exc:
            skipped.append(str(exc))
    if len(readable) < MIN_PHOTOS:
        raise ValueError(f"{folder}: {len(readable)} readable photos ({len(skipped)} unreadable); the search needs "
                         f"at least {MIN_PHOTOS}, half for calibration and half to measure agreement on")
    n_calib = min(calib_count or DEFAULT_CALIB, len(readable) // 2)
    settings = QuantSettings(calib_folder=folder, calib_count=n_calib, seed=seed)
    chosen = set(calibration_files(folder, n_calib, seed))
    probe_files = [p for p in readable if p not in chosen][:probe_count or DEFAULT_PROBE]
    probe = np.empty((len(probe_files), model.input_size, model.input_size, 3), np.float32)
    for i, path in enumerate(probe_files):
        check()
        probe[i] = model.preprocess(load_image(path))[0]
    return settings, probe, probe_files, skipped


def find_settings(model, folder, objective: str = "compression", budget: Budget | None = None, *,
                  ladder: list[PQSetting] | None = None, layers: list[str] | None = None,
                  calib_count: int | None = None, probe_count: int | None = None,
                  sens_probe: int | None = DEFAULT_SENS_PROBE, iterations: int = 4, shrinkage: float = 1.0,
                  seed: int = 0, target: float | None = None, progress: Callable[[str, float], None] | None = None,
                  log: Callable[[str], None] = lambda s: None, cancel=None, kernel: str | None = None) -> Found:
    """Per-layer settings for `model` from a folder of unlabelled photos: the folder is split into
    a calibration half and probe photos (split_folder), and search() measures every candidate by
    its agreement with the dense model on the probe photos (the checks as `kernel` runs the model:
    see search()).  progress(text, fraction) covers it all
    (reading the photos, the sensitivity table, the checks); `cancel` stops it with Cancelled."""
    from .quantize import calibration_for
    budget = budget or DEFAULT_BUDGET
    t0 = time.perf_counter()
    report = progress or (lambda text, fraction: None)
    reading = 0.05                      # of the progress fraction

    settings, probe, probe_files, skipped = split_folder(
        model, folder, calib_count, probe_count, seed, cancel=cancel,
        progress=lambda text, f: report(text, reading * f))
    for message in skipped:
        log(f"skipped: {message}")
    config = settings.replace(iterations=iterations, shrinkage=shrinkage)
    calib = calibration_for(model, config)
    log(f"{settings.calib_folder}: {len(calib)} calibration photos, {len(probe)} probe photos"
        + (f", {len(skipped)} unreadable" if skipped else ""))
    result = search(model, calib, probe, objective, budget, ladder=ladder, config=config, target=target, log=log,
                    cancel=cancel, layers=layers, sens_probe=sens_probe,
                    sens_config=config.replace(iterations=min(2, iterations)),
                    progress=lambda text, f: report(text, reading + (1 - reading) * f), kernel=kernel)
    seconds = time.perf_counter() - t0
    out = {"model": model.name, "objective": objective, "budget": vars(budget),
           "folder": settings.calib_folder, "calibration_photos": len(calib), "probe_photos": len(probe),
           "probe_files": [p.name for p in probe_files], "skipped": skipped,
           "layers_searched": sorted(layers) if layers is not None else "all",
           "checked_with_kernel": kernel or "reconstructed",
           "probe_metrics": {k: result.metrics[k] for k in ("agree", "keep5", "kl")},
           "speedup": result.speedup, "compression": result.compression, "search_seconds": round(seconds, 1),
           "checks": result.checks, "config": result.config.to_dict()}
    return Found(result, out, skipped)


def write_report(path, report: dict) -> None:
    """Write a settings file atomically: an interrupted write leaves no file (or the old one)."""
    from ..files import write_json_atomic
    write_json_atomic(path, report)


# ----------------------------------------------------------------------------- script

def _load_split(model, labels_csv, parity: int):
    """Preprocessed images and labels of the CSV rows with index % 2 == parity (0-based data rows)."""
    from ..dataset import read_labels
    from ..imageio import ImageLoadError, load_image
    xs, ys = [], []
    for i, (path, label) in enumerate(read_labels(labels_csv)):
        if i % 2 != parity:
            continue
        try:
            xs.append(model.preprocess(load_image(path))[0])
            ys.append(label)
        except ImageLoadError:
            continue
    return np.stack(xs), np.asarray(ys)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text[:20]}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text[:20]!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


EPILOG = f"""\
Without labels (--images DIR): the folder's photos (any format qcnn reads; unreadable ones are
named and skipped) are split into a calibration half (a seeded random half, at most {DEFAULT_CALIB} photos:
--calib) and probe photos (the rest, at most {DEFAULT_PROBE}: --probe); every candidate is measured by its
agreement with the dense model on the probe photos.  Without budget flags the budget is top-1
agreement >= {DEFAULT_BUDGET.min_agree} and dense top-1 kept in the top 5 for >= {DEFAULT_BUDGET.min_keep5} of the probe photos.  --out
writes the settings (a search report; `qcnn eval|bench|quantize --config FILE` read it), atomically.

With labels (--labels CSV, the shipped Lite0 presets' way): odd data rows for calibration and
search, even rows for a final top-1/top-5 evaluation in the report.
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="qcnn search", description=__doc__.split("\n")[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet-lite0", help="model name or PATH.onnx")
    p.add_argument("--images", help="folder of unlabelled photos to search with (no labels needed)")
    p.add_argument("--labels", help="labels.csv (file,class_index): search on its odd rows, evaluate on the even")
    p.add_argument("--objective", choices=("compression", "speed"), default="compression",
                   help="what to maximise within the budget (default: compression)")
    p.add_argument("--ladder", choices=sorted(LADDERS), help="candidate settings (default: the objective's)")
    p.add_argument("--layers", help="comma-separated layers to search (the others stay dense); default: all")
    p.add_argument("--calib", type=_count, help=f"calibration photos (without labels: default half the folder, "
                   f"at most {DEFAULT_CALIB}; with labels: 128 of the odd rows, the rest are probe images)")
    p.add_argument("--probe", type=_count, help=f"probe photos without labels (default: the rest, at most {DEFAULT_PROBE})")
    p.add_argument("--max-kl", type=float)
    p.add_argument("--min-agree", type=_fraction)
    p.add_argument("--min-keep5", type=_fraction)
    p.add_argument("--target", type=float, help="stop at the first greedy step reaching this speed-up/compression")
    p.add_argument("--sens-probe", type=_count, default=None, help="probe images used for the sensitivity table "
                   f"(default: {DEFAULT_SENS_PROBE} without labels, 48 with)")
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--shrinkage", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="calibration half and k-means seed (without labels)")
    p.add_argument("--kernel", choices=("reference", "exact", "fastscan", "reconstructed", "auto"),
                   default="reconstructed", help="how the whole-model checks run the PQ layers (default: "
                   "reconstructed float weights; auto or fastscan to measure what `qcnn eval|bench` and the app "
                   "run by default, whose fast-scan tables are less exact)")
    p.add_argument("--sensitivity", help="JSON file to cache the sensitivity table in (read if it exists; labelled mode)")
    p.add_argument("--out", help="write the found settings (a JSON search report) here")
    from ..preprocess import PRESET_NOTES
    p.add_argument("--preprocess", choices=sorted(PRESET_NOTES), help="image preprocessing of an ONNX model "
                   "(default: guessed from the file)")
    p.add_argument("--class-names", metavar="TXT", help="class names of an ONNX model, one per line")
    args = p.parse_args(argv)
    if bool(args.images) == bool(args.labels):
        p.error("give --images DIR (unlabelled photos) or --labels CSV (labelled search), not both")
    if args.out and os.path.isdir(args.out):
        p.error(f"--out {args.out} is a folder; give a file name")
    layers = [n.strip() for n in args.layers.split(",") if n.strip()] if args.layers else None

    from ..models import load_model
    from ..threads import ensure_thread_limit
    ensure_thread_limit()

    def log(s):
        print(f"[{time.strftime('%H:%M:%S')}] {s}", file=sys.stderr, flush=True)

    options = {k: v for k, v in (("preprocess", args.preprocess), ("labels", args.class_names)) if v}
    model = load_model(args.model, **options)       # as the other commands load it (qcnn.cli._model)
    if "preprocessing" in model.description:
        log(f"note: {model.description}")
    budget = Budget(args.max_kl, args.min_agree, args.min_keep5)
    if args.images:
        return _main_unlabelled(args, model, budget if vars(budget) != vars(Budget()) else None, layers, log)
    return _main_labelled(args, model, budget, layers, log)


def _main_unlabelled(args, model, budget, layers, log) -> int:
    from .quantize import Cancelled
    state = {"tenth": -1, "stage": None}

    def progress(text, fraction):
        # A line per tenth of the way or per new stage: the log shows the search moving.
        stage, tenth = text.split(":")[0], int(fraction * 10)
        if tenth > state["tenth"] or stage != state["stage"]:
            state.update(tenth=tenth, stage=stage)
            log(f"{fraction * 100:5.1f}%  {text}")

    try:
        found = find_settings(model, args.images, args.objective, budget, ladder=LADDERS[args.ladder] if args.ladder
                              else None, layers=layers, calib_count=args.calib, probe_count=args.probe,
                              sens_probe=args.sens_probe or DEFAULT_SENS_PROBE, iterations=args.iterations,
                              shrinkage=args.shrinkage, seed=args.seed, target=args.target, progress=progress,
                              log=log, kernel=args.kernel)
    except (KeyboardInterrupt, Cancelled):
        print(f"\nqcnn search: cancelled" + (f": {args.out} not written" if args.out else ""), file=sys.stderr)
        return 130
    r = found.result
    log(f"found in {found.report['search_seconds']:.0f} s: speed-up {r.speedup:.2f}x, compression "
        f"{r.compression:.2f}x, probe agreement {r.metrics['agree']:.3f}, keep5 {r.metrics['keep5']:.3f}, "
        f"KL {r.metrics['kl']:.4f}")
    print(json.dumps(found.report, indent=1))
    if args.out:
        write_report(args.out, found.report)
        log(f"settings written to {args.out} (qcnn eval|bench|quantize --model {args.model} --config {args.out})")
    return 0


def _main_labelled(args, model, budget, layers, log) -> int:
    # Odd data rows (index % 2 == 1) for calibration and search, even rows for the final evaluation.
    search_x, _ = _load_split(model, args.labels, 1)
    n_calib = args.calib or 128
    calib, probe = search_x[:n_calib], search_x[n_calib:]
    log(f"search half: {len(search_x)} images ({len(calib)} calibration, {len(probe)} probe)")
    config = QuantSettings(iterations=args.iterations, shrinkage=args.shrinkage)
    ladder = LADDERS[args.ladder or args.objective]
    sens_probe = args.sens_probe or 48
    sens = None
    if args.sensitivity:
        # One table for both objectives: every setting of either ladder that saves MACs or bits.
        try:
            sens = read_sensitivity(args.sensitivity)
        except FileNotFoundError:
            costs = SettingCosts(model.graph, calib.shape[1:3])
            ladders = [ladder] if args.ladder else LADDERS.values()
            union = sorted({s for lad in ladders for s in lad}, key=lambda s: (s.dsub, -s.ksub))

            def useful(n, s):
                c = costs.layer(n, s)
                return c.quant_macs < c.dense_macs or c.quant_bits < c.dense_bits
            t0 = time.perf_counter()
            sens_config = QuantSettings(iterations=min(2, args.iterations), shrinkage=args.shrinkage)
            sens = sensitivity(model, calib, probe[:sens_probe], union, config=sens_config, useful=useful,
                               layers=layers, progress=lambda n, s, f: s == "sensitivity" and
                               log(f"sensitivity {f * 100:5.1f}%  {n}"))
            log(f"sensitivity: {time.perf_counter() - t0:.0f} s")
            from ..files import write_json_atomic
            write_json_atomic(args.sensitivity, {n: {f"{s.dsub}x{s.ksub}": m for s, m in o.items()}
                                                 for n, o in sens.items()})
    result = search(model, calib, probe, args.objective, budget, ladder=ladder, sens=sens, config=config,
                    target=args.target, log=log, layers=layers, kernel=args.kernel)
    log(f"chosen: speed-up {result.speedup:.2f}x compression {result.compression:.2f}x metrics {result.metrics}")

    # Final evaluation on the held-out even rows, quantizing once more from the whole search half.
    eval_x, eval_y = _load_split(model, args.labels, 0)
    t0 = time.perf_counter()
    q = quantize_model(model, result.config, calib)
    seconds = time.perf_counter() - t0
    dense = accuracy(model.predict(eval_x), eval_y)
    quant = accuracy(model.predict(eval_x, reconstructed(q)), eval_y)
    report = {"model": model.name, "objective": args.objective, "budget": vars(budget),
              "eval_images": len(eval_y), "eval_rows": "even (0-based data rows 0, 2, 4, ...)",
              "calibration_rows": "odd, first %d" % len(calib), "dense_top1": dense[0], "dense_top5": dense[1],
              "top1": quant[0], "top5": quant[1], "speedup": result.speedup, "compression": result.compression,
              "quantize_seconds": seconds, "probe_metrics": result.metrics, "config": result.config.to_dict()}
    print(json.dumps(report, indent=1))
    if args.out:
        write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
