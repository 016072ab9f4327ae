"""Responsiveness probe: how long is the GUI thread ever blocked while both engines classify a video?

    python -m app.probe [--seconds 20] [--video FILE] [--conv 8/16] [--fc 4/32] [--kernel NAME]

Runs the real window (offscreen works), waits for the quantized model, then plays a video (by
default a generated Motion-JPEG clip of the bundled samples, looped) through the same
QMediaPlayer -> QVideoSink path as the camera.  Meanwhile a precise QTimer fires every 5 ms on the
GUI thread; its lateness (actual interval - 5 ms) is how long the event loop could not run.
Prints the lateness distribution and the frames per second classified by both engines.
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
        self._last = None

    def start(self) -> None:
        self.clock.start()
        self._last = self.clock.nsecsElapsed()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def _tick(self) -> None:
        now = self.clock.nsecsElapsed()
        self.late_ms.append(max(0.0, (now - self._last) / 1e6 - TICK_MS))
        self._last = now

    def summary(self) -> dict:
        late = sorted(self.late_ms)
        if not late:
            return {}

        def pct(p):
            return round(late[min(len(late) - 1, int(p / 100 * len(late)))], 2)
        return {"ticks": len(late), "max_ms": round(late[-1], 2), "p99_ms": pct(99), "p95_ms": pct(95),
                "median_ms": pct(50), "over_16ms": sum(v > 16 for v in late), "over_50ms": sum(v > 50 for v in late)}


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
        end = start + args.seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.0005)       # like exec(): the probe timer and frames fire in here
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
            "platform": app.platformName(), "cores": os.cpu_count(),
        }
        window.close()
    print(json.dumps(result, indent=1))
    if not args.json:
        g = result["gui_lateness"]
        print(f"\nGUI thread blocked at most {g.get('max_ms')} ms (p99 {g.get('p99_ms')} ms) while classifying "
              f"{result['classified_fps']} frames/s with both engines", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
