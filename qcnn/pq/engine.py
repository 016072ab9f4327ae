"""Which implementation runs each product-quantized layer: the numpy reference, exact float-table
lookups or uint8-table lookups (C kernels: fast-scan for K <= 16, wide-scan for K = 17..256), or
the dense kernels on weights reconstructed from the codebooks.  Files and caches hold the canonical
layers, and a graph is re-targeted here when it is loaded.  Reference, exact and reconstructed
compute the same model (up to float rounding); the uint8 kernels do not: their tables round every
table entry, and the error depends on the layer (on Lite0's narrow 1x1 layers a few percent of the
output, see scripts/fastscan_error.py).  Fast-scan in two passes ("fastscan2") looks its tables up
again for the rounding residual, which brings the error down about 200-fold, to far below any
budget's.

Lookups win when a layer's subspaces are wide and it has many output channels (AlexNet's conv2-5
and FC layers); with C_s' = 1 or 2 and few output channels, building the tables costs more than
the dense product, and reconstruction is faster.

"auto" follows a kernel plan (`kernel_plan`): per layer the fastest of exact, reconstructed and
(K <= 16) two-pass fast-scan, which keep the model (LOSSLESS), and its uint8 kernel (`uint8_kernel`) on the layers where that is faster still, as many as the
network's output error on real inputs (calibration images) allows (FASTSCAN_BUDGET).  A plan is
measured once for a model, its settings, the SIMD level and the kernels' build, and stored (beside the cached model, or in a .qcnn file): loading the same model again
gives the same kernels, not a new timing race."""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

from ..graph import Graph, Node
from .kernels import fastscan_supported
from .layer import PQLayer
from .widescan import widescan_supported

KERNELS = ("reference", "exact", "fastscan", "fastscan2", "widescan", "reconstructed", "auto")
DESCRIPTIONS = {
    "reference": "numpy reference (the paper's test phase, slow)",
    "exact": "exact float tables (C, SIMD permutes/gathers)",
    "fastscan": "fast-scan: uint8 tables, 4-bit codes, byte shuffles or permutes (C); K > 16 layers fall back to exact",
    "fastscan2": "fast-scan in two passes, the uint8 tables and what their rounding left out: as precise as 16-bit "
                 "tables (about 1/200 of fast-scan's error), at twice its lookups (C); K > 16 layers fall back to exact",
    "widescan": "uint8 tables for every layer: wide-scan (K = 17..256, tables in SIMD registers, byte "
                "permutes/shuffles, C) and fast-scan (K <= 16)",
    "reconstructed": "weights reconstructed from the codebooks at load, run by the dense kernels (no lookups)",
    "auto": "per layer the fastest of exact and reconstructed, and a uint8 kernel (fast-scan for K <= 16, "
            "wide-scan for K = 17..256) where it is faster still, as far as the network's output error allows; "
            "measured once and stored with the model",
}


UINT8 = ("fastscan", "widescan")     # the lossy kernels: uint8 tables, admitted by the plan's budget
#: What keeps the model: float tables, the dense kernels, and fast-scan in two passes, whose error
#: (RMS 0.006-0.01 % of AlexNet's conv2-fc8 outputs, against fast-scan's 1.2-2.4 %) is far below any
#: budget's; a plan gives each layer the fastest of these before it spends the budget.
LOSSLESS = ("exact", "reconstructed", "fastscan2")


def uint8_kernel(layer: PQLayer) -> str | None:
    """The uint8-table kernel that can run `layer` (fast-scan for K <= 16, wide-scan for K up to
    256), or None."""
    if fastscan_supported(layer):
        return "fastscan"
    return "widescan" if widescan_supported(layer) else None


