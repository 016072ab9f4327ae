"""The main window: pictures in, dense and product-quantized results side by side.

A thin view over `qcnn.workbench.Workbench`: every computation runs in a worker (app.workers);
this module wires sources, workers and widgets together and keeps the GUI thread free.
"""
from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QGuiApplication, QIcon, QKeySequence, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from qcnn import workbench as wb
from qcnn.workbench import QuantSettings, Workbench

from .sources import (
    FILE_FILTERS,
    VIDEO_FILTERS,
    CameraSource,
    VideoFileSource,
    camera_status,
    file_frame,
    frames_from_mime,
    pil_to_qimage,
)
from .ui.banner import Banner
from .ui.codebook import CodebookPanel
from .ui.footprint import FootprintView
from .ui.gallery import Gallery
from .ui.latency_plot import LatencyPlot, LayerBreakdown, legend_html
from .ui.result_panel import ResultPanel
from .ui.taskbar import TaskBar
from .workers import FramePipeline, Task

ICON = Path(__file__).resolve().parent.parent / "assets" / "icons" / "qcnn.svg"
DEFAULT_MODEL = "efficientnet-lite0"
MODEL_FILE_FILTER = "qcnn quantized models (*.qcnn);;All files (*)"
PLOT_INTERVAL_MS = 500


