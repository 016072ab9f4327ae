"""ONNX import: small zoo-like models built here, run by us and by onnxruntime on the same file."""
import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

from qcnn import layers as L
from qcnn.graph import Graph, Node
from qcnn.labels import imagenet_labels
from qcnn.models import load_model
from qcnn.models.onnx_export import graph_to_onnx
from qcnn.models.onnx_import import OnnxImportError, graph_from_onnx, load_onnx

from onnx_models import MODELS, Builder, mini_alexnet, mini_mobilenet, mini_resnet, mini_squeezenet, w

ATOL = 1e-4


def ort_run(model_or_path, x_nhwc):
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x_nhwc.transpose(0, 3, 1, 2)})[0]


def ours_nchw(model, x):
    y = model.graph(x)
    return y.transpose(0, 3, 1, 2) if y.ndim == 4 else y


@pytest.fixture(scope="module", params=sorted(MODELS))
def built(request, tmp_path_factory):
    path = MODELS[request.param](tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx")
    model = load_model(path)
    x = np.random.default_rng(2).standard_normal((2, model.input_size, model.input_size, 3)).astype(np.float32)
    return request.param, path, model, x


def test_matches_onnxruntime(built):
    _, path, model, x = built
    ref, ours = ort_run(path, x), ours_nchw(model, x)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < ATOL


def test_round_trip_through_export(built):
    _, path, model, x = built
    exported = graph_to_onnx(model.graph, (model.input_size, model.input_size))
    assert np.abs(ort_run(exported, x) - ort_run(path, x)).max() < ATOL


def test_folding(built):
    name, _, model, _ = built
    kinds = [type(n.layer) for n in model.graph]
    if name.endswith("resnet"):
        # BN on the input and after the conv read twice: per-channel affines (C), the second with its ReLU
        assert kinds.count(L.ChannelAffine) == 2 and L.Affine not in kinds
        assert [n.layer.activation for n in model.graph if isinstance(n.layer, L.ChannelAffine)] == [None, "relu"]
        assert kinds.count(L.Activation) == 2  # ReLUs after the two Adds
    else:
        assert L.Activation not in kinds       # every ReLU/ReLU6 follows a conv/FC with one reader
    if name.startswith("pad"):
        assert kinds.count(L.Pad) == 1      # only the pad with two readers survives
    if name == "matmul":
        assert kinds == [L.Flatten, L.Dense] and model.graph.nodes[1].layer.activation == "relu"


def test_import_of_exported_graph():
    """Our graph -> ONNX -> our graph: every exportable layer kind comes back and computes the same."""
    conv = L.Conv2D(w(3, 3, 3, 6), w(6, scale=0.1), (2, 2), "same", activation="relu6")
    dw = L.Conv2D(w(3, 3, 1, 6), None, pads=(1, 1, 1, 1), groups=6)
    graph = Graph([
        Node("conv", conv, ("input",)),
        Node("dw", dw, ("conv",)),
        Node("bn", L.Affine(w(6, scale=1), w(6, scale=0.1)), ("conv",)),   # conv has two readers: stays
        Node("sum", L.Add(), ("dw", "bn")),
        Node("clip", L.Clip(-1.0, 2.0), ("sum",)),
        Node("pad", L.Pad((1, 0, 0, 1), 0.25), ("clip",)),
        Node("lrn", L.LRN(3, 0.1, 0.75, 1.5), ("pad",)),
        Node("pool", L.Pool2D("max", (3, 3), (2, 2), ceil_mode=True), ("lrn",)),
        Node("avg", L.Pool2D("avg", (3, 3), (1, 1), (1, 1, 1, 1)), ("pool",)),
        Node("cat", L.Concat(), ("pool", "avg")),
        Node("gap", L.GlobalAvgPool(), ("cat",)),
        Node("flat", L.Flatten(), ("gap",)),
        Node("fc", L.Dense(w(12, 7), w(7, scale=0.1)), ("flat",)),
        Node("relu", L.Activation("relu"), ("fc",)),
        Node("prob", L.Softmax(), ("relu",)),
    ])
    back = graph_from_onnx(graph_to_onnx(graph, (15, 15)))
    fused = graph.fuse_activations()   # the importer folds fc+relu the same way
    assert [n.name for n in back] == [n.name for n in fused]
    # the importer runs a leftover per-channel affine as layers.ChannelAffine (one C pass)
    assert [type(n.layer) for n in back] == [L.ChannelAffine if type(n.layer) is L.Affine else type(n.layer)
                                              for n in fused]
    x = np.random.default_rng(4).standard_normal((2, 15, 15, 3)).astype(np.float32)
    assert np.abs(back(x) - graph(x)).max() < 1e-5


def test_model_metadata(tmp_path):
    path = mini_alexnet(tmp_path / "tiny-alexnet.onnx")
    model = load_onnx(path)
    assert model.name == "tiny-alexnet"
    assert model.identity == {"name": "tiny-alexnet", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert (model.preprocess.crop, model.preprocess.resize) == (32, 37)
    # LRN and no PyTorch producer: a Caffe-era model, BGR with the mean subtracted
    assert model.preprocess.channel_order == "BGR" and model.preprocess.mean == (103.939, 116.779, 123.68)
    assert "preprocessing caffe, guessed" in model.description
    chosen = load_onnx(path, preprocess="torchvision")
    assert chosen.preprocess.mean == (123.675, 116.28, 103.53) and chosen.preprocess.std == (58.395, 57.12, 57.375)
    assert "preprocessing torchvision, as chosen" in chosen.description
    assert model.labels == imagenet_labels() and model.outputs_probs
    assert [n.name for n in model.graph][:3] == ["Conv_3", "LRN_5", "MaxPool_6"]   # ONNX names survive
    small = load_onnx(mini_squeezenet(tmp_path / "sq.onnx"))
    assert small.labels == tuple(f"class {i}" for i in range(10))
    probs = small.predict(np.zeros((1, 32, 32, 3), np.float32))
    assert probs.shape == (1, 10) and abs(probs.sum() - 1) < 1e-5


def test_dynamic_input_size_defaults_to_224(tmp_path):
    b = Builder()
    path = b.save(tmp_path / "dyn.onnx", b.op("Flatten", [b.op("GlobalAveragePool", ["data"])]),
                  shape=("N", 3, "H", "W"))
    model = load_onnx(path)
    assert model.input_size == 224 and model.preprocess.resize == 256


def test_node_reading_one_tensor_twice(tmp_path):
    b = Builder()
    x = b.conv("data", 3, 4, 3)
    path = b.save(tmp_path / "twice.onnx", b.op("Flatten", [b.op("GlobalAveragePool", [b.op("Add", [x, x])])]))
    model = load_model(path)
    xs = np.random.default_rng(3).standard_normal((1, 32, 32, 3)).astype(np.float32)
    assert np.abs(ours_nchw(model, xs) - ort_run(path, xs)).max() < ATOL


# -- errors -----------------------------------------------------------------------------------------
def refused(path, *words):
    with pytest.raises(OnnxImportError) as info:
        load_model(path)
    message = str(info.value)
    assert message.startswith(f"{path.name}: ")
    for word in words:
        assert word in message, message
    return message


def test_unsupported_operator_names_node_and_op(tmp_path):
    b = Builder()
    x = b.conv("data", 3, 4, 3)
    b.nodes.append(helper.make_node("Resize", [x, "", b.init([1, 1, 2, 2])], ["up"], name="Resize_12"))
    msg = refused(b.save(tmp_path / "model.onnx", "up"), "Resize_12", "Resize")
    assert msg == "model.onnx: node 'Resize_12' (Resize) uses unsupported operator Resize"


@pytest.mark.parametrize("content", [b"", b"\xff" * 64 + bytes(range(256)), b"hello, this is not a model",
                                     b"\x0a\xff\xff\xff\xff\x0f"])
def test_garbage_files(tmp_path, content):
    path = tmp_path / "junk.onnx"
    path.write_bytes(content)
    refused(path)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.999])
