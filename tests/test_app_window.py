"""The real main window, driven as a person would (pytest-qt, offscreen): open a BMP, re-quantize,
cancel, a corrupt file, no camera, a video through the camera's frame path, model switches,
progressive apply, focus, the layout's minimum size, saving and reopening.

Fast settings throughout: EfficientNet-Lite0 with only its FC layer quantized (C_s'=16, K=16),
no error correction; the quantized-model cache lives in a temporary folder.  The engines and the
quantizer run in the window's worker processes, as in the app."""
import os
import signal

import pytest
from app_fixtures import FAST, WAIT, both, cache_dir, classify, gradient_bmp, window  # noqa: F401 (fixtures)
from PIL import Image
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QGuiApplication, QImage
from PySide6.QtWidgets import QApplication
from videogen import moving_frames, write_mjpeg_avi

from app.sources import FILE_FILTERS, camera_status
from app.ui.result_panel import IMAGE_SIDE, MIN_IMAGE_SIDE
from app.window import MainWindow
from qcnn import workbench as wb
from qcnn.pq.layer import PQSetting


def test_open_bmp_fills_both_top5_lists_and_the_latency_graph(window, qtbot, tmp_path):
    points = {e: window.latency_plot.points(e) for e in wb.ENGINES}
    dense, quantized = classify(qtbot, window, gradient_bmp(tmp_path / "gradient.bmp"))

    for engine, run in (("dense", dense), ("quantized", quantized)):
        panel = window.panels[engine]
        shown = panel.predictions()
        assert len(shown) == 5
        probs = [p for _, p in shown]
        assert all(0 <= p <= 1 for p in probs) and probs == sorted(probs, reverse=True)
        assert [label.text() for label in panel.names] == [label for label, _ in shown]
        assert panel.bars[0].value == pytest.approx(probs[0])
        assert panel.latency.text() == f"{run.latency_ms:.1f} ms"
        assert not panel.image.pixmap().isNull() and panel.image.pixmap().width() == window.bench.model.input_size
        assert MIN_IMAGE_SIDE <= panel.image.width() <= IMAGE_SIDE and not panel.stale
        assert window.latency_plot.points(engine) == points[engine] + 1
        assert window.layer_plot.bar_count(engine) > 1
    assert window.panels["quantized"].badge.isVisible()
    assert window.panels["quantized"].badge.state == (dense.top[0].index == quantized.top[0].index)
    assert "gradient.bmp" in window.panels["dense"].status.text()

    window.tabs.setCurrentWidget(window.footprint_tab)  # measured per-layer speed-up of the quantized fc
    table = window.footprint.table
    fc_row = [table.item(r, 0).text() for r in range(table.rowCount())].index("fc")
    assert table.item(fc_row, 7).text().endswith("x") and table.item(0, 7).text() == ""


def test_changing_the_codebook_size_requantizes_and_footprint_matches_the_cli(window, qtbot, tmp_path, capsys):
    before_values = dict(window.footprint.values)
    before = window.bench.quantized
    codebook = window.codebook
    codebook.fc.ksub.setCurrentIndex(codebook.fc.ksub.findData(4))
    assert codebook.apply.text() == "Apply ●"          # settings differ from the model in use
    with qtbot.waitSignal(window.quantized_ready, timeout=WAIT) as signal:
        qtbot.mouseClick(codebook.apply, Qt.MouseButton.LeftButton)
    q = signal.args[0]
    assert q.settings.fc == PQSetting(16, 4) and window.bench.quantized is q
    assert q.file_bytes < before.file_bytes
    assert window.footprint.values != before_values
    assert codebook.apply.text() == "Apply"

    shown = window.footprint.footprint
    expected = cli_cost_json(window.bench, tmp_path, capsys)
    # Every figure equals the CLI's; the kernel column says what each layer runs in the window
    # ("auto" times the candidates there, `qcnn cost` cannot), checked below.
    shown_json = shown.report.to_json()
    runs = [layer.pop("kernel") for layer in shown_json["layers"]]
    for layer in expected["layers"]:
        layer.pop("kernel")
    assert shown_json == {k: v for k, v in expected.items() if k not in ("model", "setting")}
    assert window.footprint.values["theoretical speed-up"] == f"{expected['theoretical_speedup']:.2f}×"
    assert window.footprint.values["compression"] == f"{expected['compression']:.2f}×"
    assert shown.quant_file_bytes == q.path.stat().st_size
    rows = window.footprint.table.rowCount()
    assert rows == len(expected["layers"])
    fc_row = [window.footprint.table.item(r, 0).text() for r in range(rows)].index("fc")
    assert window.footprint.table.item(fc_row, 2).text() == "16/4"
    assert window.footprint.table.item(fc_row, 11).text() == runs[fc_row]
    assert runs[fc_row] == window.quant_kernels["fc"]

    # switching back is instant: the first model is in the on-disk cache
    codebook.fc.ksub.setCurrentIndex(codebook.fc.ksub.findData(16))
    with qtbot.waitSignal(window.quantized_ready, timeout=WAIT) as signal:
        qtbot.mouseClick(codebook.apply, Qt.MouseButton.LeftButton)
    assert signal.args[0].from_cache and signal.args[0].path == before.path