def impl_for(layer: PQLayer, kernel: str) -> str:
    """The implementation `kernel` means for this layer, as `qcnn cost` estimates it: "auto" as
    its uint8 kernel where one can run (its plan, measured when a model is loaded, may choose
    otherwise; with_kernel follows the plan, not this)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose from {', '.join(KERNELS)}")
    if kernel in ("fastscan", "fastscan2"):
        return kernel if fastscan_supported(layer) else "exact"
    if kernel in ("widescan", "auto"):
        return uint8_kernel(layer) or "exact"
    return kernel


def _retarget(layer: PQLayer, impl: str) -> PQLayer:
    layer = dataclasses.replace(layer, impl=impl)
    if impl != "reference":
        layer.prepared()
    return layer


#: "auto" admits uint8-kernel layers while RMS(out - ref) / RMS(ref), over the network's final outputs
#: on the plan's calibration inputs, stays at most this; ref is the same network with every layer
#: lossless (exact lookups or reconstructed weights).  The budget is on the whole model, not per
#: layer, because a layer's own error says little about what reaches the labels: ResNet-18 `fast`'s
#: 3x3 layers measure 3-9 % each, yet all of them together move the logits by 4 % and its accuracy
#: not at all (73.6 / 90.8 % vs 72.8 / 90.8 % reconstructed, 250 images), while Lite0 `accurate`'s
#: 1x1 layers at 1-5 % each add up to 7 % at the output and cost 2 points of top-1.
FASTSCAN_BUDGET = 0.03
#: ... and at most this share of the quantization's own output error (quantized network, lossless,
#: against the dense one), when the dense network is known: errors that are independent add in
#: quadrature, so the lossy kernels then add at most 41 % to the model's total.  A preset made to be
#: accurate stays so: ResNet-18 `accurate` (quantization error 1.6 %) lost 0.8 points of top-5 with
#: two fast-scan layers at 1.8 %, none with one at 0.7 % (250 even rows).
FASTSCAN_SHARE = 1.0
#: Layers tried one by one after the prefix: each try is one run of the calibration batch.
FILL_TRIES = 6
PLAN_VERSION = 7        # what a stored plan must say to be reused (bump when the measure changes)
PLAN_IMAGES = 4         # calibration images a plan measures errors on


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """RMS(got - want) / RMS(want) (0 when both are zero)."""
    ref = float(np.sqrt(np.mean(np.square(want, dtype=np.float64))))
    err = float(np.sqrt(np.mean(np.square(got - want, dtype=np.float64))))
    return err / ref if ref > 0 else (0.0 if err == 0 else float("inf"))


def _best_ms(layer: PQLayer, args: list[np.ndarray], repeats: int) -> float:
    """Best of `repeats` calls on one image, in ms (the first call makes the buffers: not timed)."""
    one = [a[:1] for a in args]
    best = float("inf")
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        layer(*one)
        best = min(best, time.perf_counter() - t0)
    return round(best * 1e3, 4)


def _run(graph: Graph, impls: dict[str, str], x: np.ndarray) -> np.ndarray:
    return with_kernel(graph, "reconstructed", overrides=impls)(x)


def _uint8_ms(entry: dict) -> float:
    """A plan entry's time with its uint8 kernel (at most one of them is timed per layer)."""
    return min((entry["ms"][k] for k in UINT8 if k in entry["ms"]), default=float("inf"))


def admit_uint8(layers: dict, output_error: Callable[[list[str]], float], budget: float) -> tuple[list[str], float]:
    """The layers that run their uint8 kernel, and the output error they cause: of the `layers`
    ({name: {"kernel": lossless choice, "error", "ms"}}) where the uint8 kernel (fast-scan or
    wide-scan, whichever is in "ms") is faster, ordered by time saved per squared error, the
    longest prefix with output_error(prefix) <= budget; then, largest saving first, up to FILL_TRIES
    of the layers after it, each kept if the budget still holds with it (a layer with a large error
    early in the order must not shut out the small-error ones behind it)."""
    from .search import longest_prefix

    def saving(name):
        e = layers[name]
        return e["ms"][e["kernel"]] - _uint8_ms(e)
    faster = sorted((n for n in layers if saving(n) > 0),
                    key=lambda n: (-saving(n) / max(layers[n]["error"], 1e-6) ** 2, n))
    errors = {0: 0.0}

    def within(k: int) -> bool:
        if k not in errors:
            errors[k] = output_error(faster[:k])
        return errors[k] <= budget
    k = longest_prefix(len(faster), within)
    admitted, error = faster[:k], errors[k]
    for name in sorted(faster[k:], key=lambda n: (-saving(n), n))[:FILL_TRIES]:
        trial = output_error(admitted + [name])
        if trial <= budget:
            admitted, error = admitted + [name], trial
    return admitted, error


