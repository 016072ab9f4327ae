"""The .qcnn model file: bit-exact round trips, code packing, atomic saves, rejection of bad files."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcnn import layers as L
from qcnn.graph import Graph, Node
from qcnn.models import Model
from qcnn.pq import modelfile
from qcnn.pq.layer import PQLayer
from qcnn.pq.modelfile import MAGIC, ModelFileError, load_model_file, pack_codes, save_model, unpack_codes
from qcnn.preprocess import Preprocess

PREFIX = struct.Struct("<8sHI")


def random_pq(rng, kind_of, kh, kw, cin, cout, dsub, ksub, groups=1, bias=True, **options) -> PQLayer:
    m = -(-(cin // groups) // dsub)
    return PQLayer(kind_of, rng.standard_normal((groups, m, ksub, dsub)).astype(np.float32),
                   rng.integers(0, ksub, (kh, kw, m, cout), dtype=np.uint8), cin,
                   rng.standard_normal(cout).astype(np.float32) if bias else None, groups=groups, **options)


def small_model() -> tuple[Model, Graph]:
    """A 12x12 network with every layer type, two PQ layers (grouped conv with K=17, FC with K=3)."""
    rng = np.random.default_rng(1)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    nodes = [
        Node("c1", L.Conv2D(f32(3, 3, 3, 8), f32(8), pads="same", activation="relu"), ("image",)),
        Node("aff", L.Affine(f32(8), f32(8)), ("c1",)),
        Node("clip", L.Clip(-1.0, math.inf), ("aff",)),
        Node("pool", L.Pool2D("max", (3, 3), (2, 2), ceil_mode=True), ("clip",)),
        Node("lrn", L.LRN(3, 2e-4, 0.75, 2.0), ("pool",)),
        Node("pq1", random_pq(rng, "conv", 3, 3, 8, 16, dsub=3, ksub=17, groups=2, pads=(1, 1, 1, 1),
                              activation="relu"), ("lrn",)),
        Node("dw", L.Conv2D(f32(3, 3, 1, 16), None, pads="same", groups=16), ("pq1",)),
        Node("add", L.Add(), ("pq1", "dw")),
        Node("pad", L.Pad((1, 1, 1, 1), 0.5), ("add",)),
        Node("avg", L.Pool2D("avg", (2, 2), (2, 2), count_include_pad=True), ("pad",)),
        Node("cat", L.Concat(), ("avg", "avg")),
        Node("act", L.Activation("relu6"), ("cat",)),
        Node("gap", L.GlobalAvgPool(), ("act",)),
        Node("flat", L.Flatten(), ("gap",)),
        Node("pqfc", random_pq(rng, "fc", 1, 1, 32, 20, dsub=4, ksub=3, activation="relu"), ("flat",)),
        Node("fc", L.Dense(f32(20, 10), None), ("pqfc",)),
        Node("prob", L.Softmax(), ("fc",)),
    ]
    graph = Graph(nodes, input_name="image")
    model = Model(name="tiny", graph=graph, preprocess=Preprocess(resize=14, crop=12, mean=(1.0, 2.0, 3.0)),
                  labels=tuple(f"class {i} — café" for i in range(10)), description="test network",
                  speed_test_only=True, identity={"name": "tiny", "sha256": "ab" * 32})
    return model, graph


METADATA = {"error_correction": True, "calibration": {"source": "imagenet-sample-500", "images": 50},
            "kernels": {"pq1": "reference"}}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, graph = small_model()
    path = tmp_path_factory.mktemp("model") / "tiny.qcnn"
    save_model(path, model, graph, METADATA)
    return model, graph, path.read_bytes()


# --------------------------------------------------------------------------- file surgery helpers

def split(blob: bytes) -> tuple[dict, bytes]:
    _, _, n = PREFIX.unpack_from(blob)
    return json.loads(blob[PREFIX.size:PREFIX.size + n]), blob[PREFIX.size + n:-32]


def seal(body: bytes) -> bytes:
    """Append a valid checksum, so the checks behind it are the ones exercised."""
    return body + hashlib.sha256(body).digest()


def assemble(header: dict | bytes, data: bytes, version: int = 1, header_len: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return seal(PREFIX.pack(MAGIC, version, len(raw) if header_len is None else header_len) + raw + data)


def load_bytes(tmp_path, blob: bytes):
    path = tmp_path / "x.qcnn"
    path.write_bytes(blob)
    return load_model_file(path)


def array_entry(header: dict, name: str) -> dict:
    return next(a for a in header["arrays"] if a["name"] == name)


def structure(graph: Graph):
    """Everything about a graph except its arrays."""
    out = [graph.input_name, graph.output]
    for node in graph.nodes:
        attrs = {f.name: getattr(node.layer, f.name) for f in dataclasses.fields(node.layer)
                 if not isinstance(getattr(node.layer, f.name), np.ndarray)}
        out.append((node.name, node.inputs, type(node.layer).__name__, attrs))
    return out


def dense_twin(graph: Graph) -> Graph:
    """The graph with PQ layers replaced by their reconstructed dense layers (runs without PQ kernels)."""
    return Graph([Node(n.name, n.layer.to_dense() if isinstance(n.layer, PQLayer) else n.layer, n.inputs)
                  for n in graph.nodes], graph.input_name, graph.output)


# --------------------------------------------------------------------------- round trips

def test_round_trip_is_bit_exact(saved, tmp_path):
    model, graph, blob = saved
    loaded, metadata = load_bytes(tmp_path, blob)
    assert metadata == METADATA
    assert (loaded.name, loaded.description, loaded.speed_test_only, loaded.identity) == \
        (model.name, model.description, model.speed_test_only, model.identity)
    assert loaded.preprocess == model.preprocess
    assert loaded.labels == model.labels
    assert structure(loaded.graph) == structure(graph)
    a, b = graph.params(), loaded.graph.params()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and np.array_equal(a[k], b[k]), k
        assert b[k].flags.writeable and b[k].flags.aligned
    for n1, n2 in zip(graph.nodes, loaded.graph.nodes):
        if isinstance(n1.layer, PQLayer):
            assert np.array_equal(n1.layer.reconstruct_weight(), n2.layer.reconstruct_weight())
    x = np.random.default_rng(2).standard_normal((2, 12, 12, 3)).astype(np.float32)
    assert np.array_equal(dense_twin(graph).forward(x), dense_twin(loaded.graph).forward(x))


def test_saving_is_deterministic(saved, tmp_path):
    model, graph, blob = saved
    save_model(tmp_path / "again.qcnn", model, graph, METADATA)
    assert (tmp_path / "again.qcnn").read_bytes() == blob


def test_dense_model_round_trip(tmp_path):
    model, graph = small_model()
    dense = dense_twin(graph)
    save_model(tmp_path / "d.qcnn", model, dense)            # no PQ layers at all
    loaded, metadata = load_model_file(tmp_path / "d.qcnn")
    assert metadata == {} and structure(loaded.graph) == structure(dense)
    x = np.ones((1, 12, 12, 3), np.float32)
    assert np.array_equal(loaded.graph.forward(x), dense.forward(x))


@pytest.mark.parametrize("ksub", [2, 3, 4, 5, 16, 17, 32, 64, 128, 129, 256])
def test_pq_layer_round_trip_for_every_code_width(tmp_path, ksub):
    rng = np.random.default_rng(ksub)
    layer = random_pq(rng, "conv", 3, 1, 3, 7, dsub=2, ksub=ksub, stride=(2, 1), pads="same")
    layer.codes[0, 0, 0, 0] = ksub - 1                     # the largest code survives packing
    model, _ = small_model()
    graph = Graph([Node("q", layer, ("image",))], "image")
    save_model(tmp_path / "k.qcnn", model, graph)
    header, _ = split((tmp_path / "k.qcnn").read_bytes())
    assert array_entry(header, "q.codes")["bits"] == layer.setting.bits == math.ceil(math.log2(ksub))
    got = load_model_file(tmp_path / "k.qcnn")[0].graph["q"].layer
    assert np.array_equal(got.codes, layer.codes) and np.array_equal(got.codebooks, layer.codebooks)


# --------------------------------------------------------------------------- packing

@pytest.mark.parametrize("ksub", [2, 3, 4, 16, 17, 128, 256])
@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 1001])
def test_pack_unpack(ksub, count):
    bits = max(1, (ksub - 1).bit_length())
    codes = np.random.default_rng(count).integers(0, ksub, count, dtype=np.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == math.ceil(count * bits / 8)
    assert np.array_equal(unpack_codes(packed, count, bits), codes)


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_all_bit_widths_across_chunks(bits, monkeypatch):
    monkeypatch.setattr(modelfile, "_CHUNK", 64)           # several chunks, none byte-misaligned
    codes = np.random.default_rng(bits).integers(0, 2**bits, 1000, dtype=np.uint8)
    packed = pack_codes(codes, bits)
    monkeypatch.setattr(modelfile, "_CHUNK", 2**20)
    assert np.array_equal(packed, pack_codes(codes, bits))
    assert np.array_equal(unpack_codes(packed, 1000, bits), codes)


def test_packing_order_is_the_documented_one():
    # code i at stream bits i*b..(i+1)*b-1, LSB first; stream bit j is bit j%8 of byte j//8
    assert pack_codes(np.array([1, 2, 3], np.uint8), 2).tolist() == [0b00111001]
    assert pack_codes(np.array([16, 1], np.uint8), 5).tolist() == [0b00110000, 0]
    assert pack_codes(np.array([1, 0, 1, 1, 0, 0, 0, 0, 1], np.uint8), 1).tolist() == [0b1101, 1]
    # canonical (KH, KW, M, C_out) C order: output channel varies fastest
    codes = np.arange(8, dtype=np.uint8).reshape(1, 2, 1, 4)
    assert np.array_equal(unpack_codes(pack_codes(codes, 3), 8, 3), np.arange(8))


def test_unpack_rejects_bad_streams():
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_codes(np.zeros(2, np.uint8), 4, 5)          # 20 bits need 3 bytes
    with pytest.raises(ValueError, match="padding bits"):
        unpack_codes(np.array([0b01000000], np.uint8), 3, 2)


# --------------------------------------------------------------------------- options and size

def test_float16_codebooks(tmp_path):
    model, graph = small_model()
    full = save_model(tmp_path / "f32.qcnn", model, graph)
    half = save_model(tmp_path / "f16.qcnn", model, graph, float16_codebooks=True)
    header, _ = split((tmp_path / "f16.qcnn").read_bytes())
    assert array_entry(header, "pq1.codebooks")["dtype"] == "float16"
    assert array_entry(header, "pq1.bias")["dtype"] == "float32"
    cb = graph["pq1"].layer.codebooks
    assert full - half == cb.size * 2 + graph["pqfc"].layer.codebooks.size * 2
    got = load_model_file(tmp_path / "f16.qcnn")[0].graph["pq1"].layer.codebooks
    assert got.dtype == np.float32 and np.array_equal(got, cb.astype(np.float16).astype(np.float32))


def test_float16_overflow_is_refused(tmp_path):
    model, graph = small_model()
    graph["pq1"].layer.codebooks[0, 0, 0, 0] = 1e6
    with pytest.raises(ModelFileError, match="float16"):
        save_model(tmp_path / "x.qcnn", model, graph, float16_codebooks=True)
    assert list(tmp_path.iterdir()) == []


def test_file_size_is_tight_and_smaller_than_dense(tmp_path):
    rng = np.random.default_rng(0)
    stem = L.Conv2D(rng.standard_normal((1, 1, 3, 256)).astype(np.float32), np.zeros(256, np.float32))
    layer = random_pq(rng, "conv", 3, 3, 256, 256, dsub=8, ksub=128, pads=(1, 1, 1, 1))
    model, _ = small_model()
    model = dataclasses.replace(model, graph=Graph([Node("stem", stem, ("image",)), Node("c", layer, ("stem",))],
                                                   "image"), preprocess=Preprocess(crop=13), labels=())
    size = save_model(tmp_path / "c.qcnn", model)
    blob = (tmp_path / "c.qcnn").read_bytes()
    assert size == len(blob) == os.path.getsize(tmp_path / "c.qcnn")
    header, data = split(blob)
    _, _, header_len = PREFIX.unpack_from(blob)
    # nothing but the prefix, the header, the arrays and the digest
    assert size == PREFIX.size + header_len + sum(a["length"] for a in header["arrays"]) + 32
    assert array_entry(header, "c.codes")["length"] == 3 * 3 * 32 * 256 * 7 // 8
    dense_bytes = 4 * (3 * 3 * 256 * 256 + 256 + 3 * 256 + 256)
    assert size < dense_bytes / 10


def test_save_refuses_unknown_layers(tmp_path):
    class Odd(L.Layer):
        def __call__(self, x):
            return x
    model, _ = small_model()
    with pytest.raises(ModelFileError, match="Odd"):
        save_model(tmp_path / "x.qcnn", model, Graph([Node("odd", Odd(), ("image",))], "image"))
    assert list(tmp_path.iterdir()) == []


def test_preprocess_schema_covers_every_field():
    assert set(modelfile._PREPROCESS) == {f.name for f in dataclasses.fields(Preprocess)}


# --------------------------------------------------------------------------- atomic save

class _FailingWriter:
    """A file whose third write fails, as a full disk would."""

    def __init__(self, f):
        self.f, self.writes = f, 0

    def write(self, b):
        self.writes += 1
        if self.writes == 3:
            raise OSError(28, "No space left on device")
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("failure", ["write", "fsync", "replace", "interrupt"])
def test_failed_save_leaves_target_and_no_temporaries(tmp_path, monkeypatch, failure):
    model, graph = small_model()
    target = tmp_path / "m.qcnn"
    target.write_bytes(b"previous contents")
    real_fdopen = os.fdopen
    if failure == "write":
        monkeypatch.setattr(os, "fdopen", lambda *a, **k: _FailingWriter(real_fdopen(*a, **k)))
    elif failure == "fsync":
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "I/O error")))
    elif failure == "replace":
        monkeypatch.setattr(os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(13, "Permission denied")))
    else:
        monkeypatch.setattr(modelfile, "_PREFIX", _Interrupting())
    expected = KeyboardInterrupt if failure == "interrupt" else ModelFileError
    with pytest.raises(expected):
        save_model(target, model, graph)
    assert target.read_bytes() == b"previous contents"
    assert [p.name for p in tmp_path.iterdir()] == ["m.qcnn"]


class _Interrupting:
    """Stands in for the prefix struct and raises KeyboardInterrupt once the temporary exists."""

    def pack(self, *args):
        raise KeyboardInterrupt


def test_save_replaces_and_keeps_permissions(tmp_path):
    model, graph = small_model()
    target = tmp_path / "m.qcnn"
    save_model(target, model, graph)
    assert target.stat().st_mode & 0o777 == 0o644
    target.chmod(0o600)
    save_model(target, model, graph, {"v": 2})
    assert target.stat().st_mode & 0o777 == 0o600
    assert load_model_file(target)[1] == {"v": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["m.qcnn"]


# --------------------------------------------------------------------------- rejection

def test_missing_file_and_bad_magic(tmp_path):
    with pytest.raises(ModelFileError, match="cannot read") as info:
        load_model_file(tmp_path / "absent.qcnn")
    assert info.value.path.endswith("absent.qcnn") and "absent.qcnn" in str(info.value)
    for blob in (b"", b"QCNN", b"PK\x03\x04" + bytes(100), b"QCNN\x00\n\n\x1a" + bytes(100)):
        with pytest.raises(ModelFileError, match="bad magic"):
            load_bytes(tmp_path, blob)


@pytest.mark.parametrize("version", [0, 2, 65535])
def test_unknown_version(saved, tmp_path, version):
    header, data = split(saved[2])
    with pytest.raises(ModelFileError, match=f"unsupported format version {version}"):
        load_bytes(tmp_path, assemble(header, data, version=version))


def test_checksum_mismatch(saved, tmp_path):
    blob = bytearray(saved[2])
    for pos in (20, len(blob) - 100, len(blob) - 1):      # header, arrays, the digest itself
        bad = bytearray(blob)
        bad[pos] ^= 0x10
        with pytest.raises(ModelFileError, match="checksum mismatch"):
            load_bytes(tmp_path, bytes(bad))


def test_truncation_at_every_region(saved, tmp_path):
    blob = saved[2]
    _, _, header_len = PREFIX.unpack_from(blob)
    data_start = PREFIX.size + header_len
    cuts = [0, 3, 8, 9, 11, 14, 15, PREFIX.size + header_len // 2, data_start - 1, data_start,
            data_start + 1, (data_start + len(blob)) // 2, len(blob) - 33, len(blob) - 32, len(blob) - 1]
    for cut in cuts:
        with pytest.raises(ModelFileError):
            load_bytes(tmp_path, blob[:cut])
        # and with a valid checksum over what is left, so the size checks themselves are hit
        # (cutting exactly the digest and resealing gives back the intact file)
        if cut > PREFIX.size and cut != len(blob) - 32:
            with pytest.raises(ModelFileError, match="header length|array section|truncated"):
                load_bytes(tmp_path, seal(blob[:cut]))


def test_header_length_field(saved, tmp_path):
    header, data = split(saved[2])
    raw = json.dumps(header).encode()
    with pytest.raises(ModelFileError, match="header length"):
        load_bytes(tmp_path, assemble(raw, data, header_len=len(raw) + len(data) + 1))
    with pytest.raises(ModelFileError, match="header length .* exceeds"):
        load_bytes(tmp_path, assemble(raw + bytes(modelfile.MAX_HEADER), data,
                                      header_len=modelfile.MAX_HEADER + 1))
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_bytes(tmp_path, assemble(raw, data, header_len=len(raw) - 10))


@pytest.mark.parametrize("raw", [b"{", b"", b"[]", b'{"a": NaN}', b'{"model": 1, "model": 2}', b"\xff\xfe{}",
                                 b"[" * 100_000 + b"]" * 100_000, b'{"model": {}} trailing'])
def test_malformed_json(saved, tmp_path, raw):
    _, data = split(saved[2])
    with pytest.raises(ModelFileError, match="JSON|header"):
        load_bytes(tmp_path, assemble(raw, data))


def _node(h, name):
    return next(n for n in h["graph"]["nodes"] if n["name"] == name)


# (mutation of the parsed header, expected message); each produces a file with a valid checksum
HEADER_CORRUPTIONS = {
    "missing key": (lambda h: h.pop("labels"), "missing"),
    "extra key": (lambda h: h.update(extra=1), "unknown keys"),
    "model name type": (lambda h: h["model"].update(name=3), "model name"),
    "speed_test_only int": (lambda h: h["model"].update(speed_test_only=1), "speed_test_only"),
    "identity not object": (lambda h: h["model"].update(identity="x"), "identity"),
    "metadata list": (lambda h: h.update(metadata=[]), "metadata"),
    "labels string": (lambda h: h.update(labels="abc"), "expected a list"),
    "label number": (lambda h: h["labels"].append(5), "labels"),
    "label lone surrogate": (lambda h: h["labels"].append("\ud800"), "not valid Unicode"),
    "crop string": (lambda h: h["preprocess"].update(crop="227"), "preprocess crop"),
    "crop bool": (lambda h: h["preprocess"].update(crop=True), "preprocess crop"),
    "mean length": (lambda h: h["preprocess"].update(mean=[1, 2]), "preprocess mean"),
    "resample": (lambda h: h["preprocess"].update(resample="lanczos"), "preprocess resample"),
    "preprocess unknown": (lambda h: h["preprocess"].update(gamma=2.2), "unknown keys"),
    "nodes object": (lambda h: h["graph"].update(nodes={}), "expected a list"),
    "no nodes": (lambda h: h["graph"].update(nodes=[]), "no nodes"),
    "unknown layer": (lambda h: _node(h, "lrn").update(type="Conv3D"), "unknown layer type"),
    "type not string": (lambda h: _node(h, "lrn").update(type=["LRN"]), "unknown layer type"),
    "inputs string": (lambda h: _node(h, "lrn").update(inputs="pool"), "expected a list"),
    "input later": (lambda h: _node(h, "lrn").update(inputs=["fc"]), "no earlier node"),
    "arity": (lambda h: _node(h, "add").update(inputs=["pq1"]), "inputs"),
    "duplicate name": (lambda h: _node(h, "lrn").update(name="pool"), "not unique"),
    "output unknown": (lambda h: h["graph"].update(output="nowhere"), "not computed"),
    "stride short": (lambda h: _node(h, "c1")["attrs"].update(stride=[1]), "stride"),
    "stride zero": (lambda h: _node(h, "c1")["attrs"].update(stride=[0, 1]), "stride"),
    "pads negative": (lambda h: _node(h, "pad")["attrs"].update(pads=[-1, 0, 0, 0]), "pads"),
    "pads word": (lambda h: _node(h, "c1")["attrs"].update(pads="valid"), "pads"),
    "groups zero": (lambda h: _node(h, "dw")["attrs"].update(groups=0), "groups"),
    "groups mismatch": (lambda h: _node(h, "dw")["attrs"].update(groups=3), "groups"),
    "activation": (lambda h: _node(h, "c1")["attrs"].update(activation="gelu"), "activation"),
    "attr missing": (lambda h: _node(h, "c1")["attrs"].pop("groups"), "missing"),
    "attr unknown": (lambda h: _node(h, "c1")["attrs"].update(dilation=2), "unknown keys"),
    "pool mode": (lambda h: _node(h, "pool")["attrs"].update(mode="median"), "mode"),
    "ceil_mode int": (lambda h: _node(h, "pool")["attrs"].update(ceil_mode=1), "ceil_mode"),
    "lrn size": (lambda h: _node(h, "lrn")["attrs"].update(size=0), "size"),
    "lrn alpha string": (lambda h: _node(h, "lrn")["attrs"].update(alpha="1e-4"), "alpha"),
    "clip bound word": (lambda h: _node(h, "clip")["attrs"].update(hi="Infinity"), "hi"),
    "activation name": (lambda h: _node(h, "act")["attrs"].update(name="tanh"), "name"),
    "kind_of": (lambda h: _node(h, "pq1")["attrs"].update(kind_of="fc"), "FC layers"),
    "in_channels": (lambda h: _node(h, "pq1")["attrs"].update(in_channels=14), "M does not match"),
    "in_channels, same M": (lambda h: _node(h, "pq1")["attrs"].update(in_channels=10), "gets 8 input channels"),
    "pq missing": (lambda h: _node(h, "pq1").pop("pq"), "PQ setting missing"),
    "pq on conv": (lambda h: _node(h, "c1").update(pq={"dsub": 1, "ksub": 2, "bits": 1}), "PQ setting on"),
    "bits vs K": (lambda h: _node(h, "pq1")["pq"].update(bits=6), "needs 5"),
    "ksub range": (lambda h: _node(h, "pq1")["pq"].update(ksub=300, bits=9), "ksub"),
    "ksub vs codebooks": (lambda h: _node(h, "pq1")["pq"].update(ksub=18), "do not match"),
    "dsub vs codebooks": (lambda h: _node(h, "pq1")["pq"].update(dsub=4), "do not match"),
    "ksub vs codebooks, same bits": (lambda h: _node(h, "pqfc")["pq"].update(ksub=4), "do not match"),
    "dtype float64": (lambda h: array_entry(h, "c1.bias").update(dtype="float64"), "dtype"),
    "bias float16": (lambda h: (array_entry(h, "c1.bias").update(dtype="float16", shape=[16])), "not allowed"),
    "bits on floats": (lambda h: array_entry(h, "fc.weight").update(bits=8), "only uint8"),
    "shape negative": (lambda h: array_entry(h, "c1.bias").update(shape=[-8]), "shape"),
    "shape huge": (lambda h: array_entry(h, "c1.bias").update(shape=[2**40, 2**40]), "needs"),
    "shape too many dims": (lambda h: array_entry(h, "c1.bias").update(shape=[1] * 9 + [8]), "dimensions"),
    "weight rank": (lambda h: array_entry(h, "c1.weight").update(shape=[9, 3, 8]), "dimensions"),
    "weight transposed": (lambda h: array_entry(h, "fc.weight").update(shape=[10, 20]), "fit|inputs"),
    "bias shape": (lambda h: array_entry(h, "c1.bias").update(shape=[2, 4]), "dimensions"),
    "length": (lambda h: array_entry(h, "c1.bias").update(length=33), "needs"),
    "offset string": (lambda h: array_entry(h, "c1.bias").update(offset="0"), "offset"),
    "overlap": (lambda h: array_entry(h, "c1.bias").update(offset=array_entry(h, "c1.bias")["offset"] - 4),
                "overlaps"),
    "gap": (lambda h: array_entry(h, "c1.bias").update(offset=array_entry(h, "c1.bias")["offset"] + 4), "gap"),
    "duplicate array": (lambda h: h["arrays"].append(dict(h["arrays"][-1])), "twice"),
    "absurd padding": (lambda h: _node(h, "c1")["attrs"].update(pads=[65536] * 4), "GiB of memory"),
    "crop too small": (lambda h: h["preprocess"].update(crop=1), "smaller than"),
}


@pytest.mark.parametrize("case", sorted(HEADER_CORRUPTIONS))
def test_header_corruption(saved, tmp_path, case):
    mutate, message = HEADER_CORRUPTIONS[case]
    header, data = split(saved[2])
    mutate(header)
    with pytest.raises(ModelFileError, match=message):
        load_bytes(tmp_path, assemble(header, data))


def replace_array(header: dict, data: bytes, name: str, new: np.ndarray, **entry) -> bytes:
    """Swap one array's bytes (and table entry) for others, shifting the arrays after it."""
    e = array_entry(header, name)
    raw = new.tobytes()
    delta = len(raw) - e["length"]
    for a in header["arrays"]:
        if a["offset"] > e["offset"]:
            a["offset"] += delta
    start = e["offset"]
    e.update(length=len(raw), shape=list(new.shape), **entry)
    if "bits" not in entry:
        e.pop("bits", None)
    return data[:start] + raw + data[start + len(raw) - delta:]


