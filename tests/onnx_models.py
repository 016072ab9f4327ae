"""Small ONNX CNNs built in the tests, one per model-zoo family the importer targets."""
import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)


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
