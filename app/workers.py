"""Work away from the GUI thread: two engine processes, job processes, and threads for small things.

    FramePipeline   frames -> both engine processes -> paired results (latest frame wins)
    EngineProcess   one engine in its own process (app.worker_process): told once per model or
                    settings change what to run; a watchdog kills and restarts it when it hangs
    JobProcess      long jobs (quantizing, evaluating) one at a time in a worker process, with
                    progress, partial results and a cancel that ends in a kill if it must
    ThreadTask      a function in a thread of this process (loading a model, reading a file)

Why processes: forward passes and k-means are Python as well as C, and in threads they took the
interpreter lock from the GUI thread for 100-500 ms at a time (app.probe).  In processes they
cannot, a hung one can be killed, and closing the window never waits for them.

Every object here lives in the GUI thread and emits its signals there: reader threads hand what
they receive over through a queued signal (`Relay`).
"""
from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, QTimer, Signal, Slot

from qcnn.workbench import ENGINES, EngineRun, Frame, LayerTime

from .channel import Channel
from .worker_process import message_of

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 15.0        # an engine that takes longer than this and 20x its model's usual frame is hung
LOAD_TIMEOUT_S = 300.0      # loading + preparing a kernel ("auto" measures its kernel plan on first use) is slower
CANCEL_GRACE_S = 3.0        # a job that does not stop this long after Cancel is killed
RESTARTS_PER_MINUTE = 3     # an engine that dies more often than this stays down until the next model
ENGINE_MODULES = ("qcnn.models", "qcnn.pq.engine", "qcnn.pq.modelfile")
JOB_MODULES = ("qcnn.workbench",)


class Relay(QObject):
    """Carries objects from a Python thread to the GUI thread (a queued signal).  Once closed it
    carries nothing more: a reader or loader thread that is still running when the window goes
    away must not touch Qt objects that are being destroyed (that crashed at exit)."""
    message = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._lock = threading.Lock()
        self._closed = False

    def post(self, item) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                self.message.emit(item)
            except RuntimeError:          # deleted already
                pass

    def close(self) -> None:
        with self._lock:
            self._closed = True


# --------------------------------------------------------------------------- worker processes

