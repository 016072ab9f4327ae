"""Codebook controls: C_s' and K per layer kind (and per layer), error correction, kernel, threads,
the search for settings on a folder of unlabelled photos, and the evaluation folder."""
from __future__ import annotations

import os

from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QAbstractScrollArea,
    QAbstractSpinBox,
    QApplication,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from qcnn.pq.layer import PQSetting
from qcnn.workbench import DEFAULT_SETTINGS, QuantSettings, sample_images

K_CHOICES = (2, 4, 8, 16, 32, 64, 128, 256)
# What the search maximises: (label, objective, ladder).  "Faster" keeps to the fast-scan kernel's
# settings (K = 16), whose measured speed follows the theory; K > 16 runs the slower exact kernel.
SEARCH_GOALS = (("smaller model (compression)", "compression", None),
                ("faster model (fast-scan kernels)", "speed", "fastscan"))
LAYER_MODES = ("default", "custom", "dense")


class WheelGuard(QObject):
    """The mouse wheel over a combo or spin box that has no keyboard focus scrolls the side panel
    instead of changing the box: scrolling through the panel must not change settings (it did,
    and a calibration box scrolled to "choose a folder…" opened a dialog)."""

    def eventFilter(self, obj, event) -> bool:
        if event.type() == QEvent.Type.Wheel and isinstance(obj, (QComboBox, QAbstractSpinBox)) and not obj.hasFocus():
            area = obj.parentWidget()
            while area is not None and not isinstance(area, QAbstractScrollArea):
                area = area.parentWidget()
            if area is not None:
                QApplication.sendEvent(area.verticalScrollBar(), event)
            return True
        return False

    def guard(self, root: QWidget) -> None:
        for box in root.findChildren(QComboBox) + root.findChildren(QAbstractSpinBox):
            box.setFocusPolicy(Qt.FocusPolicy.StrongFocus)      # not WheelFocus
            box.installEventFilter(self)


def _same_codebooks(a: QuantSettings, b: QuantSettings) -> bool:
    def key(s: QuantSettings):
        return s.conv, s.fc, dict(s.layers), s.error_correction
    return key(a) == key(b)


class KindControls(QGroupBox):
    """Quantize on/off, C_s' and K for one layer kind (conv or FC)."""

    changed = Signal()

    def __init__(self, title: str, parent=None):
        super().__init__(title, parent)
        self.setCheckable(True)
        self.dsub = QSpinBox()
        self.dsub.setRange(1, 256)
        self.dsub.setToolTip("C_s': input channels per subspace (wider = fewer subspaces, faster, coarser)")
        self.ksub = QComboBox()
        for k in K_CHOICES:
            self.ksub.addItem(f"{k}  ({max(1, (k - 1).bit_length())} bit codes)", k)
        self.ksub.setToolTip("K: codewords per subspace (more = more accurate, slower to build)")
        form = QFormLayout(self)
        form.addRow("subspace width C_s'", self.dsub)
        form.addRow("codebook size K", self.ksub)
        self.toggled.connect(lambda _on: self.changed.emit())
        self.dsub.valueChanged.connect(lambda _v: self.changed.emit())
        self.ksub.currentIndexChanged.connect(lambda _i: self.changed.emit())

    def setting(self) -> PQSetting | None:
        return PQSetting(self.dsub.value(), self.ksub.currentData()) if self.isChecked() else None

    def set_setting(self, s: PQSetting | None, fallback: PQSetting) -> None:
        self.blockSignals(True)
        s_shown = s or fallback
        self.setChecked(s is not None)
        self.dsub.setValue(s_shown.dsub)
        i = self.ksub.findData(s_shown.ksub)
        if i < 0:
            self.ksub.addItem(str(s_shown.ksub), s_shown.ksub)
            i = self.ksub.count() - 1
        self.ksub.setCurrentIndex(i)
        self.blockSignals(False)


