"""The importer's operators one by one and in random combinations, against onnxruntime on the same
graph: TensorFlow "SAME" padding, tf2onnx's NHWC entry, opset differences, the layout machinery
(transposes, reshapes, slices, splits, concatenations on every axis), element-wise operators."""
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, note, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

from qcnn import layers as L
from qcnn.models.onnx_import import OnnxImportError, graph_from_onnx, load_onnx

RNG = np.random.default_rng(11)


def make(nodes, inits, shape, opset=18, out="y", input_name="x"):
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def ort_out(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def ours(model, x, nhwc_input=False):
    """Our output for the ONNX-layout input x, converted back to ONNX layout (4-D outputs are NHWC)."""
    g = graph_from_onnx(model)
    y = g(x if nhwc_input else (x.transpose(0, 2, 3, 1) if x.ndim == 4 else x))
    return y.transpose(0, 3, 1, 2) if y.ndim == 4 else y


def check(model, x, tol=1e-5, nhwc_input=False):
    ref = ort_out(model, x)
    got = ours(model, x, nhwc_input)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert np.abs(got - ref).max() <= tol * max(1.0, np.abs(ref).max())


# -- TensorFlow SAME padding: the odd pixel after (SAME_UPPER) or before (SAME_LOWER) ----------------
@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("op", ["Conv", "MaxPool", "AveragePool"])
def test_same_padding_odd_in_both_directions(auto_pad, op):
    # 9 x 8 input: kernel 2 stride 1 over the 9 rows needs 1 pixel of padding, kernel 4 stride 2 over
    # the 8 columns 2 -- and kernel 3 stride 2 over the 8 columns 1: odd totals in both directions.
    x = RNG.standard_normal((1, 3, 9, 8)).astype(np.float32)
    for kernel, strides in (([2, 3], [1, 2]), ([4, 5], [2, 3])):
        inits = {}
        ins = ["x"]
        attrs = dict(kernel_shape=kernel, strides=strides, auto_pad=auto_pad)
        if op == "Conv":
            inits["w"] = RNG.standard_normal((4, 3, *kernel)).astype(np.float32)
            ins.append("w")
        model = make([helper.make_node(op, ins, ["y"], **attrs)], inits, (1, 3, 9, 8))
        check(model, x)
        if op != "MaxPool":   # a border value decides the max only by chance; sums and averages always see it
            g = graph_from_onnx(model)
            pads = L.resolve_pads(g.nodes[0].layer.pads, 9, 8, *kernel, *strides)
            top, bottom, left, right = pads
            assert top != bottom and left != right   # odd in both directions, so a swap would show


def test_tf2onnx_nhwc_entry_and_explicit_asymmetric_pads():
    # tf2onnx keeps the NHWC input and transposes right after; TF's SAME becomes explicit pads with
    # the odd pixel after (bottom/right).
    w = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["c"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("Softmax", ["m"], ["y"], axis=-1)]
    model = make(nodes, {"w": w}, (1, 16, 16, 3), opset=13)
    x = RNG.standard_normal((1, 16, 16, 3)).astype(np.float32)
    check(model, x, nhwc_input=True)
    g = graph_from_onnx(model)
    # no transpose kept; the flatten after global pooling is a view
    assert [type(n.layer) for n in g] == [L.Conv2D, L.GlobalAvgPool, L.Flatten, L.Softmax]


def test_tf2onnx_file_metadata(tmp_path):
    w = RNG.standard_normal((1001, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["c"]),
             helper.make_node("GlobalAveragePool", ["c"], ["g"]),
             helper.make_node("Flatten", ["g"], ["y"])]
    model = make(nodes, {"w": w}, ("N", 224, 224, 3), opset=13)
    model.producer_name = "tf2onnx"
    path = tmp_path / "mobilenet.onnx"
    path.write_bytes(model.SerializeToString())
    m = load_onnx(path)
    assert m.input_size == 224 and m.labels[0] == "background" and len(m.labels) == 1001
    assert "preprocessing tf, guessed: TensorFlow" in m.description and m.preprocess.mean == (127.5,) * 3


# -- opset differences: attributes that became inputs -------------------------------------------------
@pytest.mark.parametrize("opset", [7, 9, 11, 13, 17, 18, 21])
def test_attributes_moved_to_inputs(opset):
    x = RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)
    inits, nodes = {}, []

    def axes(name, values, moved):
        if opset >= moved:
            inits[name] = np.array(values, np.int64)
            return [name], {}
        return [], {"axes": values}

    if opset >= 11:
        inits.update(pads=np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64), lo=np.float32(-0.5), hi=np.float32(0.5))
        nodes.append(helper.make_node("Pad", ["x", "pads"], ["p"], mode="constant"))
        nodes.append(helper.make_node("Clip", ["p", "lo", "hi"], ["c"]))
    else:
        nodes.append(helper.make_node("Pad", ["x"], ["p"], pads=[0, 0, 1, 2, 0, 0, 2, 1], mode="constant"))
        nodes.append(helper.make_node("Clip", ["p"], ["c"], min=-0.5, max=0.5))
    extra, attrs = axes("ax_u", [4], 13)
    nodes.append(helper.make_node("Unsqueeze", ["c", *extra], ["u"], **attrs))
    extra, attrs = axes("ax_s", [4], 13)
    nodes.append(helper.make_node("Squeeze", ["u", *extra], ["s"], **attrs))
    if opset >= 10:
        inits.update(st=np.array([1], np.int64), en=np.array([8], np.int64), sa=np.array([3], np.int64),
                     sp=np.array([2], np.int64))
        nodes.append(helper.make_node("Slice", ["s", "st", "en", "sa", "sp"], ["sl"]))
    else:
        nodes.append(helper.make_node("Slice", ["s"], ["sl"], starts=[1], ends=[8], axes=[3]))
    extra, attrs = axes("ax_r", [2, 3], 18)
    nodes.append(helper.make_node("ReduceMean", ["sl", *extra], ["y"], keepdims=1, **attrs))
    check(make(nodes, inits, (1, 4, 6, 6), opset=opset), x)