def cli_cost_json(bench, tmp_path, capsys) -> dict:
    """`qcnn cost --json` for the window's model, settings and kernel."""
    import json

    from qcnn import cli
    config = tmp_path / "config.json"
    config.write_text(json.dumps(bench.quantized.settings.to_dict()))
    capsys.readouterr()
    assert cli.main(["cost", "--model", bench.model.name, "--config", str(config), "--kernel", bench.kernel,
                     "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cancelling_a_requantization_keeps_the_previous_model(window, qtbot, tmp_path):
    applied = window.bench.quantized
    codebook = window.codebook
    codebook.conv.setChecked(True)               # every conv layer too, error-corrected: seconds of work
    codebook.conv.dsub.setValue(4)
    codebook.conv.ksub.setCurrentIndex(codebook.conv.ksub.findData(64))
    codebook.error_correction.setChecked(True)
    slow = codebook.settings()
    qtbot.mouseClick(codebook.apply, Qt.MouseButton.LeftButton)
    assert window.task_bar.isVisible() and not codebook.apply.isEnabled()
    qtbot.waitUntil(lambda: window.task_bar.progress.value() > 0, timeout=WAIT)
    qtbot.mouseClick(window.task_bar.cancel, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not window.busy(), timeout=WAIT)

    assert window.bench.quantized is applied
    assert codebook.settings() == applied.settings and not codebook.conv.isChecked()
    assert codebook.apply.isEnabled() and not window.task_bar.isVisible()
    assert not wb.cache_path(window.bench.model, slow).exists()
    dense, quantized = classify(qtbot, window, gradient_bmp(tmp_path / "after.bmp"))
    assert len(window.panels["quantized"].predictions()) == 5


def test_corrupt_image_shows_an_error_naming_the_file_and_the_window_keeps_working(window, qtbot, tmp_path):
    bad = tmp_path / "broken.bmp"
    bad.write_bytes(b"BM" + b"\x00not a bitmap\xff" * 20)
    window.open_image(bad)
    qtbot.waitUntil(lambda: "broken.bmp" in window.error_banner.text(), timeout=WAIT)
    assert window.error_banner.isVisible()

    classify(qtbot, window, gradient_bmp(tmp_path / "good.bmp"))
    assert not window.error_banner.isVisible()
    assert "good.bmp" in window.panels["quantized"].status.text()


def test_pasted_clipboard_image_is_classified(window, qtbot):
    image = QImage(80, 60, QImage.Format.Format_RGB32)
    image.fill(Qt.GlobalColor.darkCyan)
    QGuiApplication.clipboard().setImage(image)
    with qtbot.waitSignal(window.frame_done, timeout=WAIT, check_params_cb=both) as signal:
        window.paste_action.trigger()
    assert signal.args[0].frame == "pasted image"


@pytest.mark.skipif(camera_status()[0], reason="this machine has a camera")
def test_no_camera_means_a_disabled_control_with_the_reason(window):
    assert not window.camera_action.isEnabled()
    reason = window.camera_action.toolTip()
    assert "camera" in reason.lower()
    assert window.camera_note.text() == "(no camera)" and window.camera_note.toolTip() == reason
    assert window.camera_note.isVisible()
    window.camera_action.setEnabled(True)        # even if forced on, starting fails gracefully
    window.camera_action.setChecked(True)
    assert not window.camera_action.isChecked() and "camera" in window.error_banner.text().lower()


def test_a_video_file_plays_through_the_frame_path_and_gets_classified(window, qtbot, tmp_path):
    samples = [Image.open(p) for p in wb.sample_images()[:3]]
    clip = write_mjpeg_avi(tmp_path / "clip.avi", moving_frames(samples, count=30), fps=15)
    pairs = []
    window.frame_done.connect(lambda d, q: both(d, q) and "clip.avi" in d.frame and pairs.append((d, q)))
    window.play_video(clip)
    qtbot.waitUntil(lambda: len(pairs) >= 3, timeout=WAIT)
    assert window.video.count >= len(pairs)
    serials = [d.serial for d, _ in pairs]
    assert serials == sorted(set(serials))                       # each frame once, in order
    assert all(d.serial == q.serial for d, q in pairs)           # both engines saw the same frame
    assert len({d.crop.tobytes() for d, _ in pairs}) > 1        # and the frames differ
    qtbot.waitUntil(lambda: not window.video.active, timeout=WAIT)    # played to the end
    qtbot.waitUntil(lambda: not window.pipeline.busy, timeout=WAIT)
    assert not window.stop_action.isEnabled()


def test_gallery_click_classifies_a_bundled_sample(window, qtbot):
    gallery = window.gallery
    assert gallery.count() == len(wb.sample_images()) == 6
    item = gallery.item(1)
    rect = gallery.visualItemRect(item)
    with qtbot.waitSignal(window.frame_done, timeout=WAIT, check_params_cb=both) as signal:
        qtbot.mouseClick(gallery.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert signal.args[0].frame == wb.sample_images()[1].name


def test_dropped_files_and_image_data_become_frames(tmp_path):
    from PySide6.QtCore import QMimeData, QUrl

    from app.sources import frames_from_mime
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(gradient_bmp(tmp_path / "dropped.bmp")))])
    (frame,) = frames_from_mime(mime)
    assert frame.name == "dropped.bmp" and frame._load().size == (96, 72)
    raw = QMimeData()
    raw.setData("image/bmp", (tmp_path / "dropped.bmp").read_bytes())
    (frame,) = frames_from_mime(raw)
    assert frame._load().size == (96, 72)
    assert frames_from_mime(QMimeData()) == []


