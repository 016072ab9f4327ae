"""Command line: `qcnn classify | eval`."""
from __future__ import annotations

import argparse
import json
import sys

from .imageio import ImageLoadError, load_image
from .threads import set_num_threads


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


def cmd_eval(args) -> int:
    from .evaluate import evaluate
    model = _model(args.model)

    def progress(i, n):
        if not args.json and sys.stderr.isatty():
            print(f"\r{i}/{n}", end="", file=sys.stderr, flush=True)

    ev = evaluate(model, args.labels, args.images, limit=args.limit, progress=progress)
    dense = ev.scores["dense"]
    out = {"model": model.name, "images": ev.images, "skipped": ev.skipped,
           "dense_top1": dense.top1, "dense_top5": dense.top5, "dense_median_ms": dense.median_ms}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"\n{model.name} on {ev.images} images ({len(ev.skipped)} unreadable)")
        print(f"  dense: top-1 {dense.top1 * 100:.1f}%  top-5 {dense.top5 * 100:.1f}%  "
              f"median {dense.median_ms:.1f} ms/image")
        for s in ev.skipped:
            print(f"  skipped: {s}")
    return 0


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

    e = sub.add_parser("eval", help="top-1/top-5 accuracy on a labelled image folder")
    e.add_argument("--model", default="efficientnet-lite0")
    e.add_argument("--images", required=True, help="folder of images")
    e.add_argument("--labels", required=True, help="CSV with file,class_index columns")
    e.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_num_threads(args.threads)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"qcnn: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
