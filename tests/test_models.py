"""Built-in models: the restricted checkpoint reader, EfficientNet-Lite0 on real photos, AlexNet."""
import pickle
from pathlib import Path

import numpy as np
import pytest

from qcnn.imageio import load_image
from qcnn.models import load_model
from qcnn.models import efficientnet_lite as lite
from qcnn.models.torch_pickle import LEGACY_MAGIC, CheckpointError, load_legacy_state_dict

SAMPLES = Path(__file__).resolve().parent.parent / "assets" / "samples"


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet-lite0")


def legacy_header() -> bytes:
    return b"".join(pickle.dumps(v, protocol=2) for v in (LEGACY_MAGIC, 1001, {"little_endian": True}))


def test_checkpoint_reader_loads_the_packaged_weights():
    sd = load_legacy_state_dict(lite.weights_path().read_bytes())
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3) and sd["_fc.weight"].shape == (1000, 1280)
    assert sum(k.endswith("_depthwise_conv.weight") for k in sd) == 16
    assert all(np.isfinite(v).all() for v in sd.values() if v.dtype.kind == "f")


def test_checkpoint_reader_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    gadget = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    with pytest.raises(CheckpointError, match="refusing to load global os.system"):
        load_legacy_state_dict(legacy_header() + gadget)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refusing"):
        load_legacy_state_dict(pickle.dumps(LEGACY_MAGIC, 2) + b"cbuiltins\neval\n(S'1'\ntR.")


def test_checkpoint_reader_rejects_broken_files():
    data = lite.weights_path().read_bytes()
    with pytest.raises(CheckpointError, match="magic"):
        load_legacy_state_dict(pickle.dumps(12345, 2) + data[20:])
    for cut in (0, 10, 200, 5000, len(data) // 2, len(data) - 1):
        with pytest.raises(CheckpointError):
            load_legacy_state_dict(data[:cut])


def test_lite0_folds_bn_and_caches_by_sha256(tmp_path, monkeypatch):
    monkeypatch.setenv("QCNN_CACHE_DIR", str(tmp_path))
    first, digest = lite.folded_weights(lite.weights_path())
    cached = list(tmp_path.glob("efficientnet-lite0-*.npz"))
    assert len(cached) == 1 and digest[:16] in cached[0].name
    again, _ = lite.folded_weights(lite.weights_path())
    assert first.keys() == again.keys() and all(np.array_equal(first[k], again[k]) for k in first)
    cached[0].write_bytes(b"not a zip")            # a damaged cache is rebuilt, not trusted
    rebuilt, _ = lite.folded_weights(lite.weights_path())
    assert np.array_equal(rebuilt["fc.weight"], first["fc.weight"])
    assert first["stem.weight"].shape == (3, 3, 3, 32) and first["b0.dw.weight"].shape == (3, 3, 1, 32)


def test_lite0_architecture(lite0):
    g = lite0.graph
    assert sum(n.name.endswith(".dw") for n in g) == 16
    assert [n.name for n in g if n.name.endswith(".add")] == [
        "b2.add", "b4.add", "b6.add", "b7.add", "b9.add", "b10.add", "b12.add", "b13.add", "b14.add"]
    assert g["head"].layer.out_channels == 1280 and g["fc"].layer.out_channels == 1000
    assert 4.6e6 < g.num_params() < 4.7e6   # EfficientNet-Lite0 has 4.65 M parameters


@pytest.mark.parametrize("name,classes", [("coffee.jpg", {967}), ("cat.bmp", {281, 282, 283, 284, 285})])
def test_lite0_recognises_bundled_photos(lite0, name, classes):
    r = lite0.classify(load_image(SAMPLES / name), top=5)
    assert r.top[0].index in classes, r.top
    assert abs(r.probs.sum() - 1) < 1e-4 and r.latency_ms > 0
    assert [p.prob for p in r.top] == sorted((p.prob for p in r.top), reverse=True)


def test_lite0_preprocessing_matches_the_weights_pipeline(lite0):
    img = load_image(SAMPLES / "coffee.jpg")
    x = lite0.preprocess(img)
    assert x.shape == (1, 224, 224, 3) and x.dtype == np.float32
    crop = np.asarray(lite0.preprocess.crop_image(img), np.float32)
    np.testing.assert_allclose(x[0], (crop - 127) / 128, rtol=1e-6)
    assert min(img.size) != 256 and lite0.preprocess.crop_image(img).size == (224, 224)


def test_alexnet_is_the_caffe_architecture_and_says_speed_test_only():
    m = load_model("alexnet")
    assert m.speed_test_only and "speed test only (random weights)" in m.description
    conv = {n.name: n.layer for n in m.graph if n.layer.kind == "conv"}
    assert [conv[k].weight.shape for k in ("conv1", "conv2", "conv3", "conv4", "conv5")] == [
        (11, 11, 3, 96), (5, 5, 48, 256), (3, 3, 256, 384), (3, 3, 192, 384), (3, 3, 192, 256)]
    assert [conv[k].groups for k in ("conv1", "conv2", "conv3", "conv4", "conv5")] == [1, 2, 1, 2, 2]
    assert m.graph["fc6"].layer.weight.shape == (9216, 4096)
    x = np.random.default_rng(0).standard_normal((1, 227, 227, 3)).astype(np.float32)
    p = m.predict(x)
    assert p.shape == (1, 1000) and np.isfinite(p).all()
    np.testing.assert_array_equal(load_model("alexnet").graph["fc8"].layer.weight, m.graph["fc8"].layer.weight)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        load_model("vgg")