class LayerTable(QTableWidget):
    """Per-layer overrides: default (the kind's setting), a custom C_s'/K, or dense."""

    changed = Signal()
    COLS = ("layer", "kind", "shape", "use", "C_s'", "K")

    def __init__(self, parent=None):
        super().__init__(0, len(self.COLS), parent)
        self.setHorizontalHeaderLabels(self.COLS)
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.layers = []

    def set_layers(self, layers) -> None:
        self.layers = list(layers)
        self.setRowCount(len(self.layers))
        for row, layer in enumerate(self.layers):
            for col, text in enumerate((layer.name, layer.kind, layer.shape)):
                self.setItem(row, col, QTableWidgetItem(text))
            mode = QComboBox()
            mode.addItems(LAYER_MODES)
            dsub, ksub = QSpinBox(), QComboBox()
            dsub.setRange(1, 256)
            for k in K_CHOICES:
                ksub.addItem(str(k), k)
            mode.currentIndexChanged.connect(lambda _i, r=row: self._mode_changed(r))
            dsub.valueChanged.connect(lambda _v: self.changed.emit())
            ksub.currentIndexChanged.connect(lambda _i: self.changed.emit())
            self.setCellWidget(row, 3, mode)
            self.setCellWidget(row, 4, dsub)
            self.setCellWidget(row, 5, ksub)
            self._mode_changed(row, emit=False)

    def _mode_changed(self, row: int, emit: bool = True) -> None:
        custom = self.cellWidget(row, 3).currentText() == "custom"
        self.cellWidget(row, 4).setEnabled(custom)
        self.cellWidget(row, 5).setEnabled(custom)
        if emit:
            self.changed.emit()

    def overrides(self) -> tuple:
        out = []
        for row, layer in enumerate(self.layers):
            mode = self.cellWidget(row, 3).currentText()
            if mode == "dense":
                out.append((layer.name, None))
            elif mode == "custom":
                out.append((layer.name, PQSetting(self.cellWidget(row, 4).value(),
                                                  self.cellWidget(row, 5).currentData())))
        return tuple(sorted(out, key=lambda t: t[0]))

    def set_overrides(self, settings: QuantSettings) -> None:
        given = dict(settings.layers)
        self.blockSignals(True)
        for row, layer in enumerate(self.layers):
            mode, dsub, ksub = self.cellWidget(row, 3), self.cellWidget(row, 4), self.cellWidget(row, 5)
            for w in (mode, dsub, ksub):
                w.blockSignals(True)
            shown = settings.layer_setting(layer.name, layer.kind) or PQSetting(4, 32)
            mode.setCurrentText("default" if layer.name not in given else ("dense" if given[layer.name] is None
                                                                           else "custom"))
            dsub.setValue(shown.dsub)
            i = ksub.findData(shown.ksub)
            ksub.setCurrentIndex(max(0, i))
            for w in (mode, dsub, ksub):
                w.blockSignals(False)
            self._mode_changed(row, emit=False)
        self.blockSignals(False)


