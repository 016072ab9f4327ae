"""The paper's speed test, reproduced: batch of one image, one thread, the average time per image
over `per_run` images, `runs` runs, dense and quantized (and optional peers) interleaved image by
image in one process, so that a noisy machine slows them alike.  Then a per-layer breakdown."""
from __future__ import annotations

import logging
import math
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from . import kernels
from .graph import Graph
from .imageio import ImageLoadError, image_files, load_image
from .models import Model
from .paths import SAMPLES
from .peers import best as best_peers, summary as peer_summary
from .pq.cost import cost_report
from .pq.engine import kernel_map
from .pq.layer import PQLayer
from .pq.taps import PATCHES_SUFFIX

Engine = Callable[[np.ndarray], np.ndarray]

#: The labelled ImageNet sample the project keeps beside the repository (README: "../shared").
SHARED_SAMPLE = Path("..") / "shared" / "imagenet-sample-500"


def default_images() -> Path:
    """What `qcnn bench` times when no folder is given: the shared ImageNet sample when it is beside
    the repository (or beside the current directory), else the bundled photos."""
    for base in (Path(__file__).resolve().parent.parent, Path.cwd()):
        if (base / SHARED_SAMPLE).is_dir():
            return (base / SHARED_SAMPLE).resolve()
    return SAMPLES


def ratio_words(ratio: float) -> str:
    """A time ratio other/ours in words: 1.52 -> "1.52x faster", 0.66 -> "1.52x slower"."""
    if not ratio > 0 or not math.isfinite(ratio):
        return "not measured"
    return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"


def bench_inputs(model: Model, images: str | Path | None, count: int, seed: int = 0) -> list[np.ndarray]:
    """Preprocessed (1, H, W, 3) inputs: up to `count` photos from a folder, else synthetic noise
    in the range the model's preprocessing produces."""
    out = []
    if images is not None:
        for path in image_files(images)[:count]:
            try:
                out.append(model.preprocess(load_image(path)))
            except ImageLoadError:
                continue
        if not out:
            raise ValueError(f"{images}: no readable images")
        return out
    rng = np.random.default_rng(seed)
    s = model.input_size
    for _ in range(min(count, 16)):
        pixels = rng.integers(0, 256, (s, s, 3)).astype(np.uint8)
        out.append(model.preprocess(Image.fromarray(pixels)))
    return out


@dataclass
class SpeedTest:
    engines: list[str]
    runs: list[dict[str, float]]           # per run: engine -> mean ms per image
    per_run: int

    def mean(self, engine: str) -> float:
        return float(np.mean([r[engine] for r in self.runs]))

    def speedup(self, engine: str = "quantized", baseline: str = "dense") -> float:
        return self.mean(baseline) / self.mean(engine)


def speed_test(engines: dict[str, Engine], inputs: list[np.ndarray], runs: int = 5, per_run: int = 100,
               progress: Callable[[int, int], None] | None = None, warmup: int = 3) -> SpeedTest:
    names = list(engines)
    for x in inputs[:warmup]:
        for f in engines.values():
            f(x)
    results = []
    for r in range(runs):
        total = dict.fromkeys(names, 0.0)
        for i in range(per_run):
            x = inputs[(r * per_run + i) % len(inputs)]
            # Rotate which engine goes first so none always meets the caches the other left.
            for name in names[i % len(names):] + names[:i % len(names)]:
                t0 = time.perf_counter()
                engines[name](x)
                total[name] += time.perf_counter() - t0
            if progress:
                progress(r * per_run + i + 1, runs * per_run)
        results.append({n: total[n] / per_run * 1e3 for n in names})
    return SpeedTest(names, results, per_run)


@dataclass
class LayerTime:
    name: str
    describe: str
    kernel: str
    dense_ms: float
    quant_ms: float
    table_ms: float = 0.0
    lookup_ms: float = 0.0
    theoretical: float = 1.0

    @property
    def measured(self) -> float:
        return self.dense_ms / self.quant_ms if self.quant_ms > 0 else float("nan")


