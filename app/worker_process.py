"""Inside a worker process of the app: an inference engine, or the long jobs (quantizing, evaluating).

`python -m app.worker_process` runs one, without Qt.  Requests arrive on stdin, replies leave on
stdout, framed by app.channel.  Running the engines here rather than in threads of the window's
process keeps their Python work (graph walking, per-layer hooks, k-means loops) away from the GUI
thread's interpreter lock: the window stays responsive however busy they are, a stuck engine can
be killed and restarted, and closing the window never waits for a forward pass or a k-means fit.

Messages are tuples, kind first:

    to the worker                                   replies
    ("load", gen, model_ref, quant_path, kernel)    ("loaded", gen, info) | ("load_failed", gen, message)
    ("run", gen, serial, shm_name, shape)           ("result", gen, serial, payload) | ("run_failed", gen, serial, message)
    ("threads", n)                                  -
    ("job", job_id, name, args)                     ("progress", job_id, text, fraction)*, ("partial", job_id, value)*,
                                                    then ("done", job_id, value) | ("failed", job_id, message)
                                                    | ("cancelled", job_id)
    ("cancel", job_id)                              (the job ends with "cancelled")

Jobs (JOBS): "quantize", "evaluate", "find_settings" (the label-free settings search).
    ("quit",)                                       -

An engine is told what to run once per model or settings change ("load"): a model reference
(`("spec", name or ONNX path)` or `("qcnn", path)`, the dense side of a .qcnn file) or a .qcnn path
for the quantized engine, which it reads and prepares for its kernel itself.  Frames travel as one
float32 input tensor in shared memory that the window writes while both engines are idle; results
come back as small messages (top-5, latency, per-layer times, probabilities).
"""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
import traceback

import numpy as np

from .channel import Channel

PROGRESS_INTERVAL_S = 0.1        # at most ten progress messages a second reach the window


def message_of(exc: BaseException) -> str:
    """What the window shows for an exception: its text, with the class name only when the text
    alone would not say what went wrong."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    return text if isinstance(exc, (ValueError, OSError, RuntimeError, KeyError)) else f"{type(exc).__name__}: {text}"


# --------------------------------------------------------------------------- loading

class _Memo:
    """The last few things loaded, by key: a second engine load or job on the same model is free."""

    def __init__(self, keep: int = 2):
        self.keep, self.items = keep, {}

    def get(self, key, make):
        if key not in self.items:
            while len(self.items) >= self.keep:
                self.items.pop(next(iter(self.items)))
            self.items[key] = make()
        return self.items[key]


_models, _files = _Memo(), _Memo()


def _file_key(path: str) -> tuple:
    st = os.stat(path)
    return os.path.abspath(path), st.st_mtime_ns, st.st_size


def load_ref(ref):
    """The dense Model a reference names (see the module docstring)."""
    kind, spec = ref
    key = (kind, spec) + (_file_key(spec) if os.path.isfile(spec) else ())
    if kind == "spec":
        from qcnn.models import load_model
        return _models.get(key, lambda: load_model(spec))
    if kind == "qcnn":
        from qcnn.workbench import Workbench
        return _models.get(key, lambda: Workbench().open_model_file(spec)[0])
    raise ValueError(f"unknown model reference {ref!r}")


def load_quantized(path: str):
    """(Model with the canonical PQ graph, metadata) of a .qcnn file."""
    from qcnn.pq.modelfile import load_model_file
    return _files.get(_file_key(path), lambda: load_model_file(path))


# --------------------------------------------------------------------------- the engine

class Engine:
    """What this process classifies frames with: a model and the graph that runs it."""

    def __init__(self):
        self.gen = None
        self.model = None
        self.graph = None
        self._shm = None

    def load(self, gen, model_ref, quant_path, kernel) -> dict:
        from qcnn.pq import engine as pq_engine
        t0 = time.perf_counter()
        self.gen, self.model, self.graph = gen, None, None
        if quant_path is not None:
            model, meta = load_quantized(quant_path)
            plan = None
            if kernel == "auto":      # the stored (or once measured and cached) plan: same kernels every load
                from qcnn.workbench import auto_plan
                plan = auto_plan(model, model.graph, meta)
            graph = pq_engine.with_kernel(model.graph, kernel or "reference", (model.input_size,) * 2, plan)
            kernels = pq_engine.kernel_map(graph)
        elif model_ref is not None:
            model = load_ref(model_ref)
            graph, kernels = model.graph, {}
        else:
            return {"kernels": {}, "seconds": 0.0}
        # One forward pass to warm up: the first frame's time is then typical, and the window
        # learns how long a frame takes (its watchdog's patience).
        size = model.input_size
        t1 = time.perf_counter()
        model.predict(np.zeros((1, size, size, 3), np.float32), graph)
        warm_ms = (time.perf_counter() - t1) * 1e3
        self.model, self.graph = model, graph
        return {"kernels": kernels, "seconds": time.perf_counter() - t0, "warmup_ms": warm_ms}

    def run(self, shm_name: str, shape) -> dict:
        if self.graph is None:
            raise RuntimeError("this engine has no model loaded")
        x = np.ndarray(shape, np.float32, buffer=self._buffer(shm_name)).copy()
        if x.ndim != 4 or x.shape[1:3] != (self.model.input_size, self.model.input_size):
            raise ValueError(f"frame tensor of shape {tuple(x.shape)} does not fit this model's input "
                             f"({self.model.input_size}x{self.model.input_size})")
        layers = []

        def hook(node, seconds):
            layers.append((node.name, node.layer.kind, seconds * 1e3))

        t0 = time.perf_counter()
        probs = self.model.predict(x, self.graph, on_layer=hook)[0]
        latency = (time.perf_counter() - t0) * 1e3
        if not np.all(np.isfinite(probs)):
            raise ValueError("the network produced non-finite probabilities for this frame")
        return {"top": self.model.top_k(probs, 5), "latency_ms": latency, "layers": layers,
                "probs": probs.astype(np.float32, copy=False)}

    def _buffer(self, name: str):
        if self._shm is None or self._shm.name != name:
            if self._shm is not None:
                self._shm.close()
            self._shm = attach_shared_memory(name)
        return self._shm.buf


def attach_shared_memory(name: str):
    """Open the window's shared block without adopting it: the window creates and unlinks it, so
    this process's resource tracker must not (Python < 3.13 has no track=False)."""
    from multiprocessing import resource_tracker, shared_memory
    try:
        return shared_memory.SharedMemory(name, track=False)
    except TypeError:
        register = resource_tracker.register
        resource_tracker.register = lambda *args, **kwargs: None
        try:
            return shared_memory.SharedMemory(name)
        finally:
            resource_tracker.register = register


