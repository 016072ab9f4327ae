"""The fast-scan preset search of qcnn.pq.search, with MEASURED per-layer time as the objective.

`qcnn search --objective speed` counts multiply-adds; on ResNet-18 that is a poor guide to what the
C kernels gain: layer1 (56x56, 64 channels) gains ~1.2x at C_s'=4 K=16 where theory says 3.6x (the
table build dominates), the stride-2 layer2.0.conv1 builds tables over all its input pixels and
runs slower than dense, and layer4's dense 3x3 products (9.4 MB of weights each, memory bound) gain
10-30x even at C_s'=2.  So this script takes the search's own sensitivity table (`--sensitivity`
of `python -m qcnn.pq.search`) and per-layer times from `qcnn bench` reports (text output, one per
uniform setting), and runs the same greedy path (best saving per added KL) and prefix check
(quantize the whole model with error correction, measure on the probe images) as search.search,
with milliseconds instead of multiply-adds.

    python -m qcnn.pq.search --model resnet18 --labels L --objective speed --ladder fastscan \\
        --calib 64 --sensitivity sens.json ...                               # the sensitivity table
    qcnn bench --model resnet18 --config all4x16.json --kernel fastscan --runs 1 --images-per-run 10 \\
        --layer-repeats 20 > bench-all4.log                                  # and all2x16, all8x16
    python scripts/measured_search.py --model resnet18 --labels L --sensitivity sens.json \\
        --bench 2:bench-all2.log,4:bench-all4.log,8:bench-all8.log --min-keep5 0.95 --max-kl 0.3 \\
        --skip conv1 --out fast.json
"""
import argparse
import json
import re
import sys
import time

import numpy as np

from qcnn.models import load_model
from qcnn.pq.layer import PQSetting
from qcnn.pq.cost import SettingCosts
from qcnn.pq.quantize import calibration_for, quantize_model, reconstructed
from qcnn.pq.search import Budget, _load_split, agreement, greedy_path, longest_prefix, read_sensitivity
from qcnn.pq.settings import QuantSettings
from qcnn.threads import ensure_thread_limit

ROW = re.compile(r"^(\S+)\s+(fastscan|exact|reconstructed|dense)\s+([\d.]+)\s+([\d.]+)")


