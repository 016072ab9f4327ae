"""Top-1/top-5 of presets on the split they were found with, and how long quantizing took.

Calibration on the odd data rows of a labels.csv (the first 128), evaluation on the even rows,
weights reconstructed from the codebooks (the kernels change speed, not the model) -- the split
of qcnn.pq.presets.LITE0_NOTES and `python -m qcnn.pq.search`.  With several --seeds it shows how
much of a difference between two quantizers is the seed's.

    .venv/bin/python scripts/preset_accuracy.py --labels ../shared/imagenet-sample-500/labels.csv \\
        --presets accurate,fast,fastscan --seeds 0,1,2
"""
import argparse
import json
import time

import numpy as np

from qcnn.evaluate import accuracy
from qcnn.models import load_model
from qcnn.pq.presets import preset
from qcnn.pq.quantize import quantize_model, reconstructed
from qcnn.pq.search import _load_split
from qcnn.threads import ensure_thread_limit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--labels", required=True)
    p.add_argument("--model", default="efficientnet-lite0")
    p.add_argument("--presets", default="accurate,fast,fastscan")
    p.add_argument("--seeds", default="0")
    p.add_argument("--calib", type=int, default=128, help="odd rows used for calibration")
    args = p.parse_args()
    ensure_thread_limit()
    model = load_model(args.model)
    calib = _load_split(model, args.labels, 1)[0][:args.calib]
    eval_x, eval_y = _load_split(model, args.labels, 0)
    top1, top5 = accuracy(model.predict(eval_x), eval_y)
    print(json.dumps({"dense": True, "top1": top1, "top5": top5, "images": len(eval_y)}), flush=True)
    for name in args.presets.split(","):
        scores = []
        for seed in (int(s) for s in args.seeds.split(",")):
            settings = preset(model.name, name).replace(seed=seed)
            t0, c0 = time.perf_counter(), time.process_time()
            graph = quantize_model(model, settings, calib)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            top1, top5 = accuracy(model.predict(eval_x, reconstructed(graph)), eval_y)
            scores.append((top1, top5))
            print(json.dumps({"preset": name, "seed": seed, "top1": top1, "top5": top5,
                              "quantize_wall_s": round(wall, 1), "quantize_cpu_s": round(cpu, 1)}), flush=True)
        mean = np.mean(scores, axis=0)
        print(json.dumps({"preset": name, "seeds": len(scores), "mean_top1": round(float(mean[0]), 4),
                          "mean_top5": round(float(mean[1]), 4)}), flush=True)


if __name__ == "__main__":
    main()
