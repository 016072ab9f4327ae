"""qcnn.peers: every peer is checked against our dense output before `bench --peers` times it."""
import importlib.util
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onnx_models import mini_alexnet, mini_mobilenet
from qcnn import bench, peers
from qcnn.models import load_model

FAMILIES = ("openvino", "MNN", "ncnn")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small CNN (ONNX-imported, ends in a softmax) and a few inputs."""
    model = load_model(mini_alexnet(tmp_path_factory.mktemp("peers") / "tiny.onnx"))
    rng = np.random.default_rng(0)
    return model, [rng.standard_normal((1, 32, 32, 3)).astype(np.float32) for _ in range(5)]


@pytest.fixture
def only_onnxruntime(monkeypatch):
    """As if none of the other peers were installed (keeps the test fast and the same everywhere)."""
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in FAMILIES or name == "_tools"
                        else find(name, *a))


def test_relative_difference():
    ref = np.array([[1.0, -4.0, 2.0]])
    assert peers.relative_difference(ref, ref) == 0
    assert peers.relative_difference(ref + [[0, 0, 0.4]], ref) == pytest.approx(0.1)
    assert peers.relative_difference(ref.ravel(), ref) == float("inf")           # another shape
    assert peers.relative_difference(ref * np.nan, ref) == float("inf")


def test_onnxruntime_agrees_and_a_wrong_peer_is_left_out(tiny, only_onnxruntime, monkeypatch):
    model, xs = tiny
    real = bench.onnxruntime_engines

    def with_bad_peers(graph, hw, calib):
        engines, skipped = real(graph, hw, calib, int8=False)    # (int8 of this tiny random net is far off)
        fp32 = engines["onnxruntime fp32"]
        # A 1% error is too much for an fp32 engine, fine for an int8 one; a 20% error is too much for both.
        engines["broken fp32"] = lambda x: fp32(x) * 1.01
        engines["roughly int8"] = lambda x: fp32(x) * 1.01
        engines["broken int8"] = lambda x: fp32(x) * 1.2
        return engines, skipped

    monkeypatch.setattr(bench, "onnxruntime_engines", with_bad_peers)
    found = peers.peer_engines(model.graph, (32, 32), xs)
    assert found.agreement["onnxruntime fp32"] < 1e-5
    assert set(found.engines) == {"onnxruntime fp32", "roughly int8"}
    assert "disagrees" in found.skipped["broken fp32"] and "disagrees" in found.skipped["broken int8"]
    assert found.skipped["openvino"].startswith("not installed") and "ncnn" in found.skipped
    # The engines timed are the checked ones, in our layout.
    np.testing.assert_allclose(found.engines["onnxruntime fp32"](xs[0]), model.graph.forward(xs[0]), atol=1e-5)


def test_check_agreement_names_the_difference(tiny):
    model, xs = tiny
    refs = [model.graph.forward(x) for x in xs[:2]]
    assert peers.check_agreement("ours fp32", model.graph.forward, xs[:2], refs) == 0
    with pytest.raises(ValueError, match="tolerance 0.001"):
        peers.check_agreement("shifted fp32", lambda x: model.graph.forward(x) + 0.01, xs[:2], refs)


def test_nchw_outputs_come_back_in_our_layout():
    y = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)        # NCHW
    np.testing.assert_array_equal(peers._nhwc(y, (1, 3, 4, 2)), y.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(peers._nhwc(y[0], (1, 3, 4, 2)), y.transpose(0, 2, 3, 1))   # batchless CHW
    assert peers._nhwc(np.zeros(10), (1, 10)).shape == (1, 10)


def test_summary_names_the_best_peer_and_both_ratios():
    means = {"dense": 60.0, "quantized": 12.0, "a fp32": 50.0, "a int8": 40.0, "b fp32": 55.0}
    best = peers.best(means)
    assert best["best_peer"] == "a int8" and best["quant_speedup_over_best_peer"] == pytest.approx(40 / 12)
    assert best["best_fp32_peer"] == "a fp32" and best["dense_time_over_best_fp32"] == pytest.approx(1.2)
    text = "\n".join(peers.summary(means, ["a int8"], "avx2", "avx512vnni"))
    assert "best peer: a int8" in text and "3.33x faster than it" in text and "5.00x faster than dense" in text
    assert "dense takes 1.20x its time" in text and "a int8 ignore the avx2 cap" in text
    assert peers.best({"dense": 1.0, "quantized": 1.0}) == {} and peers.summary({"dense": 1, "quantized": 1}) == []


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_installed_peer_agrees_with_the_dense_engine(family, tmp_path):
    """Where OpenVINO, MNN or ncnn (with pnnx) is installed, its conversion of our ONNX export
    agrees with us on a network with depthwise and pointwise layers."""
    if importlib.util.find_spec(family) is None or family == "ncnn" and importlib.util.find_spec("pnnx") is None:
        pytest.skip(f"{family} not installed (pip install 'qcnn[peers]')")
    model = load_model(mini_mobilenet(tmp_path / "mobile.onnx"))
    xs = [np.random.default_rng(i).standard_normal((1, 32, 32, 3)).astype(np.float32) for i in range(4)]
    found = peers.peer_engines(model.graph, (32, 32), xs)
    mine = [n for n in found.engines if n.lower().startswith(family.lower())]
    assert mine, found.skipped
    assert all(found.agreement[n] <= (peers.FP32_TOLERANCE if peers.is_fp32(n) else peers.LOSSY_TOLERANCE)
               for n in mine)


def _cpuid_faulting() -> bool:
    import platform
    if not (sys.platform.startswith("linux") and platform.machine() == "x86_64"):
        return False
    with open("/proc/cpuinfo") as f:
        return any(line.startswith("flags") and " cpuid_fault" in line for line in f)


needs_cpuid_faulting = pytest.mark.skipif(not _cpuid_faulting(), reason="needs Linux x86-64 with CPUID faulting "
                                          "(cpuid_fault in /proc/cpuinfo)")

CPUID_SCRIPT = r'''
import ctypes, sys, threading
from qcnn import kernels
from qcnn._kernels import ffi, lib

def bits():
    out = ffi.new("unsigned[4]")
    lib.qc_cpuid(7, 0, out)
    b7, c7 = out[1], out[2]
    lib.qc_cpuid(1, 0, out)
    return {"avx": out[2] >> 28 & 1, "avx2": b7 >> 5 & 1, "avx512f": b7 >> 16 & 1, "vnni": c7 >> 11 & 1}

print(bits())
print(kernels.cap_cpuid(sys.argv[1]))
print(bits())
seen = []
t = threading.Thread(target=lambda: seen.append(bits()))
t.start()
t.join()
print(seen[0], flush=True)
ctypes.string_at(0)          # a real crash still crashes, through the handler that was there before
'''


@needs_cpuid_faulting
@pytest.mark.parametrize("cap", ["avx2", "scalar"])
def test_the_cpuid_cap_hides_the_levels_above_it_and_leaves_real_crashes_alone(cap):
    import ast
    run = subprocess.run([sys.executable, "-X", "faulthandler", "-c", CPUID_SCRIPT, cap], capture_output=True,
                         text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    before, capped, after, thread = (ast.literal_eval(line) for line in run.stdout.splitlines()[:4])
    assert capped is True
    assert after["avx512f"] == after["vnni"] == 0
    assert after["avx2"] == (before["avx2"] if cap == "avx2" else 0)
    assert after["avx"] == (before["avx"] if cap == "avx2" else 0)
    assert thread == after                    # threads started later inherit the cap
    assert run.returncode == -signal.SIGSEGV and "Segmentation fault" in run.stderr


PEERS_SCRIPT = r'''
import importlib.util, json, sys
sys.path.insert(0, "tests")
import numpy as np
from onnx_models import mini_alexnet
from qcnn import kernels, peers
from qcnn.models import load_model
find = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name in ("openvino", "MNN", "ncnn", "_tools") else find(name, *a)
from pathlib import Path
model = load_model(mini_alexnet(Path(sys.argv[1])))
kernels.set_isa("avx2")
xs = [np.random.default_rng(i).standard_normal((1, 32, 32, 3)).astype(np.float32) for i in range(5)]
found = peers.peer_engines(model.graph, (32, 32), xs)
print(json.dumps([sorted(found.engines), found.uncapped]))
'''


@needs_cpuid_faulting
def test_peers_loaded_after_the_cap_run_the_capped_level(tmp_path):
    from qcnn import kernels
    if kernels.cpu_isa() in ("scalar", "avx2"):
        pytest.skip("the CPU has nothing above AVX2 to hide")
    run = subprocess.run([sys.executable, "-c", PEERS_SCRIPT, str(tmp_path / "tiny.onnx")], capture_output=True,
                         text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr[-2000:]
    engines, uncapped = json.loads(run.stdout.strip().splitlines()[-1])
    assert "onnxruntime fp32" in engines and uncapped == []
