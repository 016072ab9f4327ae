"""Other inference engines, timed beside ours by `qcnn bench --peers`: onnxruntime fp32 and int8,
OpenVINO fp32 and int8 (NNCF), MNN fp32 and ncnn fp32 / fp16 storage, all from the ONNX file
of the same dense graph, one inference thread, batch 1.

Every peer is optional (`pip install 'qcnn[peers]'`; ncnn converts the ONNX file with the `pnnx`
executable, `pip install --no-deps pnnx`: its Python side wants torch, its executable does not)
and imported only here, when asked for.  A peer that is missing, fails to convert, or whose output
disagrees with our dense engine on the same inputs is left out with the reason, never timed.

CPU features: our kernels can be capped (QCNN_ISA, `bench --isa`), and so are the peers: OpenVINO
by oneDNN's ONEDNN_MAX_CPU_ISA, onnxruntime, MNN and ncnn, which choose their kernels from CPUID
alone, by capping what CPUID reports in this process (qcnn.kernels.cap_cpuid: Linux x86-64 with
CPUID faulting) before they load.  Where that cannot be (another OS or CPU, or a peer already
loaded), they run this CPU's best code: `uncapped` names them and the report says so."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import kernels
from .graph import Graph

Engine = Callable[[np.ndarray], np.ndarray]

# Agreement with our dense output, as max |peer - dense| / max |dense| over the check inputs.
# fp32 engines differ from us only by summation order; int8 and fp16 ones round on purpose.
FP32_TOLERANCE = 1e-3
LOSSY_TOLERANCE = 0.1
CHECK_INPUTS = 4

# The module each peer family loads as (one loaded before the CPUID cap is not capped).
PEER_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "mnn": "MNN", "ncnn": "ncnn"}

# oneDNN's names for our ISA levels (OpenVINO's CPU plugin is built on oneDNN).
_ONEDNN_ISA = {"scalar": "SSE41", "avx2": "AVX2", "avx512": "AVX512_CORE", "avx512vnni": "AVX512_CORE_VNNI"}


@dataclass
class Peers:
    engines: dict[str, Engine] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)      # peer -> why it is not timed
    uncapped: list[str] = field(default_factory=list)          # peers that ignore our ISA cap
    agreement: dict[str, float] = field(default_factory=dict)  # peer -> relative max difference


def is_fp32(peer: str) -> bool:
    return peer.endswith(" fp32")


def relative_difference(y: np.ndarray, ref: np.ndarray) -> float:
    """max |y - ref| / max |ref| (shapes must match: a peer with another output shape disagrees)."""
    if y.shape != ref.shape:
        return float("inf")
    scale = float(np.max(np.abs(ref))) or 1.0
    diff = float(np.max(np.abs(y.astype(np.float64) - ref)))
    return diff / scale if np.isfinite(diff) else float("inf")


def check_agreement(name: str, engine: Engine, inputs: list[np.ndarray], references: list[np.ndarray]) -> float:
    """Relative difference of a peer from our dense outputs; raises ValueError past its tolerance."""
    worst = max(relative_difference(np.asarray(engine(x)), ref) for x, ref in zip(inputs, references))
    limit = FP32_TOLERANCE if is_fp32(name) else LOSSY_TOLERANCE
    if not worst <= limit:
        raise ValueError(f"output disagrees with the dense engine: max difference {worst:.3g} of the largest "
                         f"output (tolerance {limit:g})")
    return worst


def _nhwc(y, ref_shape: tuple) -> np.ndarray:
    """A peer's NCHW (or batchless CHW) output in our layout."""
    y = np.asarray(y, dtype=np.float32)
    if len(ref_shape) == 4:
        y = y.reshape((1,) + y.shape[-3:]) if y.ndim == 3 else y
        return y.transpose(0, 2, 3, 1) if y.ndim == 4 else y
    return y.reshape(ref_shape) if y.size == int(np.prod(ref_shape)) else y


def _nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


# ----------------------------------------------------------------------------- the peers