def test_truncated_file(tmp_path, fraction):
    data = mini_resnet(tmp_path / "full.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[:int(len(data) * fraction)])
    refused(path)


def test_missing_file(tmp_path):
    refused(tmp_path / "nowhere.onnx", "cannot read")


def test_external_data_read(tmp_path):
    path = mini_resnet(tmp_path / "ext.onnx")
    x = np.random.default_rng(4).standard_normal((1, 32, 32, 3)).astype(np.float32)
    ref = ort_run(path, x)
    onnx.save(onnx.load(path), path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").stat().st_size > 1000
    assert np.abs(ours_nchw(load_model(path), x) - ref).max() < ATOL


def test_missing_initializer(tmp_path):
    path = mini_alexnet(tmp_path / "m.onnx")
    model = onnx.load(path)
    gone = model.graph.initializer[2].name
    del model.graph.initializer[2]
    path.write_bytes(model.SerializeToString())
    refused(path, gone, "no node, initializer or input provides")


def test_wrong_initializer_shapes(tmp_path):
    path = mini_alexnet(tmp_path / "m.onnx")
    model = onnx.load(path)
    first = model.graph.initializer[0]
    first.CopyFrom(numpy_helper.from_array(w(8, 5, 5, 5), first.name))   # wants 5 input channels, not 3
    path.write_bytes(model.SerializeToString())
    refused(path, "Conv_3", "does not fit 3 input channels")
    model.graph.initializer[0].dims[0] = 1000         # data no longer matches the dimensions
    path.write_bytes(model.SerializeToString())
    refused(path, "does not match its shape")


def test_absurd_input_dimensions(tmp_path):
    b = Builder()
    path = b.save(tmp_path / "huge.onnx", b.op("GlobalAveragePool", ["data"]), shape=(1, 3, 10 ** 6, 10 ** 6))
    refused(path, "absurd")


@pytest.mark.parametrize("attrs, words", [
    (dict(dilations=[2, 2]), "dilations"), (dict(strides=[0, 1]), "strides"), (dict(pads=[1, 1]), "pads")])
def test_bad_conv_attributes(tmp_path, attrs, words):
    b = Builder()
    refused(b.save(tmp_path / "c.onnx", b.conv("data", 3, 4, 3, **attrs)), words)


def test_reshape_into_the_batch_refused(tmp_path):
    b = Builder()
    x = b.op("Reshape", [b.conv("data", 3, 4, 3), b.init([4, -1], np.int64)])
    refused(b.save(tmp_path / "r.onnx", x), "Reshape_", "batch axis")


def test_cycle_refused(tmp_path):
    path = tmp_path / "cycle.onnx"
    nodes = [helper.make_node("Relu", ["b"], ["a"], name="r1"), helper.make_node("Relu", ["a"], ["b"], name="r2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)])
    path.write_bytes(helper.make_model(graph).SerializeToString())
    refused(path, "cycle")


def test_graph_from_onnx_errors_have_no_file_prefix():
    with pytest.raises(OnnxImportError, match="^not an ONNX model"):
        graph_from_onnx(b"\xff\xff")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_bytes_never_crash(tmp_path, data):
    """Random byte damage either still loads or gives OnnxImportError, nothing else."""
    raw = bytearray(_pristine(tmp_path))
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path / "damaged.onnx"
    path.write_bytes(bytes(raw))
    try:
        load_onnx(path)
    except OnnxImportError as exc:
        assert str(exc).startswith("damaged.onnx: ")


_PRISTINE = {}


def _pristine(tmp_path):
    if "raw" not in _PRISTINE:
        _PRISTINE["raw"] = mini_mobilenet(tmp_path / "pristine.onnx").read_bytes()
    return _PRISTINE["raw"]


# -- labels and preprocessing ------------------------------------------------------------------------
def _classifier(path, classes, producer="", graph_name="g", lrn=False):
    b = Builder()
    x = b.conv("data", 3, classes, 1)
    if lrn:
        x = b.op("LRN", [x], size=3)
    path = b.save(path, b.op("Flatten", [b.op("GlobalAveragePool", [x])]))
    model = onnx.load(path)
    model.producer_name, model.graph.name = producer, graph_name
    path.write_bytes(model.SerializeToString())
    return path


def test_labels_beside_the_model_or_chosen(tmp_path):
    path = _classifier(tmp_path / "flowers.onnx", 3)
    assert load_onnx(path).labels == ("class 0", "class 1", "class 2")
    (tmp_path / "labels.txt").write_text("daisy\n  rose \n\ntulip\n")
    model = load_onnx(path)
    assert model.labels == ("daisy", "rose", "tulip") and "labels: labels.txt beside the model" in model.description
    (tmp_path / "mine.txt").write_text("a\nb\nc\n")
    assert load_onnx(path, labels=tmp_path / "mine.txt").labels == ("a", "b", "c")
    (tmp_path / "short.txt").write_text("a\nb\n")
    with pytest.raises(OnnxImportError, match="'short.txt' has 2 names for 3 classes"):
        load_onnx(path, labels=tmp_path / "short.txt")
    (tmp_path / "labels.txt").write_text("just one\n")     # a wrong file beside it is an error, not ignored
    with pytest.raises(OnnxImportError, match="'labels.txt' has 1 names for 3 classes"):
        load_onnx(path)


def test_imagenet_labels_for_1000_classes(tmp_path):
    assert load_onnx(_classifier(tmp_path / "m.onnx", 1000)).labels == imagenet_labels()


@pytest.mark.parametrize("producer, graph_name, lrn, preset", [
    ("pytorch", "main_graph", False, "torchvision"), ("pytorch", "main_graph", True, "torchvision"),
    ("", "g", True, "caffe"), ("onnx-caffe2", "g", False, "caffe"), ("tf2onnx", "g", False, "tf"),
    ("tf2onnx", "efficientnet-lite4", False, "lite"), ("", "g", False, "torchvision")])
def test_preprocessing_guessed_and_said(tmp_path, producer, graph_name, lrn, preset):
    from qcnn.preprocess import preset as named
    model = load_onnx(_classifier(tmp_path / "m.onnx", 10, producer, graph_name, lrn))
    assert model.preprocess == named(preset, 32)
    assert f"preprocessing {preset}, guessed: " in model.description


def test_presets():
    from qcnn.preprocess import PRESETS, preset
    assert sorted(PRESETS) == ["caffe", "lite", "tf", "torchvision"]
    tv = preset("torchvision")
    assert (tv.resize, tv.crop, tv.channel_order) == (256, 224, "RGB")
    assert preset("caffe", 227).channel_order == "BGR" and preset("caffe", 227).resize == 259
    from PIL import Image
    img = Image.new("RGB", (300, 260), (255, 0, 0))
    assert np.allclose(preset("tf")(img)[0, 0, 0], [1, -1, -1])
    assert np.allclose(preset("lite")(img)[0, 0, 0], [1, -127 / 128, -127 / 128])
    assert np.allclose(preset("caffe")(img)[0, 0, 0], [-103.939, -116.779, 255 - 123.68])   # BGR order
    with pytest.raises(ValueError, match="unknown preprocessing"):
        preset("keras")


def test_cli_preprocess_option(tmp_path, capsys):
    from qcnn.cli import main
    from qcnn.paths import ASSETS
    path = _classifier(tmp_path / "m.onnx", 1000, "pytorch")
    image = str(next((ASSETS / "samples").glob("*.bmp")))
    assert main(["classify", image, "--model", str(path), "--preprocess", "caffe", "--top", "1"]) == 0
    assert "preprocessing caffe, as chosen" in capsys.readouterr().err
    assert main(["classify", image, "--model", str(path), "--top", "1"]) == 0
    assert "preprocessing torchvision, guessed: exported by PyTorch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["classify", image, "--model", str(path), "--preprocess", "bogus"])


def test_softmax_output_on_another_axis_is_taken_as_probabilities(tmp_path):
    b = Builder()
    x = b.op("Flatten", [b.op("GlobalAveragePool", [b.conv("data", 3, 10, 1)])])
    x = b.op("Unsqueeze", [x, b.init([2], np.int64)])                     # (N, 10, 1): softmax over axis 1
    path = b.save(tmp_path / "sm.onnx", b.op("Softmax", [x], axis=1))
    model = load_onnx(path)
    assert isinstance(model.graph[model.graph.output].layer, L.SoftmaxAxis) and model.outputs_probs
    xs = np.random.default_rng(5).standard_normal((1, 32, 32, 3)).astype(np.float32)
    probs = model.predict(xs)
    assert np.allclose(probs, ort_run(path, xs).reshape(1, -1), atol=1e-6) and abs(probs.sum() - 1) < 1e-5
