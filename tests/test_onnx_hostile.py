"""Hostile ONNX files: external-data references that try to leave the model's folder, lie about
sizes or point at things that are not files, and resource bombs.  Each must be refused with an
OnnxImportError naming the model file, the tensor and the reason -- never read, hang or crash."""
import os
import threading

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

from qcnn.models import load_model
from qcnn.models.onnx_import import OnnxImportError, graph_from_onnx, load_onnx
from qcnn.models.onnx_import.tensors import TensorReader

from onnx_models import Builder, mini_resnet


def external_model(folder, location="weights.bin", offset=None, length=None, dims=(4, 3, 3, 3), write=True):
    """A one-conv model whose weight lives in an external file (the name is the tensor's)."""
    b = Builder()
    x = b.conv("data", 3, 4, 3, bias=False)
    path = b.save(folder / "model.onnx", b.op("GlobalAveragePool", [x]))
    model = onnx.load(path)
    t = model.graph.initializer[0]
    data = numpy_helper.to_array(t).tobytes()
    t.ClearField("raw_data")
    t.ClearField("float_data")
    del t.dims[:]
    t.dims.extend(dims)
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        if value is not None:
            entry = t.external_data.add()
            entry.key, entry.value = key, str(value)
    if write and not os.path.isabs(location) and ".." not in location:
        (folder / location).write_bytes(data)
    path.write_bytes(model.SerializeToString())
    return path, t.name


def refused(path, *words):
    with pytest.raises(OnnxImportError) as info:
        load_model(path)
    message = str(info.value)
    assert message.startswith(f"{path.name}: "), message
    for word in words:
        assert word in message, message
    return message


def test_external_data_inside_the_folder_is_read(tmp_path):
    path, _ = external_model(tmp_path, "sub/dir/w.bin", write=False)
    (tmp_path / "sub/dir").mkdir(parents=True)
    t = onnx.load(path, load_external_data=False)
    external_model(tmp_path / "sub/dir", "w.bin")    # writes the same bytes into sub/dir/w.bin
    path.write_bytes(t.SerializeToString())
    assert load_model(path).graph.nodes


def test_parent_directory_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 432)
    (tmp_path / "m").mkdir()
    path, tensor = external_model(tmp_path / "m", "../secret.bin")
    refused(path, tensor, "'../secret.bin'", "leaves the model's folder")
    path, tensor = external_model(tmp_path / "m", "a/../../secret.bin")
    refused(path, tensor, "leaves the model's folder")


@pytest.mark.parametrize("location", ["/etc/passwd", "C:/Windows/win.ini", "c:weights.bin", "\\\\server\\share\\w",
                                      "sub\\..\\..\\w.bin", "~/w.bin"])
def test_absolute_and_foreign_paths_refused(tmp_path, location):
    path, tensor = external_model(tmp_path, location, write=False)
    refused(path, tensor, "not a relative path inside the model's folder")


def test_empty_path_components_refused(tmp_path):
    path, tensor = external_model(tmp_path, "a//w.bin", write=False)
    refused(path, tensor, "not a plain relative path")


def test_symlink_leaving_the_folder_refused(tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"\0" * 432)
    (tmp_path / "m").mkdir()
    path, tensor = external_model(tmp_path / "m", "link.bin", write=False)
    os.symlink(outside, tmp_path / "m" / "link.bin")
    refused(path, tensor, "resolves outside the model's folder")
    os.symlink(tmp_path, tmp_path / "m" / "up")          # a directory link half-way
    path, tensor = external_model(tmp_path / "m", "up/outside.bin", write=False)
    refused(path, tensor, "resolves outside")


def test_symlink_within_the_folder_accepted(tmp_path):
    path, tensor = external_model(tmp_path, "real.bin")
    os.symlink(tmp_path / "real.bin", tmp_path / "alias.bin")
    path, _ = external_model(tmp_path, "alias.bin", write=False)
    assert load_model(path).graph.nodes


@pytest.mark.parametrize("offset, length, words", [
    (400, None, "runs past the end"),              # 432 bytes from offset 400 in a 432-byte file
    (0, 4, "does not match its shape"),            # length says 4 bytes, the shape 432
    (None, 10 ** 12, "does not match its shape"),
    ("-1", None, "is not a byte count"), ("0x10", None, "is not a byte count"), ("1e3", None, "is not a byte count"),
    (10 ** 30, None, "is not a byte count")])