def test_array_contents_that_do_not_fit_the_layer(saved, tmp_path):
    graph = saved[1]
    codes = graph["pqfc"].layer.codes
    cases = [
        ("pqfc.codes", pack_codes(codes, 3).reshape(-1), dict(bits=3, shape=list(codes.shape)),
         "packed at 3 bits, the layer's setting says 2"),
        ("pqfc.codes", codes, {}, "not allowed"),                              # unpacked codes
        ("c1.bias", np.zeros(4, np.float32), {}, "bias shape"),
        ("c1.bias", np.zeros(8, np.float16), dict(dtype="float16"), "not allowed"),
        ("aff.scale", np.zeros(5, np.float32), {}, "fit|aff"),
    ]
    for name, new, entry, message in cases:
        header, data = split(saved[2])
        shape = entry.pop("shape", None)
        data = replace_array(header, data, name, new, **entry)
        if shape is not None:
            array_entry(header, name)["shape"] = shape
        with pytest.raises(ModelFileError, match=message):
            load_bytes(tmp_path, assemble(header, data))


def test_arrays_outside_or_missing(saved, tmp_path):
    header, data = split(saved[2])
    last = header["arrays"][-1]
    with pytest.raises(ModelFileError, match="outside the array section"):
        load_bytes(tmp_path, assemble(header, data[:-4]))
    with pytest.raises(ModelFileError, match="arrays take"):
        load_bytes(tmp_path, assemble(header, data + b"\0"))
    header["arrays"].pop()                                     # drop the last array and its bytes
    with pytest.raises(ModelFileError, match=f"{last['name']}' is missing"):
        load_bytes(tmp_path, assemble(header, data[:last["offset"]]))
    # an extra array no layer owns
    header, data = split(saved[2])
    header["arrays"].append({**last, "name": "ghost.weight", "offset": len(data)})
    with pytest.raises(ModelFileError, match="belong to no layer"):
        load_bytes(tmp_path, assemble(header, data + data[last["offset"]:]))


