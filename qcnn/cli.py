"""Command line: `qcnn classify | eval | quantize | cost | bench | search`."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from .imageio import ImageLoadError, load_image
from .threads import set_num_threads

KERNELS = ("reference", "exact", "fastscan", "fastscan2", "widescan", "reconstructed", "auto")   # qcnn.pq.engine.KERNELS


def _positive_int(text: str, most: int = 10**9) -> int:
    """argparse type: an integer from 1 to `most` (a count of threads, runs, images...)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text[:20]!r}") from None
    if not 1 <= value <= most:
        raise argparse.ArgumentTypeError(f"must be from 1 to {most:,}, got {text[:20]}")
    return value


def _threads(text: str) -> int:
    return _positive_int(text, 1024)


def _finite(value):
    """`value` with every non-finite float (NaN weights make NaN scores) as None: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _print_json(value) -> None:
    print(json.dumps(_finite(value), indent=1, allow_nan=False))


_MODEL_OPTIONS: dict = {}     # --preprocess / --class-names, for every command that loads a model


def _model(spec: str):
    from .models import load_model
    return load_model(spec, **_MODEL_OPTIONS)


def cmd_classify(args) -> int:
    model = _model(args.model)
    results, failed = [], 0
    if model.speed_test_only and not args.json:
        print(f"note: {model.description}: labels are meaningless", file=sys.stderr)
    elif "preprocessing" in model.description and not args.json:   # an ONNX file: say what was assumed
        print(f"note: {model.description}", file=sys.stderr)
    for path in args.images:
        try:
            r = model.classify(load_image(path), top=args.top)
        except ImageLoadError as exc:
            failed += 1
            results.append({"file": path, "error": str(exc)})
            if not args.json:
                print(f"{path}: error: {exc.reason}", file=sys.stderr)
            continue
        results.append({"file": path, "latency_ms": round(r.latency_ms, 3),
                        "top": [{"index": p.index, "label": p.label, "prob": p.prob} for p in r.top]})
        if not args.json:
            print(f"{path}  ({model.name}, {r.latency_ms:.1f} ms)")
            for rank, p in enumerate(r.top, 1):
                print(f"  {rank}. {p.prob * 100:6.2f}%  {p.label}  [{p.index}]")
    if args.json:
        _print_json(results)
    return 1 if failed else 0


def _progress_bar(enabled: bool):
    """Progress on stderr: a one-line bar on a terminal; when stderr is a pipe or a file, a plain
    line at every tenth of the way (or every 10 s), so logs show the work moving."""
    state = {"tenth": -1, "time": 0.0, "bar": False}

    def show(text: str, fraction: float):
        if not enabled:
            return
        if sys.stderr.isatty():
            bar = "#" * int(fraction * 30)
            print(f"\r[{bar:<30}] {fraction * 100:5.1f}%  {text[:40]:<40}", end="", file=sys.stderr, flush=True)
            state["bar"] = True
            return
        tenth, now = int(fraction * 10), time.monotonic()
        if tenth > state["tenth"] or now - state["time"] >= 10:
            print(f"{fraction * 100:5.1f}%  {text}", file=sys.stderr, flush=True)
            state.update(tenth=tenth, time=now)

    def finish():
        """Clear a terminal bar, so what is printed next starts on a clean line."""
        if state["bar"]:
            print("\r" + " " * 80 + "\r", end="", file=sys.stderr, flush=True)
            state["bar"] = False

    def note(text: str):
        """A line of its own (a new phase of the work); the next fraction starts a new count."""
        finish()
        if enabled:
            print(text, file=sys.stderr, flush=True)
        state.update(tenth=-1, time=time.monotonic())

    show.finish, show.note = finish, note
    return show


def _settings(args, model):
    """The quantization settings from --config FILE or --preset NAME (models without presets: the
    app's default settings), with the options that change them (--no-error-correction, --calib,
    --calib-count) applied."""
    from .pq.presets import preset, preset_names
    from .pq.settings import DEFAULT_SETTINGS, QuantSettings
    if getattr(args, "config", None):
        from .files import read_json
        data = read_json(args.config, "config")          # regular files only; errors name the file
        if isinstance(data, dict) and isinstance(data.get("config"), dict):
            data = data["config"]             # a search report holds the settings under "config"
        try:
            settings = QuantSettings.from_dict(data)
        except KeyError as exc:
            raise ValueError(f"config {args.config}: a setting lacks {exc.args[0]!r}") from None
        except (TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"config {args.config}: {exc}") from None
        try:
            settings.plan(model.graph)              # layer names of another network: said now, with the file
        except ValueError as exc:
            raise ValueError(f"config {args.config}: {exc}") from None
    elif getattr(args, "preset", None):
        settings = preset(model.name, args.preset)
    elif preset_names(model.name):
        raise ValueError(f"give --preset ({', '.join(preset_names(model.name))}) or --config FILE")
    else:
        settings = DEFAULT_SETTINGS
    changes = {}
    if getattr(args, "no_error_correction", False):
        changes["error_correction"] = False
    if getattr(args, "calib", None):
        changes["calib_folder"] = os.path.abspath(args.calib)
    if getattr(args, "calib_count", None) is not None:
        changes["calib_count"] = args.calib_count
    return settings.replace(**changes)


def _describe_source(args, quantized) -> str:
    """Where the quantized model came from, for the user."""
    what = (f"preset {args.preset}" if getattr(args, "preset", None)
            else f"config {args.config}" if getattr(args, "config", None) else "default settings")
    made = quantized.made_seconds
    if quantized.from_cache:
        text = f"{what}: cached {quantized.path}" + (f" (made in {made:.1f} s)" if made is not None else "")
    else:
        text = f"{what}: quantized in {quantized.seconds:.1f} s" + (
            f", cached as {quantized.path}" if quantized.path is not None else "")
    return text + (f"; {quantized.note}" if quantized.note else "")


def _quantize(args, model):
    """(Workbench holding `model`, its quantized model for the settings args give, how it was
    obtained): through the app's quantization cache unless --no-cache; progress on stderr."""
    from .workbench import Workbench
    bench = Workbench()
    bench.set_model(model, source=args.model)      # an ONNX file is named in the .qcnn file, to reopen with it
    settings = _settings(args, model)
    bar = _progress_bar(True)
    quantized = bench.quantize(settings, progress=bar, use_cache=not getattr(args, "no_cache", False))
    bar.finish()
    source = _describe_source(args, quantized)
    print(f"quantized model: {source}", file=sys.stderr)
    return bench, quantized, source