def test_offsets_and_lengths_checked_before_reading(tmp_path, offset, length, words):
    path, tensor = external_model(tmp_path, offset=offset, length=length)
    refused(path, tensor, words)


def test_dimensions_larger_than_the_file(tmp_path):
    path, tensor = external_model(tmp_path, dims=(4, 3, 3, 300))
    refused(path, tensor, "runs past the end", "(432 bytes)")


def test_missing_external_file(tmp_path):
    path, tensor = external_model(tmp_path, "gone.bin", write=False)
    refused(path, tensor, "cannot open external data file 'gone.bin'")


def test_directory_and_fifo_refused_without_hanging(tmp_path):
    (tmp_path / "adir").mkdir()
    path, tensor = external_model(tmp_path, "adir", write=False)
    refused(path, tensor, "not a regular file")
    os.mkfifo(tmp_path / "pipe")
    path, tensor = external_model(tmp_path, "pipe", write=False)
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("msg", refused(path, tensor, "not a regular file")))
    worker.start()
    worker.join(10)
    assert not worker.is_alive() and "msg" in result, "opening a FIFO must not block"


def test_fifo_as_model_file_refused(tmp_path):
    os.mkfifo(tmp_path / "model.onnx")
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("msg", refused(tmp_path / "model.onnx", "not a regular file")))
    worker.start()
    worker.join(10)
    assert not worker.is_alive() and "msg" in result


def test_total_size_limit_before_reading(tmp_path):
    # Declares 2**35 float32 (128 GiB) in a file that does not even exist: refused by the sum alone.
    path, tensor = external_model(tmp_path, "huge.bin", dims=(1 << 15, 1 << 10, 1 << 5, 1 << 5), write=False)
    refused(path, tensor, "add up to more than")


def test_total_limit_counts_every_tensor(tmp_path):
    path, tensor = external_model(tmp_path)
    proto = onnx.load(path, load_external_data=False)
    reader = TensorReader(tmp_path, limit=400)      # the one weight has 432 bytes
    with pytest.raises(OnnxImportError, match="add up to more than"):
        reader.account(proto.graph.initializer[0], "initializer 'w'")


def test_external_data_needs_a_folder(tmp_path):
    path, tensor = external_model(tmp_path)
    with pytest.raises(OnnxImportError, match="needs the model's folder"):
        graph_from_onnx(path.read_bytes())
    assert graph_from_onnx(path.read_bytes(), folder=tmp_path).nodes


# -- resource bombs and operators ------------------------------------------------------------------
def test_constant_bomb_refused(tmp_path):
    b = Builder()
    big = b.op("ConstantOfShape", [b.init([1 << 20, 1 << 20], np.int64)])
    x = b.op("Add", ["data", b.op("ReduceSum", [big], keepdims=0)])
    refused(b.save(tmp_path / "bomb.onnx", b.op("GlobalAveragePool", [x])), "ConstantOfShape", "absurdly large")


def test_expand_bomb_refused(tmp_path):
    b = Builder()
    e = b.op("Expand", [b.init([1.0]), b.init([1 << 16, 1 << 16], np.int64)])
    refused(b.save(tmp_path / "bomb.onnx", b.op("Add", ["data", e])), "Expand", "absurdly large")


def test_heavy_constant_work_is_not_folded(tmp_path):
    b = Builder()
    m = b.op("MatMul", [b.init(np.ones((64, 64))), b.init(np.ones((64, 64)))])
    refused(b.save(tmp_path / "mm.onnx", b.op("Add", ["data", m])), "MatMul", "does not evaluate")


def test_unsupported_operators_name_node_and_op(tmp_path):
    b = Builder()
    x = b.conv("data", 3, 4, 3)
    b.nodes.append(helper.make_node("Resize", [x, "", b.init([1, 1, 2, 2])], ["up"], name="upsample/7"))
    refused(b.save(tmp_path / "m.onnx", "up"), "node 'upsample/7' (Resize)", "unsupported operator Resize")
    b = Builder()
    b.nodes.append(helper.make_node("MyOp", ["data"], ["y"], name="custom", domain="com.example"))
    refused(b.save(tmp_path / "m.onnx", "y"), "'custom'", "unsupported operator com.example.MyOp")


