"""Built-in ResNet-18/50 from the kill-the-bits compressed files: agreement with an independent
reference, refusal of tampered files, the architecture, real photos."""
import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from legacy_torch import legacy_bytes
from qcnn.imageio import load_image
from qcnn.models import BUILTIN, load_model
from qcnn.models import resnet as R
from qcnn.models.torch_pickle import CheckpointError, load_legacy_state_dict
from qcnn.workbench import BUILTIN_MODELS

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "assets" / "samples"


@pytest.fixture(scope="module")
def resnet18():
    return load_model("resnet18")


def raw_state(name):
    path = R.weights_path(name)
    return load_legacy_state_dict(path.read_bytes(), str(path))


# -- an independent reference: the authors' decoding and torchvision's graph, in ONNX ----------------
def authors_decoding(layer: dict, c_out: int, k: int, is_conv: bool) -> np.ndarray:
    """weight_from_centroids of the kill-the-bits paper code, written from its description: codes
    give rows of the (n_vectors, block) matrix; transposed, cut into n_blocks column chunks of
    C_out, stacked as rows into the (C_in*k*k, C_out) unrolled matrix; transposed back."""
    m = layer["centroids"].astype(np.float32)[layer["assignments"].astype(np.int64)].T
    unrolled = np.concatenate(np.split(m, layer["n_blocks"], axis=1), axis=0)
    return unrolled.T.reshape(c_out, -1, k, k) if is_conv else unrolled.T


