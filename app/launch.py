"""Starting the app: command line options, and the screenshot mode (`--screenshot FILE`)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from PySide6.QtCore import QEventLoop, QTimer
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from qcnn import workbench as wb
from qcnn.workbench import QuantSettings

from .window import DEFAULT_MODEL, ICON, MainWindow


def wait_until(app: QApplication, condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
        time.sleep(0.005)
    return True


def take_screenshot(app: QApplication, window: MainWindow, image, path: str, timeout: float = 1800,
                    warm_up: int = 0, evaluate: str | None = None) -> bool:
    """Classify `image` with both engines, wait for both results, save the window to `path`.
    An evaluation of `evaluate` runs first, alone (so that it does not slow down the frames the
    latency plot shows), then `warm_up` frames of the bundled samples give the plot a history.  A
    picture that cannot be read ends the wait at once (the error shows in the saved window)."""
    if not wait_until(app, window.ready, timeout):
        print("qcnn-app: timed out waiting for the quantized model", file=sys.stderr)
    if evaluate:
        window.evaluate_folder(evaluate)
        wait_until(app, lambda: not window.busy(), timeout)
    done, failed = [], []
    window.frame_done.connect(lambda d, q: d is not None and q is not None and done.append(d.serial))
    window.pipeline.error.connect(lambda name, _message: failed.append(name))
    samples = wb.sample_images()
    pictures = [samples[i % len(samples)] for i in range(warm_up)] if samples else []
    for picture in pictures + ([image] if image is not None else []):
        before, errors = len(done), len(failed)
        window.open_image(picture)
        if not wait_until(app, lambda n=before, e=errors: (len(done) > n or len(failed) > e)
                          and not window.pipeline.busy, timeout):
            break
    window._flush_plots()
    for _ in range(5):
        app.processEvents()
    ok = window.grab().save(path)
    if not ok:
        print(f"qcnn-app: could not save {path}", file=sys.stderr)
    return ok and not failed and (image is None or len(done) > len(pictures))


def _setting_arg(text: str):
    """'8/16' -> PQSetting(8, 16); 'dense' -> False (the layer kind stays dense)."""
    from qcnn.pq.layer import PQSetting
    if text.strip().lower() in ("dense", "none", "off"):
        return False
    try:
        dsub, ksub = (int(v) for v in text.split("/"))
        return PQSetting(dsub, ksub)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected C_s'/K like 8/16, or 'dense': {exc}") from None


def evaluate_when_ready(window: MainWindow, folder: str) -> None:
    """Start the evaluation once the quantized engine is there (so both engines are scored)."""
    def start(_quantized):
        if window.quant_stage:               # the k-means stage: wait for the corrected model
            return
        window.quantized_ready.disconnect(start)
        window.evaluate_folder(folder)
    window.quantized_ready.connect(start)


def settings_from_args(args) -> QuantSettings | None:
    """Start-up settings from --conv/--fc/--error-correction; None: the model's default."""
    if args.conv is None and args.fc is None and args.error_correction is None:
        return None
    base = wb.DEFAULT_SETTINGS
    return base.replace(conv=base.conv if args.conv is None else args.conv or None,
                        fc=base.fc if args.fc is None else args.fc or None,
                        error_correction=base.error_correction if args.error_correction is None
                        else args.error_correction)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="qcnn-app", description="Compare a dense CNN with its product-quantized "
                                     "version (Quantized-CNN, Wu et al. CVPR 2016) on photos, videos and a webcam.")
    parser.add_argument("image", nargs="?", help="image to classify at start (default: the first bundled sample)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="efficientnet-lite0 (default) | resnet18 | resnet50 | alexnet | PATH.onnx | PATH.qcnn")
    parser.add_argument("--video", metavar="FILE", help="play and classify a video file at start")
    parser.add_argument("--screenshot", metavar="FILE",
                        help="classify the image with both engines, save a picture of the window to FILE and exit")
    parser.add_argument("--conv", metavar="C_s'/K", type=_setting_arg,
                        help="codebooks of the conv layers at start, e.g. 8/16, or 'dense'")
    parser.add_argument("--fc", metavar="C_s'/K", type=_setting_arg,
                        help="codebooks of the FC layers at start, e.g. 4/32, or 'dense'")
    parser.add_argument("--error-correction", action=argparse.BooleanOptionalAction, default=None,
                        help="error correction with the bundled calibration photos (default: on)")
    parser.add_argument("--kernel", choices=[k for k, *_ in wb.kernel_choices()],
                        help=f"quantized engine kernel (default {wb.default_kernel()})")
    parser.add_argument("--warm-up", type=int, default=0, metavar="N",
                        help="with --screenshot: classify N bundled samples first, for the latency plot")
    parser.add_argument("--evaluate", metavar="FOLDER",
                        help="once quantized, score both engines on FOLDER (images + labels.csv)")
    parser.add_argument("--eval-limit", type=int, default=0, metavar="N", help="with --evaluate: first N images")
    parser.add_argument("--size", help="window size WxH (default: 1480x940, or what fits the screen; "
                        "always 1480x940 with --screenshot)")
    args = parser.parse_args(argv)
    for what, path in (("image", args.image), ("video", args.video)):
        if path and not Path(path).is_file():
            parser.error(f"{what} {path}: no such file")
    if args.evaluate and not (Path(args.evaluate) / "labels.csv").is_file():
        parser.error(f"--evaluate {args.evaluate}: no labels.csv there (it needs file,class_index rows)")
    settings = settings_from_args(args)

    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setApplicationName("qcnn")
    app.setApplicationDisplayName("qcnn")
    app.setDesktopFileName("qcnn")
    if ICON.exists():
        app.setWindowIcon(QIcon(str(ICON)))
    qcnn_file = args.model.lower().endswith(".qcnn")
    window = MainWindow(DEFAULT_MODEL if qcnn_file else args.model, settings=settings, quantize=not qcnn_file,
                        kernel=args.kernel)
    if qcnn_file:
        window.open_model_file(args.model)
    if args.evaluate:
        window.codebook.eval_folder.setText(args.evaluate)
        window.codebook.eval_limit.setValue(args.eval_limit)
        if not args.screenshot:
            evaluate_when_ready(window, args.evaluate)
    if args.size or args.screenshot:         # a screenshot has the README's size, whatever the screen
        w, _, h = (args.size or "1480x940").partition("x")
        window.resize(int(w), int(h))
    window.show()
    image = args.image or (wb.sample_images()[0] if wb.sample_images() else None)

    if args.screenshot:
        try:
            ok = take_screenshot(app, window, image, args.screenshot, warm_up=args.warm_up, evaluate=args.evaluate)
        finally:
            window.close()
        return 0 if ok else 1

    if args.video:
        QTimer.singleShot(0, lambda: window.play_video(args.video))
    elif image is not None:
        QTimer.singleShot(0, lambda: window.open_image(image))
    return app.exec()