def test_opset_outside_the_known_range(tmp_path):
    path = mini_resnet(tmp_path / "m.onnx")
    model = onnx.load(path)
    model.opset_import[0].version = 99
    path.write_bytes(model.SerializeToString())
    refused(path, "opset 99", "7-21")


def test_work_bound(tmp_path, monkeypatch):
    from qcnn.models.onnx_import import converter
    monkeypatch.setattr(converter, "MAX_MACS", 10 ** 5)
    refused(mini_resnet(tmp_path / "m.onnx"), "multiply-adds per image")


# -- fuzzing ------------------------------------------------------------------------------------------
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_external_references_fuzzed(tmp_path, data):
    """Any location / offset / length: read correctly or refused with OnnxImportError, nothing else."""
    location = data.draw(st.text(st.sampled_from("ab./\\:~\0 ..é"), min_size=1, max_size=12))
    offset = data.draw(st.one_of(st.none(), st.integers(-5, 1000).map(str), st.text(max_size=4)))
    length = data.draw(st.one_of(st.none(), st.integers(-5, 1000).map(str)))
    folder = tmp_path / f"f{abs(hash((location, offset, length)))}"
    folder.mkdir()
    try:
        path, _ = external_model(folder, location, offset, length, write=False)
    except (OSError, ValueError):
        return    # a name the file system itself refuses
    (folder / "ab").write_bytes(bytes(range(256)) * 2)
    try:
        load_onnx(path)
    except OnnxImportError:
        pass


def test_memory_bound_over_all_outputs(tmp_path, monkeypatch):
    from qcnn.models.onnx_import import converter
    monkeypatch.setattr(converter, "MAX_TOTAL_ELEMENTS", 5_000)   # mini ResNet: 16 x 16 x 8 after conv 1 alone
    refused(mini_resnet(tmp_path / "m.onnx"), "outputs add up to more than 5000 values")


def test_many_wide_outputs_refused(tmp_path):
    # 40 branches of a 1 x 64 x 512 x 512 broadcast: each tensor is allowed, together 1.3 billion values
    b = Builder()
    x = b.op("Mul", ["data", b.init(np.ones((1, 64, 512, 512), np.float32)[:, :, :1, :1])])
    big = b.op("Add", [x, b.init(np.zeros((1, 1, 512, 512), np.float32))])
    outs = [b.op("Relu", [big]) for _ in range(40)]
    x = outs[0]
    for o in outs[1:]:
        x = b.op("Add", [x, o])
    refused(b.save(tmp_path / "wide.onnx", b.op("GlobalAveragePool", [x]), shape=(1, 1, 1, 1)),
            "outputs add up to more than")


def test_many_nodes_of_one_name_import_quickly(tmp_path):
    import time
    b = Builder()
    x = "data"
    for _ in range(20_000):   # all named alike: unique names must not cost a quadratic search
        b.nodes.append(helper.make_node("Relu", [x], [f"r{len(b.nodes)}"], name="same"))
        x = b.nodes[-1].output[0]
    path = b.save(tmp_path / "long.onnx", b.op("GlobalAveragePool", [x]))
    t0 = time.perf_counter()
    graph = load_model(path).graph
    assert len(graph.nodes) == 20_001 and time.perf_counter() - t0 < 60


_CACHE = {}


def _squeezenet_bytes() -> bytes:
    if "squeezenet" not in _CACHE:
        import tempfile
        from pathlib import Path

        import onnx_zoo as Z
        with tempfile.TemporaryDirectory() as tmp:
            _CACHE["squeezenet"] = Z.materialise("squeezenet1_1", "script", Path(tmp)).read_bytes()
    return _CACHE["squeezenet"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_exporter_files_never_crash(tmp_path, data):
    """Bytes of a real PyTorch export (SqueezeNet, TorchScript exporter, weights filled) flipped, cut
    or repeated."""
    blob = bytearray(_squeezenet_bytes())
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(blob) - 1))
        kind = data.draw(st.sampled_from(["flip", "cut", "repeat"]))
        if kind == "flip":
            blob[i] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "cut":
            del blob[i:i + data.draw(st.integers(1, 64))]
        else:
            blob[i:i] = blob[i:i + data.draw(st.integers(1, 64))]
    path = tmp_path / "m.onnx"
    path.write_bytes(bytes(blob))
    try:
        load_onnx(path)
    except OnnxImportError:
        pass