def read_bench(path: str) -> dict[str, tuple[float, float]]:
    """layer -> (dense ms, quantized ms) from a `qcnn bench` per-layer table."""
    out = {}
    with open(path) as f:
        for line in f:
            m = ROW.match(line)
            if m:
                out[m[1]] = (float(m[3]), float(m[4]))
    if not out:
        raise ValueError(f"{path}: no per-layer table")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--labels", required=True)
    p.add_argument("--sensitivity", required=True)
    p.add_argument("--bench", required=True, help="C_s':FILE,... bench logs of uniform K=16 settings")
    p.add_argument("--objective", choices=("ms", "bits"), default="ms",
                   help="ms: measured time (the fast preset); bits: storage (the accurate preset)")
    p.add_argument("--calib", type=int, default=64, help="odd rows used for calibration (the rest: probe)")
    p.add_argument("--bundled", action="store_true", help="calibrate as the presets do (the bundled photos, "
                   "DEFAULT_CALIB_COUNT); all odd rows are then probe images")
    p.add_argument("--calib-count", type=int, help="with --bundled: calibration inputs (default: the presets')")
    p.add_argument("--no-error-correction", action="store_true")
    p.add_argument("--probe", type=int, help="use only the first N probe images (quicker checks)")
    p.add_argument("--steps", help="check only these path prefixes (comma-separated), in this order, "
                   "instead of the binary search (each check quantizes the whole model: minutes)")
    p.add_argument("--skip", default="", help="layers that stay dense (comma-separated)")
    p.add_argument("--max-kl", type=float)
    p.add_argument("--min-agree", type=float)
    p.add_argument("--min-keep5", type=float)
    p.add_argument("--out")
    p.add_argument("--dry-run", action="store_true", help="print the greedy path (additive KL) and stop")
    args = p.parse_args()
    ensure_thread_limit()

    def log(s):
        print(f"[{time.strftime('%H:%M:%S')}] {s}", file=sys.stderr, flush=True)

    benches = {int(k): read_bench(v) for k, v in (item.split(":", 1) for item in args.bench.split(","))}
    skip = set(filter(None, args.skip.split(",")))
    layers = set.intersection(*(set(b) for b in benches.values()))
    # Dense time: the least over the runs (each run timed dense too): on a shared machine the
    # medians of some layers still catch other jobs' bursts.
    dense_ms = {n: float(min(b[n][0] for b in benches.values())) for n in layers}
    quant_ms = {n: {d: b[n][1] for d, b in benches.items()} for n in layers}

    def ms(name, setting):
        if setting is None:
            return dense_ms[name]
        times = quant_ms[name]
        if setting.dsub in times:
            return times[setting.dsub]
        ds = sorted(times)          # between two measured widths: linear in 1 / C_s' (lookup count)
        lo = max([d for d in ds if d < setting.dsub], default=ds[0])
        hi = min([d for d in ds if d > setting.dsub], default=ds[-1])
        if lo == hi:
            return times[lo]
        w = (1 / lo - 1 / setting.dsub) / (1 / lo - 1 / hi)
        return times[lo] * (1 - w) + times[hi] * w

    sens = read_sensitivity(args.sensitivity)
    sens = {n: {s: m for s, m in opts.items() if s.ksub <= 16} for n, opts in sens.items()
            if n in layers and n not in skip}
    model = load_model(args.model)
    costs = SettingCosts(model.graph, (model.input_size,) * 2)
    bits = lambda name, setting: costs.layer(name, setting).quant_bits
    path = greedy_path(sens, ms if args.objective == "ms" else bits)
    log(f"greedy path: {len(path)} moves; measured total {sum(dense_ms.values()):.1f} ms dense")

    if args.dry_run:
        state, kl = {}, {}
        for i, (name, setting) in enumerate(path, 1):
            state[name], kl[name] = setting, sens[name][setting]["kl"]
            total = sum(ms(n, state.get(n)) for n in layers)
            print(f"{i:3d} {name:<20} {setting.dsub}x{setting.ksub}  layers {sum(dense_ms.values()) / total:.2f}x  "
                  f"compression {sum(bits(n, None) for n in sens) / sum(bits(n, state.get(n)) for n in sens):5.2f}x  "
                  f"additive kl {sum(kl.values()):.3f}")
        return 0
    search_x, _ = _load_split(model, args.labels, 1)
    config = QuantSettings(error_correction=not args.no_error_correction)
    if args.calib_count:
        config = config.replace(calib_count=args.calib_count)
    if args.bundled:
        calib, probe = calibration_for(model, config), search_x
    else:
        calib, probe = search_x[:args.calib], search_x[args.calib:]
    probe = probe[:args.probe]
    ref = model.probabilities(model.graph.forward(probe))
    budget = Budget(args.max_kl, args.min_agree, args.min_keep5)
    cache = {}
    dense_bits = sum(costs.layer(n, None).quant_bits for n in sens)

    def state(k):
        s = {}
        for name, setting in path[:k]:
            s[name] = setting
        return s

    def total_ms(k):
        s = state(k)
        return sum(ms(n, s.get(n)) for n in layers)

    def check(k):
        if k not in cache:
            t0 = time.perf_counter()
            q = quantize_model(model, config.replace(layers=state(k)), calib)
            m = agreement(ref, model.probabilities(reconstructed(q).forward(probe)))
            m.update(step=k, measured_speedup=sum(dense_ms.values()) / total_ms(k), met=budget.met(m),
                     seconds=time.perf_counter() - t0,
                     compression=dense_bits / sum(bits(n, state(k).get(n)) for n in sens))
            cache[k] = m
            log(f"check {k}/{len(path)}: measured layer speed-up {m['measured_speedup']:.2f}x  agree {m['agree']:.3f} "
                f"keep5 {m['keep5']:.3f} kl {m['kl']:.4f} compression {m['compression']:.2f}x  "
                f"{'ok' if m['met'] else 'over budget'}  ({m['seconds']:.0f} s)")
        return cache[k]["met"]

    lo = 0
    if args.steps:
        for k in (int(v) for v in args.steps.split(",")):
            if check(k) and k > lo:
                lo = k
    else:
        lo = longest_prefix(len(path), check)
    chosen = state(lo)
    report = {"model": model.name, "objective": args.objective, "budget": vars(budget),
              "calibration": "bundled photos" if args.bundled else f"odd rows, first {len(calib)}",
              "probe_images": len(probe), "path": [[n, s.dsub, s.ksub] for n, s in path],
              "measured_layer_speedup": sum(dense_ms.values()) / total_ms(lo), "probe_metrics": cache.get(lo),
              "checks": list(cache.values()),
              "config": {"layers": {n: {"dsub": s.dsub, "ksub": s.ksub} for n, s in chosen.items()}}}
    print(json.dumps(report, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