class MainWindow(QMainWindow):
    """Signals for scripts and tests: `model_ready`, `quantized_ready`, `frame_done`."""

    model_ready = Signal(str)
    quantized_ready = Signal(object)        # Quantized
    frame_done = Signal(object, object)     # dense EngineRun|None, quantized EngineRun|None

    def __init__(self, model: str = DEFAULT_MODEL, settings: QuantSettings | None = None,
                 quantize: bool = True, kernel: str | None = None):
        super().__init__()
        self.bench = Workbench()
        if kernel is not None:
            self.bench.kernel = kernel
        self.auto_quantize = quantize
        self.initial_settings = settings
        self.still = None                   # the last still picture, re-run when an engine changes
        self.tasks: dict[str, Task] = {}    # slot ("model", "eval") -> running task
        self._live: set[Task] = set()
        self.last_pair = (None, None)
        self.errors: list[str] = []
        self._model_spec = None

        self.setWindowTitle("qcnn — Quantized-CNN workbench")
        if ICON.exists():
            self.setWindowIcon(QIcon(str(ICON)))
        self.setAcceptDrops(True)
        self.resize(1480, 940)

        self._plot_queue = []
        self._plot_timer = QTimer(self)
        self._plot_timer.setSingleShot(True)
        self._plot_timer.setInterval(PLOT_INTERVAL_MS)
        self._plot_timer.timeout.connect(self._flush_plots)

        self.pipeline = FramePipeline(self._graphs, self)
        self.pipeline.pair.connect(self._on_pair)
        self.pipeline.error.connect(self._on_frame_error)

        self.video = VideoFileSource(self)
        self.video.frame.connect(self.submit)
        self.video.error.connect(self.show_error)
        self.video.ended.connect(self._video_ended)
        self.camera = CameraSource(self)
        self.camera.frame.connect(self.submit)
        self.camera.error.connect(self.show_error)

        self._build_actions()
        self._build_ui()
        self._refresh_camera()
        self.load_model(model)

    # ------------------------------------------------------------------ construction
    def _build_actions(self) -> None:
        self.open_action = QAction("Open image…", self)
        self.open_action.setShortcut(QKeySequence.StandardKey.Open)
        self.open_action.triggered.connect(self.choose_image)
        self.paste_action = QAction("Paste", self)
        self.paste_action.setShortcut(QKeySequence.StandardKey.Paste)
        self.paste_action.setToolTip("Classify the image (or image file) on the clipboard")
        self.paste_action.triggered.connect(self.paste)
        self.video_action = QAction("Play video…", self)
        self.video_action.setToolTip("Classify a video file frame by frame (the camera's path)")
        self.video_action.triggered.connect(self.choose_video)
        self.stop_action = QAction("Stop", self)
        self.stop_action.setEnabled(False)
        self.stop_action.triggered.connect(self.stop_stream)
        self.camera_action = QAction("Camera", self)
        self.camera_action.setCheckable(True)
        self.camera_action.toggled.connect(self._camera_toggled)
        self.onnx_action = QAction("Open ONNX model…", self)
        self.onnx_action.triggered.connect(self.choose_onnx)
        self.open_qcnn_action = QAction("Open quantized model…", self)
        self.open_qcnn_action.triggered.connect(self.choose_model_file)
        self.save_qcnn_action = QAction("Save quantized model…", self)
        self.save_qcnn_action.setShortcut(QKeySequence.StandardKey.Save)
        self.save_qcnn_action.setEnabled(False)
        self.save_qcnn_action.triggered.connect(self.choose_save_model_file)
        self.quit_action = QAction("Quit", self)
        self.quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        self.quit_action.triggered.connect(self.close)

        menu = self.menuBar()
        f = menu.addMenu("&File")
        for a in (self.open_action, self.paste_action, self.video_action, self.camera_action, self.stop_action):
            f.addAction(a)
        f.addSeparator()
        for a in (self.onnx_action, self.open_qcnn_action, self.save_qcnn_action):
            f.addAction(a)
        f.addSeparator()
        f.addAction(self.quit_action)

    def _build_ui(self) -> None:
        bar = QToolBar("Main")
        bar.setMovable(False)
        bar.setIconSize(QSize(16, 16))
        bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.addToolBar(bar)
        for a in (self.open_action, self.paste_action, self.video_action, self.camera_action, self.stop_action):
            bar.addAction(a)
        self.camera_note = QLabel("")
        self.camera_note.setStyleSheet("color: palette(mid); padding: 0 6px;")
        bar.addWidget(self.camera_note)
        bar.addSeparator()
        bar.addWidget(QLabel(" Model "))
        self.model_box = QComboBox()
        for name, label in wb.BUILTIN_MODELS.items():
            self.model_box.addItem(label, name)
        self.model_box.setMinimumWidth(260)
        self.model_box.activated.connect(self._model_chosen)
        bar.addWidget(self.model_box)
        for a in (self.onnx_action, self.open_qcnn_action, self.save_qcnn_action):
            bar.addAction(a)

        self.warning = Banner("warning", closable=False)
        self.error_banner = Banner("error")

        self.panels = {"dense": ResultPanel("dense"), "quantized": ResultPanel("quantized")}
        panels = QHBoxLayout()
        panels.addWidget(self.panels["dense"], 1)
        panels.addWidget(self.panels["quantized"], 1)

        self.latency_plot = LatencyPlot()
        self.layer_plot = LayerBreakdown()
        self.footprint = FootprintView()
        latency = QSplitter(Qt.Orientation.Horizontal)
        latency.addWidget(self._titled("Latency per frame", self.latency_plot, legend_html()))
        latency.addWidget(self._titled("Last frame, per layer", self.layer_plot, legend_html()))
        latency.setSizes([500, 500])
        self.tabs = QTabWidget()
        self.tabs.addTab(latency, "Latency")
        self.tabs.addTab(self.footprint, "Footprint")
        self.tabs.currentChanged.connect(
            lambda _i: self.tabs.currentWidget() is self.footprint
            and self.footprint.update_measured(self.bench.timings.speedups()))

        center = QWidget()
        c = QVBoxLayout(center)
        c.setContentsMargins(0, 0, 0, 0)
        c.addWidget(self.warning)
        c.addWidget(self.error_banner)
        c.addLayout(panels)
        c.addWidget(self.tabs, 1)

        self.gallery = Gallery(wb.sample_images())
        self.gallery.chosen.connect(self.open_image)
        self.codebook = CodebookPanel()
        self.codebook.apply_requested.connect(self.apply_settings)
        self.codebook.kernel_changed.connect(self.set_kernel)
        self.codebook.threads_changed.connect(self.bench.set_threads)
        self.codebook.evaluate_requested.connect(self.evaluate_folder)
        self.codebook.set_kernels(wb.kernel_choices())
        self.codebook.set_kernel(self.bench.kernel)
        side = QScrollArea()
        side.setWidget(self.codebook)
        side.setWidgetResizable(True)
        side.setMinimumWidth(300)
        side.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self._titled("Samples", self.gallery))
        split.addWidget(center)
        split.addWidget(side)
        split.setStretchFactor(1, 1)
        split.setSizes([140, 1000, 340])
        self.setCentralWidget(split)

        self.task_bar = TaskBar()
        self.task_bar.cancel_requested.connect(lambda: self.cancel_task("model"))
        self.eval_bar = TaskBar()
        self.eval_bar.cancel_requested.connect(lambda: self.cancel_task("eval"))
        self.codebook.layout().insertWidget(3, self.eval_bar)
        self.frames_label = QLabel("")
        self.statusBar().addPermanentWidget(self.frames_label)
        self.statusBar().addPermanentWidget(self.task_bar)

    @staticmethod
    def _titled(title: str, widget: QWidget, extra: str = "") -> QWidget:
        box = QWidget()
        v = QVBoxLayout(box)
        v.setContentsMargins(2, 2, 2, 2)
        label = QLabel(f"<b>{title}</b>" + (f"&nbsp;&nbsp;&nbsp;{extra}" if extra else ""))
        v.addWidget(label)
        v.addWidget(widget, 1)
        return box

    # ------------------------------------------------------------------ tasks
    def run_task(self, slot: str, title: str, fn, on_done, on_cancel=None, on_fail=None) -> Task:
        """Run fn(progress, cancel) in a background thread; one task per slot at a time (a new one
        cancels the old, whose late result is then ignored)."""
        old = self.tasks.get(slot)
        if old is not None:
            old.cancel()
        task = Task(title, fn, self)
        bar = self.eval_bar if slot == "eval" else self.task_bar
        self.tasks[slot] = task
        self._live.add(task)            # until its thread ends, even after a newer task replaced it

        def current():
            return self.tasks.get(slot) is task

        def finish():
            if current():
                del self.tasks[slot]
                bar.finish()
                self._update_busy()

        task.progressed.connect(lambda text, f: current() and bar.report(text, f))
        task.succeeded.connect(lambda result: (current() and (finish(), on_done(result))))
        task.cancelled.connect(lambda: (current() and (finish(), on_cancel and on_cancel())))
        task.failed.connect(lambda msg: (current() and (finish(), (on_fail or self.show_error)(msg))))
        task.finished.connect(lambda: self._live.discard(task))
        task.finished.connect(task.deleteLater)
        bar.start(title)
        task.start()
        self._update_busy()
        return task

    def cancel_task(self, slot: str) -> None:
        task = self.tasks.get(slot)
        if task is not None:
            task.cancel()
            (self.eval_bar if slot == "eval" else self.task_bar).cancelling()

    def busy(self) -> bool:
        return bool(self.tasks)

    def _update_busy(self) -> None:
        self.codebook.set_busy("model" in self.tasks)
        self.codebook.evaluate.setEnabled("eval" not in self.tasks)

    # ------------------------------------------------------------------ models
    def load_model(self, spec: str) -> None:
        """Load a built-in model or an ONNX file in the background, then quantize it."""
        previous = self._model_spec
        self._model_spec = str(spec)
        self._select_model_box(str(spec))

        def failed(msg):
            self._model_spec = previous         # the model in use stays, and so does its entry
            if previous:
                self._select_model_box(previous)
            self.show_error(f"Could not load model {Path(str(spec)).name}: {msg}")

        def work(progress, cancel):
            progress(f"loading {Path(spec).name}", 0.1)
            model = Workbench.load(spec)
            layers = wb.quantizable_layers(model)
            return model, layers, wb.presets(model)

        self.run_task("model", f"Loading {Path(str(spec)).name}", work, self._model_loaded, on_fail=failed)

    def _model_loaded(self, result, dense_graph=None, adopted=None, note="") -> None:
        """`adopted`: (Quantized, kernel graph, footprint) when the model came from a .qcnn file."""
        model, layers, presets = result
        quantized = adopted[0] if adopted else None
        spec = self._model_spec
        self.bench.set_model(model, dense_graph, note,
                             source=spec if spec and spec.lower().endswith(".onnx") else None)
        self._select_model_box(self._model_spec or model.name)
        self.codebook.set_layers(layers)
        self.codebook.set_presets(presets)
        settings = self.initial_settings or _default_settings(presets)
        self.initial_settings = None
        self.codebook.set_settings(quantized.settings if quantized else settings, applied=quantized is not None)
        if model.speed_test_only:
            self.warning.show_message(f"<b>{model.name}</b>: {model.description}. Its labels are meaningless — "
                                      "use it to compare speed and footprint, not predictions.")
        else:
            self.warning.clear()
        self.panels["dense"].set_subtitle(f"{model.name} — float32 weights" + (f" ({note})" if note else ""))
        self.panels["quantized"].set_subtitle("not quantized yet")
        self.latency_plot.reset()
        self.footprint.clear()
        self.save_qcnn_action.setEnabled(False)
        self.model_ready.emit(model.name)
        if adopted is not None:
            self._adopt(adopted)
        elif self.auto_quantize:
            self.apply_settings(settings)
        self._rerun_still()

    def _select_model_box(self, spec: str) -> None:
        i = self.model_box.findData(spec)
        if i < 0:
            self.model_box.addItem(Path(spec).name, spec)
            i = self.model_box.count() - 1
        self.model_box.setCurrentIndex(i)

    def _model_chosen(self, _index: int) -> None:
        spec = self.model_box.currentData()
        if spec and spec != self._model_spec:
            if spec.lower().endswith(".qcnn"):
                self.open_model_file(spec)
            else:
                self.load_model(spec)

    def choose_onnx(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open ONNX model", str(Path.home()),
                                              "ONNX models (*.onnx);;All files (*)")
        if path:
            self.load_model(path)

    def choose_model_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open quantized model", str(wb.cache_dir()), MODEL_FILE_FILTER)
        if path:
            self.open_model_file(path)

    def open_model_file(self, path: str) -> None:
        kernel = self.bench.kernel

        def work(progress, cancel):
            progress(f"reading {Path(path).name}", 0.2)
            model, dense_graph, quantized, note = self.bench.open_model_file(path)
            progress("preparing the kernel", 0.8)
            graph = wb.with_kernel(quantized.graph, kernel, model.input_size)
            fp = wb.footprint(model, dense_graph, quantized, graph)
            return model, dense_graph, (quantized, graph, fp), note, wb.quantizable_layers(model)

        def done(result):
            model, dense_graph, adopted, note, layers = result
            self._model_spec = str(path)
            self._model_loaded((model, layers, {}), dense_graph, adopted, note)

        self.run_task("model", f"Opening {Path(path).name}", work, done,
                      on_fail=lambda msg: self.show_error(f"Could not open {Path(path).name}: {msg}"))

    def choose_save_model_file(self) -> None:
        if self.bench.quantized is None:
            return
        default = str(Path.home() / f"{self.bench.model.name}-quantized.qcnn")
        path, _ = QFileDialog.getSaveFileName(self, "Save quantized model", default, MODEL_FILE_FILTER)
        if path:
            self.save_model_file(path)

    def save_model_file(self, path: str) -> None:
        try:
            size = self.bench.save_model_file(path)
        except Exception as exc:
            self.show_error(f"Could not save {Path(path).name}: {exc}")
            return
        self.statusBar().showMessage(f"Saved {path} ({size:,} bytes)", 8000)

    # ------------------------------------------------------------------ quantizing
    def apply_settings(self, settings: QuantSettings) -> None:
        """Re-quantize with `settings` in the background (instant when cached)."""
        if self.bench.model is None:
            return
        model, dense_graph, kernel = self.bench.model, self.bench.dense_graph, self.bench.kernel
        bench = self.bench

        def work(progress, cancel):
            q = bench.quantize(settings, progress=progress, cancel=cancel, model=model)
            progress("preparing the kernel", 0.99)
            graph = wb.with_kernel(q.graph, kernel, model.input_size)
            return q, graph, wb.footprint(model, dense_graph, q, graph)

        self.panels["quantized"].set_status(f"quantizing: {settings.describe()} …")
        self.run_task("model", "Quantizing", work, self._adopt, on_cancel=self._quantize_cancelled,
                      on_fail=self._quantize_failed)

    def _adopt(self, result) -> None:
        quantized, graph, fp = result
        self.bench.adopt(quantized, graph)
        self.codebook.set_settings(quantized.settings, applied=True)
        self.panels["quantized"].set_subtitle(
            f"{quantized.settings.describe()} — {quantized.file_bytes / 2**20:.2f} MiB file"
            + (" (cached)" if quantized.from_cache else f" (built in {quantized.seconds:.1f} s)"))
        self.panels["quantized"].set_status("")
        if quantized.note:                       # e.g. the cache could not be written
            self.statusBar().showMessage(quantized.note, 15000)
        self.save_qcnn_action.setEnabled(True)
        if fp is None:
            fp = self.bench.footprint()
        self.footprint.show_footprint(fp, self.bench.timings.speedups())
        self.quantized_ready.emit(quantized)
        self._rerun_still()

    def _quantize_cancelled(self) -> None:
        applied = self.bench.quantized
        if applied is not None:
            self.codebook.set_settings(applied.settings, applied=True)
        self.panels["quantized"].set_status("")
        self.statusBar().showMessage("Re-quantization cancelled: keeping the model in use", 8000)

    def _quantize_failed(self, message: str) -> None:
        self._quantize_cancelled()
        self.show_error(f"Quantization failed: {message}")

    def set_kernel(self, name: str) -> None:
        if self.bench.quantized is None:
            self.bench.kernel = name
            return
        bench, model, dense_graph, q = self.bench, self.bench.model, self.bench.dense_graph, self.bench.quantized

        def work(progress, cancel):
            progress(f"preparing {name}", 0.5)
            graph = wb.with_kernel(q.graph, name, model.input_size)
            return graph, wb.footprint(model, dense_graph, q, graph)

        def done(result):
            graph, fp = result
            bench.set_kernel(name, graph)
            self.footprint.show_footprint(fp, bench.timings.speedups())
            self._rerun_still()

        def failed(msg):
            self.codebook.set_kernel(bench.kernel)
            self.show_error(f"Kernel {name}: {msg}")

        self.run_task("model", f"Kernel {name}", work, done, on_cancel=lambda: self.codebook.set_kernel(bench.kernel),
                      on_fail=failed)

    # ------------------------------------------------------------------ evaluation
    def evaluate_folder(self, folder: str) -> None:
        folder = folder.strip()
        labels = Path(folder) / "labels.csv"
        if not folder or not labels.is_file():
            self.codebook.eval_result.setText(f"<span style='color:#8a1c13'>No labels.csv in "
                                              f"{folder or '(no folder)'}: it needs file,class_index rows.</span>")
            return
        bench = self.bench
        limit = self.codebook.eval_limit.value() or None

        def work(progress, cancel):
            return bench.evaluate(labels, folder, progress=lambda i, n: progress(f"{i}/{n} images", i / n),
                                  cancel=cancel, limit=limit)

        def done(ev):
            rows = []
            for name, s in ev.scores.items():
                rows.append(f"<b>{name}</b>: top-1 {100 * s.top1:.1f} %, top-5 {100 * s.top5:.1f} %, "
                            f"median {s.median_ms:.0f} ms")
            extra = f" ({len(ev.skipped)} unreadable)" if ev.skipped else ""
            self.codebook.eval_result.setText(f"{ev.images} images{extra}<br>" + "<br>".join(rows))
            self.last_evaluation = ev

        self.codebook.eval_result.setText("")
        self.run_task("eval", "Evaluating", work, done,
                      on_cancel=lambda: self.codebook.eval_result.setText("Evaluation cancelled."),
                      on_fail=lambda msg: self.codebook.eval_result.setText(
                          f"<span style='color:#8a1c13'>Evaluation failed: {msg}</span>"))

    # ------------------------------------------------------------------ pictures
    def _graphs(self):
        return self.bench.model, {"dense": self.bench.dense_graph, "quantized": self.bench.quant_graph}

    def submit(self, frame) -> None:
        self.pipeline.submit(frame)

    def open_image(self, path) -> None:
        """Classify an image file with both engines (asynchronously)."""
        self.stop_stream()
        self.still = file_frame(path)
        self.submit(self.still)

    def choose_image(self) -> None:
        start = str(wb.SAMPLES if wb.SAMPLES.is_dir() else Path.home())
        path, _ = QFileDialog.getOpenFileName(self, "Open image", start, FILE_FILTERS)
        if path:
            self.open_image(path)

    def paste(self) -> None:
        frames = frames_from_mime(QGuiApplication.clipboard().mimeData(), "pasted image")
        if not frames:
            self.show_error("The clipboard holds no image or image file.")
            return
        self.stop_stream()
        self.still = frames[0]
        self.submit(self.still)

    def dragEnterEvent(self, event) -> None:
        mime = event.mimeData()
        if mime.hasUrls() or mime.hasImage() or any(f.startswith("image/") for f in mime.formats()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        frames = frames_from_mime(event.mimeData())
        if frames:
            event.acceptProposedAction()
            self.stop_stream()
            self.still = frames[0]
            self.submit(self.still)

    def _rerun_still(self) -> None:
        if self.still is not None and not self.streaming():
            self.submit(self.still)

    # ------------------------------------------------------------------ streams
    def streaming(self) -> bool:
        return self.video.active or self.camera.active

    def choose_video(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Play video", str(Path.home()), VIDEO_FILTERS)
        if path:
            self.play_video(path)

    def play_video(self, path, loop: bool = False) -> None:
        self.camera_action.setChecked(False)
        self.video.loop = loop
        self.video.play(path)
        self.stop_action.setEnabled(True)

    def stop_stream(self) -> None:
        self.video.stop()
        if self.camera_action.isChecked():
            self.camera_action.setChecked(False)
        self.stop_action.setEnabled(False)

    def _video_ended(self) -> None:
        self.stop_action.setEnabled(self.camera.active)

    def _refresh_camera(self) -> None:
        ok, why = camera_status()
        self.camera_action.setEnabled(ok)
        self.camera_action.setToolTip(f"Classify frames from {why}" if ok else why)
        self.camera_note.setText("" if ok else why)
        self.camera_note.setToolTip(why)

    def _camera_toggled(self, on: bool) -> None:
        if on:
            self.video.stop()
            if not self.camera.start():
                self.camera_action.setChecked(False)
                self._refresh_camera()
                return
            self.stop_action.setEnabled(True)
        else:
            self.camera.stop()

    # ------------------------------------------------------------------ results
    def _on_pair(self, dense, quantized) -> None:
        if self.bench.model is None or self.pipeline.model is not self.bench.model:
            return                            # finished after a model switch: not this model's result
        self.last_pair = (dense, quantized)
        agree = wb.agree(dense, quantized)
        for engine, run in (("dense", dense), ("quantized", quantized)):
            if run is None:
                continue
            self.bench.record(run)
            pixmap = QPixmap.fromImage(pil_to_qimage(run.crop)) if run.crop is not None else None
            self.panels[engine].show_run(run, pixmap)
            self.panels[engine].badge.set_state(agree)
        if quantized is None:
            self.panels["quantized"].badge.set_state(None)
            self.panels["dense"].badge.set_state(None)
        if dense is not None or quantized is not None:
            self.error_banner.clear()
        self._plot_queue.append((dense, quantized))
        if not self._plot_timer.isActive():   # first frame after a pause: draw now, then at most
            self._flush_plots()               # every PLOT_INTERVAL_MS while frames stream in
        self.frames_label.setText(f"{self.pipeline.completed} frames classified, {self.pipeline.dropped} dropped")
        self.frame_done.emit(dense, quantized)

    def _flush_plots(self) -> None:
        """Plot the frames since the last flush.  Plots are the GUI thread's biggest cost per frame
        (pyqtgraph repaints in Python), so a stream redraws them a few times a second, not per frame."""
        queue, self._plot_queue = self._plot_queue, []
        if not queue:
            return
        for dense, quantized in queue:
            self.latency_plot.add(dense.latency_ms if dense else None, quantized.latency_ms if quantized else None,
                                  redraw=False)
        self.latency_plot.redraw()
        self.layer_plot.show_runs(*queue[-1])
        if any(q is not None for _, q in queue) and self.tabs.currentWidget() is self.footprint:
            self.footprint.update_measured(self.bench.timings.speedups())
        self._plot_timer.start()

    def _on_frame_error(self, name: str, message: str) -> None:
        self.show_error(message if name in message else f"{name}: {message}")

    def show_error(self, message: str) -> None:
        self.errors.append(message)
        self.error_banner.show_message(message)
        self.statusBar().showMessage(message, 10000)
        print(f"qcnn-app: {message}", file=sys.stderr)

    # ------------------------------------------------------------------ shutdown
    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        self.video.stop()
        self.camera.stop()
        tasks = list(self._live)
        self.tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            task.wait()
        self.pipeline.stop()


def _default_settings(presets: dict[str, QuantSettings]) -> QuantSettings:
    # EfficientNet-Lite0: "accurate" (its quick presets lose too much top-1 to show anything);
    # AlexNet: "fast4", the kernels' speed test ("paper" takes minutes of k-means at K=128).
    for name in ("default", "accurate", "fast4"):
        if name in presets:
            return presets[name]
    return wb.DEFAULT_SETTINGS


# ---------------------------------------------------------------------- entry point

def main(argv=None) -> int:
    """`qcnn-app` and `python main.py`: see app/launch.py for the options."""
    from .launch import main as launch
    return launch(argv)


if __name__ == "__main__":
    raise SystemExit(main())