def layer_breakdown(dense: Graph, quant: Graph, inputs: list[np.ndarray], repeats: int = 20) -> list[LayerTime]:
    """Median time per node of both graphs over `repeats` images (interleaved), with the PQ
    layers' table-build and lookup split, and the cost model's theoretical speed-up."""
    times = {"dense": {}, "quant": {}}
    split: dict[str, dict[str, list[float]]] = {}
    pq_nodes = {n.name: n.layer for n in quant if isinstance(n.layer, PQLayer) and n.layer.impl in ("exact", "fastscan", "fastscan2", "widescan")}
    for i in range(repeats):
        x = inputs[i % len(inputs)]
        for key, graph in (("dense", dense), ("quant", quant)):
            for layer in pq_nodes.values():
                layer.prepared().seconds.update(tables=0.0, lookups=0.0)
            graph.forward(x, on_layer=lambda node, s, key=key: times[key].setdefault(node.name, []).append(s))
            if key == "quant":
                for name, layer in pq_nodes.items():
                    for part, s in layer.prepared().seconds.items():
                        split.setdefault(name, {}).setdefault(part, []).append(s)
    s = inputs[0].shape[1:3]
    theory = {c.name: c.dense_macs / c.quant_macs if c.setting and c.quant_macs else 1.0
              for c in cost_report(quant, s, dense_graph=dense).layers}
    kernels = kernel_map(quant)
    out, patches_ms = [], 0.0
    for node in quant:
        q = node.layer
        d_ms = float(np.median(times["dense"].get(node.name, [0.0]))) * 1e3
        q_ms = float(np.median(times["quant"][node.name])) * 1e3
        if node.name.endswith(PATCHES_SUFFIX) and node.name not in times["dense"]:
            patches_ms = q_ms        # a layer quantized across taps: its window copy counts in its row
            continue
        q_ms, patches_ms = q_ms + patches_ms, 0.0
        parts = split.get(node.name, {})
        out.append(LayerTime(node.name, q.describe(), kernels.get(node.name, "dense"), d_ms, q_ms,
                             float(np.median(parts["tables"])) * 1e3 if parts else 0.0,
                             float(np.median(parts["lookups"])) * 1e3 if parts else 0.0,
                             theory.get(node.name, 1.0)))
    return out


def peak_memory(graph: Graph, x: np.ndarray) -> int:
    """Peak bytes numpy allocates during one forward pass (arrays and kernel work buffers)."""
    graph.forward(x)          # first call allocates the kernels' reusable buffers: not "peak per image"
    tracemalloc.start()
    try:
        graph.forward(x)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ----------------------------------------------------------------------------- peers


def onnxruntime_engines(graph: Graph, input_hw: tuple[int, int], calib: list[np.ndarray],
                        int8: bool = True) -> tuple[dict[str, Engine], dict[str, str]]:
    """onnxruntime fp32 and int8 (static QDQ, calibrated on `calib`) sessions of the dense graph,
    one thread each.  Returns the engines and, for peers that could not be made, the reason."""
    engines, skipped = {}, {}
    try:
        import onnxruntime as ort
    except ImportError:
        return {}, {"onnxruntime": "not installed (pip install onnxruntime)"}
    from .models.onnx_export import graph_to_onnx

    proto = graph_to_onnx(graph, input_hw)

    ort.set_default_logger_severity(3)         # its warnings are not ours to show: errors only

    def session(model_bytes):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x.transpose(0, 3, 1, 2)})[0]

    engines["onnxruntime fp32"] = session(proto.SerializeToString())
    if not int8:
        return engines, skipped
    try:
        engines["onnxruntime int8"] = session(_quantize_static(proto, calib))
    except Exception as exc:   # the quantization tool is optional and version-dependent
        skipped["onnxruntime int8"] = f"static quantization failed: {exc}"
    return engines, skipped


def _quantize_static(proto, calib: list[np.ndarray]) -> bytes:
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter({proto.graph.input[0].name: x.transpose(0, 3, 1, 2).copy()} for x in calib)

        def get_next(self):
            return next(self.items, None)

    # The quantization tool warns through the root logger (and would configure it on the way): its
    # advice is about its own use, not the user's.  Keep it off the terminal, leave logging as it was.
    root, quiet = logging.getLogger(), logging.NullHandler()
    level = root.level
    root.addHandler(quiet)
    root.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "dense.onnx", Path(tmp) / "int8.onnx"
            src.write_bytes(proto.SerializeToString())
            quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            return dst.read_bytes()
    finally:
        root.setLevel(level)
        root.removeHandler(quiet)


