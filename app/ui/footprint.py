"""Footprints: storage, run-time memory and per-layer cost, as `qcnn cost` counts them."""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .style import ENGINE_COLORS

LAYER_COLUMNS = ("layer", "kind", "C_s'/K", "output", "dense MMAC", "PQ MMAC", "speed-up (theory)",
                 "speed-up (measured)", "dense KiB", "PQ KiB", "compression", "kernel")


def human_bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


class FootprintView(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.footprint = None
        self.values: dict[str, str] = {}          # label -> shown text (tests and screenshots read it)

        storage = QGroupBox("Storage")
        self.storage_grid = QGridLayout(storage)
        memory = QGroupBox("Run-time memory (batch 1)")
        self.memory_grid = QGridLayout(memory)
        ops = QGroupBox("Operations")
        self.ops_grid = QGridLayout(ops)
        for grid in (self.storage_grid, self.memory_grid, self.ops_grid):
            grid.setHorizontalSpacing(14)

        self.table = QTableWidget(0, len(LAYER_COLUMNS))
        self.table.setHorizontalHeaderLabels(LAYER_COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setMinimumHeight(8 * self.table.verticalHeader().defaultSectionSize())

        self.note = QLabel("Quantize the model to see its footprint.")
        self.note.setStyleSheet("color: palette(mid);")
        self.note.setWordWrap(True)

        # Two columns, so the window's minimum width does not grow when the numbers arrive.
        left = QVBoxLayout()
        left.addWidget(storage)
        left.addWidget(ops)
        top = QHBoxLayout()
        top.addLayout(left)
        top.addWidget(memory, 0, Qt.AlignmentFlag.AlignTop)
        top.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.note)
        layout.addWidget(self.table, 1)

    def _fill(self, grid: QGridLayout, rows: list[tuple], header: tuple | None = None) -> None:
        while grid.count():
            grid.takeAt(0).widget().deleteLater()
        r0 = 0
        if header:
            for c, text in enumerate(header):
                lab = QLabel(f"<b>{text}</b>")
                if text in ("dense", "quantized"):
                    lab.setStyleSheet(f"color: {ENGINE_COLORS[text]};")
                grid.addWidget(lab, 0, c, alignment=Qt.AlignmentFlag.AlignRight if c else Qt.AlignmentFlag.AlignLeft)
            r0 = 1
        for r, row in enumerate(rows, r0):
            for c, text in enumerate(row):
                lab = QLabel(text)
                lab.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
                grid.addWidget(lab, r, c, alignment=Qt.AlignmentFlag.AlignRight if c else Qt.AlignmentFlag.AlignLeft)

    def show_footprint(self, fp, measured: dict[str, float] | None = None) -> None:
        self.footprint = fp
        r = fp.report
        v = self.values = {
            "dense weights": f"{human_bytes(fp.dense_storage_bytes)}",
            "quantized file": f"{human_bytes(fp.quant_file_bytes)}",
            "storage ratio": f"{fp.storage_ratio:.2f}×",
            "compression": f"{r.compression:.2f}×",
            "dense MMAC": f"{r.dense_macs / 1e6:.2f}",
            "PQ MMAC": f"{r.quant_macs / 1e6:.2f}",
            "theoretical speed-up": f"{r.theoretical_speedup:.2f}×",
        }
        self._fill(self.storage_grid, [
            ("dense weights (float32)", v["dense weights"], f"{fp.dense_storage_bytes:,} B"),
            ("quantized model file", v["quantized file"], f"{fp.quant_file_bytes:,} B"),
            ("ratio", v["storage ratio"], ""),
            ("weight bits (theory)", v["compression"], ""),
        ])
        self._fill(self.memory_grid, [
            ("weights", human_bytes(r.dense_weight_bytes), human_bytes(r.quant_weight_bytes)),
            ("peak activations", human_bytes(r.dense_activation_bytes), human_bytes(r.quant_activation_bytes)),
            ("lookup tables", "—", human_bytes(r.table_bytes) + (f" ({r.table_layer})" if r.table_layer else "")),
            ("total", human_bytes(r.dense_runtime_bytes), human_bytes(r.quant_runtime_bytes)),
        ], header=("", "dense", "quantized"))
        self._fill(self.ops_grid, [
            ("dense multiply-adds", f"{v['dense MMAC']} M"),
            ("quantized (tables + look-ups)", f"{v['PQ MMAC']} M"),
            ("theoretical speed-up", v["theoretical speed-up"]),
        ])
        self.note.setText("Same counts as `qcnn cost`: multiply-adds and 32-bit weights per conv/FC layer "
                          "(Wu et al., Sec. 3); measured speed-up of a quantized layer = median dense / quantized "
                          "time of that layer over the recent frames.")
        self._fill_table(r.layers, measured or {})

    def _fill_table(self, layers, measured: dict[str, float]) -> None:
        self.table.setRowCount(len(layers))
        for row, c in enumerate(layers):
            s = c.setting
            m = measured.get(c.name) if c.quantized else None    # a dense layer is the same code twice
            cells = (c.name, c.kind, f"{s.dsub}/{s.ksub}" if s else "-", "x".join(map(str, c.out_shape)),
                     f"{c.dense_macs / 1e6:.2f}", f"{c.quant_macs / 1e6:.2f}", f"{c.speedup:.2f}x",
                     "" if m is None else f"{m:.2f}x",
                     f"{c.dense_bits / 8192:.1f}", f"{c.quant_bits / 8192:.1f}", f"{c.compression:.2f}x", c.kernel)
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col >= 4 and col != 11:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(row, col, item)

    def update_measured(self, measured: dict[str, float]) -> None:
        if self.footprint is None:
            return
        col = LAYER_COLUMNS.index("speed-up (measured)")
        for row, c in enumerate(self.footprint.report.layers):
            m = measured.get(c.name) if c.quantized else None
            item = self.table.item(row, col)
            if item is not None:
                item.setText("" if m is None else f"{m:.2f}x")

    def clear(self, text: str = "Quantize the model to see its footprint.") -> None:
        self.footprint = None
        self.values = {}
        self.table.setRowCount(0)
        self.note.setText(text)