def _openvino(src: Path, calib: list[np.ndarray], threads: int) -> dict[str, Engine]:
    cap = kernels.isa()
    if cap != kernels.cpu_isa() and cap in _ONEDNN_ISA:   # (x86 levels) oneDNN reads it once, when the CPU plugin loads
        os.environ.setdefault("ONEDNN_MAX_CPU_ISA", _ONEDNN_ISA[cap])
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}

    def engine(model) -> Engine:
        request = core.compile_model(model, "CPU", config).create_infer_request()
        return lambda x: request.infer({0: _nchw(x)})[0]

    model = core.read_model(str(src))
    out = {"openvino fp32": engine(model)}
    if importlib.util.find_spec("nncf") is not None:
        os.environ.setdefault("NNCF_CI", "1")     # NNCF's telemetry stub: no usage reports
        import nncf
        data = nncf.Dataset([_nchw(x) for x in calib])
        out["openvino int8"] = engine(nncf.quantize(model, data, subset_size=len(calib)))
    return out


def _mnn(src: Path, tmp: Path, input_name: str, output_name: str, shape: tuple, threads: int) -> dict[str, Engine]:
    # The converter's API itself: MNN's command-line wrappers run pip and upload usage logs.
    import _tools
    import MNN

    dst = tmp / "model.mnn"
    if not _tools.mnnconvert(["mnnconvert", "-f", "ONNX", "--modelFile", str(src), "--MNNModel", str(dst),
                              "--bizCode", "qcnn"]) or not dst.exists():
        raise RuntimeError("MNN's converter failed")
    runtime = MNN.nn.create_runtime_manager(({"backend": "CPU", "numThread": threads, "precision": "high"},))
    net = MNN.nn.load_module_from_file(str(dst), [input_name], [output_name], runtime_manager=runtime)
    nchw = [shape[0], shape[3], shape[1], shape[2]]

    def run(x):
        return np.array(net.forward([MNN.expr.const(_nchw(x), nchw, MNN.expr.NCHW)])[0].read())
    return {"mnn fp32": run}


def _ncnn(src: Path, tmp: Path, shape: tuple, threads: int) -> dict[str, Engine]:
    import ncnn

    spec = importlib.util.find_spec("pnnx")      # its executable only: `import pnnx` imports torch
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("pnnx not installed (pip install --no-deps pnnx), needed to convert for ncnn")
    exe = Path(list(spec.submodule_search_locations)[0]) / "pnnx"
    n, h, w, c = shape
    r = subprocess.run([str(exe), src.name, f"inputshape=[{n},{c},{h},{w}]", "fp16=0"], cwd=tmp,
                       capture_output=True, text=True, timeout=600)
    param, weights = tmp / f"{src.stem}.ncnn.param", tmp / f"{src.stem}.ncnn.bin"
    if r.returncode or not param.exists():
        raise RuntimeError(f"pnnx failed: {(r.stderr or r.stdout).strip()[-300:]}")
    out = {}
    for name, fp16 in (("ncnn fp32", False), ("ncnn fp16 storage", True)):
        net = ncnn.Net()
        net.opt.num_threads = threads
        net.opt.use_fp16_storage = fp16
        net.opt.use_fp16_arithmetic = False
        net.load_param(str(param))
        net.load_model(str(weights))

        def run(x, net=net):
            chw = np.ascontiguousarray(x[0].transpose(2, 0, 1))   # the Mat borrows it: keep it alive
            ex = net.create_extractor()
            ex.input("in0", ncnn.Mat(chw))
            return np.array(ex.extract("out0")[1])
        out[name] = run
    return out