def test_split_forms():
    x = RNG.standard_normal((1, 6, 4, 4)).astype(np.float32)
    for opset, inits, attrs in ((11, {}, {"split": [2, 4]}), (13, {"sp": np.array([2, 4], np.int64)}, {}),
                                (18, {}, {"num_outputs": 2})):
        ins = ["x"] + (["sp"] if inits else [])
        nodes = [helper.make_node("Split", ins, ["a", "b"], axis=1, **attrs),
                 helper.make_node("ReduceSum" if opset < 18 else "ReduceMax", ["a"], ["ra"], keepdims=1,
                                  **({"axes": [1]} if opset < 13 else {})),
                 helper.make_node("Mul", ["b", "ra"], ["y"])]
        if opset >= 13 and opset < 18:
            inits["ax"] = np.array([1], np.int64)
            nodes[1] = helper.make_node("ReduceSum", ["a", "ax"], ["ra"], keepdims=1)
        elif opset >= 18:
            inits["ax"] = np.array([1], np.int64)
            nodes[1] = helper.make_node("ReduceMax", ["a", "ax"], ["ra"], keepdims=1)
        check(make(nodes, inits, (1, 6, 4, 4), opset=opset), x)


def test_shape_arithmetic_folds_away():
    # x.view(x.size(0), -1) as the TorchScript exporter writes it
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
             helper.make_node("Cast", ["shape"], ["shape64"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["x", "shape64"], ["f"]),
             helper.make_node("Identity", ["wT"], ["wT2"]),
             helper.make_node("Transpose", ["wT2"], ["w"], perm=[1, 0]),
             helper.make_node("MatMul", ["f", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["y"])]
    inits = {"zero": np.array(0, np.int64), "ax0": np.array([0], np.int64), "minus1": np.array([-1], np.int64),
             "wT": RNG.standard_normal((10, 48)).astype(np.float32), "b": RNG.standard_normal(10).astype(np.float32)}
    model = make(nodes, inits, ("N", 3, 4, 4), opset=13)
    check(model, RNG.standard_normal((2, 3, 4, 4)).astype(np.float32))
    assert [type(n.layer) for n in graph_from_onnx(model)] == [L.Flatten, L.Dense]   # bias folded in


@pytest.mark.parametrize("op, attrs, kind", [
    ("Sigmoid", {}, "sigmoid"), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, "hardsigmoid"),
    ("HardSwish", {}, "hardswish"), ("Tanh", {}, "tanh"), ("Erf", {}, "erf"), ("LeakyRelu", {"alpha": 0.1}, "leakyrelu"),
    ("Elu", {"alpha": 0.7}, "elu"), ("Gelu", {}, "gelu")])
def test_activations(op, attrs, kind):
    x = (RNG.standard_normal((2, 3, 7, 5)) * 4).astype(np.float32)
    opset = 20 if op == "Gelu" else 18
    model = make([helper.make_node(op, ["x"], ["y"], **attrs)], {}, (2, 3, 7, 5), opset=opset)
    check(model, x)
    assert graph_from_onnx(model).nodes[-1].layer.name == kind