def _quantized(args, model):
    """(Workbench holding the dense model and its quantized graph as run by --kernel, how it was
    obtained)."""
    from .pq.engine import with_kernel
    from .workbench import Workbench
    if str(args.model).endswith(".qcnn"):
        bench = Workbench()
        dense, dense_graph, quantized, note = bench.open_model_file(args.model)
        bench.set_model(dense, dense_graph, note)
        source = f"{args.model} ({quantized.file_bytes} bytes)"
    else:
        bench, quantized, source = _quantize(args, model)
    bench.kernel = args.kernel
    plan = bench.plan_for(quantized) if args.kernel == "auto" else None
    bench.adopt(quantized, with_kernel(quantized.graph, args.kernel, (bench.model.input_size,) * 2, plan))
    bench.kernel_plan = plan
    return bench, source


def cmd_cost(args) -> int:
    from .pq.cost import cost_report, format_table, planned_graph
    from .pq.engine import impl_for
    from .pq.layer import PQLayer
    if str(args.model).endswith(".qcnn"):
        raise ValueError("cost takes a model and a preset or config; for a saved file use `qcnn eval`")
    model = _model(args.model)
    _default_preset(args, model)
    settings = _settings(args, model)
    planned = planned_graph(model.graph, settings.plan(model.graph))
    kernels = {n.name: impl_for(n.layer, args.kernel) for n in planned if isinstance(n.layer, PQLayer)}
    report = cost_report(planned, (model.input_size,) * 2, dense_graph=model.graph, kernels=kernels)
    if args.json:
        _print_json({"model": model.name, "setting": args.preset or args.config or "default", **report.to_json()})
    else:
        print(f"{model.description}\nsetting: {args.preset or args.config or 'default'}\n")
        print(format_table(report))
    return 0


