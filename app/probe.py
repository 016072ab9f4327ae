"""Responsiveness probe: how long is the GUI thread ever blocked while both engines classify a video?

    python -m app.probe [--seconds 20] [--video FILE] [--conv 8/16] [--fc 4/32] [--kernel NAME]

Runs the real window (offscreen works), waits for the quantized model, then plays a video (by
default a generated Motion-JPEG clip of the bundled samples, looped) through the same
QMediaPlayer -> QVideoSink path as the camera.  Meanwhile a precise QTimer fires every 5 ms on the
GUI thread; its lateness (actual interval - 5 ms) is how long the event loop could not run.
Prints the lateness distribution and the frames per second classified by both engines.

Lateness has two causes: work on the GUI thread (the app's to fix), and waiting for a CPU or for
the interpreter lock (on a loaded machine, even an idle window waits).  So the probe also reports
the GUI thread's own CPU time between two ticks ("busy") and, first, the lateness of the idle
window for --idle-seconds: the floor the machine sets at that moment.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from PySide6.QtCore import QElapsedTimer, Qt, QTimer
from PySide6.QtWidgets import QApplication

from qcnn import workbench as wb

from .launch import _setting_arg, settings_from_args, wait_until
from .window import MainWindow

TICK_MS = 5


def generated_clip(folder: Path, frames: int = 60, fps: int = 25) -> Path:
    """A looping test clip made from the bundled samples (tests/videogen.py writes it)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from PIL import Image
    from videogen import moving_frames, write_mjpeg_avi
    photos = [Image.open(p) for p in wb.sample_images()]
    return write_mjpeg_avi(folder / "probe.avi", moving_frames(photos, frames, (640, 480)), fps=fps)


class LatenessProbe:
    """A 5 ms precise timer on the GUI thread, recording how late each tick is."""

    def __init__(self):
        self.clock = QElapsedTimer()
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self._tick)
        self.late_ms: list[float] = []
        self.busy_ms: list[float] = []
        self._last = None
        self._cpu = None

    def start(self) -> None:
        self.late_ms, self.busy_ms = [], []
        self.clock.start()
        self._last = self.clock.nsecsElapsed()
        self._cpu = time.thread_time()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def _tick(self) -> None:
        now, cpu = self.clock.nsecsElapsed(), time.thread_time()
        self.late_ms.append(max(0.0, (now - self._last) / 1e6 - TICK_MS))
        self.busy_ms.append((cpu - self._cpu) * 1e3)
        self._last, self._cpu = now, cpu

    def summary(self) -> dict:
        late, busy = sorted(self.late_ms), sorted(self.busy_ms)
        if not late:
            return {}

        def pct(values, p):
            return round(values[min(len(values) - 1, int(p / 100 * len(values)))], 2)
        return {"ticks": len(late), "max_ms": round(late[-1], 2), "p99_ms": pct(late, 99), "p95_ms": pct(late, 95),
                "median_ms": pct(late, 50), "over_16ms": sum(v > 16 for v in late),
                "over_50ms": sum(v > 50 for v in late),
                "busy_max_ms": round(busy[-1], 2), "busy_p99_ms": pct(busy, 99)}


def pump(app, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.0005)           # like exec(): the probe timer and frames fire in here


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to stream (default 20)")
    parser.add_argument("--video", help="video file (default: a generated 640x480 MJPEG clip, looped)")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--conv", type=_setting_arg, help="conv codebooks C_s'/K or 'dense'")
    parser.add_argument("--fc", type=_setting_arg, help="FC codebooks C_s'/K or 'dense'")
    parser.add_argument("--error-correction", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--kernel", default=None, help=f"default: {wb.default_kernel()}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--idle-seconds", type=float, default=5.0,
                        help="first measure the idle window this long: the machine's own floor (default 5)")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args(argv)

    app = QApplication.instance() or QApplication([sys.argv[0]])
    settings = settings_from_args(args)
    t0 = time.monotonic()
    window = MainWindow(args.model, settings=settings, kernel=args.kernel)
    window.show()
    window.codebook.threads.setValue(args.threads)
    first = []
    window.quantized_ready.connect(lambda _q: first or first.append(time.monotonic() - t0))
    if not wait_until(app, window.ready, 1800):
        print("probe: the quantized model did not get ready", file=sys.stderr)
        return 1
    ready_s = time.monotonic() - t0

    idle = LatenessProbe()
    if args.idle_seconds > 0:
        idle.start()
        pump(app, args.idle_seconds)
        idle.stop()

    with tempfile.TemporaryDirectory() as tmp:
        video = Path(args.video) if args.video else generated_clip(Path(tmp))
        pairs, dense_ms, quant_ms = [], [], []

        def on_pair(d, q):
            if d is not None and q is not None:
                pairs.append(time.monotonic())
                dense_ms.append(d.latency_ms)
                quant_ms.append(q.latency_ms)

        window.frame_done.connect(on_pair)
        probe = LatenessProbe()
        window.play_video(video, loop=True)
        wait_until(app, lambda: window.video.count > 0, 60)        # decoder started
        start, received0, dropped0 = time.monotonic(), window.video.count, window.pipeline.dropped
        pairs.clear()
        probe.start()
        pump(app, args.seconds)
        probe.stop()
        elapsed = time.monotonic() - start
        window.stop_stream()
        received = window.video.count - received0
        result = {
            "model": window.bench.model.name,
            "quantized": window.bench.quantized.settings.describe(),
            "kernel": window.bench.kernel, "threads": args.threads,
            "video": video.name, "seconds": round(elapsed, 1),
            "first_quantized_after_s": round(first[0], 1) if first else None, "ready_after_s": round(ready_s, 1),
            "video_frames_shown": received,
            "frames_classified_both": len(pairs),
            "classified_fps": round(len(pairs) / elapsed, 2),
            "video_fps": round(received / elapsed, 2),
            "frames_dropped": window.pipeline.dropped - dropped0,
            "median_dense_ms": round(sorted(dense_ms)[len(dense_ms) // 2], 1) if dense_ms else None,
            "median_quantized_ms": round(sorted(quant_ms)[len(quant_ms) // 2], 1) if quant_ms else None,
            "gui_lateness": probe.summary(),
            "idle_gui_lateness": idle.summary(),
            "load_average": [round(v, 1) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "platform": app.platformName(), "cores": os.cpu_count(),
        }
        window.close()
    print(json.dumps(result, indent=1))
    if not args.json:
        g = result["gui_lateness"]
        i = result["idle_gui_lateness"]
        print(f"\nGUI thread blocked at most {g.get('max_ms')} ms (p99 {g.get('p99_ms')} ms; its own work at most "
              f"{g.get('busy_max_ms')} ms) while classifying {result['classified_fps']} frames/s with both engines"
              + (f"; idle window before: at most {i.get('max_ms')} ms (p99 {i.get('p99_ms')} ms)" if i else ""),
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
