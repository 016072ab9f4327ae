"""The table of torchvision CNNs x PyTorch exporter: imports? matches onnxruntime? dense ms vs
onnxruntime fp32 ms, one thread, the two interleaved in this process (medians).

    .venv/bin/python scripts/onnx_zoo_table.py [--runs 15] [--only resnet18 ...] [--json out.json]

The models are the test skeletons (tests/data/onnx) filled with seeded random weights (speed and
agreement do not depend on the values)."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import onnx_zoo as Z  # noqa: E402

from qcnn.models import load_model  # noqa: E402
from qcnn.models.onnx_import import OnnxImportError  # noqa: E402
from qcnn.threads import set_num_threads  # noqa: E402


def measure(name: str, mode: str, runs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Z.materialise(name, mode, Path(tmp))
        row = {"model": name, "mode": mode}
        try:
            t0 = time.perf_counter()
            model = load_model(path)
            row["import_s"] = round(time.perf_counter() - t0, 2)
        except OnnxImportError as exc:
            return {**row, "imports": False, "error": str(exc)}
        row["imports"] = True
        row["layers"] = len(model.graph.nodes)
        s = model.input_size
        x = np.random.default_rng(1).standard_normal((1, s, s, 3)).astype(np.float32)
        sess = Z.ort_session(path, threads=1)
        feed = {sess.get_inputs()[0].name: np.ascontiguousarray(x.transpose(0, 3, 1, 2))}
        ref = sess.run(None, feed)[0].reshape(-1)
        ours = model.graph(x).reshape(-1)
        row["max_abs_diff"] = float(np.abs(ours - ref).max())
        row["max_logit"] = float(np.abs(ref).max())
        row["matches"] = row["max_abs_diff"] <= 1e-3 * row["max_logit"]
        for _ in range(2):   # warm-up
            model.graph(x)
            sess.run(None, feed)
        dense, peer = [], []
        for _ in range(runs):   # interleaved, so both see the same machine
            t0 = time.perf_counter()
            model.graph(x)
            t1 = time.perf_counter()
            sess.run(None, feed)
            t2 = time.perf_counter()
            dense.append(t1 - t0)
            peer.append(t2 - t1)
        row["dense_ms"] = round(1e3 * statistics.median(dense), 2)
        row["ort_ms"] = round(1e3 * statistics.median(peer), 2)
        row["ratio"] = round(row["dense_ms"] / row["ort_ms"], 2)
        return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--only", nargs="*")
    p.add_argument("--json")
    args = p.parse_args(argv)
    set_num_threads(1)
    rows = []
    print("| model | exporter | imports | matches onnxruntime (max abs diff / max logit) | dense ms | onnxruntime ms | dense / ort |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, mode in Z.available():
        if args.only and name not in args.only:
            continue
        try:
            r = measure(name, mode, args.runs)
        except Exception as exc:   # the table must come out whole; the failure is a row
            traceback.print_exc()
            r = {"model": name, "mode": mode, "imports": False, "error": f"{type(exc).__name__}: {exc}"}
        rows.append(r)
        label = "dynamo, opset 18, external data" if mode == "dynamo" else "TorchScript, opset 13"
        if not r["imports"]:
            print(f"| {name} | {label} | no: {r['error'][:80]} | | | | |", flush=True)
            continue
        print(f"| {name} | {label} | yes | {'yes' if r['matches'] else 'NO'} ({r['max_abs_diff']:.1e} / "
              f"{r['max_logit']:.2g}) | {r['dense_ms']} | {r['ort_ms']} | {r['ratio']} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
