"""Our engine against onnxruntime on the same weights: whole built-in models and one-layer odd cases.

The graphs are exported with graph_to_onnx (NCHW) and run by onnxruntime's CPU provider; our side
runs NHWC, so inputs go in transposed.
"""
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from qcnn import layers as L
from qcnn.graph import Graph, Node
from qcnn.models import load_model
from qcnn.models.onnx_export import graph_to_onnx
from qcnn.models.onnx_import import graph_from_onnx


def ort_session(graph, hw, channels=None):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # no fused rewrites
    opts.intra_op_num_threads = 1
    proto = graph_to_onnx(graph, hw, channels=channels)
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def ort_run(sess, x_nhwc):
    y = sess.run(None, {"input": np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))})[0]
    return y.transpose(0, 2, 3, 1) if y.ndim == 4 else y


def synthetic_photo(size=(320, 240)):
    """A deterministic colourful image: gradients plus a disc, so every channel varies."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    disc = ((xx - w * 0.6) ** 2 + (yy - h * 0.4) ** 2 < (h * 0.25) ** 2) * 90
    rgb = np.stack([xx * 255 / w, yy * 255 / h, 128 + disc + 0 * xx], axis=-1)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def model_inputs(model):
    size = model.input_size
    rng = np.random.default_rng(1234)
    noise = rng.standard_normal((2, size, size, 3)).astype(np.float32)
    return [noise, model.preprocess(synthetic_photo())]


# -- whole networks ---------------------------------------------------------------------------------
def test_efficientnet_lite0_matches_onnxruntime():
    model = load_model("efficientnet-lite0")
    sess = ort_session(model.graph, (224, 224))
    worst = 0.0
    for x in model_inputs(model):
        ref, ours = ort_run(sess, x), model.graph(x)
        assert ours.shape == ref.shape == (x.shape[0], 1000)
        worst = max(worst, float(np.abs(ours - ref).max()))
        assert (ours.argmax(1) == ref.argmax(1)).all()
    assert worst < 1e-3, worst


def test_alexnet_matches_onnxruntime():
    """Random-weight AlexNet logits reach the tens, so the bound is relative: 1e-4 of max |logit|."""
    model = load_model("alexnet")
    sess = ort_session(model.graph, (227, 227))
    for x in model_inputs(model):
        ref, ours = ort_run(sess, x), model.graph(x)
        assert ours.shape == ref.shape == (x.shape[0], 1000)
        err, scale = float(np.abs(ours - ref).max()), float(np.abs(ref).max())
        assert err <= 1e-4 * scale, (err, scale)


def test_efficientnet_lite0_survives_export_and_import():
    """graph_to_onnx then graph_from_onnx gives back the same layers, names and outputs."""
    model = load_model("efficientnet-lite0")
    back = graph_from_onnx(graph_to_onnx(model.graph, (224, 224)))
    assert [n.name for n in back] == [n.name for n in model.graph]
    assert [n.layer.describe() for n in back] == [n.layer.describe() for n in model.graph]
    x = model_inputs(model)[1]
    assert np.abs(back(x) - model.graph(x)).max() < 1e-4


# -- one layer at a time ----------------------------------------------------------------------------
RNG = np.random.default_rng(7)


def conv(kh, kw, cin, cout, groups=1, **kw_):
    weight = RNG.standard_normal((kh, kw, cin // groups, cout)).astype(np.float32) / np.sqrt(kh * kw * cin / groups)
    return L.Conv2D(weight, RNG.standard_normal(cout).astype(np.float32), groups=groups, **kw_)


CASES = {
    # name: (layer, input H, W, C)
    "conv_groups": (conv(3, 3, 12, 6, groups=3, pads=(1, 1, 1, 1)), 9, 9, 12),
    "conv_groups_relu6": (conv(3, 3, 8, 8, groups=2, activation="relu6"), 8, 8, 8),
    "same_s2_odd": (conv(3, 3, 4, 5, stride=(2, 2), pads="same"), 15, 15, 4),
    "same_s2_even": (conv(3, 3, 4, 5, stride=(2, 2), pads="same"), 16, 16, 4),
    "same_s2_even_kernel_odd_size": (conv(4, 4, 3, 5, stride=(2, 2), pads="same"), 13, 11, 3),
    "same_s2_even_kernel_even_size": (conv(4, 4, 3, 5, stride=(2, 2), pads="same"), 12, 14, 3),
    "asymmetric_pads": (conv(3, 3, 3, 4, pads=(0, 2, 1, 3), activation="relu"), 10, 9, 3),
    "asymmetric_pads_stride": (conv(3, 5, 3, 4, stride=(2, 3), pads=(2, 0, 0, 1)), 11, 13, 3),
    "depthwise_5x5_s2_same_odd": (conv(5, 5, 8, 8, groups=8, stride=(2, 2), pads="same"), 17, 17, 8),
    "depthwise_5x5_s2_same_even": (conv(5, 5, 8, 8, groups=8, stride=(2, 2), pads="same"), 16, 16, 8),
    "depthwise_multiplier_2": (conv(3, 3, 4, 8, groups=4, pads=(1, 1, 1, 1)), 7, 7, 4),
    "conv_1x1_s2": (conv(1, 1, 6, 5, stride=(2, 2)), 15, 15, 6),
    "conv_1x1_s2_groups": (conv(1, 1, 6, 4, groups=2, stride=(2, 2)), 14, 15, 6),
    "maxpool_ceil": (L.Pool2D("max", (3, 3), (2, 2), ceil_mode=True), 14, 15, 3),
    "maxpool_ceil_drops_window": (L.Pool2D("max", (2, 2), (2, 2), (1, 1, 1, 1), ceil_mode=True), 5, 6, 3),
    "maxpool_same": (L.Pool2D("max", (3, 3), (2, 2), "same"), 15, 16, 3),
    "avgpool_exclude_pad": (L.Pool2D("avg", (3, 3), (2, 2), (1, 1, 1, 1), count_include_pad=False), 9, 10, 3),
    "avgpool_include_pad": (L.Pool2D("avg", (3, 3), (2, 2), (1, 1, 1, 1), count_include_pad=True), 9, 10, 3),
    "avgpool_ceil_exclude_pad": (L.Pool2D("avg", (3, 3), (2, 2), (1, 0, 1, 0), True, False), 10, 10, 3),
    "avgpool_ceil_include_pad": (L.Pool2D("avg", (3, 3), (2, 2), (1, 0, 1, 0), True, True), 10, 10, 3),
    "lrn_5": (L.LRN(5, 1e-1, 0.75, 2.0), 6, 6, 9),
    "lrn_3_pow": (L.LRN(3, 2e-1, 0.6, 1.0), 5, 5, 7),
    "global_avgpool": (L.GlobalAvgPool(), 7, 9, 5),
    "pad_value": (L.Pad((1, 0, 2, 3), -1.5), 5, 6, 3),
    "affine": (L.Affine(RNG.standard_normal(4).astype(np.float32), RNG.standard_normal(4).astype(np.float32)),
               5, 5, 4),
    "softmax_channels": (L.Softmax(), 3, 4, 6),
    "clip": (L.Clip(-0.5, 0.7), 4, 4, 3),
    "relu6": (L.Activation("relu6"), 4, 4, 3),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_single_layer(name):
    layer, h, w, c = CASES[name]
    graph = Graph([Node(name, layer, ("input",))])
    x = (RNG.standard_normal((2, h, w, c)) * 3).astype(np.float32)
    ref, ours = ort_run(ort_session(graph, (h, w), channels=c), x), graph(x)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-4


def test_multi_input_layers():
    """Add and Concat (and Flatten into a Dense) need more than one-op graphs."""
    graph = Graph([
        Node("a", conv(3, 3, 3, 4, pads=(1, 1, 1, 1)), ("input",)),
        Node("b", conv(1, 1, 3, 4), ("input",)),
        Node("sum", L.Add(), ("a", "b")),
        Node("cat", L.Concat(), ("sum", "a", "input")),
        Node("flat", L.Flatten(), ("cat",)),
        Node("fc", L.Dense(RNG.standard_normal((11 * 36, 5)).astype(np.float32) / 20, None, "relu"), ("flat",)),
    ])
    x = RNG.standard_normal((2, 6, 6, 3)).astype(np.float32)
    ref, ours = ort_run(ort_session(graph, (6, 6)), x), graph(x)
    assert np.abs(ours - ref).max() < 1e-4