# ----------------------------------------------------------------------------- report


@dataclass
class BenchReport:
    model: str
    setting: str
    kernel: str
    test: SpeedTest
    layers: list[LayerTime]
    memory: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    images: str = "synthetic"
    simd: str = field(default_factory=kernels.isa)     # the C kernels' variant in use
    cpu_simd: str = field(default_factory=kernels.cpu_isa)   # the best one this CPU has
    uncapped: list[str] = field(default_factory=list)        # peers that ignore the ISA cap (qcnn.peers)

    def to_json(self) -> dict:
        t = self.test
        out = {"model": self.model, "setting": self.setting, "kernel": self.kernel, "simd": self.simd,
               "cpu_simd": self.cpu_simd,
               "images": self.images,
               "runs": t.runs, "images_per_run": t.per_run,
               "dense_ms": t.mean("dense"), "quant_ms": t.mean("quantized"), "speedup": t.speedup(),
               "peers": {n: {"ms": t.mean(n), "quant_speedup_over_peer": t.mean(n) / t.mean("quantized")}
                         for n in t.engines if n not in ("dense", "quantized")},
               "skipped_peers": self.skipped, "uncapped_peers": self.uncapped,
               **best_peers({n: t.mean(n) for n in t.engines}), "peak_memory_bytes": self.memory,
               "layers": [{**vars(l), "measured": l.measured} for l in self.layers]}
        return out

    def format(self) -> str:
        t = self.test
        peers = [n for n in t.engines if n not in ("dense", "quantized")]
        simd = self.simd if self.simd == self.cpu_simd else f"{self.simd}, capped: the CPU has {self.cpu_simd}"
        lines = [f"{self.model}: quantized with {self.setting}, kernel {self.kernel} ({simd}); batch 1, "
                 f"one thread, {t.per_run} images per run ({self.images})", ""]
        head = f"{'run':>4}  {'dense ms':>9}  {'quantized ms':>12}  {'speed-up':>8}" + "".join(f"  {p:>18}" for p in peers)
        lines.append(head)
        for i, r in enumerate(t.runs, 1):
            lines.append(f"{i:>4}  {r['dense']:9.2f}  {r['quantized']:12.2f}  {r['dense'] / r['quantized']:7.2f}x"
                         + "".join(f"  {r[p]:15.2f} ms" for p in peers))
        lines.append(f"{'avg':>4}  {t.mean('dense'):9.2f}  {t.mean('quantized'):12.2f}  {t.speedup():7.2f}x"
                     + "".join(f"  {t.mean(p):15.2f} ms" for p in peers))
        lines.append(f"quantized vs dense: {ratio_words(t.speedup())}")
        for p in peers:
            lines.append(f"quantized vs {p}: {ratio_words(t.mean(p) / t.mean('quantized'))}")
        for p, why in self.skipped.items():
            lines.append(f"{p}: skipped ({why})")
        lines += peer_summary({n: t.mean(n) for n in t.engines}, self.uncapped, self.simd, self.cpu_simd)
        lines += ["", "per layer (median of single-image forward passes, ms):",
                  f"{'layer':<14} {'kernel':<9} {'dense':>8} {'quant':>8} {'tables':>8} {'lookups':>8} "
                  f"{'theory':>7} {'measured':>8}"]
        for l in self.layers:
            if l.kernel == "dense" and l.dense_ms < 0.05:
                continue
            lines.append(f"{l.name:<14} {l.kernel:<9} {l.dense_ms:8.3f} {l.quant_ms:8.3f} "
                         + (f"{l.table_ms:8.3f} {l.lookup_ms:8.3f} {l.theoretical:6.2f}x {l.measured:7.2f}x"
                            if l.kernel != "dense" else f"{'':8} {'':8} {'':7} {l.measured:7.2f}x"))
        if self.memory:
            lines += ["", "peak numpy memory per forward pass: "
                      + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in self.memory.items())]
        return "\n".join(lines)
