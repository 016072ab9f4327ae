"""Cost model: hand-computed layer costs, AlexNet's multiply-adds, shapes and memory."""
from __future__ import annotations

import json

import numpy as np
import pytest

from qcnn import layers as L
from qcnn.graph import Graph, Node
from qcnn.models import load_model
from qcnn.pq.cost import cost_report, format_table, infer_shapes, peak_activation_bytes
from qcnn.pq.layer import PQLayer


def random_pq(rng, kind_of, kh, kw, cin, cout, dsub, ksub, groups=1, bias=True, **options) -> PQLayer:
    m = -(-(cin // groups) // dsub)
    return PQLayer(kind_of, rng.standard_normal((groups, m, ksub, dsub)).astype(np.float32),
                   rng.integers(0, ksub, (kh, kw, m, cout), dtype=np.uint8), cin,
                   np.zeros(cout, np.float32) if bias else None, groups=groups, **options)


def quantize_like(layer, dsub, ksub, rng) -> PQLayer:
    """A PQ layer with `layer`'s geometry and random codebooks and codes (cost needs no training)."""
    if isinstance(layer, L.Dense):
        return random_pq(rng, "fc", 1, 1, layer.in_channels, layer.out_channels, dsub, ksub,
                         bias=layer.bias is not None, activation=layer.activation)
    kh, kw = layer.kernel
    return random_pq(rng, "conv", kh, kw, layer.in_channels, layer.out_channels, dsub, ksub, layer.groups,
                     layer.bias is not None, stride=layer.stride, pads=layer.pads, activation=layer.activation)


@pytest.fixture(scope="module")
def alexnet():
    return load_model("alexnet")


ALEXNET_MACS = {"conv1": 105_415_200, "conv2": 223_948_800, "conv3": 149_520_384, "conv4": 112_140_288,
                "conv5": 74_760_192, "fc6": 37_748_736, "fc7": 16_777_216, "fc8": 4_096_000}


def test_conv_layer_by_hand():
    # 8x8x16 input, 3x3 conv to 32 channels, pad 1; C_s' = 4 -> M = 4 subspaces, K = 16 (4 bits)
    layer = random_pq(np.random.default_rng(0), "conv", 3, 3, 16, 32, dsub=4, ksub=16, pads=(1, 1, 1, 1))
    c = cost_report(Graph([Node("conv", layer, ("input",))]), (8, 8), channels=16).layers[0]
    assert c.out_shape == (8, 8, 32)
    assert c.dense_macs == 8 * 8 * 32 * 3 * 3 * 16 == 294_912
    assert c.table_macs == 64 * 1 * 4 * 16 * 4 == 16_384          # pixels x G x M x K x C_s'
    assert c.lookup_adds == 8 * 8 * 32 * 3 * 3 * 4 == 73_728      # OH x OW x C_out x KH x KW x M
    assert c.quant_macs == 90_112 and c.speedup == pytest.approx(294_912 / 90_112)
    assert c.dense_bits == 32 * (3 * 3 * 16 * 32 + 32) == 148_480
    assert c.quant_bits == 32 * 4 * 16 * 4 + 4 * 3 * 3 * 4 * 32 + 32 * 32 == 13_824
    assert c.compression == pytest.approx(148_480 / 13_824)
    assert c.table_bytes == 64 * 4 * 16 * 4
    assert c.kernel == "reference" and c.kind == "conv" and c.setting.bits == 4


def test_fc_layer_by_hand():
    # 64 -> 10, C_s' = 8 -> M = 8, K = 4 (2 bits)
    layer = random_pq(np.random.default_rng(0), "fc", 1, 1, 64, 10, dsub=8, ksub=4)
    graph = Graph([Node("flat", L.Flatten(), ("input",)), Node("fc", layer, ("flat",))])
    c = cost_report(graph, (1, 1), channels=64).layers[0]
    assert (c.kind, c.out_shape) == ("fc", (10,))
    assert c.dense_macs == 640 and c.table_macs == 8 * 4 * 8 and c.lookup_adds == 10 * 8
    assert c.dense_bits == 32 * (640 + 10) and c.quant_bits == 32 * 8 * 4 * 8 + 2 * 8 * 10 + 32 * 10


def test_uneven_subspaces_count_the_padded_channel():
    # 10 input channels in subspaces of 4: M = 3, the last one padded to width 4
    layer = random_pq(np.random.default_rng(0), "fc", 1, 1, 10, 5, dsub=4, ksub=2, bias=False)
    c = cost_report(Graph([Node("fc", layer, ("input",))]), (1, 1), channels=10).layers[0]
    assert c.table_macs == 3 * 2 * 4 and c.lookup_adds == 5 * 3
    assert c.dense_bits == 32 * 50 and c.quant_bits == 32 * 3 * 2 * 4 + 1 * 3 * 5


@pytest.mark.parametrize("kernel, stride, pad, read", [
    (1, 2, 0, 4 * 4),       # 1x1 stride 2 reads every other row and column
    (3, 2, 1, 8 * 8),       # overlapping windows cover everything
    (2, 3, 0, 6 * 6),       # rows 2 and 5 fall between windows
    (3, 1, 1, 8 * 8),
])
def test_strided_table_counts_only_pixels_read(kernel, stride, pad, read):
    layer = random_pq(np.random.default_rng(0), "conv", kernel, kernel, 4, 4, dsub=2, ksub=8,
                      stride=(stride, stride), pads=(pad,) * 4)
    c = cost_report(Graph([Node("c", layer, ("input",))]), (8, 8), channels=4).layers[0]
    assert c.table_macs == read * 1 * 2 * 8 * 2
    assert c.table_bytes == 8 * 8 * 2 * 8 * 4       # tables are allocated for the whole input


def test_alexnet_dense_macs(alexnet):
    report = cost_report(alexnet.graph, (227, 227))
    assert {c.name: c.dense_macs for c in report.layers} == ALEXNET_MACS
    assert report.dense_macs == sum(ALEXNET_MACS.values()) == 724_406_816       # ~0.72 G
    assert report.quant_macs == report.dense_macs and report.theoretical_speedup == 1.0
    params = alexnet.graph.num_params()
    assert params == 60_965_224                                                 # AlexNet's 61 M
    assert report.dense_bits == report.quant_bits == 32 * params
    assert report.dense_weight_bytes == report.quant_weight_bytes == 4 * params
    assert report.table_bytes == 0 and report.table_layer is None
    assert all(c.kernel == "dense" and not c.quantized for c in report.layers)


def test_grouped_conv(alexnet):
    # conv2: 5x5, 96 -> 256 in 2 groups of 48 input channels; C_s' = 8 -> M = 6 per group, K = 128
    conv2 = alexnet.graph["conv2"].layer
    layer = quantize_like(conv2, dsub=8, ksub=128, rng=np.random.default_rng(0))
    assert layer.codebooks.shape == (2, 6, 128, 8)
    graph = Graph([Node("conv2", layer, ("input",))])
    c = cost_report(graph, (27, 27), channels=96).layers[0]
    assert c.dense_macs == ALEXNET_MACS["conv2"]
    assert c.table_macs == 27 * 27 * 2 * 6 * 128 * 8 == 8_957_952
    assert c.lookup_adds == 27 * 27 * 256 * 5 * 5 * 6 == 27_993_600
    assert c.dense_bits == 32 * (5 * 5 * 48 * 256 + 256)
    assert c.quant_bits == 32 * 2 * 6 * 128 * 8 + 7 * 5 * 5 * 6 * 256 + 32 * 256 == 670_208


def test_quantized_alexnet(alexnet):
    rng = np.random.default_rng(0)
    nodes = [Node(n.name, quantize_like(n.layer, 8 if n.name != "conv1" else 3, 128, rng), n.inputs)
             if n.name in ALEXNET_MACS and n.name != "fc8" else n for n in alexnet.graph.nodes]
    qgraph = Graph(nodes)
    report = cost_report(qgraph, (227, 227), dense_graph=alexnet.graph, kernels={"conv1": "isa-avx2"})
    by_name = {c.name: c for c in report.layers}
    assert {n: c.dense_macs for n, c in by_name.items()} == ALEXNET_MACS
    assert report.dense_macs == 724_406_816
    assert report.quant_macs == sum(c.quant_macs for c in report.layers)
    assert by_name["fc8"].quant_macs == ALEXNET_MACS["fc8"] and not by_name["fc8"].quantized
    assert report.theoretical_speedup == pytest.approx(report.dense_macs / report.quant_macs)
    # fc8 stays dense and holds 16 of the 20 MB left, so compression is only ~8x
    assert 3 < report.theoretical_speedup < 10 and 5 < report.compression < 20
    # the dense figures derived from the PQ layers equal the dense graph's own
    assert cost_report(qgraph, (227, 227)).dense_bits == report.dense_bits
    assert report.dense_weight_bytes == 4 * alexnet.graph.num_params()
    assert report.quant_weight_bytes == sum(v.nbytes for v in qgraph.params().values())
    # conv1's tables: every one of the 227x227 input pixels, 1 x 1 x 128 codewords
    assert report.table_layer == "conv1" and report.table_bytes == 227 * 227 * 1 * 1 * 128 * 4
    assert by_name["conv1"].kernel == "isa-avx2" and by_name["conv2"].kernel == "reference"
    assert by_name["fc8"].kernel == "dense"
    assert report.quant_runtime_bytes == report.quant_weight_bytes + report.quant_activation_bytes + report.table_bytes

    data = json.loads(json.dumps(report.to_json()))          # plain JSON types only
    assert data["theoretical_speedup"] == report.theoretical_speedup and data["compression"] == report.compression
    assert len(data["layers"]) == 8
    row = data["layers"][1]
    assert row["name"] == "conv2" and row["setting"] == {"dsub": 8, "ksub": 128, "bits": 7}
    assert row["out_shape"] == [27, 27, 256]
    assert {"kind", "dense_macs", "table_macs", "lookup_adds", "quant_macs", "speedup", "dense_bits",
            "quant_bits", "kernel"} <= row.keys()

    text = format_table(report)
    lines = text.splitlines()
    assert lines[0].split()[0] == "layer" and any(line.startswith("total") for line in lines)
    assert all(name in text for name in ALEXNET_MACS)
    table = lines[:lines.index("")]
    rule = len(lines[1])
    assert all(len(line) <= rule for line in table)
    # numbers are right-aligned: the speed-up column ends at the same place on every row
    end = lines[0].index("speed-up") + len("speed-up")
    assert all(line[end - 1] == "x" for line in table[2:] if not set(line) <= {"-"})


def test_shapes_match_the_engine(alexnet):
    shapes = infer_shapes(alexnet.graph, (227, 227))
    env = {"input": np.zeros((1, 227, 227, 3), np.float32)}
    for node in alexnet.graph.nodes:
        env[node.name] = node.layer(*[env[i] for i in node.inputs])
        assert env[node.name].shape[1:] == shapes[node.name], node.name


def test_shapes_of_other_layer_types():
    rng = np.random.default_rng(0)
    conv = L.Conv2D(rng.standard_normal((3, 3, 1, 4)).astype(np.float32), None, (2, 2), "same", groups=4)
    nodes = [Node("pad", L.Pad((1, 2, 0, 3)), ("input",)),
             Node("dw", conv, ("pad",)),
             Node("pool", L.Pool2D("avg", (3, 3), (2, 2), pads="same"), ("dw",)),
             Node("cat", L.Concat(), ("pool", "pool")),
             Node("aff", L.Affine(np.ones(8, np.float32), np.zeros(8, np.float32)), ("cat",)),
             Node("add", L.Add(), ("aff", "cat")),
             Node("gap", L.GlobalAvgPool(), ("add",)),
             Node("flat", L.Flatten(), ("gap",)),
             Node("sm", L.Softmax(), ("flat",))]
    graph = Graph(nodes)
    shapes = infer_shapes(graph, (11, 7), channels=4)
    x = rng.standard_normal((1, 11, 7, 4)).astype(np.float32)
    env = {"input": x}
    for node in nodes:
        env[node.name] = node.layer(*[env[i] for i in node.inputs])
        assert env[node.name].shape[1:] == shapes[node.name], node.name
    report = cost_report(graph, (11, 7), channels=4)
    assert [c.name for c in report.layers] == ["dw", "aff"]
    assert report.layers[1].dense_bits == report.layers[1].quant_bits == 32 * 16


def test_shape_errors():
    layer = random_pq(np.random.default_rng(0), "conv", 3, 3, 16, 8, dsub=4, ksub=4)
    with pytest.raises(ValueError, match="gets 3 input channels"):
        infer_shapes(Graph([Node("c", layer, ("input",))]), (8, 8))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        infer_shapes(Graph([Node("c", layer, ("input",))]), (2, 2), channels=16)


def test_peak_activation_memory():
    # input 4x4x2 (128 B) -> a 4x4x4 (256 B) -> b 4x4x1 (64 B) -> add(a, b) 4x4x4 (256 B)
    rng = np.random.default_rng(0)
    a = L.Conv2D(rng.standard_normal((1, 1, 2, 4)).astype(np.float32))
    b = L.Conv2D(rng.standard_normal((1, 1, 4, 1)).astype(np.float32))
    graph = Graph([Node("a", a, ("input",)), Node("b", b, ("a",)), Node("add", L.Add(), ("a", "b"))])
    shapes = infer_shapes(graph, (4, 4), channels=2)
    # a: input + a = 384, input freed; b: a + b = 320; add: a + b + add = 576
    assert peak_activation_bytes(graph, shapes) == 576
    chain = Graph([Node("a", a, ("input",)), Node("b", b, ("a",))])
    assert peak_activation_bytes(chain, infer_shapes(chain, (4, 4), channels=2)) == 384