# --------------------------------------------------------------------------- jobs

class JobContext:
    """What a job function gets: progress and partial results to report, a cancel flag."""

    def __init__(self, channel: Channel, job_id, cancel: threading.Event):
        self.channel, self.job_id, self.cancel = channel, job_id, cancel
        self._last = 0.0
        self._last_text = None

    def progress(self, text: str, fraction: float) -> None:
        if self.cancel.is_set():
            from qcnn.pq.quantize import Cancelled
            raise Cancelled("cancelled")
        now = time.monotonic()
        if now - self._last >= PROGRESS_INTERVAL_S or fraction >= 1.0 or text.split(":")[0] != self._last_text:
            self._last, self._last_text = now, text.split(":")[0]
            self.channel.send(("progress", self.job_id, text, float(fraction)))

    def partial(self, value) -> None:
        self.channel.send(("partial", self.job_id, value))


def job_quantize(ctx: JobContext, model_ref, settings, source=None):
    """The quantized model for `settings`, progressively: the k-means-only model is sent as a
    partial result as soon as it exists, then the error-corrected one is the result."""
    from qcnn import workbench as wb
    model = load_ref(model_ref)
    bench = wb.Workbench()
    bench.set_model(model, source=source)
    stages = wb.progressive_stages(model, settings)
    result = None
    for i, stage in enumerate(stages):
        name = "error correction" if stage.error_correction else "k-means"
        ctx.progress(f"{name}: starting", 0.0)
        result = _on_disk(bench.quantize(stage, progress=lambda text, f, n=name: ctx.progress(f"{n}: {_step(text)}", f),
                                         cancel=ctx.cancel, model=model), model)
        if i < len(stages) - 1:
            ctx.partial(result)
    return result


def _on_disk(quantized, model):
    """`quantized` with a file the engine processes can load: the cache's, or (the cache could not
    be written) a temporary one that lives as long as this job process."""
    if quantized.path is None:
        import dataclasses
        import tempfile
        from pathlib import Path

        from qcnn.pq.modelfile import save_model
        folder = tempfile.mkdtemp(prefix="qcnn-uncached-")
        path = Path(folder) / "model.qcnn"
        save_model(path, model, quantized.graph, quantized.metadata)
        quantized = dataclasses.replace(quantized, path=path)
    return quantized


def _step(text: str) -> str:
    """"b3.expand: kmeans" -> "b3.expand" (the stage says k-means already), "...: correct" -> "b3.expand, correcting"."""
    layer, _, step = text.partition(": ")
    return {"kmeans": layer, "forward": layer, "correct": f"{layer}, correcting"}.get(step, text)


