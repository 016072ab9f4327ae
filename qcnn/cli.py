"""Command line: `qcnn classify | eval | quantize | cost | bench | search`."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .imageio import ImageLoadError, load_image
from .threads import set_num_threads

KERNELS = ("reference", "exact", "fastscan", "reconstructed", "auto")


def _model(spec: str):
    from .models import load_model
    return load_model(spec)


def cmd_classify(args) -> int:
    model = _model(args.model)
    results, failed = [], 0
    if model.speed_test_only and not args.json:
        print(f"note: {model.description}: labels are meaningless", file=sys.stderr)
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
        json.dump(results, sys.stdout, indent=1)
        print()
    return 1 if failed else 0


def _progress_bar(enabled: bool):
    """Progress on stderr: a one-line bar on a terminal, plain lines (every 10 % or on a new step)
    when stderr is a pipe or a file."""
    last = {"text": None, "fraction": -1.0}

    def show(text: str, fraction: float):
        if not enabled:
            return
        if sys.stderr.isatty():
            bar = "#" * int(fraction * 30)
            print(f"\r[{bar:<30}] {fraction * 100:5.1f}%  {text[:40]:<40}", end="", file=sys.stderr, flush=True)
            return
        step = text.split(":")[-1].strip()
        if fraction >= last["fraction"] + 0.1 or (step != last["text"] and fraction >= last["fraction"] + 0.02) \
                or (fraction >= 1.0 > last["fraction"]):
            print(f"{fraction * 100:5.1f}%  {text}", file=sys.stderr, flush=True)
            last.update(text=step, fraction=fraction)
    return show


def _end_progress() -> None:
    if sys.stderr.isatty():
        print("\r" + " " * 80 + "\r", end="", file=sys.stderr, flush=True)


def _settings(args, model):
    """The quantization settings from --config FILE or --preset NAME, with the options that
    change them (--no-error-correction, --calib, --calib-count) applied."""
    from .pq.presets import preset, preset_names
    from .pq.settings import QuantSettings
    if getattr(args, "config", None):
        try:
            with open(args.config, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{args.config}: {exc}") from exc
        if isinstance(data, dict) and isinstance(data.get("config"), dict):
            data = data["config"]             # a search report holds the settings under "config"
        try:
            settings = QuantSettings.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{args.config}: {exc}") from exc
    elif getattr(args, "preset", None):
        settings = preset(model.name, args.preset)
    else:
        raise ValueError(f"give --preset ({', '.join(preset_names(model.name)) or 'none for this model'}) "
                         f"or --config FILE")
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
    what = f"preset {args.preset}" if getattr(args, "preset", None) else f"config {args.config}"
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
    quantized = bench.quantize(settings, progress=_progress_bar(True), use_cache=not getattr(args, "no_cache", False))
    _end_progress()
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
    bench.adopt(quantized, with_kernel(quantized.graph, args.kernel, (bench.model.input_size,) * 2))
    return bench, source


def cmd_cost(args) -> int:
    from .pq.cost import cost_report, format_table, planned_graph
    from .pq.engine import impl_for
    from .pq.layer import PQLayer
    if str(args.model).endswith(".qcnn"):
        raise ValueError("cost takes a model and a preset or config; for a saved file use `qcnn eval`")
    model = _model(args.model)
    settings = _settings(args, model)
    planned = planned_graph(model.graph, settings.plan(model.graph))
    kernels = {n.name: impl_for(n.layer, args.kernel) for n in planned if isinstance(n.layer, PQLayer)}
    report = cost_report(planned, (model.input_size,) * 2, dense_graph=model.graph, kernels=kernels)
    if args.json:
        print(json.dumps({"model": model.name, "setting": args.preset or args.config, **report.to_json()}, indent=1))
    else:
        print(f"{model.description}\nsetting: {args.preset or args.config}\n")
        print(format_table(report))
    return 0


def cmd_quantize(args) -> int:
    from .pq.modelfile import save_model
    from .pq.quantize import Cancelled
    model = _model(args.model)
    try:
        _, quantized, _ = _quantize(args, model)
        # Atomic: a killed or failed save leaves an earlier file at the path as it was.
        size = save_model(args.output, model, quantized.graph, quantized.metadata)
    except (KeyboardInterrupt, Cancelled):
        _end_progress()
        print(f"cancelled: {args.output} not written", file=sys.stderr)
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

    def progress(i, n):
        if not args.json and sys.stderr.isatty():
            print(f"\r{i}/{n}", end="", file=sys.stderr, flush=True)

    ev = bench.evaluate(args.labels, args.images, progress=progress, limit=args.limit)
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
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"\n{model.name} on {ev.images} images ({len(ev.skipped)} unreadable)")
    for name, score in ev.scores.items():
        print(f"  {name:>9}: top-1 {score.top1 * 100:5.1f}%  top-5 {score.top5 * 100:5.1f}%  "
              f"median {score.median_ms:.1f} ms/image")
    if quantized:
        print(f"  quantized with {source}, kernel {args.kernel}")
        print(f"  top-1 agreement {out['agreement'] * 100:.1f}%, mean KL(dense || quantized) {out['mean_kl']:.4f}")
    for s in ev.skipped:
        print(f"  skipped: {s}")
    return 0


def cmd_bench(args) -> int:
    from . import bench as B
    model = _model(args.model) if not str(args.model).endswith(".qcnn") else None
    wb, source = _quantized(args, model)
    model = wb.model
    inputs = B.bench_inputs(model, args.images, max(args.images_per_run, 16))
    engines = {"dense": wb.dense_graph.forward, "quantized": wb.quant_graph.forward}
    skipped = {}
    if args.peers:
        peers, skipped = B.onnxruntime_engines(wb.dense_graph, (model.input_size,) * 2, inputs[:16])
        engines.update(peers)
    bar = _progress_bar(not args.json)
    test = B.speed_test(engines, inputs, runs=args.runs, per_run=args.images_per_run,
                        progress=lambda i, n: bar("speed test", i / n))
    layers = B.layer_breakdown(wb.dense_graph, wb.quant_graph, inputs, repeats=args.layer_repeats)
    memory = {"dense": B.peak_memory(wb.dense_graph, inputs[0]), "quantized": B.peak_memory(wb.quant_graph, inputs[0])}
    report = B.BenchReport(model.name, source, args.kernel, test, layers, memory, skipped,
                           str(args.images) if args.images else "synthetic inputs")
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        _end_progress()
        if model.speed_test_only:
            print(f"note: {model.description}")
        print(report.format())
    return 0


def cmd_search(args) -> int:
    from .pq import search
    return search.main(args.search_args)     # its own options: `qcnn search --help`


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qcnn", description="Quantized-CNN: dense vs product-quantized CNN inference")
    p.add_argument("--threads", type=int, default=1, help="BLAS/kernel threads (default 1, as in the paper)")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("classify", help="top-k labels for images")
    c.add_argument("images", nargs="+", metavar="IMAGE")
    c.add_argument("--model", default="efficientnet-lite0", help="efficientnet-lite0 | alexnet | PATH.onnx")
    c.add_argument("--top", type=int, default=5)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_classify)

    def quant_options(q, kernel=True):
        q.add_argument("--preset", help="named quantization preset of the model (see qcnn.pq.presets)")
        q.add_argument("--config", help="JSON quantization settings (QuantSettings.to_dict form, an older "
                       "QuantConfig file, or a search report)")
        q.add_argument("--calib", help="folder of unlabelled calibration images (default: the preset's or "
                       "config's, else the bundled samples)")
        q.add_argument("--calib-count", type=int, default=None, help="calibration inputs (default: the preset's "
                       "or config's, 16; augmented crops fill up when the folder has fewer images: raise it with --calib")
        q.add_argument("--no-error-correction", action="store_true", help="plain k-means codebooks")
        q.add_argument("--no-cache", action="store_true", help="quantize again, neither reading nor writing "
                       "the quantization cache the app shares")
        if kernel:
            q.add_argument("--kernel", default="auto", choices=KERNELS, help="how PQ layers run (default: auto)")

    e = sub.add_parser("eval", help="top-1/top-5 of the dense and quantized engines on a labelled folder")
    e.add_argument("--model", default="efficientnet-lite0", help="model name, PATH.onnx or FILE.qcnn")
    e.add_argument("--images", required=True, help="folder of images")
    e.add_argument("--labels", required=True, help="CSV with file,class_index columns")
    e.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    e.add_argument("--json", action="store_true")
    quant_options(e)
    e.set_defaults(func=cmd_eval)

    q = sub.add_parser("quantize", help="product-quantize a model and save it as a .qcnn file")
    q.add_argument("--model", default="efficientnet-lite0")
    q.add_argument("-o", "--output", required=True, help="the .qcnn file to write")
    quant_options(q, kernel=False)
    q.set_defaults(func=cmd_quantize)

    c = sub.add_parser("cost", help="cost model: MACs, lookups, storage, memory per layer")
    c.add_argument("--model", default="efficientnet-lite0")
    c.add_argument("--preset")
    c.add_argument("--config")
    c.add_argument("--kernel", default="auto", choices=KERNELS,
                   help="kernel the PQ layers would run (auto here: fast-scan where K <= 16, else exact; "
                        "eval, bench and the app time each layer)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_cost)

    b = sub.add_parser("bench", help="the paper's speed test: dense vs quantized, batch 1, one thread")
    b.add_argument("--model", default="alexnet", help="model name, PATH.onnx or FILE.qcnn")
    b.add_argument("--images", help="folder of photos (default: synthetic inputs)")
    b.add_argument("--runs", type=int, default=5)
    b.add_argument("--images-per-run", type=int, default=100)
    b.add_argument("--layer-repeats", type=int, default=20, help="images for the per-layer breakdown")
    b.add_argument("--peers", action="store_true", help="also time onnxruntime fp32 and int8 (static QDQ)")
    b.add_argument("--json", action="store_true")
    quant_options(b)
    b.set_defaults(func=cmd_bench)

    s = sub.add_parser("search", help="sensitivity analysis and per-layer setting search (see --help)",
                       add_help=False)
    s.add_argument("search_args", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_search)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "search":          # everything after `search` belongs to the search script
        args.search_args = rest + args.search_args
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    set_num_threads(args.threads)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"qcnn: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