def test_prelu_layernorm_logsoftmax_globalmax():
    x = RNG.standard_normal((1, 6, 5, 5)).astype(np.float32)
    nodes = [helper.make_node("PRelu", ["x", "slope"], ["p"]),
             helper.make_node("Transpose", ["p"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("LayerNormalization", ["t", "g", "b"], ["ln"], axis=-1, epsilon=1e-6),
             helper.make_node("Transpose", ["ln"], ["back"], perm=[0, 3, 1, 2]),
             helper.make_node("GlobalMaxPool", ["back"], ["gm"]),
             helper.make_node("Flatten", ["gm"], ["f"], axis=1),
             helper.make_node("LogSoftmax", ["f"], ["y"], axis=1)]
    inits = {"slope": RNG.uniform(0, 0.5, (6, 1, 1)).astype(np.float32), "g": RNG.uniform(0.5, 1.5, 6).astype(np.float32),
             "b": RNG.normal(0, 0.1, 6).astype(np.float32)}
    check(make(nodes, inits, (1, 6, 5, 5), opset=17), x)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_modes(mode):
    x = RNG.standard_normal((1, 3, 5, 6)).astype(np.float32)
    inits = {"pads": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)}
    ins = ["x", "pads"]
    if mode == "constant":
        inits["v"] = np.float32(0.25)
        ins.append("v")
    check(make([helper.make_node("Pad", ins, ["y"], mode=mode)], inits, (1, 3, 5, 6)), x)


def test_in_graph_normalisation_and_channel_shuffle():
    x = (RNG.uniform(0, 255, (1, 4, 6, 6))).astype(np.float32)
    nodes = [helper.make_node("Sub", ["x", "mean"], ["s"]), helper.make_node("Div", ["s", "std"], ["d"]),
             helper.make_node("Reshape", ["d", "g"], ["r"]), helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["t", "back"], ["y"])]
    inits = {"mean": np.array([120, 110, 100, 90], np.float32).reshape(4, 1, 1),
             "std": np.array([50, 60, 55, 58], np.float32).reshape(1, 4, 1, 1),
             "g": np.array([1, 2, 2, 6, 6], np.int64), "back": np.array([1, 4, 6, 6], np.int64)}
    model = make(nodes, inits, (1, 4, 6, 6), opset=13)
    check(model, x)
    g = graph_from_onnx(model)
    assert [type(n.layer) for n in g] == [L.ChannelAffine, L.Reshape, L.Reshape]   # the normalisation: one affine
    assert [n.layer.perm for n in g.nodes[1:]] == [None, (0, 1, 2, 4, 3)]     # the shuffle is one copy


