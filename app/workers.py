"""Background threads: one per inference engine, plus one for long tasks (models, k-means, evaluation).

The GUI thread never runs a forward pass or k-means: it hands work to these objects through
queued signals and gets results back the same way.
"""
from __future__ import annotations

import os
import threading
import traceback

from PySide6.QtCore import QObject, QThread, Signal, Slot

from qcnn.workbench import ENGINES, Cancelled, EngineRun, Frame, run_engine


class EngineWorker(QObject):
    """Runs one engine's forward passes in its own thread."""

    finished = Signal(object)          # EngineRun
    failed = Signal(str, object, str)  # engine, frame, message

    def __init__(self, engine: str):
        super().__init__()
        self.engine = engine
        self._niced = False

    @Slot(object)
    def run(self, job) -> None:
        if not self._niced:
            self._niced = True
            lower_priority()
        frame, model, graph = job
        try:
            self.finished.emit(run_engine(model, graph, frame, self.engine))
        except Exception as exc:      # shown in the UI; the thread stays alive for the next frame
            self.failed.emit(self.engine, frame, _message(exc))


class FramePipeline(QObject):
    """Sends each frame to both engines, each in its own thread, and pairs their results.

    A frame that arrives while an engine is still busy waits in a single slot; a newer frame
    replaces it (latest wins), so a fast camera or video never queues up work.  Both engines get
    the same frame, so the panels always compare like with like.
    """

    result = Signal(object)            # EngineRun, as each engine finishes
    pair = Signal(object, object)      # (dense EngineRun|None, quantized EngineRun|None), frame done
    error = Signal(str, str)           # frame name, message

    def __init__(self, graphs, parent=None):
        """`graphs()` -> (model, {engine: graph or None}) at dispatch time."""
        super().__init__(parent)
        self._graphs = graphs
        self.threads, self.workers, self._requests = {}, {}, {}
        for engine in ENGINES:
            thread = QThread(self)
            thread.setObjectName(f"qcnn-{engine}")
            worker = EngineWorker(engine)
            worker.moveToThread(thread)
            request = _Request(self)
            request.job.connect(worker.run)        # queued: runs in the worker's thread
            worker.finished.connect(self._on_finished)
            worker.failed.connect(self._on_failed)
            thread.start()
            self.threads[engine], self.workers[engine], self._requests[engine] = thread, worker, request
        self._busy: dict[str, Frame] = {}
        self._runs: dict[str, EngineRun | None] = {}
        self._pending: Frame | None = None
        self._reported: Frame | None = None
        self.model = None                  # the model of the frame in flight (or last finished)
        self.dropped = 0
        self.completed = 0

    @property
    def busy(self) -> bool:
        return bool(self._busy)

    def submit(self, frame: Frame) -> None:
        if self._busy:
            if self._pending is not None:
                self.dropped += 1
            self._pending = frame
            return
        self._start(frame)

    def _start(self, frame: Frame) -> None:
        model, graphs = self._graphs()
        if model is None:
            return
        self.model = model
        self._runs = {}
        for engine in ENGINES:
            graph = graphs.get(engine)
            if graph is None:
                self._runs[engine] = None          # not ready (quantizing): the frame runs dense only
                continue
            self._busy[engine] = frame
            self._requests[engine].job.emit((frame, model, graph))
        if not self._busy:
            self._finish()

    @Slot(object)
    def _on_finished(self, run: EngineRun) -> None:
        self._runs[run.engine] = run
        self.result.emit(run)
        self._done(run.engine)

    @Slot(str, object, str)
    def _on_failed(self, engine: str, frame: Frame, message: str) -> None:
        self._runs[engine] = None
        # Both engines fail the same way on an unreadable file: say it once per frame.
        if frame is not self._reported:
            self._reported = frame
            self.error.emit(frame.name, message)
        self._done(engine)

    def _done(self, engine: str) -> None:
        self._busy.pop(engine, None)
        if not self._busy:
            self._finish()

    def _finish(self) -> None:
        self.completed += 1
        self.pair.emit(self._runs.get("dense"), self._runs.get("quantized"))
        pending, self._pending = self._pending, None
        if pending is not None:
            self._start(pending)

    def stop(self) -> None:
        self._pending = None
        for thread in self.threads.values():
            thread.quit()
        for thread in self.threads.values():
            thread.wait()


class _Request(QObject):
    job = Signal(object)


class Task(QThread):
    """Runs fn(progress, cancel) in a thread: progress(text, fraction) and a threading.Event.

    Signals: progressed(text, fraction), succeeded(result), failed(message), cancelled().
    Exactly one of the last three is emitted."""

    progressed = Signal(str, float)
    succeeded = Signal(object)
    failed = Signal(str)
    cancelled = Signal()

    def __init__(self, name: str, fn, parent=None):
        super().__init__(parent)
        self.name = name
        self.setObjectName(f"qcnn-task-{name}")
        self._fn = fn
        self.cancel_event = threading.Event()

    def cancel(self) -> None:
        self.cancel_event.set()

    def run(self) -> None:
        lower_priority()
        try:
            result = self._fn(self._progress, self.cancel_event)
        except Cancelled:
            self.cancelled.emit()
            return
        except Exception as exc:
            if self.cancel_event.is_set():
                self.cancelled.emit()
            else:
                traceback.print_exc()
                self.failed.emit(_message(exc))
            return
        if self.cancel_event.is_set():
            self.cancelled.emit()
        else:
            self.succeeded.emit(result)

    def _progress(self, text: str, fraction: float) -> None:
        if self.cancel_event.is_set():
            raise Cancelled()
        self.progressed.emit(text, float(fraction))


# Workers run at a slightly lower priority than the GUI thread, so on a busy machine the event
# loop wins the CPU when both want it (measured with app/probe.py: p99 GUI lateness roughly
# halves).  Both engines get the same value, so their comparison stays fair.  0 turns it off.
WORKER_NICE = int(os.environ.get("QCNN_WORKER_NICE", "4"))


def lower_priority() -> None:
    """Nice the calling thread (Linux has per-thread nice values; elsewhere this does nothing)."""
    if WORKER_NICE and hasattr(os, "setpriority"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)
        except OSError:
            pass


def _message(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, (ValueError, OSError, RuntimeError)) else f"{type(exc).__name__}: {text}"