def cmd_quantize(args) -> int:
    from .pq.modelfile import save_model
    from .pq.quantize import Cancelled
    model = _model(args.model)
    _default_preset(args, model)
    try:
        bench, quantized, _ = _quantize(args, model)
        # The plan "auto" follows on this SIMD level goes into the file: the same kernels wherever
        # it is loaded at this level (other levels measure and cache their own).
        from .kernels import isa
        plan = {k: v for k, v in bench.plan_for(quantized).items() if k != "source"}
        metadata = {**quantized.metadata, "kernel_plans": {isa(): plan}}
        # Atomic: a killed or failed save leaves an earlier file at the path as it was.
        size = save_model(args.output, model, quantized.graph, metadata)
    except (KeyboardInterrupt, Cancelled):
        print(f"\ncancelled: {args.output} not written", file=sys.stderr)
        return 130
    print(f"{args.output}: {size} bytes", file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    model = _model(args.model) if not str(args.model).endswith(".qcnn") else None
    quantized = bool(args.preset or args.config) or model is None
    if quantized:
        bench, source = _quantized(args, model)
    else:
        from .workbench import Workbench
        bench, source = Workbench(model), None
    model = bench.model

    bar = _progress_bar(True)
    ev = bench.evaluate(args.labels, args.images, progress=lambda i, n: bar(f"{i}/{n} images", i / n),
                        limit=args.limit)
    bar.finish()
    out = {"model": model.name, "images": ev.images, "skipped": ev.skipped}
    for name, score in ev.scores.items():
        key = "dense" if name == "dense" else "quant"
        out.update({f"{key}_top1": score.top1, f"{key}_top5": score.top5, f"{key}_median_ms": score.median_ms})
    if quantized:
        from .pq.search import agreement
        m = agreement(ev.probs["dense"], ev.probs["quantized"])
        out["agreement"], out["mean_kl"] = m["agree"], m["kl"]
        out["quantized_with"] = source
        out["kernel"] = args.kernel
        out["kernel_plan"] = _plan_json(bench)
    if args.json:
        _print_json(out)
        return 0
    print(f"{model.name} on {ev.images} images ({len(ev.skipped)} unreadable)")
    for name, score in ev.scores.items():
        print(f"  {name:>9}: top-1 {score.top1 * 100:5.1f}%  top-5 {score.top5 * 100:5.1f}%  "
              f"median {score.median_ms:.1f} ms/image")
    if quantized:
        print(f"  quantized with {source}, kernel {args.kernel}")
        print(f"  top-1 agreement {out['agreement'] * 100:.1f}%, mean KL(dense || quantized) {out['mean_kl']:.4f}")
        _print_plan(bench)
    for s in ev.skipped:
        print(f"  skipped: {s}")
    return 0


def _plan_json(bench) -> dict:
    """Per PQ layer the kernel that ran and, for "auto", fast-scan's measured error (the plan)."""
    from .pq.engine import kernel_map
    plan = getattr(bench, "kernel_plan", None)
    layers = {name: {"kernel": impl} for name, impl in kernel_map(bench.quant_graph).items()}
    if plan:
        for name, entry in plan["layers"].items():
            layers[name]["error"] = entry.get("error")
        return {"source": plan.get("source"), "isa": plan["isa"], "budget": plan["budget"], "layers": layers}
    return {"layers": layers}


def _print_plan(bench) -> None:
    from .pq.engine import format_plan, kernel_map
    plan = getattr(bench, "kernel_plan", None)
    if plan:
        print(format_plan(plan))
        print(f"  (plan {plan.get('source')})")
    else:
        kinds = kernel_map(bench.quant_graph)
        print("kernels: " + ", ".join(f"{name} {impl}" for name, impl in kinds.items()))


def _default_preset(args, model) -> None:
    """--preset defaults to the model's DEFAULT_PRESET when neither it nor --config is given."""
    if model is not None and not args.preset and not args.config:
        from .pq.presets import DEFAULT_PRESET
        args.preset = DEFAULT_PRESET.get(model.name)


def cmd_bench(args) -> int:
    from . import bench as B
    if args.isa:       # before quantizing: `auto` times the kernels of the variant that will run
        from .kernels import set_isa
        set_isa(args.isa)
    model = _model(args.model) if not str(args.model).endswith(".qcnn") else None
    _default_preset(args, model)
    bar = _progress_bar(True)
    bar.note(f"bench: {args.model}, preset {args.preset}" if args.preset else f"bench: {args.model}")
    if model is not None and model.speed_test_only and not args.config and not args.error_correction \
            and not args.no_error_correction:
        # Random weights: error correction would cost minutes and change nothing a speed test measures.
        args.no_error_correction = True
        bar.note(f"error correction off: {model.name} has random weights, so it would change nothing this "
                 f"test measures (--error-correction to have it anyway)")
    images = None if args.synthetic else args.images or B.default_images()
    wb, source = _quantized(args, model)
    model = wb.model
    bar.note(f"quantized with {source}; kernel {args.kernel}; images: {images or 'synthetic inputs'}")
    inputs = B.bench_inputs(model, images, max(args.images_per_run, 16))
    engines = {"dense": wb.dense_graph.forward, "quantized": wb.quant_graph.forward}
    skipped = {}
    uncapped = []
    if args.peers:
        bar.note("peers: each installed one, checked against the dense output first")
        from .peers import peer_engines
        found = peer_engines(wb.dense_graph, (model.input_size,) * 2, inputs[:16], threads=args.threads)
        engines.update(found.engines)
        skipped, uncapped = found.skipped, found.uncapped
    bar.note(f"speed test: {args.runs} runs x {args.images_per_run} images, batch 1, one thread")
    test = B.speed_test(engines, inputs, runs=args.runs, per_run=args.images_per_run,
                        progress=lambda i, n: bar(f"{i}/{n} images", i / n))
    bar.note(f"per-layer breakdown: {args.layer_repeats} images")
    layers = B.layer_breakdown(wb.dense_graph, wb.quant_graph, inputs, repeats=args.layer_repeats)
    memory = {"dense": B.peak_memory(wb.dense_graph, inputs[0]), "quantized": B.peak_memory(wb.quant_graph, inputs[0])}
    bar.finish()
    report = B.BenchReport(model.name, source, args.kernel, test, layers, memory, skipped,
                           str(images) if images else "synthetic inputs", uncapped=uncapped)
    if args.json:
        _print_json({**report.to_json(), "kernel_plan": _plan_json(wb)})
    else:
        if model.speed_test_only:
            print(f"note: {model.description}")
        print(report.format())
        _print_plan(wb)
    return 0


def cmd_search(args) -> int:
    from .pq import search
    return search.main(args.search_args)     # its own options: `qcnn search --help`


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help can end with the presets of every model (read only when help is
    shown: the presets module imports the quantizer, which takes seconds)."""

    def __init__(self, *args, presets_help: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.presets_help = presets_help

    def format_help(self) -> str:
        text = super().format_help()
        if self.presets_help:
            from .pq.presets import DEFAULT_PRESET, PRESETS, preset_names
            text += "\npresets (--preset NAME; * = the default when neither --preset nor --config is given):\n"
            for name in PRESETS:
                text += f"  {name}: " + ", ".join(p + "*" * (DEFAULT_PRESET.get(name) == p)
                                                 for p in preset_names(name)) + "\n"
        return text


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="qcnn", description="Quantized-CNN: dense vs product-quantized CNN inference",
                presets_help=True)
    p.add_argument("--threads", type=_threads, default=1, help="BLAS/kernel threads (default 1, as in the paper)")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("classify", help="top-k labels for images")
    c.add_argument("images", nargs="+", metavar="IMAGE")
    c.add_argument("--model", default="efficientnet-lite0", help="efficientnet-lite0 | resnet18 | resnet50 | alexnet | PATH.onnx")
    c.add_argument("--top", type=_positive_int, default=5)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_classify)

    def quant_options(q, kernel=True):
        q.add_argument("--preset", help="named quantization preset of the model (see qcnn.pq.presets)")
        q.add_argument("--config", help="JSON quantization settings (QuantSettings.to_dict form, an older "
                       "QuantConfig file, or a search report)")
        q.add_argument("--calib", help="folder of unlabelled calibration images (default: the bundled samples)")
        q.add_argument("--calib-count", type=_positive_int, default=None, help="calibration inputs (default: the preset's "
                       "or config's, 16; augmented crops fill up when the folder has fewer images: raise it with --calib)")
        q.add_argument("--no-cache", action="store_true", help="quantize again, neither reading nor writing "
                       "the quantization cache the app shares")
        q.add_argument("--no-error-correction", action="store_true", help="plain k-means codebooks")
        if kernel:
            q.add_argument("--kernel", default="auto", choices=KERNELS, help="how PQ layers run (default: auto)")

    e = sub.add_parser("eval", help="top-1/top-5 of the dense and quantized engines on a labelled folder",
                       presets_help=True)
    e.add_argument("--model", default="efficientnet-lite0", help="model name, PATH.onnx or FILE.qcnn")
    e.add_argument("--images", required=True, help="folder of images")
    e.add_argument("--labels", required=True, help="CSV with file,class_index columns")
    e.add_argument("--limit", type=_positive_int, default=None, help="evaluate only the first N images")
    e.add_argument("--json", action="store_true")
    quant_options(e)
    e.set_defaults(func=cmd_eval)

    q = sub.add_parser("quantize", help="product-quantize a model and save it as a .qcnn file", presets_help=True)
    q.add_argument("--model", default="efficientnet-lite0")
    q.add_argument("-o", "--output", required=True, help="the .qcnn file to write")
    quant_options(q, kernel=False)
    q.set_defaults(func=cmd_quantize)

    c = sub.add_parser("cost", help="cost model: MACs, lookups, storage, memory per layer", presets_help=True)
    c.add_argument("--model", default="efficientnet-lite0")
    c.add_argument("--preset")
    c.add_argument("--config")
    c.add_argument("--kernel", default="auto", choices=KERNELS,
                   help="kernel the PQ layers would run (auto here: fast-scan where K <= 16, else exact; "
                        "eval, bench and the app time each layer)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_cost)

    b = sub.add_parser("bench", help="the paper's speed test: dense vs quantized, batch 1, one thread",
                       description="The paper's speed test.  With no options: AlexNet, its default preset "
                                   "(fast4) without error correction, on ../shared/imagenet-sample-500 when "
                                   "present, else the bundled photos.", presets_help=True)
    b.add_argument("--model", default="alexnet", help="model name, PATH.onnx or FILE.qcnn (default: alexnet)")
    b.add_argument("--images", help="folder of photos (default: ../shared/imagenet-sample-500 when present, "
                                    "else the bundled photos)")
    b.add_argument("--synthetic", action="store_true", help="random inputs instead of photos")
    b.add_argument("--error-correction", action="store_true",
                   help="error correction for a speed-test-only model too (off by default: its weights are "
                        "random, so it would cost minutes and change nothing the test measures)")
    b.add_argument("--runs", type=_positive_int, default=5)
    b.add_argument("--images-per-run", type=_positive_int, default=100)
    b.add_argument("--layer-repeats", type=_positive_int, default=20, help="images for the per-layer breakdown")
    b.add_argument("--peers", action="store_true", help="also time the installed peers (qcnn.peers: "
                   "onnxruntime, OpenVINO, MNN, ncnn), each checked against the dense output first")
    b.add_argument("--isa", choices=("scalar", "avx2", "avx512", "avx512vnni", "neon", "neondot"),
                   help="cap the C kernels' SIMD variant (as QCNN_ISA=...), e.g. avx2 for the common CPU")
    b.add_argument("--json", action="store_true")
    quant_options(b)
    b.set_defaults(func=cmd_bench)

    s = sub.add_parser("search", help="find per-layer settings for a model from a folder of photos, no labels "
                       "needed (qcnn search --images DIR --out FILE; see its --help)", add_help=False)
    s.add_argument("search_args", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_search)

    from .preprocess import PRESET_NOTES
    for name in ("classify", "eval", "quantize", "cost", "bench"):
        sub.choices[name].add_argument(
            "--preprocess", choices=sorted(PRESET_NOTES), help="image preprocessing of an ONNX model (default: "
            "guessed from the file, and said in its description): " + "; ".join(f"{k}: {v}" for k, v in PRESET_NOTES.items()))
    sub.choices["classify"].add_argument("--class-names", metavar="TXT", help="class names of an ONNX model, one "
                                         "per line (default: labels.txt beside it, ImageNet's for 1000 classes)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "search":          # everything after `search` belongs to the search script
        args.search_args = rest + args.search_args
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    set_num_threads(args.threads)
    _MODEL_OPTIONS.clear()
    _MODEL_OPTIONS.update({k: v for k, v in (("preprocess", getattr(args, "preprocess", None)),
                                             ("labels", getattr(args, "class_names", None))) if v})
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\nqcnn: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("qcnn: error: not enough memory", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"qcnn: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, ImageLoadError) as exc:
        print(f"qcnn: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:          # a bug: say so plainly; QCNN_DEBUG=1 shows the traceback
        if os.environ.get("QCNN_DEBUG"):
            raise
        print(f"qcnn: internal error (please report it with the command line): {exc}\n"
              f"      set QCNN_DEBUG=1 to see where it happened", file=sys.stderr)
        return 3


if __name__ == "__main__":
    raise SystemExit(main())