# -- random layout programs against onnxruntime -------------------------------------------------------
@st.composite
def layout_program(draw):
    """A random chain of layout and element-wise operators on a (1, C, H, W) input."""
    c, h, w = draw(st.sampled_from([2, 4, 6])), draw(st.integers(2, 5)), draw(st.integers(2, 5))
    shape = [1, c, h, w]
    # (a Relu first: an input read only by Transpose(0, 3, 1, 2) is taken for tf2onnx's NHWC entry)
    nodes, inits, cur, k = [helper.make_node("Relu", ["x"], ["r0"])], {}, "r0", 0

    def name():
        nonlocal k
        k += 1
        return f"t{k}"

    for _ in range(draw(st.integers(1, 7))):
        rank = len(shape)
        op = draw(st.sampled_from(["transpose", "reshape", "slice", "concat", "mulconst", "addself", "reduce",
                                   "softmax", "unsqueeze", "split", "sigmoidmul", "tanhadd"]))
        out = name()
        if op == "transpose":
            perm = [0] + draw(st.permutations(list(range(1, rank))))
            nodes.append(helper.make_node("Transpose", [cur], [out], perm=perm))
            shape = [shape[p] for p in perm]
        elif op == "reshape":
            total = math.prod(shape[1:])
            factors = [d for d in range(1, total + 1) if total % d == 0]
            a = draw(st.sampled_from(factors))
            b = draw(st.sampled_from([d for d in factors if (total // a) % d == 0]))
            new = [1, a, b, total // (a * b)]
            new = [d for i, d in enumerate(new) if i == 0 or d != 1 or draw(st.booleans())] or [1, total]
            if len(new) == 1:
                new = [1, total]
            inits[f"{out}.s"] = np.array(new, np.int64)
            nodes.append(helper.make_node("Reshape", [cur, f"{out}.s"], [out]))
            shape = new
        elif op == "slice" and rank > 1:
            ax = draw(st.integers(1, rank - 1))
            d = shape[ax]
            start = draw(st.integers(0, d - 1))
            step = draw(st.sampled_from([1, 2, -1]))
            end = draw(st.integers(start + 1, d)) if step > 0 else -d - 1
            for key, v in ((".st", [start]), (".en", [end]), (".ax", [ax]), (".sp", [step])):
                inits[out + key] = np.array(v, np.int64)
            nodes.append(helper.make_node("Slice", [cur] + [out + s for s in (".st", ".en", ".ax", ".sp")], [out]))
            shape[ax] = len(range(*slice(start, None if end < 0 else end, step).indices(d)))
        elif op == "concat" and rank > 1:
            ax = draw(st.integers(1, rank - 1))
            nodes.append(helper.make_node("Concat", [cur, cur], [out], axis=ax))
            shape[ax] *= 2
        elif op == "mulconst":
            cshape = [d if draw(st.booleans()) else 1 for d in shape[1:]]
            inits[f"{out}.c"] = RNG.uniform(0.5, 1.5, cshape).astype(np.float32)
            nodes.append(helper.make_node(draw(st.sampled_from(["Mul", "Add", "Sub", "Div"])), [cur, f"{out}.c"], [out]))
        elif op == "addself":
            mid = name()
            nodes.append(helper.make_node("Relu", [cur], [mid]))
            nodes.append(helper.make_node("Add", [cur, mid], [out]))
        elif op == "reduce" and rank > 2:
            ax = draw(st.integers(1, rank - 1))
            inits[f"{out}.a"] = np.array([ax], np.int64)
            nodes.append(helper.make_node("ReduceMean", [cur, f"{out}.a"], [out], keepdims=1))
            shape[ax] = 1
        elif op == "softmax" and rank > 1:
            nodes.append(helper.make_node("Softmax", [cur], [out], axis=draw(st.integers(1, rank - 1))))
        elif op == "unsqueeze" and rank < 5:
            ax = draw(st.integers(1, rank))
            inits[f"{out}.a"] = np.array([ax], np.int64)
            nodes.append(helper.make_node("Unsqueeze", [cur, f"{out}.a"], [out]))
            shape.insert(ax, 1)
        elif op == "split" and rank > 1 and any(d % 2 == 0 for d in shape[1:]):
            ax = next(i for i in range(1, rank) if shape[i] % 2 == 0)
            a, b2 = name(), name()
            nodes.append(helper.make_node("Split", [cur], [a, b2], axis=ax, num_outputs=2))
            nodes.append(helper.make_node("Sub", [a, b2], [out]))
            shape[ax] //= 2
        elif op == "tanhadd":   # an activation whose input has another reader: must not overwrite it
            mid = name()
            nodes.append(helper.make_node("Tanh", [cur], [mid]))
            nodes.append(helper.make_node("Add", [mid, cur], [out]))
        elif op == "sigmoidmul":
            mid = name()
            nodes.append(helper.make_node("Sigmoid", [cur], [mid]))
            nodes.append(helper.make_node("Mul", [cur, mid], [out]))
        else:
            continue
        cur = out
    nodes.append(helper.make_node("Identity", [cur], ["y"]))
    return make(nodes, inits, (1, c, h, w)), (1, c, h, w)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=layout_program())
def test_random_layout_programs_match_onnxruntime(program):
    model, shape = program
    note(f"input {shape}; " + "; ".join(
        f"{n.op_type}({', '.join(n.input)}) {[(a.name, helper.get_attribute_value(a)) for a in n.attribute]}"
        for n in model.graph.node) + " | " + "; ".join(f"{t.name}={numpy_helper.to_array(t).tolist()}"
                                                       for t in model.graph.initializer))
    x = RNG.standard_normal(shape).astype(np.float32)
    try:
        ref = ort_out(model, x)
    except Exception:
        return     # a program onnxruntime itself rejects
    g = graph_from_onnx(model)
    y = g(x.transpose(0, 2, 3, 1))
    got = y.transpose(0, 3, 1, 2) if y.ndim == 4 else y
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 2 ** 31), attr=st.sampled_from(["kernel_shape", "strides", "pads", "group", "auto_pad",
                                                              "dilations", "ceil_mode", "axis", "perm"]),
       value=st.one_of(st.integers(-3, 9), st.lists(st.integers(-3, 9), min_size=1, max_size=5), st.sampled_from(
           ["SAME_UPPER", "VALID", "bogus"])))
def test_mutated_attributes_refused_or_right(seed, attr, value):
    """A small CNN with one attribute of one node replaced: the importer either refuses it cleanly or
    computes what onnxruntime computes."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Transpose", ["p"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Softmax", ["t"], ["y"], axis=-1)]
    model = make(nodes, {"w": rng.standard_normal((4, 2, 3, 3)).astype(np.float32)}, (1, 2, 8, 8))
    node = model.graph.node[int(rng.integers(len(nodes)))]
    for a in list(node.attribute):
        if a.name == attr:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(attr, value))
    x = rng.standard_normal((1, 2, 8, 8)).astype(np.float32)
    try:
        g = graph_from_onnx(model)
    except OnnxImportError:
        return
    try:
        ref = ort_out(model, x)
    except Exception:
        return   # onnxruntime rejects what we accept: lenient, not wrong (the values cannot be compared)
    y = g(x.transpose(0, 2, 3, 1))
    got = y.transpose(0, 3, 1, 2) if y.ndim == 4 else y
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