def kernel_plan(graph: Graph, calib: np.ndarray, budget: float = FASTSCAN_BUDGET, repeats: int = 3,
                log=lambda text: None, dense: Graph | None = None) -> dict:
    """Measure the plan "auto" follows.  Per PQ layer, on its inputs when the network (weights
    reconstructed) runs the calibration batch `calib`: its uint8 kernel's (uint8_kernel) relative
    error against exact lookups, and the time (best of `repeats` on one image) of exact,
    reconstructed, two-pass fast-scan (K <= 16) and the uint8 kernel.  Each layer gets the fastest
    of LOSSLESS; then the layers
    where the uint8 kernel is faster still are ordered by time saved per squared error and the
    longest prefix of that order whose whole-model output error (see FASTSCAN_BUDGET) is within
    `budget` and, given the `dense` network, FASTSCAN_SHARE of the quantization's error, runs it.
    JSON-ready: {"version", "isa", "kernels" (qcnn.kernels.BUILD), "budget", "images", "quantization_error" (None without `dense`),
    "limit" (the output error allowed), "output_error" (the plan's), "layers": {name: {"kernel", "error" (the layer's uint8-kernel error, or None without
    one), "ms": {impl: ms}}}}."""
    from .. import kernels as dense_kernels
    calib = np.ascontiguousarray(calib, dtype=np.float32)
    env, layers = {graph.input_name: calib}, {}
    for node in graph:
        args = [env[i] for i in node.inputs]
        layer = node.layer
        if isinstance(layer, PQLayer):
            candidates = {"exact": _retarget(layer, "exact"), "reconstructed": _retarget(layer, "reconstructed")}
            out = candidates["reconstructed"](*args)
            error, lossy = None, uint8_kernel(layer)
            if lossy:
                candidates[lossy] = _retarget(layer, lossy)
                error = relative_error(candidates[lossy](*args), candidates["exact"](*args))
            if lossy == "fastscan":
                candidates["fastscan2"] = _retarget(layer, "fastscan2")
            ms = {impl: _best_ms(c, args, repeats) for impl, c in candidates.items()}
            lossless = min((k for k in LOSSLESS if k in ms), key=lambda k: (ms[k], k))
            layers[node.name] = {"kernel": lossless, "error": None if error is None else round(error, 6), "ms": ms}
            env[node.name] = out
        else:
            env[node.name] = layer(*args)

    lossless = {n: e["kernel"] for n, e in layers.items()}
    lossy = {n.name: uint8_kernel(n.layer) for n in graph if n.name in layers}
    ref = _run(graph, lossless, calib)
    quantization = None if dense is None else relative_error(ref, dense(calib))
    # A "dense" network that is this one rebuilt from its codebooks (a .qcnn file alone) gives no scale.
    limit = budget if quantization is None or quantization < 1e-4 else min(budget, FASTSCAN_SHARE * quantization)

    def output_error(names: list[str]) -> float:
        error = relative_error(_run(graph, {**lossless, **{n: lossy[n] for n in names}}, calib), ref)
        log(f"kernel plan: uint8 tables on {len(names)} layers: output error {error * 100:.2f} %")
        return error
    admitted, error = admit_uint8(layers, output_error, limit)
    for name in admitted:
        layers[name]["kernel"] = lossy[name]
    return {"version": PLAN_VERSION, "isa": dense_kernels.isa(), "kernels": dense_kernels.BUILD, "budget": budget,
            "images": int(len(calib)),
            "quantization_error": None if quantization is None else round(quantization, 6),
            "limit": round(limit, 6), "output_error": round(error, 6), "layers": layers}


def plan_problem(graph: Graph, plan) -> str:
    """Why `plan` cannot be followed for `graph` on this machine ("" when it can): a stored plan is
    checked before use, and one made elsewhere (another SIMD level, version, budget or build of the
    kernels: a faster kernel changes what pays) is not."""
    from .. import kernels as dense_kernels
    if not isinstance(plan, dict) or not isinstance(plan.get("layers"), dict):
        return "not a kernel plan"
    if plan.get("version") != PLAN_VERSION or plan.get("budget") != FASTSCAN_BUDGET:
        return "made by another version or budget"
    if plan.get("isa") != dense_kernels.isa():
        return f"made for SIMD level {plan.get('isa')}, this one runs {dense_kernels.isa()}"
    if plan.get("kernels") != dense_kernels.BUILD:
        return "timed with another build of the kernels"
    pq = {n.name: n.layer for n in graph if isinstance(n.layer, PQLayer)}
    if set(plan["layers"]) != set(pq):
        return "made for other layers"
    for name, entry in plan["layers"].items():
        kernel = entry.get("kernel") if isinstance(entry, dict) else None
        runs_it = kernel in ("exact", "reconstructed") or \
            (kernel == "fastscan2" and uint8_kernel(pq[name]) == "fastscan") or \
            (kernel in UINT8 and kernel == uint8_kernel(pq[name]))
        if not runs_it:
            return f"layer {name}: kernel {kernel!r} cannot run it"
    return ""


