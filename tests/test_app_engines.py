"""The engine processes behind the window: a bad frame, a killed or hung engine, closing while one
is busy.  Real processes, real signals (POSIX: SIGKILL, SIGSTOP)."""
import itertools
import os
import signal
import sys
import time

import numpy as np
import pytest
from app_fixtures import WAIT, cache_dir, classify, gradient_bmp, window  # noqa: F401 (fixtures)

from qcnn import workbench as wb

SERIALS = itertools.count(10_000)
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def run_tensor(qtbot, window, engine_name, x, shm_name=None):
    """Hand `x` to one engine as a frame tensor, as the pipeline does; the failure message, or
    None when the engine answered with a result."""
    pipeline = window.pipeline
    engine = pipeline.engines[engine_name]
    pipeline._write(x)
    failures = []
    engine.run_failed.connect(lambda *args: failures.append(args[-1]))
    assert engine.run(next(SERIALS), shm_name or pipeline._shm.name, x.shape)
    qtbot.waitUntil(lambda: engine.busy is None, timeout=WAIT)
    return failures[0] if failures else None


def test_engines_survive_a_bad_frame(window, qtbot, tmp_path):
    size = window.bench.model.input_size
    pids = {e: window.pipeline.engines[e].pid for e in wb.ENGINES}
    good = np.zeros((1, size, size, 3), np.float32)
    for engine in wb.ENGINES:
        assert "does not fit" in run_tensor(qtbot, window, engine, np.zeros((1, 7, 7, 3), np.float32))
        assert "No such file" in run_tensor(qtbot, window, engine, good, shm_name="qcnn-no-such-block")
        run_tensor(qtbot, window, engine, np.full((1, size, size, 3), np.nan, np.float32))   # any answer
    assert {e: window.pipeline.engines[e].pid for e in wb.ENGINES} == pids
    dense, quantized = classify(qtbot, window, gradient_bmp(tmp_path / "after.bmp"))
    assert len(dense.top) == len(quantized.top) == 5


def test_a_killed_engine_is_restarted_with_its_model(window, qtbot, tmp_path):
    for engine in wb.ENGINES:
        process = window.pipeline.engines[engine]
        old = process.pid
        with qtbot.waitSignal(window.pipeline.engine_restarted, timeout=WAIT):
            os.kill(old, signal.SIGKILL)
        qtbot.waitUntil(lambda p=process: p.is_ready, timeout=WAIT)
        assert process.pid != old and "restarted" in window.statusBar().currentMessage()
        dense, quantized = classify(qtbot, window, gradient_bmp(tmp_path / f"{engine}.bmp"))
        assert dense is not None and quantized is not None


def test_a_hung_engine_is_killed_and_restarted_and_the_frame_is_not_waited_for(window, qtbot, tmp_path):
    process = window.pipeline.engines["quantized"]
    process.run_timeout_s = 2.0
    old = process.pid
    os.kill(old, signal.SIGSTOP)
    try:
        window.open_image(gradient_bmp(tmp_path / "stuck.bmp"))
        with qtbot.waitSignal(window.frame_done, timeout=WAIT) as frame:
            pass
        assert frame.args[0] is not None and frame.args[1] is None       # dense answered, quantized hung
        assert "did not answer" in window.error_banner.text()
    finally:
        if process.pid == old:
            os.kill(old, signal.SIGCONT)
    assert process.pid != old
    qtbot.waitUntil(lambda: process.is_ready, timeout=WAIT)
    dense, quantized = classify(qtbot, window, gradient_bmp(tmp_path / "unstuck.bmp"))
    assert quantized is not None and quantized.serial == dense.serial


def test_closing_while_an_engine_is_busy_returns_promptly(window, qtbot, tmp_path):
    engines = window.pipeline.engines
    procs = [e.process.proc for e in engines.values()] + [window.jobs.process.proc]
    os.kill(engines["quantized"].pid, signal.SIGSTOP)          # busy for ever
    window.open_image(gradient_bmp(tmp_path / "busy.bmp"))
    qtbot.waitUntil(lambda: engines["quantized"].busy is not None, timeout=WAIT)
    t0 = time.monotonic()
    window.close()
    assert time.monotonic() - t0 < 10                          # it waits a moment, never for the frame
    for proc in procs:
        assert proc.wait(10) is not None