def test_frames_arriving_while_busy_are_dropped_latest_wins(window, qtbot, tmp_path):
    pipeline = window.pipeline
    frames = [wb.Frame.from_path(gradient_bmp(tmp_path / f"f{i}.bmp", (96 + i, 72)), i + 1) for i in range(5)]
    done, dropped = [], pipeline.dropped
    window.frame_done.connect(lambda d, q: d is not None and done.append(d.frame))
    for frame in frames:                 # all in one go: the first runs, the last waits, the rest are dropped
        window.submit(frame)
    qtbot.waitUntil(lambda: len(done) >= 2 and not pipeline.busy, timeout=WAIT)
    assert done == ["f0.bmp", "f4.bmp"] and pipeline.dropped - dropped == 3


def test_evaluation_folder_scores_both_engines(window, qtbot, tmp_path):
    rows = ["file,class_index"]
    for i in range(3):
        gradient_bmp(tmp_path / f"e{i}.bmp", (90 + 5 * i, 70))
        rows.append(f"e{i}.bmp,{i}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    window.codebook.eval_folder.setText(str(tmp_path))
    qtbot.mouseClick(window.codebook.evaluate, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "quantized" in window.codebook.eval_result.text(), timeout=WAIT)
    text = window.codebook.eval_result.text()
    assert "3 images" in text and "dense" in text and "top-5" in text


def test_save_and_open_a_quantized_model_file(window, qtbot, tmp_path):
    path = tmp_path / "mine.qcnn"
    window.save_model_file(str(path))
    assert path.stat().st_size == window.bench.quantized.file_bytes
    with qtbot.waitSignal(window.quantized_ready, timeout=WAIT) as signal:
        window.open_model_file(str(path))
    assert signal.args[0].path == path and window.bench.model.name == "efficientnet-lite0"
    assert window.codebook.settings() == FAST
    classify(qtbot, window, gradient_bmp(tmp_path / "x.bmp"))


def test_alexnet_says_visibly_that_it_is_a_speed_test_only(qtbot):
    w = MainWindow("alexnet", quantize=False)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.bench.model is not None, timeout=WAIT)
    assert w.warning.isVisible() and "random weights" in w.warning.text()
    assert w.model_box.currentText().endswith("speed test only (random weights)")


