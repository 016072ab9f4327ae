"""Build the quantized models qcnn ships in assets/quantized/, so that the app's first start shows
the default model's quantized panel at once instead of after error correction (about half a minute
of CPU for ResNet-18 `fast`, minutes on a loaded machine).

Each file is exactly what the app's quantization cache would hold for that model and preset (same
settings, calibration, quantizer version; named by the cache key), so the workbench finds it when
the user's cache lacks it, and a file made by another quantizer version or for other settings is
never a match (tests/test_app_demo.py checks the shipped one is current).  Rerun after changing the
presets, the quantizer (QUANTIZER_VERSION) or the bundled calibration photos:

    .venv/bin/python scripts/build-shipped-models.py            # resnet18 fast
    .venv/bin/python scripts/build-shipped-models.py resnet18:fast resnet18:accurate
"""
import argparse
import sys
import time

from qcnn import workbench as wb
from qcnn.models import load_model
from qcnn.pq.modelfile import save_model
from qcnn.pq.presets import preset
from qcnn.threads import ensure_thread_limit

SHIPPED = ("resnet18:fast",)      # the app's default model and preset (app.window.DEFAULT_MODEL)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="*", default=list(SHIPPED), help="MODEL:PRESET (default: %(default)s)")
    args = p.parse_args()
    ensure_thread_limit()
    wb.SHIPPED.mkdir(parents=True, exist_ok=True)
    keep = set()
    for spec in args.models:
        name, _, preset_name = spec.partition(":")
        model = load_model(name)
        settings = preset(model.name, preset_name)
        bench = wb.Workbench(model)
        t0 = time.perf_counter()
        quantized = bench.quantize(settings, use_cache=False)     # made here, not copied from a cache
        path = wb.shipped_path(model, settings)
        size = save_model(path, model, quantized.graph, quantized.metadata)
        keep.add(path.name)
        print(f"{spec}: {path} ({size / 2**20:.2f} MiB, quantized in {time.perf_counter() - t0:.1f} s)")
    # The folder ships exactly what was built now: older builds are never a match again.
    for old in wb.SHIPPED.glob("*.qcnn"):
        if old.name not in keep:
            print(f"removing {old} (not built this time)")
            old.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
