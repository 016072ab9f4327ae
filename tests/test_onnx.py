"""ONNX import: small zoo-like models built here, run by us and by onnxruntime on the same file."""
import hashlib
import math

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

RNG = np.random.default_rng(0)
ATOL = 1e-4


def w(*shape, scale=None):
    """He-scaled random weights so activations stay O(1) through the little networks."""
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
    return (RNG.standard_normal(shape) * (scale or math.sqrt(2 / fan_in))).astype(np.float32)


class Builder:
    """Collects nodes and initializers; `conv`, `bn`, ... return the output tensor name."""

    def __init__(self, opset=13):
        self.opset, self.nodes, self.inits, self.n = opset, [], [], 0

    def init(self, value, dtype=np.float32):
        self.n += 1
        name = f"const{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type, inputs, n_out=1, **attrs):
        self.n += 1
        outs = [f"{op_type.lower()}{self.n}"] + [f"{op_type.lower()}{self.n}_{i}" for i in range(1, n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=f"{op_type}_{self.n}", **attrs))
        return outs[0]

    def conv(self, x, cin, cout, k, bias=True, group=1, **attrs):
        ins = [x, self.init(w(cout, cin // group, k, k))] + ([self.init(w(cout, scale=0.1))] if bias else [])
        return self.op("Conv", ins, kernel_shape=[k, k], group=group, **attrs)

    def bn(self, x, c):
        stats = [RNG.uniform(0.5, 1.5, c), RNG.normal(0, 0.1, c), RNG.normal(0, 0.1, c), RNG.uniform(0.5, 2, c)]
        return self.op("BatchNormalization", [x] + [self.init(s) for s in stats], epsilon=1e-3)

    def relu6(self, x):
        if self.opset < 11:
            return self.op("Clip", [x], min=0.0, max=6.0)
        return self.op("Clip", [x, self.init(0.0), self.init(6.0)])

    def gemm(self, x, cin, cout, **attrs):
        b = w(cout, cin) if attrs.get("transB") else w(cin, cout)
        return self.op("Gemm", [x, self.init(b), self.init(w(cout, scale=0.1))], **attrs)

    def save(self, path, out, shape=("N", 3, 32, 32)):
        graph = helper.make_graph(
            self.nodes, path.stem, [helper.make_tensor_value_info("data", TensorProto.FLOAT, list(shape))],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 7   # onnxruntime accepts it for every opset used here
        onnx.save(model, path)
        return path


# -- the little models ------------------------------------------------------------------------------
def mini_alexnet(path, opset=13):
    b = Builder(opset)
    x = b.op("Relu", [b.conv("data", 3, 8, 5, strides=[2, 2], pads=[2, 2, 2, 2])])
    x = b.op("LRN", [x], size=5, alpha=0.1, beta=0.75, bias=2.0)
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)           # 16 -> 8
    x = b.op("Relu", [b.conv(x, 8, 16, 3, group=2, pads=[1, 1, 1, 1])])
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)           # 8 -> 4
    x = b.op("Flatten", [x])
    x = b.op("Dropout", [b.op("Relu", [b.gemm(x, 256, 32, transB=1)])])
    x = b.op("Softmax", [b.gemm(x, 32, 1000, alpha=0.5, beta=2.0)])
    return b.save(path, x)


def mini_resnet(path, opset=13, shuffle=False):
    b = Builder(opset)
    x = b.bn("data", 3)                                                   # BN on the input: stays Affine
    x = b.op("Relu", [b.bn(b.conv(x, 3, 8, 3, bias=False, strides=[2, 2], pads=[1] * 4), 8)])
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)          # 16 -> 8
    a = b.conv(x, 8, 8, 3, bias=False, pads=[1] * 4)                        # read twice: its BN stays
    y = b.op("Relu", [b.bn(a, 8)])
    y = b.bn(b.conv(y, 8, 8, 3, bias=False, pads=[1] * 4), 8)
    x = b.op("Relu", [b.op("Add", [b.op("Add", [y, x]), a])])
    y = b.op("Relu", [b.bn(b.conv(x, 8, 16, 3, bias=False, strides=[2, 2], pads=[1] * 4), 16)])
    y = b.bn(b.conv(y, 16, 16, 3, bias=False, pads=[1] * 4), 16)
    s = b.bn(b.conv(x, 8, 16, 1, bias=False, strides=[2, 2]), 16)
    x = b.op("Relu", [b.op("Sum", [y, s])])          # Caffe2-converted zoo models add with Sum
    x = b.op("GlobalAveragePool", [x])
    shape = b.op("Constant", [], value=numpy_helper.from_array(np.array([0, -1], np.int64)))
    x = b.gemm(b.op("Reshape", [x, shape]), 16, 10, transB=1)
    if shuffle:   # out-of-order nodes are legal input: the importer sorts them
        order = np.random.default_rng(1).permutation(len(b.nodes))
        b.nodes = [b.nodes[i] for i in order]
    return b.save(path, x)


def mini_mobilenet(path, opset=13):
    b = Builder(opset)
    x = b.relu6(b.bn(b.conv("data", 3, 8, 3, bias=False, strides=[2, 2], auto_pad="SAME_UPPER"), 8))  # 33 -> 17
    x = b.relu6(b.bn(b.conv(x, 8, 8, 3, bias=False, group=8, pads=[1] * 4), 8))
    x = b.relu6(b.bn(b.conv(x, 8, 16, 1, bias=False), 16))
    x = b.relu6(b.conv(x, 16, 16, 5, group=16, strides=[2, 2], auto_pad="SAME_LOWER"))  # 17 -> 9
    x = b.bn(b.conv(x, 16, 24, 1, bias=False), 24)
    x = b.op("Clip", [x], min=-1.0, max=1.0) if opset < 11 else b.op("Clip", [x, b.init(-1.0), b.init(1.0)])
    x = b.op("AveragePool", [x], kernel_shape=[3, 3], auto_pad="SAME_UPPER")
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    return b.save(path, b.op("Softmax", [b.gemm(x, 24, 10)]), shape=("N", 3, 33, 33))


def mini_squeezenet(path, opset=13):
    b = Builder(opset)
    x = b.op("Relu", [b.conv("data", 3, 16, 3, strides=[2, 2])])                          # 32 -> 15
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)            # 15 -> 7
    s = b.op("Relu", [b.conv(x, 16, 4, 1)])
    x = b.op("Concat", [b.op("Relu", [b.conv(s, 4, 8, 1)]), b.op("Relu", [b.conv(s, 4, 8, 3, pads=[1] * 4)])],
             axis=1)
    x = b.op("Relu", [b.conv(x, 16, 10, 1)])
    return b.save(path, b.op("Softmax", [b.op("GlobalAveragePool", [x])], axis=1))       # (N, 10, 1, 1)