def test_a_broken_onnx_file_shows_an_error_and_the_model_in_use_stays(window, qtbot, tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07 definitely not protobuf" * 3)
    model = window.bench.model
    window.load_model(str(bad))
    qtbot.waitUntil(lambda: "broken.onnx" in window.error_banner.text(), timeout=WAIT)
    assert window.bench.model is model and window.model_box.currentData() == "efficientnet-lite0"
    classify(qtbot, window, gradient_bmp(tmp_path / "still-works.bmp"))


def test_switching_the_kernel_keeps_the_model_and_shows_in_the_footprint(window, qtbot, tmp_path):
    quantized = window.bench.quantized
    box = window.codebook.kernel
    for name in ("reference", wb.default_kernel()):
        with qtbot.waitSignal(window.quantized_ready, timeout=WAIT):
            box.setCurrentIndex(box.findData(name))
        assert window.ready()
        assert window.bench.kernel == name and window.bench.quantized is quantized
        dense, quant = classify(qtbot, window, gradient_bmp(tmp_path / f"{name}.bmp"))
        table = window.footprint.table
        fc_row = [table.item(r, 0).text() for r in range(table.rowCount())].index("fc")
        assert table.item(fc_row, 11).text() == window.quant_kernels["fc"]
        if name == "reference":
            assert window.quant_kernels["fc"] == "reference"
    disabled = [n for n, _l, ok, _w in wb.kernel_choices() if not ok]
    for name in disabled:                        # a kernel that cannot run here is greyed out, with why
        i = box.findData(name)
        assert not box.model().item(i).isEnabled() and box.itemData(i, Qt.ItemDataRole.ToolTipRole)


# ---------------------------------------------------------------------- what the panels say

def tiny_onnx(path, classes=10):
    """A little CNN with ten classes: its labels ("class 3") cannot be taken for ImageNet's."""
    from onnx_models import Builder
    b = Builder()
    x = b.op("Relu", [b.conv("data", 3, 8, 3, strides=[2, 2], pads=[1, 1, 1, 1])])
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    return b.save(path, b.gemm(x, 8, classes, transB=1))


def test_after_a_model_switch_no_panel_shows_the_previous_models_labels(window, qtbot, tmp_path):
    classify(qtbot, window, gradient_bmp(tmp_path / "g.bmp"))
    imagenet = set(window.bench.model.labels)
    assert all(window.panels[e].predictions() for e in wb.ENGINES)
    seen = []
    window.frame_done.connect(lambda d, q: seen.extend(p.label for run in (d, q) if run is not None for p in run.top))

    with qtbot.waitSignal(window.model_ready, timeout=WAIT):
        window.load_model(str(tiny_onnx(tmp_path / "tiny.onnx")))
    for engine in wb.ENGINES:                    # at once: nothing of EfficientNet-Lite0 is left
        panel = window.panels[engine]
        assert panel.predictions() == [] and [n.text() for n in panel.names] == [""] * 5
        assert panel.image.pixmap() is None and panel.latency.text() == "— ms" and not panel.badge.isVisible()
    assert window.panels["quantized"].subtitle.text() == "not quantized yet"
    assert window.panels["quantized"].note.text().startswith("preparing")   # and it says what comes
    assert window.layer_plot.bar_count("dense") == 0 and window.latency_plot.points("dense") == 0

    qtbot.waitUntil(window.ready, timeout=WAIT)
    # the final model's rerun of the picture replaces (and un-greys) the k-means one's
    qtbot.waitUntil(lambda: all(window.panels[e].predictions() and not window.panels[e].stale for e in wb.ENGINES),
                    timeout=WAIT)
    for engine in wb.ENGINES:
        shown = [n.text() for n in window.panels[engine].names]
        assert all(label.startswith("class ") for label in shown) and not set(shown) & imagenet
    assert seen and all(label.startswith("class ") for label in seen)
    assert window.panels["quantized"].subtitle.text().startswith(wb.DEFAULT_SETTINGS.describe())


def slow_settings(codebook):
    """Every conv layer at K = 64: a minute or more of k-means, time enough to act meanwhile."""
    codebook.conv.setChecked(True)
    codebook.conv.dsub.setValue(4)
    codebook.conv.ksub.setCurrentIndex(codebook.conv.ksub.findData(64))
    return codebook.settings()


def test_a_failed_open_or_model_load_does_not_cancel_a_running_quantization(window, qtbot, tmp_path):
    classify(qtbot, window, gradient_bmp(tmp_path / "before.bmp"))
    slow = slow_settings(window.codebook)
    qtbot.mouseClick(window.codebook.apply, Qt.MouseButton.LeftButton)
    job = window.tasks["quantize"]
    qtbot.waitUntil(lambda: window.task_bar.progress.value() > 0, timeout=WAIT)
    assert window.panels["quantized"].stale                     # the old settings' result, greyed
    assert "k-means" in window.panels["quantized"].note.text()   # ... and what is being made

    bad_qcnn = tmp_path / "broken.qcnn"
    bad_qcnn.write_bytes(b"QCNN\x00\r\n\x1a" + b"\x01\x00" + b"garbage" * 10)
    window.open_model_file(bad_qcnn)
    qtbot.waitUntil(lambda: "broken.qcnn" in window.error_banner.text(), timeout=WAIT)
    bad_onnx = tmp_path / "broken.onnx"
    bad_onnx.write_bytes(b"\x08\x07 definitely not protobuf" * 3)
    window.load_model(str(bad_onnx))
    qtbot.waitUntil(lambda: "broken.onnx" in window.error_banner.text(), timeout=WAIT)

    assert window.tasks.get("quantize") is job and not job.cancel_requested and not job.over
    assert window.model_box.currentData() == "efficientnet-lite0"
    value = window.task_bar.progress.value()
    qtbot.waitUntil(lambda: window.task_bar.progress.value() > value, timeout=WAIT)   # still working
    assert "k-means" in window.panels["quantized"].note.text()
    qtbot.mouseClick(window.task_bar.cancel, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not window.busy(), timeout=WAIT)
    assert not wb.cache_path(window.bench.model, slow).exists()
    assert "keeping the model in use" in window.statusBar().currentMessage()


def test_progressive_apply_shows_the_kmeans_model_first_then_the_corrected_one(window, qtbot):
    corrected = wb.QuantSettings(conv=None, fc=PQSetting(16, 8), error_correction=True, calib_count=4)
    shown = []
    window.quantized_ready.connect(lambda q: shown.append((q.settings, window.panels["quantized"].subtitle.text())))
    paused = []

    def pause_after_kmeans(_q):                  # hold the job process until the k-means model shows
        os.kill(window.jobs.process.pid, signal.SIGSTOP)
        paused.append(window.jobs.process.pid)

    window.codebook.set_settings(corrected)
    qtbot.mouseClick(window.codebook.apply, Qt.MouseButton.LeftButton)
    job = window.tasks["quantize"]
    job.partial.connect(pause_after_kmeans)
    try:
        qtbot.waitUntil(lambda: bool(paused and shown) and window.pipeline.ready("quantized"), timeout=WAIT)
        kmeans, text = shown[-1]
        assert kmeans == wb.QuantSettings(conv=None, fc=PQSetting(16, 8), error_correction=False, calib_count=4)
        assert window.bench.quantized.settings == kmeans and "k-means only" in text
        assert "error correction" in window.panels["quantized"].note.text()
        assert not window.panels["quantized"].stale and window.busy()
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
    qtbot.waitUntil(window.ready, timeout=WAIT)
    final, text = shown[-1]
    assert final == corrected and "k-means" not in text and "error correction" in text
    assert window.codebook.settings() == corrected and window.codebook.error_correction.isChecked()
    assert window.panels["quantized"].note.text() == ""

    # both are cached now: applying the corrected settings again adopts them at once, in one step
    window.codebook.set_settings(FAST)
    with qtbot.waitSignal(window.quantized_ready, timeout=WAIT):
        qtbot.mouseClick(window.codebook.apply, Qt.MouseButton.LeftButton)
    count = len(shown)
    window.codebook.set_settings(corrected)
    qtbot.mouseClick(window.codebook.apply, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(window.ready, timeout=WAIT)
    assert len(shown) == count + 1 and shown[-1][0] == corrected and window.bench.quantized.from_cache


def test_cancelling_error_correction_keeps_the_kmeans_model_and_says_so(window, qtbot):
    corrected = wb.QuantSettings(conv=None, fc=PQSetting(8, 8), error_correction=True, calib_count=4)
    window.codebook.set_settings(corrected)
    qtbot.mouseClick(window.codebook.apply, Qt.MouseButton.LeftButton)
    job = window.tasks["quantize"]
    job.partial.connect(lambda _q: os.kill(window.jobs.process.pid, signal.SIGSTOP))   # stuck in correction
    qtbot.waitUntil(lambda: window.bench.quantized.settings.fc == PQSetting(8, 8), timeout=WAIT)
    qtbot.mouseClick(window.task_bar.cancel, Qt.MouseButton.LeftButton)     # a stopped job: killed after a grace
    qtbot.waitUntil(lambda: not window.busy(), timeout=WAIT)
    kmeans = window.bench.quantized.settings
    assert kmeans.fc == PQSetting(8, 8) and not kmeans.error_correction
    assert "error correction cancelled" in window.panels["quantized"].subtitle.text()
    assert "k-means model" in window.statusBar().currentMessage()
    assert window.codebook.settings() == kmeans and not window.codebook.error_correction.isChecked()
    classify(qtbot, window, wb.sample_images()[0])          # and the job process is there for the next one
    window.codebook.fc.ksub.setCurrentIndex(window.codebook.fc.ksub.findData(4))
    with qtbot.waitSignal(window.quantized_ready, timeout=WAIT):
        qtbot.mouseClick(window.codebook.apply, Qt.MouseButton.LeftButton)


def test_cancel_without_a_quantized_model_does_not_claim_to_keep_one(qtbot):
    w = MainWindow(quantize=False)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.bench.model is not None and w.pipeline.ready("dense"), timeout=WAIT)
    assert w.panels["quantized"].note.text() == "not quantized yet: choose codebooks and press Apply"
    slow_settings(w.codebook)
    qtbot.mouseClick(w.codebook.apply, Qt.MouseButton.LeftButton)
    qtbot.mouseClick(w.task_bar.cancel, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not w.busy(), timeout=WAIT)
    message = w.statusBar().currentMessage()
    assert "no quantized model yet" in message and "keeping" not in message
    assert w.bench.quantized is None


# ---------------------------------------------------------------------- layout, focus, menus, files

def test_the_window_fits_a_1280x720_screen_even_while_evaluating(window, qtbot, tmp_path):
    hint = window.minimumSizeHint()
    assert hint.width() <= 1280 and hint.height() <= 720 - 64        # room for a title bar and a panel
    rows = ["file,class_index"] + [f"e{i}.bmp,{i}" for i in range(3)]
    for i in range(3):
        gradient_bmp(tmp_path / f"e{i}.bmp")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    window.resize(1280, 656)
    window.codebook.eval_folder.setText(str(tmp_path))
    qtbot.mouseClick(window.codebook.evaluate, Qt.MouseButton.LeftButton)
    assert window.eval_bar.isVisible()
    QApplication.processEvents()
    assert window.width() == 1280 and window.height() == 656
    codebook, viewport = window.codebook, window.side.viewport()
    assert codebook.width() <= viewport.width()                         # nothing cut off at the right
    for button in (codebook.apply, codebook.revert, codebook.evaluate, window.eval_bar.cancel):
        left = button.mapTo(codebook, QPoint(0, 0)).x()
        assert left >= 0 and left + button.width() <= codebook.width(), button.text()
    for panel in window.panels.values():
        assert panel.image.width() >= MIN_IMAGE_SIDE and panel.width() >= panel.minimumSizeHint().width()
    qtbot.waitUntil(lambda: not window.busy(), timeout=WAIT)


def test_after_apply_the_focus_is_on_the_results_so_ctrl_v_pastes(window, qtbot):
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=WAIT)
    codebook = window.codebook
    codebook.fc.ksub.setCurrentIndex(codebook.fc.ksub.findData(8))
    codebook.apply.setFocus()
    with qtbot.waitSignal(window.quantized_ready, timeout=WAIT):
        qtbot.keyClick(codebook.apply, Qt.Key.Key_Space)               # as a keyboard user presses it
    assert QApplication.focusWidget() is window.results_area
    threads = codebook.threads.value()
    qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_3)           # a stray digit changes nothing
    assert codebook.threads.value() == threads
    image = QImage(64, 48, QImage.Format.Format_RGB32)
    image.fill(Qt.GlobalColor.darkYellow)
    QGuiApplication.clipboard().setImage(image)
    with qtbot.waitSignal(window.frame_done, timeout=WAIT, check_params_cb=both) as signal:
        qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    assert signal.args[0].frame == "pasted image"


