"""Latency plots (pyqtgraph): a rolling per-frame line per engine, and the last frame per layer."""
from __future__ import annotations

from collections import deque

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGraphicsItem, QScrollArea, QSizePolicy

from .style import ENGINE_COLORS, ENGINE_TITLES

WEIGHT_KINDS = {"conv", "fc", "pq", "depthwise"}


def _setup(plot: pg.PlotWidget) -> None:
    plot.setBackground("w")
    plot.showGrid(x=True, y=True, alpha=0.25)
    plot.setMenuEnabled(False)
    for name in ("left", "bottom"):
        axis = plot.getAxis(name)
        axis.setTextPen("#444")
        axis.setPen("#999")
        # Kept as a pixmap between range changes: with the grid, an axis spans the whole plot,
        # so each new curve or bar would otherwise replay its labels and lines (~8 ms a time).
        axis.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
        axis.enableAutoSIPrefix(False)      # values are ms already: no "mms" below 1 ms


def legend_html() -> str:
    """The engines' colours as text, for the plots' titles (a pyqtgraph legend would hide bars)."""
    return "  ".join(f"<span style='color:{c}'>&#9632;</span> {ENGINE_TITLES[e]}" for e, c in ENGINE_COLORS.items())


NICE = (1, 1.5, 2, 3, 4, 5, 6, 8, 10)


def nice_above(v: float) -> float:
    """The smallest of 1, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, ... that is >= v."""
    if v <= 0:
        return 1.0
    scale = 10.0 ** np.floor(np.log10(v))
    return next(m * scale for m in NICE if m * scale >= v * (1 - 1e-9))


def _hysteresis(current: float, wanted: float) -> float:
    """A round upper bound for `wanted` that stays put while `wanted` moves within it."""
    if current and wanted <= current and wanted > 0.55 * current:
        return current
    return nice_above(wanted)


class LatencyPlot(pg.PlotWidget):
    """Rolling latency of the last `keep` frames, one line per engine."""

    def __init__(self, keep: int = 200, parent=None):
        super().__init__(parent)
        _setup(self)
        self.setLabel("left", "latency", units="ms")
        self.setLabel("bottom", "frames before the newest")
        self.keep = keep
        self.frame = 0
        self._ranges = None
        self._y_top = 0.0
        self.data = {e: (deque(maxlen=keep), deque(maxlen=keep)) for e in ENGINE_COLORS}
        # Markers only while there are few points: per-point symbols are pyqtgraph's costliest
        # drawing, and a stream adds many.
        self.curves = {e: self.plot([], [], name=ENGINE_TITLES[e], pen=pg.mkPen(c, width=2), symbol="o",
                                    symbolSize=5, symbolBrush=c, symbolPen=None, skipFiniteCheck=True)
                       for e, c in ENGINE_COLORS.items()}
        self.setMinimumHeight(110)

    MARKERS_UP_TO = 40

    def add(self, dense_ms: float | None, quant_ms: float | None, redraw: bool = True) -> None:
        """One frame: the latencies each engine took (None: that engine did not run it)."""
        self.frame += 1
        for engine, ms in (("dense", dense_ms), ("quantized", quant_ms)):
            if ms is not None:
                xs, ys = self.data[engine]
                xs.append(self.frame)
                ys.append(ms)
        if redraw:
            self.redraw()

    def redraw(self) -> None:
        """The curves, x in frames before the newest one.  The axes' ranges move in round steps
        only (nice_above), because every range change makes pyqtgraph lay out and paint its axes
        again in Python: 30-80 ms per plot here, while new data alone costs a few."""
        top, count = 0.0, 0
        for engine, (xs, ys) in self.data.items():
            curve = self.curves[engine]
            curve.setSymbol("o" if len(xs) <= self.MARKERS_UP_TO else None)
            curve.setData(np.fromiter(xs, float, len(xs)) - self.frame, np.fromiter(ys, float, len(ys)))
            if ys:
                top = max(top, max(ys))
                count = max(count, self.frame - xs[0] + 1)
        # Few steps (each re-lays out the x axis, 20-40 ms): 10 frames for a few stills, up to the whole window.
        span = next(v for v in (10, 20, 50, 100, self.keep) if v >= min(count, self.keep))
        self._set_ranges((-span, 0.5), (0, _hysteresis(self._y_top, top * 1.1)))

    def _set_ranges(self, x, y) -> None:
        if (x, y) != self._ranges:
            self._ranges = x, y
            self._y_top = y[1]
            self.setRange(xRange=x, yRange=y, padding=0)

    def points(self, engine: str) -> int:
        return len(self.data[engine][0])

    def reset(self) -> None:
        self.frame = 0
        self._y_top = 0.0
        self._ranges = None
        for engine, (xs, ys) in self.data.items():
            xs.clear()
            ys.clear()
            self.curves[engine].setData([], [])