@pytest.mark.parametrize("layer, value, mask", [("pqfc", 3, 0b11), ("pq1", 17, 0b11111), ("pq1", 31, 0b11111)])
def test_out_of_range_code_with_valid_checksum(saved, tmp_path, layer, value, mask):
    header, data = split(saved[2])
    entry = array_entry(header, f"{layer}.codes")
    data = bytearray(data)
    data[entry["offset"]] = (data[entry["offset"]] & ~mask) | value    # the first code
    with pytest.raises(ModelFileError, match=f"code {value} is >= K"):
        load_bytes(tmp_path, assemble(header, bytes(data)))


def test_nonzero_padding_bits_with_valid_checksum(tmp_path):
    model, _ = small_model()
    model = dataclasses.replace(model, preprocess=Preprocess(resize=2, crop=2))      # 2x2x3 = 12 inputs
    odd = random_pq(np.random.default_rng(5), "fc", 1, 1, 12, 3, dsub=4, ksub=4, bias=False)  # 9 2-bit codes
    save_model(tmp_path / "odd.qcnn", model, Graph([Node("q", odd, ("image",))], "image"))
    load_model_file(tmp_path / "odd.qcnn")
    header, data = split((tmp_path / "odd.qcnn").read_bytes())
    entry = array_entry(header, "q.codes")
    data = bytearray(data)
    data[entry["offset"] + entry["length"] - 1] |= 0b100
    with pytest.raises(ModelFileError, match="padding bits"):
        load_bytes(tmp_path, assemble(header, bytes(data)))