def test_help_menu_has_getting_started_and_about(window):
    menus = {a.text().replace("&", ""): a.menu() for a in window.menuBar().actions()}
    assert [a.text() for a in menus["Help"].actions()] == ["Getting started", "About qcnn", "About Qt"]
    box = window.show_about()
    assert "CVPR 2016" in box.text() and "EfficientNet-Lite0" in box.text() and box.isVisible()
    box.close()
    box = window.show_help()
    assert "Ctrl+V" in box.text() and "Apply" in box.text()
    box.close()


def test_the_open_dialog_lists_every_supported_format_first():
    first = FILE_FILTERS.split(";;")[0]
    assert all(f"*{ext}" in first for ext in (".bmp", ".jpg", ".jpeg", ".png", ".tif", ".webp", ".gif"))


def test_save_adds_the_extension_and_the_file_reopens_described_truly(window, qtbot, tmp_path):
    saved = window.save_model_file(tmp_path / "mine")
    assert saved == tmp_path / "mine.qcnn" and saved.is_file()
    window.codebook.error_correction.setChecked(True)       # whatever the controls say before
    with qtbot.waitSignal(window.quantized_ready, timeout=WAIT):
        window.open_model_file(saved)
    subtitle = window.panels["quantized"].subtitle.text()
    assert FAST.describe() in subtitle and "error correction" not in subtitle and "mine.qcnn" in subtitle
    assert window.codebook.settings() == FAST and not window.codebook.error_correction.isChecked()