def format_plan(plan: dict) -> str:
    """The plan, one line per layer: kernel, the uint8 kernel's measured error and the timings."""
    output, limit, quantization = plan.get("output_error"), plan.get("limit"), plan.get("quantization_error")
    allowed = f"{plan['budget'] * 100:g} %"
    if quantization is not None and limit is not None:
        allowed = (f"{limit * 100:.2f} % (the smaller of {allowed} and {FASTSCAN_SHARE:g} x the quantization's own "
                   f"{quantization * 100:.2f} %)")
    lines = [f"kernel plan ({plan['isa']}; uint8 tables admitted while the network's output moves by at most "
             f"{allowed} RMS on {plan['images']} calibration images"
             + ("" if output is None else f"; this plan: {output * 100:.2f} %") + "):"]
    for name, e in plan["layers"].items():
        err = "   n/a" if e.get("error") is None else f"{e['error'] * 100:5.2f}%"
        times = "  ".join(f"{k} {v:.3f}" for k, v in sorted(e.get("ms", {}).items()))
        lines.append(f"  {name:<14} {e['kernel']:<13} uint8 error {err}   ms: {times}")
    return "\n".join(lines)


def with_kernel(graph: Graph, kernel: str, input_hw: tuple[int, int] | None = None, plan: dict | None = None,
                overrides: dict[str, str] | None = None) -> Graph:
    """A graph whose PQ layers run `kernel`, or what `overrides` names for a layer; layouts for the
    C kernels are made here, once.  "auto" follows `plan` (kernel_plan); without one it runs exact
    lookups, which keep the model (input_hw is accepted for the callers that time nothing)."""
    if kernel == "auto" and plan is not None:
        problem = plan_problem(graph, plan)
        if problem:
            raise ValueError(f"kernel plan: {problem}")
    nodes = []
    for node in graph:
        layer = node.layer
        if isinstance(layer, PQLayer):
            if overrides and node.name in overrides:
                impl = overrides[node.name]
            elif kernel == "auto":
                impl = plan["layers"][node.name]["kernel"] if plan is not None else "exact"
            else:
                impl = impl_for(layer, kernel)
            layer = _retarget(layer, impl)
        nodes.append(Node(node.name, layer, node.inputs))
    return Graph(_windows_in_place(nodes, graph.output), graph.input_name, graph.output)


def _windows_in_place(nodes: list[Node], output: str) -> list[Node]:
    """Where a Patches node (qcnn.pq.taps) feeds only a fast-scan layer, that layer reads the windows
    from the image itself (PreparedPQ.read_windows_in_place) and the node passes the image on."""
    from ..layers import Patches
    from .taps import WindowsReadInPlace
    readers = {}
    for node in nodes:
        for name in node.inputs:
            readers.setdefault(name, []).append(node)
    out = []
    for node in nodes:
        after = readers.get(node.name, [])
        patches = node.layer.patches if isinstance(node.layer, WindowsReadInPlace) else node.layer   # (a graph run here again)
        if isinstance(patches, Patches):
            node = Node(node.name, patches, node.inputs)
            if node.name != output and len(after) == 1 and isinstance(after[0].layer, PQLayer) and \
                    after[0].layer.impl == "fastscan":
                try:
                    after[0].layer.prepared().read_windows_in_place(patches)
                except ValueError:       # a reader it cannot serve (not a one-group 1x1 layer): keep the copy
                    pass
                else:
                    node = Node(node.name, WindowsReadInPlace(patches, after[0].name), node.inputs)
        out.append(node)
    return out


def kernel_map(graph: Graph) -> dict[str, str]:
    """What each PQ layer of `graph` runs (for the cost model's `kernel` column)."""
    return {n.name: n.layer.impl for n in graph if isinstance(n.layer, PQLayer)}