def reference_onnx(sd: dict, bottleneck: bool, depths) -> onnx.ModelProto:
    """torchvision's ResNet with unfolded BatchNormalization nodes, NCHW, from the file's tensors."""
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def conv_bn(x, conv_key, weight, bn_key, stride, relu):
        k = weight.shape[-1]
        w = const(f"{conv_key}.w", weight)
        nodes.append(helper.make_node("Conv", [x, w], [f"{conv_key}.y"], strides=[stride] * 2, pads=[k // 2] * 4))
        c = weight.shape[0]
        bn = [const(f"{bn_key}.{p}", v) for p, v in (("g", sd[bn_key]["weight"]), ("b", sd[bn_key]["bias"]),
                                                      ("m", np.zeros(c)), ("v", np.ones(c)))]
        nodes.append(helper.make_node("BatchNormalization", [f"{conv_key}.y", *bn], [f"{bn_key}.y"], epsilon=1e-5))
        if not relu:
            return f"{bn_key}.y"
        nodes.append(helper.make_node("Relu", [f"{bn_key}.y"], [f"{bn_key}.r"]))
        return f"{bn_key}.r"

    def compressed(key, c_out, k):
        return authors_decoding(sd[key], c_out, k, True)

    x = conv_bn("input", "conv1", sd["conv1"]["weight"].astype(np.float32), "bn1", 2, True)
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    x = "pool"
    for stage, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths), 1):
        for i in range(depth):
            p, stride = f"layer{stage}.{i}", 2 if stage > 1 and i == 0 else 1
            if bottleneck:
                y = conv_bn(x, f"{p}.conv1", compressed(f"{p}.conv1", planes, 1), f"{p}.bn1", 1, True)
                y = conv_bn(y, f"{p}.conv2", compressed(f"{p}.conv2", planes, 3), f"{p}.bn2", stride, True)
                y = conv_bn(y, f"{p}.conv3", compressed(f"{p}.conv3", planes * 4, 1), f"{p}.bn3", 1, False)
            else:
                y = conv_bn(x, f"{p}.conv1", compressed(f"{p}.conv1", planes, 3), f"{p}.bn1", stride, True)
                y = conv_bn(y, f"{p}.conv2", compressed(f"{p}.conv2", planes, 3), f"{p}.bn2", 1, False)
            if f"{p}.downsample.0" in sd:
                out = planes * (4 if bottleneck else 1)
                x = conv_bn(x, f"{p}.downsample.0", compressed(f"{p}.downsample.0", out, 1),
                            f"{p}.downsample.1", stride, False)
            nodes.append(helper.make_node("Add", [y, x], [f"{p}.sum"]))
            nodes.append(helper.make_node("Relu", [f"{p}.sum"], [f"{p}.out"]))
            x = f"{p}.out"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    fc = authors_decoding(sd["fc"], 1000, 1, False)
    nodes.append(helper.make_node("Gemm", ["flat", const("fc.w", fc), const("fc.b", sd["fc_bias"]["bias"])],
                                  ["logits"], transB=1))
    graph = helper.make_graph(nodes, "reference", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                   ["N", 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_logits_agree_with_an_independent_onnx_reference(name):
    arch = R.ARCHS[name]
    proto = reference_onnx(raw_state(name), arch.bottleneck, arch.blocks)
    onnx.checker.check_model(proto)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL   # BN stays a BN node
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    model = load_model(name)
    photos = [model.preprocess(load_image(SAMPLES / f)) for f in ("coffee.jpg", "cat.bmp", "rocket.jpg")]
    noise = np.random.default_rng(5).standard_normal((2, 224, 224, 3)).astype(np.float32)
    worst = 0.0
    for x in [np.concatenate(photos), noise]:
        ref = sess.run(None, {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]
        ours = model.graph(x)
        assert (ours.argmax(1) == ref.argmax(1)).all()
        worst = max(worst, float(np.abs(ours - ref).max()))
    print(f"{name}: max |logit difference| {worst:.2e}")
    assert worst < 1e-3, worst     # measured 1.4e-5 for both


def test_decoding_layout_is_the_authors():
    """Codes run block-major (code b * C_out + o is block b of output o) and blocks run along the
    input channels: checked on the file against the authors' formula and on a hand-made layer."""
    sd = raw_state("resnet50")
    for key, (c_out, c_in, k) in R.compressed_layers(R.ARCHS["resnet50"]).items():
        ours = R.decode_layer(sd[key], key, c_out, c_in, k, key != "fc")
        np.testing.assert_array_equal(ours, authors_decoding(sd[key], c_out, k, key != "fc"))
    layer = {"centroids": np.array([[1, 2], [3, 4], [5, 6]], np.float16),
             "assignments": np.array([0, 1, 2, 2, 1, 0], np.uint8), "n_blocks": 2, "k": 1, "is_conv": False}
    w = R.decode_layer(layer, "toy", 3, 4, 1, is_conv=False)      # 3 outputs, 2 blocks of 2 inputs
    np.testing.assert_array_equal(w, [[1, 2, 5, 6], [3, 4, 3, 4], [5, 6, 1, 2]])


# -- tampered files ---------------------------------------------------------------------------------
def tampered(tmp_path, edit) -> Path:
    sd = raw_state("resnet18")
    edit(sd)
    path = tmp_path / "resnet18_small_blocks.pth"
    path.write_bytes(legacy_bytes(sd))
    return path


def refused(path: Path, cache: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        R.resnet("resnet18", path)
    assert info.value.path == str(path) and str(info.value).startswith(f"{path}: ")
    assert not list(cache.glob("*.npz"))                     # nothing cached from a bad file
    return info.value.reason


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QCNN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_untouched_copy_through_the_writer_loads(tmp_path, cache):
    model = R.resnet("resnet18", tampered(tmp_path, lambda sd: None))
    np.testing.assert_array_equal(model.graph["fc"].layer.weight, load_model("resnet18").graph["fc"].layer.weight)


def test_non_tensor_global_is_refused(tmp_path, cache):
    data = R.weights_path("resnet18").read_bytes()
    path = tmp_path / "evil.pth"
    path.write_bytes(data.replace(b"ctorch._utils\n_rebuild_parameter\n", b"cbuiltins\nexec\n"))
    assert refused(path, cache) == "refusing to load global builtins.exec"


def _set(sd, layer, key, value):
    sd[layer][key] = value


@pytest.mark.parametrize("edit,expect", [
    (lambda sd: _set(sd, "layer2.0.conv1", "assignments", sd["layer2.0.conv1"]["assignments"][:-64]),
     "layer2.0.conv1: 8128 assignments, expected 64 blocks x 128 output channels"),
    (lambda sd: _set(sd, "layer1.0.conv2", "centroids", sd["layer1.0.conv2"]["centroids"][:, :8]),
     "layer1.0.conv2: 64 blocks of 8 do not make 64 input channels x 3x3 of the architecture"),
    (lambda sd: _set(sd, "conv1", "weight", sd["conv1"]["weight"][..., :6]),
     "conv1: 'weight' has shape (64, 3, 7, 6), expected (64, 3, 7, 7)"),
    (lambda sd: _set(sd, "layer3.1.bn2", "bias", sd["layer3.1.bn2"]["bias"][:255]),
     "layer3.1.bn2: 'bias' has shape (255,), expected (256,)"),
    (lambda sd: _set(sd, "layer4.0.downsample.0", "k", 3),
     "layer4.0.downsample.0: stored kernel size/kind (3, is_conv=True) differ from the architecture's (1, is_conv=True)"),
    (lambda sd: sd.pop("layer4.1.conv2"), "not a compressed resnet18: missing layer4.1.conv2"),
    (lambda sd: _set(sd, "layer1.0.conv1", "assignments", sd["layer1.0.conv1"]["assignments"].astype(np.float32)),
     "layer1.0.conv1: 'assignments' is not a tensor of the expected type"),
], ids=["assignments", "block size", "conv1 weight", "bn", "kernel size", "missing layer", "float codes"])
def test_wrong_shapes_are_refused(tmp_path, cache, edit, expect):
    assert refused(tampered(tmp_path, edit), cache) == expect


def test_out_of_range_assignment_is_refused(tmp_path, cache):
    def edit(sd):
        sd["fc"]["assignments"][12345] = 2048                # 2048 centroids: codes 0..2047
    assert refused(tampered(tmp_path, edit), cache) == "fc: assignment 2048 out of range for 2048 centroids"

    def negative(sd):
        sd["layer3.0.downsample.0"]["assignments"] = sd["layer3.0.downsample.0"]["assignments"].astype(np.int16)
        sd["layer3.0.downsample.0"]["assignments"][7] = -1
    assert refused(tampered(tmp_path, negative), cache) == \
        "layer3.0.downsample.0: assignment -1 out of range for 256 centroids"

    def fewer_centroids(sd):                                  # uint8 codes 0..255 against 200 centroids
        sd["layer1.1.conv1"]["centroids"] = sd["layer1.1.conv1"]["centroids"][:200]
    assert refused(tampered(tmp_path, fewer_centroids), cache) == \
        "layer1.1.conv1: assignment 255 out of range for 200 centroids"


def test_non_finite_weights_are_refused(tmp_path, cache):
    def edit(sd):
        sd["layer2.1.bn1"]["weight"][3] = np.inf
    assert refused(tampered(tmp_path, edit), cache) == "layer2.1.bn1: 'weight' holds non-finite values"


def test_missing_or_odd_weight_file(tmp_path, cache):
    with pytest.raises(CheckpointError, match="file not found"):
        R.resnet("resnet18", tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="not a regular file"):
        R.resnet("resnet18", tmp_path)


# -- the models -------------------------------------------------------------------------------------
def test_shipped_files_are_the_authors_with_attribution():
    readme = (R.WEIGHTS_DIR / "README.md").read_text(encoding="utf-8")
    for arch in R.ARCHS.values():
        path = R.WEIGHTS_DIR / arch.file
        assert hashlib.sha256(path.read_bytes()).hexdigest() in readme
    assert "Stock" in readme and "What we changed" in readme
    assert "Attribution-NonCommercial 4.0 International" in (R.WEIGHTS_DIR / "LICENSE").read_text(encoding="utf-8")


@pytest.mark.parametrize("name,convs,params", [("resnet18", 20, 11_689_512), ("resnet50", 53, 25_557_032)])
def test_architecture_is_torchvisions(name, convs, params):
    g = load_model(name).graph
    assert sum(n.layer.kind == "conv" for n in g) == convs
    bn_channels = sum(n.layer.out_channels for n in g if n.layer.kind == "conv")
    assert g.num_params() == params - bn_channels      # torchvision's count; BN scale and shift fold to one bias
    assert g["conv1"].layer.weight.shape == (7, 7, 3, 64) and g["conv1"].layer.stride == (2, 2)
    assert g["fc"].layer.weight.shape == ((512 if name == "resnet18" else 2048), 1000)
    strided = [n.name for n in g if n.layer.kind == "conv" and n.layer.stride == (2, 2)]
    block = "conv1" if name == "resnet18" else "conv2"      # torchvision v1.5: the 3x3 strides
    assert strided == ["conv1"] + [f"layer{s}.0.{c}" for s in (2, 3, 4) for c in (block, "downsample")]


def test_registered_for_the_cli_and_the_app(resnet18):
    assert {"resnet18", "resnet50"} <= set(BUILTIN) and {"resnet18", "resnet50"} <= set(BUILTIN_MODELS)
    assert resnet18.identity == {"name": "resnet18", "sha256": hashlib.sha256(
        R.weights_path("resnet18").read_bytes()).hexdigest()}
    assert not resnet18.speed_test_only and "ResNet-18" in resnet18.description


def test_torchvision_preprocessing(resnet18):
    img = load_image(SAMPLES / "coffee.jpg")
    x = resnet18.preprocess(img)
    assert x.shape == (1, 224, 224, 3)
    crop = np.asarray(resnet18.preprocess.crop_image(img), np.float32) / 255
    np.testing.assert_allclose(x[0], (crop - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225], rtol=1e-5, atol=1e-5)
    assert resnet18.preprocess.resize == 256 and resnet18.preprocess.resample == "bilinear"


@pytest.mark.parametrize("photo,classes", [("coffee.jpg", {967}), ("cat.bmp", {281, 282, 283, 284, 285})])
def test_recognises_bundled_photos(resnet18, photo, classes):
    r = resnet18.classify(load_image(SAMPLES / photo), top=5)
    assert r.top[0].index in classes, r.top


def test_the_authors_own_compressed_layers_run_as_lookups():
    """Their 1x1 layers as PQ layers (their codebook replicated per subspace, their codes) give the
    dense network's logits: run by the C lookup kernels with float tables."""
    from qcnn.pq.engine import with_kernel
    from qcnn.pq.layer import PQLayer
    model, graph = R.authors_pq_model("resnet50")
    pq = {n.name: n.layer for n in graph if isinstance(n.layer, PQLayer)}
    assert len(pq) == 36 and not any(n.layer.kind == "conv" and n.layer.kernel == (1, 1) for n in graph)
    layer = pq["layer3.2.conv1"]                   # 1024 -> 256, blocks of 8: M = 128, K = 256
    assert layer.codebooks.shape == (1, 128, 256, 8) and (layer.codebooks == layer.codebooks[:, :1]).all()
    assert pq["layer1.0.conv1"].ksub == 64 and pq["layer2.0.downsample"].stride == (2, 2)
    x = np.concatenate([model.preprocess(load_image(SAMPLES / f)) for f in ("coffee.jpg", "cat.bmp")])
    dense = model.graph(x)
    lookups = with_kernel(graph, "exact", (224, 224))
    assert all(n.layer.impl == "exact" for n in lookups if isinstance(n.layer, PQLayer))
    assert np.abs(lookups(x) - dense).max() < 1e-4       # measured 5e-6
