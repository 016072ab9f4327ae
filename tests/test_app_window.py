"""The real main window, driven as a person would (pytest-qt, offscreen): open a BMP, re-quantize,
cancel, a corrupt file, no camera, a video through the camera's frame path.

Fast settings throughout: EfficientNet-Lite0 with only its FC layer quantized (C_s'=16, K=16),
no error correction; the quantized-model cache lives in a temporary folder."""
import os

import pytest
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QImage
from videogen import moving_frames, write_mjpeg_avi

from app.sources import camera_status
from app.ui.result_panel import IMAGE_SIDE
from app.window import MainWindow
from qcnn import workbench as wb
from qcnn.pq.layer import PQSetting

FAST = wb.QuantSettings(conv=None, fc=PQSetting(16, 16), error_correction=False)
WAIT = 60_000     # ms; generous for a loaded 2-core machine, normally a second or two


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("qcnn-cache")
    old = os.environ.get("QCNN_CACHE_DIR")
    os.environ["QCNN_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("QCNN_CACHE_DIR", None)
    else:
        os.environ["QCNN_CACHE_DIR"] = old


@pytest.fixture
def window(qtbot):
    w = MainWindow(settings=FAST)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.bench.quant_graph is not None and not w.busy(), timeout=WAIT)
    return w


def gradient_bmp(path, size=(96, 72)):
    w, h = size
    image = Image.new("RGB", size)
    image.putdata([(255 * x // w, 255 * y // h, 128) for y in range(h) for x in range(w)])
    image.save(path, format="BMP")
    return path


def both(dense, quantized):
    return dense is not None and quantized is not None


def classify(qtbot, window, path):
    with qtbot.waitSignal(window.frame_done, timeout=WAIT, check_params_cb=both) as signal:
        window.open_image(path)
    return signal.args


def test_open_bmp_fills_both_top5_lists_and_the_latency_graph(window, qtbot, tmp_path):
    points = {e: window.latency_plot.points(e) for e in wb.ENGINES}
    dense, quantized = classify(qtbot, window, gradient_bmp(tmp_path / "gradient.bmp"))

    for engine, run in (("dense", dense), ("quantized", quantized)):
        panel = window.panels[engine]
        shown = panel.predictions()
        assert len(shown) == 5
        probs = [p for _, p in shown]
        assert all(0 <= p <= 1 for p in probs) and probs == sorted(probs, reverse=True)
        assert [label.text() for label in panel.names] == [label[:27] + "…" if len(label) > 28 else label
                                                            for label, _ in shown]
        assert panel.bars[0].value == pytest.approx(probs[0])
        assert panel.latency.text() == f"{run.latency_ms:.1f} ms"
        assert not panel.image.pixmap().isNull() and panel.image.pixmap().width() == IMAGE_SIDE
        assert window.latency_plot.points(engine) == points[engine] + 1
        assert window.layer_plot.bar_count(engine) > 1
    assert window.panels["quantized"].badge.isVisible()
    assert window.panels["quantized"].badge.state == (dense.top[0].index == quantized.top[0].index)
    assert "gradient.bmp" in window.panels["dense"].status.text()

    window.tabs.setCurrentWidget(window.footprint)      # measured per-layer speed-up of the quantized fc
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
    assert runs[fc_row] == wb.kernel_map(window.bench.quant_graph)["fc"]

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
    assert window.camera_note.text() == reason and window.camera_note.isVisible()
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
        box.setCurrentIndex(box.findData(name))
        qtbot.waitUntil(lambda: not window.busy(), timeout=WAIT)
        assert window.bench.kernel == name and window.bench.quantized is quantized
        dense, quant = classify(qtbot, window, gradient_bmp(tmp_path / f"{name}.bmp"))
        table = window.footprint.table
        fc_row = [table.item(r, 0).text() for r in range(table.rowCount())].index("fc")
        assert table.item(fc_row, 11).text() == wb.kernel_map(window.bench.quant_graph)["fc"]
    disabled = [n for n, _l, ok, _w in wb.kernel_choices() if not ok]
    for name in disabled:                        # a kernel that cannot run here is greyed out, with why
        i = box.findData(name)
        assert not box.model().item(i).isEnabled() and box.itemData(i, Qt.ItemDataRole.ToolTipRole)