def test_missing_preprocess_keys_take_defaults(saved, tmp_path):
    header, data = split(saved[2])
    del header["preprocess"]["warp"]
    assert load_bytes(tmp_path, assemble(header, data))[0].preprocess.warp is False


# --------------------------------------------------------------------------- fuzzing

_edit = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**31), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 2**31), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 2**31), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 2**31), st.integers(1, 16)),
    st.tuples(st.just("digit"), st.integers(0, 2**31), st.integers(0, 9)),
)


def _fuzz_examples(default: int) -> int:
    """Examples per fuzzer: the default here; scripts/check-kernels.sh sets its own for the ASan run."""
    return int(os.environ.get("QCNN_FUZZ_EXAMPLES", default))


def _run_on_every_kernel(model: Model) -> None:
    """A file that loads must run: under every PQ implementation, through the C kernels (where the
    sanitizer build watches every read), on the input its preprocessing makes."""
    from qcnn.pq.engine import with_kernel
    x = np.random.default_rng(0).standard_normal((1, model.input_size, model.input_size, 3)).astype(np.float32)
    for kernel in ("exact", "fastscan", "reconstructed"):
        y = with_kernel(model.graph, kernel).forward(x)
        assert y.shape[0] == 1


@settings(max_examples=_fuzz_examples(300), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(_edit, min_size=1, max_size=3), reseal=st.booleans())
def test_fuzzed_files_load_or_raise_model_file_error(saved, tmp_path, edits, reseal):
    """Random damage gives a valid model or ModelFileError, never another exception.  Resealing
    the checksum after the damage lets it reach the parser behind the checksum."""
    blob = bytearray(saved[2][:-32] if reseal else saved[2])
    for op, pos, arg in edits:
        pos %= len(blob) + 1
        if op == "flip" and pos < len(blob):
            blob[pos] ^= 1 << arg
        elif op == "truncate":
            del blob[pos:]
        elif op == "insert":
            blob[pos:pos] = bytes([arg])
        elif op == "delete":
            del blob[pos:pos + arg]
        elif op == "digit":             # swap a digit in the header: sizes, offsets, shapes, attributes
            digits = [i for i in range(len(blob)) if 48 <= blob[i] <= 57][:2000]
            if digits:
                blob[digits[pos % len(digits)]] = 48 + arg
    blob = seal(bytes(blob)) if reseal else bytes(blob)
    try:
        model, metadata = load_bytes(tmp_path, blob)
    except ModelFileError:
        return
    assert isinstance(model, Model) and isinstance(metadata, dict)
    _run_on_every_kernel(model)


def _paths(value, prefix=()):
    """Every (path) into a parsed JSON value, for replacing one part of the header."""
    yield prefix
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        yield from _paths(v, prefix + (k,))


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.sampled_from([0, 1, 2, 3, 8, 255, 256, -1])
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
    | st.sampled_from(["same", "relu", "inf", "-inf", "float16", "uint8", "Conv2D", "PQLayer", "fc", "input"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=_fuzz_examples(150), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_headers_load_or_raise_model_file_error(saved, tmp_path, data):
    """One value anywhere in the header replaced by arbitrary JSON, with a valid checksum."""
    header, arrays = split(saved[2])
    paths = list(_paths(header))
    for _ in range(data.draw(st.integers(1, 2))):
        path = data.draw(st.sampled_from(paths[1:]))
        value = data.draw(_json_values)
        target = header
        try:
            for k in path[:-1]:
                target = target[k]
            target[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            pass                         # the first replacement removed this path
    try:
        model, _ = load_bytes(tmp_path, assemble(header, arrays))
    except ModelFileError:
        return
    _run_on_every_kernel(model)