@contextlib.contextmanager
def _stdout_to_stderr():
    """The converters and NNCF print progress on stdout, some from C: keep it for our report
    (`bench --json`)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def peer_engines(graph: Graph, input_hw: tuple[int, int], calib: list[np.ndarray], threads: int = 1) -> Peers:
    """Every installed peer, each checked against our dense graph on the first CHECK_INPUTS of
    `calib` (also their int8 calibration set) before it may be timed."""
    from .bench import onnxruntime_engines
    from .models.onnx_export import graph_to_onnx

    peers = Peers()
    capped = kernels.isa() != kernels.cpu_isa()
    loaded = {family for family, module in PEER_MODULES.items() if module in sys.modules}
    cpuid = capped and kernels.cap_cpuid(kernels.isa())     # before the peers load: they read CPUID once
    refs = [graph.forward(x) for x in calib[:CHECK_INPUTS]]
    shape = calib[0].shape
    found, skipped = onnxruntime_engines(graph, input_hw, calib)
    peers.skipped.update(skipped)
    proto = graph_to_onnx(graph, input_hw)
    in_name, out_name = proto.graph.input[0].name, proto.graph.output[0].name
    with tempfile.TemporaryDirectory(prefix="qcnn-peers-") as tmp:
        tmp = Path(tmp)
        src = tmp / "model.onnx"
        src.write_bytes(proto.SerializeToString())
        makers = {"openvino": (("openvino",), lambda: _openvino(src, calib, threads)),
                  "mnn": (("MNN", "_tools"), lambda: _mnn(src, tmp, in_name, out_name, shape, threads)),
                  "ncnn": (("ncnn",), lambda: _ncnn(src, tmp, shape, threads))}
        for family, (modules, make) in makers.items():
            missing = [m for m in modules if importlib.util.find_spec(m) is None]
            if missing:
                peers.skipped[family] = f"not installed (pip install {family})"
                continue
            try:
                with _stdout_to_stderr():
                    found.update(make())
            except Exception as exc:      # each peer is optional: its failure only removes it
                peers.skipped[family] = f"{type(exc).__name__}: {exc}"
    for name, engine in found.items():
        run = (lambda x, e=engine: _nhwc(e(x), refs[0].shape))
        try:
            peers.agreement[name] = check_agreement(name, run, calib[:CHECK_INPUTS], refs)
        except Exception as exc:
            peers.skipped[name] = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            continue
        peers.engines[name] = run
    if capped:
        family = {n: n.split()[0] for n in peers.engines}
        peers.uncapped = [n for n in peers.engines if family[n] != "openvino" and (not cpuid or family[n] in loaded)]
    return peers


def best(means: dict[str, float]) -> dict:
    """The fastest peer and the fastest fp32 peer against our engines.  `means`: engine -> mean ms
    per image, with "dense" and "quantized"; {} without peers."""
    others = {n: ms for n, ms in means.items() if n not in ("dense", "quantized")}
    if not others:
        return {}
    top = min(others, key=others.get)
    out = {"best_peer": top, "best_peer_ms": others[top],
           "quant_speedup_over_best_peer": others[top] / means["quantized"]}
    fp32 = {n: ms for n, ms in others.items() if is_fp32(n)}
    if fp32:
        top = min(fp32, key=fp32.get)
        out.update(best_fp32_peer=top, best_fp32_peer_ms=fp32[top], dense_time_over_best_fp32=means["dense"] / fp32[top])
    return out


def summary(means: dict[str, float], uncapped: list[str] = (), isa: str = "", cpu: str = "") -> list[str]:
    """The report's closing lines on the peers (see best)."""
    from .bench import ratio_words      # "0.66x faster" would mean slower
    b = best(means)
    if not b:
        return []
    lines = [f"best peer: {b['best_peer']} {b['best_peer_ms']:.2f} ms; quantized "
             f"{ratio_words(b['quant_speedup_over_best_peer'])} than it, "
             f"{ratio_words(means['dense'] / means['quantized'])} than dense"]
    if "best_fp32_peer" in b:
        ratio = b["dense_time_over_best_fp32"]
        lines.append(f"best fp32 peer: {b['best_fp32_peer']} {b['best_fp32_peer_ms']:.2f} ms; dense takes "
                     f"{ratio:.2f}x its time" + (" (speed-ups over dense flatter the quantized engine)" if ratio > 1.1 else ""))
    if uncapped:
        lines.append(f"note: {', '.join(uncapped)} ignore the {isa} cap and run this CPU's best ({cpu}) code")
    return lines