def pad_model(path, opset=13):
    b = Builder(opset)

    def pad(x, pads, value=0.0):
        if opset < 11:
            return b.op("Pad", [x], pads=pads, value=value)
        return b.op("Pad", [x, b.init(pads, np.int64), b.init(value)])

    x = b.conv(pad("data", [0, 0, 1, 2, 0, 0, 2, 1]), 3, 6, 3)                # folds into the conv
    x = b.op("AveragePool", [pad(x, [0, 0, 1, 1, 0, 0, 1, 1])], kernel_shape=[3, 3], strides=[2, 2])  # folds
    p = pad(x, [0, 0, 1, 0, 0, 0, 1, 2], 0.5)                                 # read twice: stays a Pad
    x = b.op("Add", [b.conv(p, 6, 6, 3), b.op("MaxPool", [p], kernel_shape=[3, 3])])
    return b.save(path, b.op("Flatten", [b.op("GlobalAveragePool", [x])]))


def matmul_model(path, opset=13):
    b = Builder(opset)
    x = b.op("MatMul", [b.op("Flatten", ["data"]), b.init(w(192, 10))])
    x = b.op("Relu", [b.op("Add", [x, b.init(w(10, scale=0.1))])])
    return b.save(path, b.op("Identity", [b.op("Dropout", [x])]), shape=("N", 3, 8, 8))


MODELS = {"alexnet": mini_alexnet, "resnet": mini_resnet, "mobilenet": mini_mobilenet,
          "mobilenet_opset9": lambda p: mini_mobilenet(p, 9), "squeezenet": mini_squeezenet,
          "pad": pad_model, "pad_opset9": lambda p: pad_model(p, 9), "matmul": matmul_model,
          "shuffled_resnet": lambda p: mini_resnet(p, shuffle=True)}


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
        assert kinds.count(L.Affine) == 2      # BN on the input and after the conv read twice
        assert kinds.count(L.Activation) == 3  # ReLUs after that BN and after the two Adds
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
    assert [type(n.layer) for n in back] == [type(n.layer) for n in fused]
    x = np.random.default_rng(4).standard_normal((2, 15, 15, 3)).astype(np.float32)
    assert np.abs(back(x) - graph(x)).max() < 1e-5


def test_model_metadata(tmp_path):
    path = mini_alexnet(tmp_path / "tiny-alexnet.onnx")
    model = load_onnx(path)
    assert model.name == "tiny-alexnet"
    assert model.identity == {"name": "tiny-alexnet", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert (model.preprocess.crop, model.preprocess.resize) == (32, 37)
    assert model.preprocess.mean == (123.675, 116.28, 103.53) and model.preprocess.std == (58.395, 57.12, 57.375)
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
    assert msg == "model.onnx: node 'Resize_12' uses unsupported operator Resize"


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


def test_external_data_refused(tmp_path):
    b = Builder()
    path = b.save(tmp_path / "ext.onnx", b.conv("data", 3, 4, 3))
    model = onnx.load(path)
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=0)
    assert (tmp_path / "weights.bin").exists()   # even when the data file is there, it is not read
    refused(path, "external data", "weights.bin")


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


def test_reshape_other_than_flatten_refused(tmp_path):
    b = Builder()
    x = b.op("Reshape", [b.conv("data", 3, 4, 3), b.init([1, 4, 30, 30], np.int64)])
    refused(b.save(tmp_path / "r.onnx", x), "Reshape_", "only flattening")


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