class LayerBreakdown(QScrollArea):
    """The last frame's time per layer: grouped horizontal bars, dense above quantized."""

    ROW = 16        # pixels per layer

    def __init__(self, parent=None):
        super().__init__(parent)
        self.plot = pg.PlotWidget()
        _setup(self.plot)
        self.plot.setLabel("bottom", "time", units="ms")
        self.plot.invertY(True)
        self.plot.setMouseEnabled(x=True, y=False)
        self.bars = {}
        for engine, color in ENGINE_COLORS.items():
            item = pg.BarGraphItem(x0=[], y=[], height=0.38, width=[], brush=color, pen=None,
                                   name=ENGINE_TITLES[engine])
            self.plot.addItem(item)
            self.bars[engine] = item
        self.layers: list[str] = []
        self._x_top = 0.0
        self.setWidget(self.plot)
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.plot.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.plot.setMinimumHeight(110)

    def show_runs(self, dense, quantized) -> None:
        """Bars for the weight layers of the given EngineRuns (either may be None); the rest of each
        network (pooling, adds, ...) is summed into one "other layers" row."""
        order, per = [], {}
        for run in (dense, quantized):
            if run is None:
                continue
            other = 0.0
            times = {}
            for t in run.layers:
                if t.kind in WEIGHT_KINDS:
                    times[t.name] = times.get(t.name, 0.0) + t.ms
                    if t.name not in order:
                        order.append(t.name)
                else:
                    other += t.ms
            times["other layers"] = other
            per[run.engine] = times
        if not per:
            return
        order.append("other layers")
        relabel = order != self.layers
        self.layers = order
        for engine, item in self.bars.items():
            times = per.get(engine, {})
            offset = -0.2 if engine == "dense" else 0.2
            ys = [i + offset for i, n in enumerate(order) if n in times]
            ws = [times[n] for n in order if n in times]
            item.setOpts(x0=[0.0] * len(ys), y=ys, width=ws, height=0.38)
        if relabel:                           # a new model: new rows (costly, so only then)
            self.plot.getAxis("left").setTicks([[(i, n) for i, n in enumerate(order)]])
            self.plot.setMinimumHeight(self.ROW * len(order) + 70)
            self.plot.setYRange(-0.7, len(order) - 0.3, padding=0)
        widest = max((w for times in per.values() for w in times.values()), default=1.0)
        x_top = _hysteresis(self._x_top, widest * 1.05)
        if x_top != self._x_top:             # round steps: see LatencyPlot.redraw
            self._x_top = x_top
            self.plot.setXRange(0, x_top, padding=0)

    def reset(self) -> None:
        """No bars: a new model's layers arrive with its first frame."""
        self.layers = []
        self._x_top = 0.0
        for item in self.bars.values():
            item.setOpts(x0=[], y=[], width=[], height=0.38)
        self.plot.getAxis("left").setTicks([[]])

    def bar_count(self, engine: str) -> int:
        opts = self.bars[engine].opts
        return len(opts.get("width") if opts.get("width") is not None else [])
