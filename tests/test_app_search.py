"""The window's Find settings: a search on unlabelled photos in the search worker process, with
progress, a time estimate and Cancel, whose result fills the codebook panel to Apply or save."""
import json

from app_fixtures import WAIT, cache_dir, window  # noqa: F401 (fixtures)
from PySide6.QtCore import Qt
from test_search_unlabelled import photos, slow_cnn, small_cnn  # noqa: F401 (fixture)


def open_onnx(qtbot, window, path):
    """Open an ONNX model without quantizing it (a search needs only the dense model; the slow one's
    quantization would take the CPU the search runs on)."""
    window.auto_quantize = False
    with qtbot.waitSignal(window.model_ready, timeout=WAIT):
        window.load_model(str(path))
    qtbot.waitUntil(lambda: window.pipeline.ready("dense"), timeout=WAIT)


def test_find_settings_shows_progress_with_a_time_estimate_and_cancel_changes_nothing(window, qtbot, tmp_path,
                                                                                        photos):  # noqa: F811
    open_onnx(qtbot, window, slow_cnn(tmp_path / "slow.onnx"))
    panel, bar = window.codebook, window.search_bar
    before, applied, quantized = panel.settings(), panel.applied, window.bench.quantized
    assert panel.find.isEnabled() and window.find_action.isEnabled()
    panel.search_folder.setText(str(photos))
    qtbot.mouseClick(panel.find, Qt.MouseButton.LeftButton)

    qtbot.waitUntil(lambda: bar.isVisible() and bar.progress.maximum() == 1000 and bar.progress.value() > 0,
                    timeout=WAIT)
    assert not panel.find.isEnabled() and not window.find_action.isEnabled()   # one search at a time
    assert window.find_settings(str(photos)) is None                            # and never replaced silently
    qtbot.waitUntil(lambda: "left" in bar.label.text(), timeout=WAIT)           # "… — about 20 s left"
    assert bar.label.text().startswith("Finding settings for slow")

    qtbot.mouseClick(bar.cancel, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "search" not in window.tasks, timeout=WAIT)
    assert "cancelled" in panel.search_result.text() and not bar.isVisible()
    assert panel.settings() == before and panel.applied == applied and window.bench.quantized is quantized is None
    assert not panel.save_found.isEnabled() and panel.find.isEnabled()


def test_a_completed_search_fills_the_codebook_panel_to_apply_and_save(window, qtbot, tmp_path,
                                                                       photos):  # noqa: F811
    model = small_cnn(tmp_path / "small.onnx")
    open_onnx(qtbot, window, model)
    panel = window.codebook
    panel.search_folder.setText(str(photos))
    with qtbot.waitSignal(window.settings_found, timeout=WAIT) as signal:
        qtbot.mouseClick(panel.find, Qt.MouseButton.LeftButton)
    found = signal.args[0]
    assert found.settings.quantized(window.bench.model.graph)
    # shown, not applied: the panel holds the settings found, Apply builds them
    assert panel.settings() == found.settings and panel.applied != found.settings
    assert panel.apply.text() == "Apply ●" and panel.save_found.isEnabled()
    text = panel.search_result.text()
    assert "Found" in text and "broken.jpg" in text and "compression" in text

    saved = window.save_found_settings(tmp_path / "found.json")
    report = json.loads(saved.read_text())
    assert report["config"] == found.settings.to_dict() and report["model"] == window.bench.model.name

    with qtbot.waitSignal(window.quantized_ready, timeout=WAIT,
                          check_params_cb=lambda q: q.settings == found.settings):
        qtbot.mouseClick(panel.apply, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "quantize" not in window.tasks, timeout=WAIT)
    assert panel.applied == found.settings and panel.apply.text() == "Apply"


def test_a_model_switch_stops_the_search_and_says_so(window, qtbot, tmp_path, photos):  # noqa: F811
    open_onnx(qtbot, window, slow_cnn(tmp_path / "slow.onnx"))
    window.find_settings(str(photos))
    qtbot.waitUntil(lambda: window.search_bar.progress.value() > 0, timeout=WAIT)
    open_onnx(qtbot, window, small_cnn(tmp_path / "small.onnx"))
    assert "search" not in window.tasks and not window.search_bar.isVisible()
    assert "stopped" in window.codebook.search_result.text() and window.found is None