def job_evaluate(ctx: JobContext, model_ref, quant_path, kernel, labels, folder, limit=None, threads=1):
    """Top-1/top-5 of the dense model and (with quant_path) of its quantized graph on `kernel`."""
    from qcnn import threads as qthreads
    from qcnn import workbench as wb
    qthreads.set_num_threads(threads)
    bench = wb.Workbench()
    bench.set_model(load_ref(model_ref))
    if quant_path is not None:
        ctx.progress("preparing the quantized engine", 0.0)
        loaded, metadata = load_quantized(quant_path)
        bench.kernel = kernel or bench.kernel
        bench.adopt(wb.Quantized(loaded.graph, None, quant_path, os.path.getsize(quant_path), metadata, True))
    return bench.evaluate(labels, folder, progress=lambda i, n: ctx.progress(f"{i}/{n} images", i / n),
                          cancel=ctx.cancel, limit=limit)


def job_find_settings(ctx: JobContext, model_ref, folder, objective="compression", options=None, threads=1):
    """Per-layer settings from a folder of unlabelled photos (Workbench.find_settings): a Found."""
    from qcnn import threads as qthreads
    from qcnn import workbench as wb
    qthreads.set_num_threads(threads)
    bench = wb.Workbench()
    bench.set_model(load_ref(model_ref))
    return bench.find_settings(folder, objective, progress=ctx.progress, cancel=ctx.cancel, **(options or {}))


JOBS = {"quantize": job_quantize, "evaluate": job_evaluate, "find_settings": job_find_settings}


# --------------------------------------------------------------------------- the loop

def serve(channel: Channel) -> None:
    """Answer requests until "quit" or until the window goes away (end of stdin)."""
    inbox: queue.Queue = queue.Queue()
    current = {"job": None, "cancel": threading.Event()}

    def read():
        while True:
            try:
                message = channel.recv()
            except (EOFError, OSError):
                inbox.put(("quit",))
                return
            if message[0] == "cancel":
                if current["job"] == message[1]:
                    current["cancel"].set()
                continue
            inbox.put(message)
            if message[0] == "quit":
                return

    threading.Thread(target=read, name="qcnn-worker-reader", daemon=True).start()
    engine = Engine()
    from qcnn import threads as qthreads
    while True:
        message = inbox.get()
        kind = message[0]
        try:
            if kind == "quit":
                return
            if kind == "threads":
                qthreads.set_num_threads(int(message[1]))
            elif kind == "load":
                gen = message[1]
                try:
                    channel.send(("loaded", gen, engine.load(*message[1:])))
                except Exception as exc:
                    traceback.print_exc()
                    channel.send(("load_failed", gen, message_of(exc)))
            elif kind == "run":
                _, gen, serial, shm_name, shape = message
                try:
                    channel.send(("result", gen, serial, engine.run(shm_name, shape)))
                except Exception as exc:
                    channel.send(("run_failed", gen, serial, message_of(exc)))
            elif kind == "job":
                _, job_id, name, args = message
                current["cancel"] = threading.Event()
                current["job"] = job_id
                channel.send(_run_job(channel, job_id, name, args, current["cancel"]))
                current["job"] = None
        except (BrokenPipeError, OSError):
            return                               # the window is gone


def _run_job(channel, job_id, name, args, cancel):
    from qcnn.pq.quantize import Cancelled
    try:
        value = JOBS[name](JobContext(channel, job_id, cancel), *args)
    except Cancelled:
        return ("cancelled", job_id)
    except Exception as exc:
        if cancel.is_set():
            return ("cancelled", job_id)
        traceback.print_exc()
        return ("failed", job_id, message_of(exc))
    return ("cancelled", job_id) if cancel.is_set() else ("done", job_id, value)


def lower_priority(nice: int) -> None:
    """Let the window's process win the CPU when both want it (Unix only)."""
    if nice and hasattr(os, "nice"):
        try:
            os.nice(nice)
        except OSError:
            pass


def main() -> None:
    # The channel takes the real stdout; anything else printed (by us or a library, in Python or
    # C) goes to stderr, so it cannot corrupt a message.
    if sys.stderr is None:                   # pythonw (Windows): no console to write to
        sys.stderr = open(os.devnull, "w")
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    lower_priority(int(os.environ.get("QCNN_WORKER_NICE", "4")))
    channel = Channel(os.fdopen(os.dup(sys.stdin.fileno()), "rb"), out)
    # Import now what the first request will need (requests wait in the pipe meanwhile): the job
    # process's quantizer takes seconds to import, time the window spends starting up anyway.
    import importlib
    for module in sys.argv[1:]:
        importlib.import_module(module)
    try:
        serve(channel)
    finally:
        channel.close()


if __name__ == "__main__":
    main()