def test_a_file_from_qcnn_quantize_reopens_described_truly(window, qtbot, tmp_path):
    import json

    from qcnn import cli
    config = wb.QuantSettings(conv=None, fc=PQSetting(8, 16), error_correction=False)
    (tmp_path / "cfg.json").write_text(json.dumps(config.to_dict()))
    out = tmp_path / "cli.qcnn"
    assert cli.main(["quantize", "--model", "efficientnet-lite0", "--config", str(tmp_path / "cfg.json"),
                     "--no-error-correction", "-o", str(out)]) == 0
    with qtbot.waitSignal(window.quantized_ready, timeout=WAIT):
        window.open_model_file(out)
    subtitle = window.panels["quantized"].subtitle.text()
    assert "fc C_s'=8 K=16" in subtitle and "error correction" not in subtitle
    assert not window.codebook.error_correction.isChecked()


def test_the_mouse_wheel_scrolls_the_side_panel_without_changing_a_setting(window, qtbot):
    from PySide6.QtCore import QPointF
    from PySide6.QtGui import QWheelEvent
    codebook = window.codebook
    before = codebook.settings()
    window.resize(1280, 656)
    for box in (codebook.calib_source, codebook.conv.dsub, codebook.fc.ksub, codebook.calib_count):
        assert not box.hasFocus()
        centre = QPointF(box.rect().center())
        wheel = QWheelEvent(centre, QPointF(box.mapToGlobal(box.rect().center())), QPoint(0, -120), QPoint(0, -120),
                            Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
        QApplication.sendEvent(box, wheel)
    assert codebook.settings() == before and codebook.calib_source.currentIndex() == 0
    assert window.side.verticalScrollBar().value() > 0                  # the panel scrolled instead