class WorkerProcess(QObject):
    """One `python -m app.worker_process` child and the thread that reads its replies."""

    received = Signal(object)          # a message from the child
    exited = Signal(object)            # exit code, when the child ended without being asked to

    def __init__(self, name: str, parent=None, preload: tuple[str, ...] = ()):
        super().__init__(parent)
        self.name = name
        self.preload = preload                # modules the child imports before its first request
        self.proc: subprocess.Popen | None = None
        self.channel: Channel | None = None
        self._relay = Relay(self)
        self._relay.message.connect(self._deliver)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        proc = subprocess.Popen([sys.executable, "-m", "app.worker_process", *self.preload], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env, cwd=str(ROOT))
        channel = Channel(proc.stdout, proc.stdin)
        self.proc, self.channel = proc, channel
        relay = self._relay

        def read():
            while True:
                try:
                    message = channel.recv()
                except Exception:          # EOF, a broken pipe, or garbage: the child is gone
                    break
                relay.post(("message", proc, message))
            code = proc.wait()
            channel.close()                    # this thread owns the read end
            relay.post(("exit", proc, code))

        threading.Thread(target=read, name=f"qcnn-{self.name}-reader", daemon=True).start()

    @Slot(object)
    def _deliver(self, item) -> None:
        kind, proc, payload = item
        if proc is not self.proc:
            return                         # from a process that was killed or replaced
        if kind == "message":
            self.received.emit(payload)
        else:
            self.proc = None
            self.exited.emit(payload)

    def send(self, message) -> bool:
        if not self.alive:
            return False
        try:
            self.channel.send(message)
            return True
        except (OSError, ValueError):
            return False

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                proc.kill()
            except OSError:
                pass
            _close(proc.stdin)                  # the reader thread closes stdout once it sees the end

    def ask_to_quit(self) -> None:
        self.send(("quit",))

    def finish(self, deadline: float) -> None:
        """Wait until `deadline` (time.monotonic()) for the child to end, then kill it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(2)
        _close(proc.stdin)


def _close(f) -> None:
    try:
        f.close()
    except (OSError, ValueError):
        pass


# --------------------------------------------------------------------------- engines

class EngineProcess(QObject):
    """An inference engine in its own process, and what it has been told to run.

    `want(gen, ...)` says what to run from now on (a generation number names each model/settings
    state of the window); the engine is `ready` once it has loaded that generation.  Results carry
    the generation they were computed with, so nothing computed for an older model reaches the
    panels.  A run that takes far longer than usual, or a process that dies, gets the process
    killed and restarted with what it was last told to run."""

    ready = Signal(str, object)               # engine, info {"kernels", "seconds"}
    load_failed = Signal(str, str)            # engine, message
    result = Signal(str, int, int, object)    # engine, gen, serial, payload
    run_failed = Signal(str, int, int, str)   # engine, gen, serial, message
    restarted = Signal(str, str)              # engine, why

    def __init__(self, engine: str, parent=None):
        super().__init__(parent)
        self.engine = engine
        self.process = WorkerProcess(engine, self, preload=ENGINE_MODULES)
        self.process.received.connect(self._on_message)
        self.process.exited.connect(self._on_exit)
        self.wanted: tuple | None = None      # (gen, model_ref, quant_path, kernel)
        self.loaded_gen: int | None = None
        self.busy: tuple | None = None        # (gen, serial, deadline)
        self.loading_since: float | None = None
        self.threads = 1
        self.run_timeout_s = RUN_TIMEOUT_S
        self.load_timeout_s = LOAD_TIMEOUT_S
        self.latencies: deque = deque(maxlen=20)
        self._restarts: deque = deque(maxlen=RESTARTS_PER_MINUTE)
        self.down = ""                        # why the engine stopped retrying ("" while it is up)
        self._watchdog = QTimer(self)
        self._watchdog.setInterval(250)
        self._watchdog.timeout.connect(self._check)
        self._watchdog.start()
        self.process.start()

    @property
    def gen(self) -> int | None:
        return self.wanted[0] if self.wanted else None

    @property
    def has_model(self) -> bool:
        return self.wanted is not None and (self.wanted[1] is not None or self.wanted[2] is not None)

    @property
    def is_ready(self) -> bool:
        return self.has_model and self.loaded_gen == self.gen and not self.down

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def want(self, gen: int, model_ref=None, quant_path=None, kernel=None) -> None:
        self.wanted = (gen, model_ref, quant_path, kernel)
        self.loaded_gen = None
        if self.down:                         # a new model deserves a new try
            self.down = ""
            self._restarts.clear()
        if not self.process.alive:
            self.process.start()
            self.process.send(("threads", self.threads))
        self.loading_since = time.monotonic() if self.has_model else None
        self.process.send(("load",) + self.wanted)

    def set_threads(self, n: int) -> None:
        self.threads = n
        self.process.send(("threads", n))

    def run(self, serial: int, shm_name: str, shape) -> bool:
        if not self.is_ready or self.busy is not None:
            return False
        if not self.process.send(("run", self.gen, serial, shm_name, tuple(shape))):
            return False
        self.busy = (self.gen, serial, time.monotonic() + self.timeout())
        return True

    def timeout(self) -> float:
        typical = float(np.median(self.latencies)) / 1e3 if self.latencies else 0.0
        return max(self.run_timeout_s, 20 * typical)

    @Slot(object)
    def _on_message(self, message) -> None:
        kind = message[0]
        if kind == "loaded":
            if message[1] == self.gen:
                self.loaded_gen = self.gen
                self.loading_since = None
                self.latencies.clear()        # this model's frame time, from its warm-up pass
                if message[2].get("warmup_ms"):
                    self.latencies.append(message[2]["warmup_ms"])
                if self.has_model:
                    self.ready.emit(self.engine, message[2])
        elif kind == "load_failed":
            if message[1] == self.gen:
                self.loading_since = None
                self.load_failed.emit(self.engine, message[2])
        elif kind in ("result", "run_failed"):
            _, gen, serial, payload = message
            if self.busy is None or self.busy[1] != serial:
                return
            self.busy = None
            if kind == "result":
                self.latencies.append(payload["latency_ms"])
                self.result.emit(self.engine, gen, serial, payload)
            else:
                self.run_failed.emit(self.engine, gen, serial, payload)

    @Slot(object)
    def _on_exit(self, code) -> None:
        self.restart(f"the {self.engine} engine stopped unexpectedly (exit code {code})")

    def _check(self) -> None:
        now = time.monotonic()
        if self.busy is not None and now > self.busy[2]:
            self.restart(f"the {self.engine} engine did not answer within {self.timeout():.0f} s")
        elif self.loading_since is not None and now - self.loading_since > self.load_timeout_s:
            self.restart(f"the {self.engine} engine took more than {self.load_timeout_s:.0f} s to load")

    def restart(self, why: str) -> None:
        """Kill the process and start a new one that loads what this engine was last told to run."""
        busy, self.busy = self.busy, None
        self.loaded_gen = None
        self.process.kill()
        now = time.monotonic()
        self._restarts.append(now)
        if len(self._restarts) == self._restarts.maxlen and now - self._restarts[0] < 60:
            self.down = f"{why}; stopped restarting it after {len(self._restarts)} tries in a minute"
            self.loading_since = None
            self.load_failed.emit(self.engine, self.down)
        else:
            self.process.start()
            self.process.send(("threads", self.threads))
            if self.wanted is not None:
                self.loading_since = now if self.has_model else None
                self.process.send(("load",) + self.wanted)
            self.restarted.emit(self.engine, why)
        if busy is not None:
            self.run_failed.emit(self.engine, busy[0], busy[1], f"{why}; it was restarted")


class Preparer(QObject):
    """Decodes and preprocesses frames in a thread (a big photo takes a while to decode)."""

    done = Signal(object, object, object, str)   # frame, model, Prepared or None, error message

    def __init__(self, parent=None):
        super().__init__(parent)
        self._queue: queue.Queue = queue.Queue()
        self._relay = Relay(self)
        self._relay.message.connect(self._deliver)
        threading.Thread(target=self._loop, name="qcnn-prepare", daemon=True).start()

    def submit(self, frame: Frame, model) -> None:
        self._queue.put((frame, model))

    def stop(self) -> None:
        self._queue.put(None)

    def _loop(self) -> None:
        relay = self._relay
        while True:
            item = self._queue.get()
            if item is None:
                return
            frame, model = item
            try:
                relay.post((frame, model, frame.prepare(model), ""))
            except Exception as exc:
                relay.post((frame, model, None, message_of(exc)))

    @Slot(object)
    def _deliver(self, item) -> None:
        self.done.emit(*item)


class FramePipeline(QObject):
    """Sends each frame to both engines and pairs their results.

    A frame that arrives while the previous one is still being classified waits in a single slot;
    a newer frame replaces it (latest wins), so a fast camera or video never queues up work.  Both
    engines get the same frame (the same tensor in shared memory), so the panels compare like with
    like.  An engine that is not ready (loading, quantizing) is left out of the frame; results of
    an older generation are dropped."""

    pair = Signal(object, object)             # (dense EngineRun|None, quantized EngineRun|None)
    error = Signal(str, str)                  # frame name, message
    engine_ready = Signal(str, object)        # engine, info
    engine_failed = Signal(str, str)          # engine, message (its model could not be loaded)
    engine_restarted = Signal(str, str)       # engine, why

    def __init__(self, parent=None):
        super().__init__(parent)
        self.engines = {e: EngineProcess(e, self) for e in ENGINES}
        for engine in self.engines.values():
            engine.ready.connect(self._on_ready)
            engine.load_failed.connect(self.engine_failed)
            engine.result.connect(self._on_result)
            engine.run_failed.connect(self._on_run_failed)
            engine.restarted.connect(self.engine_restarted)
        self.preparer = Preparer(self)
        self.preparer.done.connect(self._on_prepared)
        self.model = None                     # the dense model: its preprocessing makes the tensor
        self._frame: Frame | None = None      # in flight (preparing or running)
        self._prepared = None
        self._dispatched: dict[str, int] = {}
        self._runs: dict[str, EngineRun] = {}
        self._pending: Frame | None = None
        self._reported: Frame | None = None
        self.error_serial: int | None = None  # the last frame an error was reported for
        self._shm = None
        self.dropped = 0
        self.completed = 0

    # ---- what the engines run
    def set_model(self, model, gen: int, model_ref) -> None:
        """A new dense model; the quantized engine runs nothing until `set_quantized`."""
        self.model = model
        self.engines["dense"].want(gen, model_ref)
        self.engines["quantized"].want(gen)

    def set_quantized(self, gen: int, path, kernel: str) -> None:
        self.engines["quantized"].want(gen, None, str(path), kernel)

    def ready(self, engine: str) -> bool:
        return self.engines[engine].is_ready

    def set_threads(self, n: int) -> None:
        for engine in self.engines.values():
            engine.set_threads(n)

    @property
    def busy(self) -> bool:
        return self._frame is not None

    # ---- frames
    def submit(self, frame: Frame) -> None:
        if self._frame is not None:
            if self._pending is not None:
                self.dropped += 1
            self._pending = frame
            return
        self._start(frame)

    def _start(self, frame: Frame) -> None:
        if self.model is None or not any(e.is_ready for e in self.engines.values()):
            self._pending = frame             # runs when an engine is ready
            return
        self._frame = frame
        self.preparer.submit(frame, self.model)

    @Slot(object, object, object, str)
    def _on_prepared(self, frame, model, prepared, message) -> None:
        if frame is not self._frame:
            return
        if model is not self.model:           # prepared for the previous model: again, for this one
            self._frame = None
            self._start(frame)
            return
        if prepared is None:
            self._report(frame, message)
            self._frame = None
            self._next()
            return
        x = prepared.x
        self._write(x)
        self._prepared, self._runs, self._dispatched = prepared, {}, {}
        for name, engine in self.engines.items():
            if engine.run(frame.serial, self._shm.name, x.shape):
                self._dispatched[name] = engine.gen
        if not self._dispatched:
            self._frame = None
            self._pending = self._pending or frame
            return

    def _write(self, x: np.ndarray) -> None:
        from multiprocessing import shared_memory
        if self._shm is None or self._shm.size < x.nbytes:
            self._close_shm()
            self._shm = shared_memory.SharedMemory(create=True, size=max(x.nbytes, 1 << 20))
        np.ndarray(x.shape, np.float32, buffer=self._shm.buf)[...] = x

    @Slot(str, int, int, object)
    def _on_result(self, engine: str, gen: int, serial: int, payload) -> None:
        frame = self._frame
        if frame is None or serial != frame.serial or engine not in self._dispatched:
            return
        if gen == self.engines[engine].gen:   # else computed with a model no longer in use
            layers = [LayerTime(n, k, ms) for n, k, ms in payload["layers"]]
            self._runs[engine] = EngineRun(engine, frame.name, frame.serial, payload["top"], payload["latency_ms"],
                                           layers, payload["probs"], self._prepared.crop)
        self._done(engine)

    @Slot(str, int, int, str)
    def _on_run_failed(self, engine: str, gen: int, serial: int, message: str) -> None:
        frame = self._frame
        if frame is None or serial != frame.serial or engine not in self._dispatched:
            return
        if gen == self.engines[engine].gen:
            self._report(frame, message if f"{engine} engine" in message else f"{engine} engine: {message}")
        self._done(engine)

    def _report(self, frame: Frame, message: str) -> None:
        if frame is not self._reported:       # once per frame
            self._reported = frame
            self.error_serial = frame.serial
            self.error.emit(frame.name, message)

    def _done(self, engine: str) -> None:
        self._dispatched.pop(engine, None)
        if self._dispatched:
            return
        self.completed += 1
        self._frame = None
        self.pair.emit(self._runs.get("dense"), self._runs.get("quantized"))
        self._next()

    def _next(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self._start(pending)

    @Slot(str, object)
    def _on_ready(self, engine: str, info) -> None:
        self.engine_ready.emit(engine, info)
        if self._frame is None:
            self._next()

    # ---- shutdown
    def stop(self, wait_s: float = 1.0) -> None:
        """Ask both engines to quit, give them `wait_s` together, kill what is left."""
        self._pending = None
        self.preparer.stop()
        for engine in self.engines.values():
            engine._watchdog.stop()
            engine.process.ask_to_quit()
        deadline = time.monotonic() + wait_s
        for engine in self.engines.values():
            engine.process.finish(deadline)
        self._close_shm()

    def _close_shm(self) -> None:
        if self._shm is not None:
            try:
                self._shm.close()
                self._shm.unlink()
            except (OSError, BufferError):
                pass
            self._shm = None


# --------------------------------------------------------------------------- jobs

class Job(QObject):
    """A long job's handle.  Signals: progressed(text, fraction), partial(value) any number of
    times, then exactly one of succeeded(value), failed(message), cancelled(); then finished()."""

    progressed = Signal(str, float)
    partial = Signal(object)
    succeeded = Signal(object)
    failed = Signal(str)
    cancelled = Signal()
    finished = Signal()

    def __init__(self, name: str, parent=None):
        super().__init__(parent)
        self.name = name
        self.cancel_requested = False
        self.over = False
        self._cancel = lambda: None

    def cancel(self) -> None:
        if not self.over and not self.cancel_requested:
            self.cancel_requested = True
            self._cancel()

    def _end(self, kind: str, *args) -> None:
        if self.over:
            return
        self.over = True
        getattr(self, kind).emit(*args)
        self.finished.emit()


class JobProcess(QObject):
    """Jobs run one at a time in one worker process, started ahead so that its imports are done
    when the first job comes.  Cancel asks the job to stop; one that does not within
    CANCEL_GRACE_S is killed with its process (the next job starts a new one)."""

    def __init__(self, name: str, parent=None, start: bool = True):
        super().__init__(parent)
        self.process = WorkerProcess(name, self, preload=JOB_MODULES)
        self.process.received.connect(self._on_message)
        self.process.exited.connect(self._on_exit)
        self._queue: list[tuple[Job, str, tuple]] = []
        self._current: Job | None = None
        self._ids = 0
        self._jobs: dict[int, Job] = {}
        self.threads = 1
        if start:
            self.process.start()

    def submit(self, name: str, args: tuple, title: str = "") -> Job:
        self._ids += 1
        job = Job(title or name, self)
        job.id = self._ids
        job._cancel = lambda j=job: self._cancel(j)
        self._queue.append((job, name, args))
        QTimer.singleShot(0, self, self._pump)
        return job

    @property
    def busy(self) -> bool:
        return self._current is not None or bool(self._queue)

    def _pump(self) -> None:
        while self._current is None and self._queue:
            job, name, args = self._queue.pop(0)
            if job.over:
                continue
            if not self.process.alive:
                self.process.start()
            self.process.send(("threads", self.threads))
            if not self.process.send(("job", job.id, name, args)):
                job._end("failed", "the worker process could not be started")
                continue
            self._current = job
            self._jobs[job.id] = job

    def _cancel(self, job: Job) -> None:
        if job is not self._current:          # still queued
            job._end("cancelled")
            return
        self.process.send(("cancel", job.id))
        QTimer.singleShot(int(CANCEL_GRACE_S * 1000), job, lambda: self._kill_if_still(job))

    def _kill_if_still(self, job: Job) -> None:
        if job is self._current and not job.over:
            self.process.kill()
            self._finish(job, "cancelled")

    def _finish(self, job: Job, kind: str, *args) -> None:
        self._jobs.pop(job.id, None)
        if job is self._current:
            self._current = None
        job._end(kind, *args)
        QTimer.singleShot(0, self, self._pump)

    @Slot(object)
    def _on_message(self, message) -> None:
        kind, job_id = message[0], message[1]
        job = self._jobs.get(job_id)
        if job is None or job.over:
            return
        if kind == "progress":
            job.progressed.emit(message[2], message[3])
        elif kind == "partial":
            job.partial.emit(message[2])
        elif kind == "done":
            self._finish(job, "cancelled" if job.cancel_requested else "succeeded",
                         *(() if job.cancel_requested else (message[2],)))
        elif kind == "failed":
            self._finish(job, "cancelled" if job.cancel_requested else "failed",
                         *(() if job.cancel_requested else (message[2],)))
        elif kind == "cancelled":
            self._finish(job, "cancelled")

    @Slot(object)
    def _on_exit(self, code) -> None:
        job = self._current
        if job is not None:
            if job.cancel_requested:
                self._finish(job, "cancelled")
            else:
                self._finish(job, "failed", f"the worker process stopped unexpectedly (exit code {code})")

    def close(self, deadline: float | None = None) -> None:
        for job, _name, _args in self._queue:
            job.over = True
        self._queue.clear()
        if deadline is None:
            self.process.kill()
        else:
            self.process.finish(deadline)


class ThreadTask(Job):
    """fn(progress, cancel) in a daemon thread of this process, with a Job's signals.  For work
    that needs this process's objects and is short (loading a model, reading a file); a daemon
    thread never keeps the window from closing."""

    def __init__(self, name: str, fn, parent=None):
        super().__init__(name, parent)
        self._fn = fn
        self._event = threading.Event()
        self._cancel = self._event.set
        self._relay = Relay(self)
        self._relay.message.connect(self._deliver)

    def start(self) -> "ThreadTask":
        threading.Thread(target=self._run, name=f"qcnn-{self.name}", daemon=True).start()
        return self

    def _run(self) -> None:
        from qcnn.workbench import Cancelled
        relay, event = self._relay, self._event

        def progress(text: str, fraction: float) -> None:
            if event.is_set():
                raise Cancelled()
            relay.post(("progressed", text, float(fraction)))

        try:
            value = self._fn(progress, event)
        except Cancelled:
            relay.post(("cancelled",))
            return
        except Exception as exc:
            relay.post(("cancelled",) if event.is_set() else ("failed", message_of(exc)))
            return
        relay.post(("cancelled",) if event.is_set() else ("succeeded", value))

    @Slot(object)
    def _deliver(self, item) -> None:
        if item[0] == "progressed":
            if not self.over:
                self.progressed.emit(*item[1:])
        else:
            self._end(*item)