class CodebookPanel(QWidget):
    """Everything that decides what the quantized engine is, and how fast it runs."""

    apply_requested = Signal(object)          # QuantSettings
    preset_chosen = Signal(str)
    kernel_changed = Signal(str)
    threads_changed = Signal(int)
    evaluate_requested = Signal(str)          # folder holding labels.csv
    find_requested = Signal(str, dict)        # folder of unlabelled photos ("" = default), search options
    save_found_requested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.applied: QuantSettings | None = None
        self._shown: QuantSettings | None = None
        self._presets: dict[str, QuantSettings] = {}

        self.preset = QComboBox()
        self.preset.setToolTip("Named settings for this model")
        self.preset.activated.connect(self._preset_activated)

        self.conv = KindControls("Conv layers")
        self.fc = KindControls("Fully connected layers")

        self.layer_toggle = QToolButton()
        self.layer_toggle.setText("Per-layer settings ▸")
        self.layer_toggle.setCheckable(True)
        self.layer_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.layer_table = LayerTable()
        self.layer_table.setVisible(False)
        self.layer_table.setMinimumHeight(180)
        self.layer_toggle.toggled.connect(self._toggle_layers)

        self.error_correction = QCheckBox("Error correction (calibration images)")
        self.error_correction.setToolTip("Wu et al., Sec. 3.2/3.3: refine the codebooks so each layer's "
                                         "output error on real images is minimised (slower to build)")
        self.calib_source = QComboBox()
        n = len(sample_images())
        self.calib_source.addItem(f"bundled samples ({n} photos)", None)
        self.calib_source.addItem("choose a folder…", "__choose__")
        self.calib_source.activated.connect(self._calib_activated)
        self.calib_count = QSpinBox()
        self.calib_count.setRange(1, 10000)
        self.calib_count.setValue(16)
        self.calib_count.setToolTip("Calibration images used for error correction")

        self.apply = QPushButton("Apply")
        self.apply.setDefault(True)
        self.apply.setToolTip("Re-quantize with these settings (in the background; cached on disk)")
        self.apply.clicked.connect(lambda: self.apply_requested.emit(self.settings()))
        self.revert = QPushButton("Revert")
        self.revert.setToolTip("Show the settings of the quantized model in use")
        self.revert.clicked.connect(lambda: self.applied and self.set_settings(self.applied))

        self.kernel = QComboBox()
        self.kernel.currentIndexChanged.connect(self._kernel_changed)
        self.threads = QSpinBox()
        self.threads.setRange(1, max(1, os.cpu_count() or 1))
        self.threads.setValue(1)
        self.threads.setToolTip("Threads per engine (BLAS and C kernels); 1 is how the paper measures")
        self.threads.valueChanged.connect(self.threads_changed.emit)

        self.search_folder = QLineEdit()
        self.search_folder.setToolTip("Unlabelled photos: half calibrate the codebooks, the rest measure how often "
                                      "the quantized model agrees with the dense one")
        search_browse = QPushButton("…")
        search_browse.setFixedWidth(30)
        search_browse.clicked.connect(self._browse_search)
        self.search_goal = QComboBox()
        for label, objective, ladder in SEARCH_GOALS:
            self.search_goal.addItem(label, (objective, ladder))
        self.search_agree = QDoubleSpinBox()
        self.search_agree.setRange(50.0, 100.0)
        self.search_agree.setDecimals(0)
        self.search_agree.setSuffix(" %")
        self.search_agree.setValue(90.0)
        self.search_agree.setToolTip("Budget: the quantized model's top-1 must match the dense model's on at least "
                                     "this share of the probe photos (and the dense top-1 stay in its top 5 on 97 %)")
        self.find = QPushButton("Find settings")
        self.find.setToolTip("Search per-layer codebooks for this model on the folder's photos (background; "
                             "no labels needed); the result shows here, to Apply or save")
        self.find.clicked.connect(lambda: self.find_requested.emit(self.search_folder.text().strip(),
                                                                   self.search_options()))
        self.save_found = QPushButton("Save settings…")
        self.save_found.setToolTip("Save the settings found as a file for `qcnn eval|bench|quantize --config FILE`")
        self.save_found.setEnabled(False)
        self.save_found.clicked.connect(self.save_found_requested.emit)
        self.search_result = QLabel("")
        self.search_result.setWordWrap(True)
        self.search_result.setTextFormat(Qt.TextFormat.RichText)

        self.eval_folder = QLineEdit()
        self.eval_folder.setPlaceholderText("folder with images + labels.csv")
        browse = QPushButton("…")
        browse.setFixedWidth(30)
        browse.clicked.connect(self._browse_eval)
        self.eval_limit = QSpinBox()
        self.eval_limit.setRange(0, 1_000_000)
        self.eval_limit.setSpecialValueText("all")
        self.eval_limit.setToolTip("Evaluate only the first N images of labels.csv (all: 0)")
        self.evaluate = QPushButton("Evaluate")
        self.evaluate.setToolTip("Top-1/top-5 of both engines on the folder's labelled images (background)")
        self.evaluate.clicked.connect(lambda: self.evaluate_requested.emit(self.eval_folder.text().strip()))
        self.eval_result = QLabel("")
        self.eval_result.setWordWrap(True)
        self.eval_result.setTextFormat(Qt.TextFormat.RichText)

        # ---- layout
        quant = QGroupBox("Codebooks")
        q = QVBoxLayout(quant)
        row = QHBoxLayout()
        row.addWidget(QLabel("preset"))
        row.addWidget(self.preset, 1)
        q.addLayout(row)
        q.addWidget(self.conv)
        q.addWidget(self.fc)
        q.addWidget(self.layer_toggle)
        q.addWidget(self.layer_table)
        q.addWidget(self.error_correction)
        calib = QFormLayout()
        calib.addRow("calibration", self.calib_source)
        calib.addRow("images", self.calib_count)
        q.addLayout(calib)
        buttons = QHBoxLayout()
        buttons.addWidget(self.revert)
        buttons.addStretch(1)
        buttons.addWidget(self.apply)
        q.addLayout(buttons)
        self.quantize_progress = QVBoxLayout()     # the window puts the quantization's progress here
        q.addLayout(self.quantize_progress)

        run = QGroupBox("Engine")
        r = QFormLayout(run)
        r.addRow("kernel", self.kernel)
        r.addRow("threads", self.threads)

        found = QGroupBox("Find settings (unlabelled photos)")
        fl = QVBoxLayout(found)
        fr = QHBoxLayout()
        fr.addWidget(self.search_folder, 1)
        fr.addWidget(search_browse)
        fl.addLayout(fr)
        fform = QFormLayout()
        fform.addRow("goal", self.search_goal)
        fform.addRow("agreement", self.search_agree)
        fl.addLayout(fform)
        fb = QHBoxLayout()
        fb.addWidget(self.save_found)
        fb.addStretch(1)
        fb.addWidget(self.find)
        fl.addLayout(fb)
        self.search_progress = QVBoxLayout()       # the window puts the search's progress here
        fl.addLayout(self.search_progress)
        fl.addWidget(self.search_result)

        ev = QGroupBox("Accuracy on a labelled folder")
        e = QVBoxLayout(ev)
        er = QHBoxLayout()
        er.addWidget(self.eval_folder, 1)
        er.addWidget(browse)
        e.addLayout(er)
        el = QHBoxLayout()
        el.addWidget(QLabel("images"))
        el.addWidget(self.eval_limit, 1)
        el.addWidget(self.evaluate)
        e.addLayout(el)
        self.eval_progress = QVBoxLayout()         # and the evaluation's here
        e.addLayout(self.eval_progress)
        e.addWidget(self.eval_result)

        layout = QVBoxLayout(self)
        layout.addWidget(quant)
        layout.addWidget(found)
        layout.addWidget(run)
        layout.addWidget(ev)
        layout.addStretch(1)

        self.wheel_guard = WheelGuard(self)
        self.wheel_guard.guard(self)
        for w in (self.conv, self.fc, self.layer_table):
            w.changed.connect(self._mark)
        self.error_correction.toggled.connect(self._mark)
        self.calib_count.valueChanged.connect(self._mark)

    # ---- model-dependent content
    def set_layers(self, layers) -> None:
        self.layer_table.set_layers(layers)
        self.wheel_guard.guard(self.layer_table)
        kinds = {layer.kind for layer in layers}
        self.conv.setEnabled("conv" in kinds)
        self.fc.setEnabled("fc" in kinds)

    def set_presets(self, presets: dict[str, QuantSettings]) -> None:
        self._presets = dict(presets)
        self.preset.blockSignals(True)
        self.preset.clear()
        self.preset.addItem("custom", None)
        for name in presets:
            self.preset.addItem(name, name)
        self.preset.blockSignals(False)
        self.preset.setEnabled(bool(presets))
        if not presets:
            self.preset.setToolTip("No presets for this model")

    def set_kernels(self, choices) -> None:
        """choices: (name, label, available, why not)."""
        self.kernel.blockSignals(True)
        self.kernel.clear()
        model = self.kernel.model()
        for i, (name, label, ok, why) in enumerate(choices):
            self.kernel.addItem(label, name)
            model.item(i).setEnabled(ok)
            if why:
                self.kernel.setItemData(i, why, Qt.ItemDataRole.ToolTipRole)
        self.kernel.setCurrentIndex(0)
        self.kernel.blockSignals(False)

    def kernel_enabled(self, name: str) -> bool:
        i = self.kernel.findData(name)
        return i >= 0 and self.kernel.model().item(i).isEnabled()

    def set_kernel(self, name: str) -> None:
        i = self.kernel.findData(name)
        if i >= 0:
            self.kernel.blockSignals(True)
            self.kernel.setCurrentIndex(i)
            self.kernel.blockSignals(False)

    # ---- settings
    def settings(self) -> QuantSettings:
        """The controls' settings; the fields they do not show come from the settings last shown."""
        folder = self.calib_source.currentData()
        return (self._shown or DEFAULT_SETTINGS).replace(
            conv=self.conv.setting(), fc=self.fc.setting(), layers=self.layer_table.overrides(),
            error_correction=self.error_correction.isChecked(),
            calib_folder=folder if folder and folder != "__choose__" else None,
            calib_count=self.calib_count.value())

    def set_settings(self, s: QuantSettings, applied: bool = False) -> None:
        """Show `s` in the controls; `applied`: it is what the quantized engine runs."""
        self._shown = s
        if applied:
            self.applied = s
        self.conv.set_setting(s.conv, PQSetting(4, 32))
        self.fc.set_setting(s.fc, PQSetting(4, 32))
        self.layer_table.set_overrides(s)
        self.error_correction.blockSignals(True)
        self.error_correction.setChecked(s.error_correction)
        self.error_correction.blockSignals(False)
        self.calib_count.blockSignals(True)
        self.calib_count.setValue(s.calib_count)
        self.calib_count.blockSignals(False)
        self._set_calib_folder(s.calib_folder)
        self._mark()

    def set_applied(self, s: QuantSettings) -> None:
        """`s` is what the quantized engine runs now; the controls keep showing what they show (settings
        found by a search, say, that the user has not applied yet)."""
        self.applied = s
        self._mark()

    def search_options(self) -> dict:
        """The search's options (qcnn.pq.search.find_settings keywords, and its objective)."""
        from qcnn.pq.search import DEFAULT_BUDGET, LADDERS, Budget
        objective, ladder = self.search_goal.currentData()
        return {"objective": objective, "ladder": LADDERS[ladder] if ladder else None,
                "budget": Budget(min_agree=self.search_agree.value() / 100, min_keep5=DEFAULT_BUDGET.min_keep5)}

    def set_search_default(self, folder) -> None:
        """The folder searched when the field is left empty (shown greyed in it)."""
        self.search_folder.setPlaceholderText(f"{folder}")

    def set_busy(self, busy: bool) -> None:
        """While the quantized model is being rebuilt: no second Apply (Cancel first).  The kernel
        stays free: it changes how the model in use runs, and the next one runs with it."""
        self.apply.setEnabled(not busy)
        self.preset.setEnabled(not busy and bool(self._presets))

    def preset_of(self, settings: QuantSettings) -> str | None:
        """The name of the preset with these codebooks, if any."""
        return next((name for name, s in self._presets.items() if _same_codebooks(s, settings)), None)

    def _mark(self) -> None:
        current = self.settings()
        match = self.preset_of(current)
        self.preset.blockSignals(True)
        self.preset.setCurrentIndex(max(0, self.preset.findData(match)) if match else 0)
        self.preset.blockSignals(False)
        changed = self.applied is None or current != self.applied
        self.apply.setText("Apply ●" if changed and self.applied is not None else "Apply")
        self.revert.setEnabled(changed and self.applied is not None)

    def _toggle_layers(self, on: bool) -> None:
        self.layer_table.setVisible(on)
        self.layer_toggle.setText("Per-layer settings ▾" if on else "Per-layer settings ▸")

    def _preset_activated(self, _index: int) -> None:
        name = self.preset.currentData()
        if name and name in self._presets:
            self.set_settings(self._presets[name])
            self.preset_chosen.emit(name)

    def _set_calib_folder(self, folder: str | None) -> None:
        self.calib_source.blockSignals(True)
        if folder is None:
            self.calib_source.setCurrentIndex(0)
        else:
            i = self.calib_source.findData(folder)
            if i < 0:
                self.calib_source.insertItem(1, os.path.basename(folder.rstrip("/")) or folder, folder)
                i = 1
            self.calib_source.setCurrentIndex(i)
        self.calib_source.blockSignals(False)

    def _calib_activated(self, _index: int) -> None:
        if self.calib_source.currentData() != "__choose__":
            self._mark()
            return
        folder = QFileDialog.getExistingDirectory(self, "Calibration images")
        self._set_calib_folder(folder or None)
        self._mark()

    def _browse_search(self) -> None:
        start = self.search_folder.text().strip() or self.search_folder.placeholderText()
        folder = QFileDialog.getExistingDirectory(self, "Unlabelled photos to find settings with", start)
        if folder:
            self.search_folder.setText(folder)

    def _browse_eval(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Labelled images (with labels.csv)")
        if folder:
            self.eval_folder.setText(folder)

    def _kernel_changed(self, _index: int) -> None:
        name = self.kernel.currentData()
        if name:
            self.kernel_changed.emit(name)
