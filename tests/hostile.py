"""Hostile inputs, crafted as an attacker would, for every surface that reads what users hand qcnn.

`python tests/hostile.py` tries every attack against the real entry points and prints, per
surface, how many inputs were tried and how they were handled; tests/test_hostile.py runs the same
attacks (plus hypothesis fuzzers and the memory and kill drills) and fails on any defect.

An attack feeds one input to a surface's reader.  Outcomes:
  refused   the reader raised the surface's own error (ImageLoadError, ModelFileError, ValueError,
            exit status 2) with a message that names the input
  accepted  the input was valid after all and was processed (classified, run, costed) in bounds
  DEFECT    any other exception (a traceback for the user), a message that does not name the input,
            or more than LIMIT_S seconds (a hang)
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from qcnn import layers as L                                                  # noqa: E402
from qcnn.cli import main                                                     # noqa: E402
from qcnn.graph import Graph, Node                                            # noqa: E402
from qcnn.imageio import FORMATS, ImageLoadError, load_image                  # noqa: E402
from qcnn.models import Model                                                 # noqa: E402
from qcnn.pq import modelfile                                                 # noqa: E402
from qcnn.pq.layer import PQLayer                                             # noqa: E402
from qcnn.pq.modelfile import MAGIC, METADATA, ModelFileError, load_model_file, save_model  # noqa: E402
from qcnn.preprocess import Preprocess                                        # noqa: E402

LIMIT_S = 20.0                    # a reader that takes longer than this on a tiny input hangs
SAMPLES = HERE.parent / "assets" / "samples"


@dataclass
class Attack:
    surface: str
    name: str
    run: Callable[[], object]     # raises the surface's error to refuse; returns when it accepts
    refused_by: tuple = ()        # the surface's own error types
    must: str = "either"          # "refuse", "accept" or "either"
    names: str | None = None      # text a refusal's message must contain (the file's name)


@dataclass
class Outcome:
    attack: Attack
    kind: str                     # "refused", "accepted" or "DEFECT"
    message: str
    seconds: float

    @property
    def ok(self) -> bool:
        if self.kind == "DEFECT":
            return False
        return self.attack.must in ("either", self.kind[:6])


def attempt(attack: Attack) -> Outcome:
    """Run one attack in a thread with a time bound; classify what happened."""
    result: dict = {}

    def target():
        try:
            result["value"] = attack.run()
        except attack.refused_by as exc:                 # noqa: B030 - a tuple of types
            result["refused"] = exc
        except SystemExit as exc:                         # argparse refusing an argument
            result["exit"] = exc
        except BaseException as exc:                      # noqa: BLE001 - that is the point
            result["defect"] = exc

    t0 = time.perf_counter()
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(LIMIT_S)
    seconds = time.perf_counter() - t0
    if worker.is_alive():
        return Outcome(attack, "DEFECT", f"still running after {LIMIT_S:.0f} s (a hang)", seconds)
    if "defect" in result:
        exc = result["defect"]
        return Outcome(attack, "DEFECT", f"{type(exc).__name__}: {exc}"[:300], seconds)
    if "exit" in result:
        code = result["exit"].code
        kind = "refused" if code == 2 else "DEFECT"
        return Outcome(attack, kind, f"exit status {code}", seconds)
    if "refused" in result:
        text = str(result["refused"])
        if attack.names and attack.names not in text:
            return Outcome(attack, "DEFECT", f"message does not name {attack.names!r}: {text}"[:300], seconds)
        return Outcome(attack, "refused", text[:300], seconds)
    value = result.get("value")
    if isinstance(value, int) and not isinstance(value, bool) and value not in (0, 1):   # a CLI exit status
        return Outcome(attack, "DEFECT", f"exit status {value}", seconds)
    return Outcome(attack, "accepted", "", seconds)


class CliRefusal(Exception):
    """`qcnn` exited with status 2 (a clean refusal); the message is what it printed."""


def cli(argv: list[str]) -> int:
    """Run `qcnn argv` in-process; a refusal (status 2) raises CliRefusal with its stderr, anything
    that looks like a crash (a traceback, an internal error) is returned as status 3."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(argv)
    except SystemExit as exc:                       # argparse
        rc = exc.code
    text = err.getvalue()
    if "Traceback" in text or "internal error" in text:
        raise AssertionError(f"crashed: {text[-300:]}")
    if rc == 2:
        raise CliRefusal(text.strip().splitlines()[-1] if text.strip() else "(no message)")
    return rc


# =========================================================================== special files

def special_files(folder: Path, suffix: str) -> Iterator[tuple[str, Path]]:
    """A FIFO, a directory, a character device, a socket, dangling and looping symlinks, all
    named like the real thing."""
    fifo = folder / f"fifo{suffix}"
    os.mkfifo(fifo)
    yield "named pipe (FIFO)", fifo
    (folder / f"dir{suffix}").mkdir()
    yield "directory", folder / f"dir{suffix}"
    (folder / f"zero{suffix}").symlink_to("/dev/zero")
    yield "symlink to /dev/zero", folder / f"zero{suffix}"
    (folder / f"fifo-link{suffix}").symlink_to(fifo)
    yield "symlink to a FIFO", folder / f"fifo-link{suffix}"
    sock = folder / f"s{suffix}"
    if len(str(sock)) < 100:                 # AF_UNIX path limit
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(sock))
        yield "unix socket", sock
    (folder / f"dangling{suffix}").symlink_to(folder / "nowhere")
    yield "dangling symlink", folder / f"dangling{suffix}"
    (folder / f"loop{suffix}").symlink_to(folder / f"loop{suffix}")
    yield "symlink loop", folder / f"loop{suffix}"
    yield "missing file", folder / f"missing{suffix}"


# =========================================================================== images

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG that claims width x height pixels and carries (almost) none: a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(idat))
            + _png_chunk(b"IEND", b""))


def png_of(width: int, height: int) -> bytes:
    """A real, complete PNG of width x height black pixels (a 1 x 20000 one is 99 bytes)."""
    raw = b"".join(b"\x00" + b"\x00" * (3 * width) for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw, 9))
            + _png_chunk(b"IEND", b""))


def png_with_text_bomb() -> bytes:
    """A 4x4 PNG with a zTXt chunk that inflates to 64 MB."""
    good = png_of(4, 4)
    bomb = _png_chunk(b"zTXt", b"comment\x00\x00" + zlib.compress(b"A" * 64_000_000, 9))
    return good[:33] + bomb + good[33:]


def _encoded(fmt: str, image: Image.Image, **kwargs) -> bytes | None:
    buffer = io.BytesIO()
    try:
        image.save(buffer, fmt, **kwargs)
    except Exception:            # a format Pillow can name but not write here (stubs, modes)
        return None
    return buffer.getvalue()


EPS_LOOP = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
            b"{ 1 pop } loop\nshowpage\n%%EOF\n")           # Ghostscript would run this forever

OTHER_FILES = {
    "EPS with an endless loop": EPS_LOOP,
    "DOS EPS binary header": b"\xc5\xd0\xd3\xc6" + struct.pack("<6I", 30, len(EPS_LOOP), 0, 0, 0, 0) + b"\xff\xff"
                             + EPS_LOOP,
    "PostScript": b"%!PS\n{ } loop\n",
    "PDF": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n",
    "SVG": b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
    "HTML": b"<!doctype html><img src=x onerror=alert(1)>",
    "text": b"just some text\n" * 20,
    "ZIP": b"PK\x03\x04" + b"\x00" * 26,
    "ELF": b"\x7fELF\x02\x01\x01" + b"\x00" * 57,
    "empty": b"",
    "one byte": b"\x89",
    "random bytes": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
    "BMP magic, garbage": b"BM" + b"\xff" * 60,
    "PNG magic, garbage": b"\x89PNG\r\n\x1a\n" + b"\xff" * 60,
    "JPEG magic, garbage": b"\xff\xd8\xff\xe0" + b"\x00" * 60,
    "GIF magic, garbage": b"GIF89a" + b"\xff" * 60,
    "TIFF magic, garbage": b"II*\x00" + b"\xff" * 60,
    "WebP magic, garbage": b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\xff" * 60,
    "PPM claims 10^9 pixels": b"P6\n100000 10000\n255\n" + b"\x00" * 64,
    "PNG claims 30000 x 30000": png_header_only(30000, 30000),
    "PNG claims 2^31-1 x 1": png_header_only(2**31 - 1, 1),
    "GIF claims 65535 x 65535": b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00"
                               + b",\x00\x00\x00\x00" + struct.pack("<HH", 65535, 65535) + b"\x00\x02\x02D\x01\x00;",
    "BMP claims 2^31-1 wide": b"BM" + struct.pack("<IHHI", 60, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, 2**31 - 1,
                                                                                        1, 1, 24, 0, 0, 0, 0, 0, 0),
    "PNG with a 64 MB zTXt bomb": png_with_text_bomb(),
}

ASPECTS = [(1, 20000), (1, 100000), (100000, 1), (1, 1), (2, 65500), (65500, 2)]


def image_attacks(folder: Path) -> Iterator[Attack]:
    from qcnn.imageio import IMAGE_EXTENSIONS
    pre = Preprocess()

    def reader(path: Path):
        return lambda: pre(load_image(path)).shape

    def attack(name, data, suffix=".jpg", must="refuse"):
        path = folder / f"{len(os.listdir(folder))}{suffix}"
        path.write_bytes(data)
        return Attack("images", name, reader(path), (ImageLoadError,), must, path.name)

    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    Image.init()
    for fmt in sorted(set(Image.SAVE) - set(FORMATS) - {"MPO"}):
        for mode in ("RGB", "L", "1"):
            data = _encoded(fmt, photo.convert(mode))
            if data is not None:
                yield attack(f"{fmt} ({mode}) named .jpg", data)
                yield attack(f"{fmt} ({mode}) named .png", data, ".png")
                break
    for name, data in OTHER_FILES.items():
        for suffix in (".jpg", ".bmp"):
            yield attack(f"{name} ({suffix})", data, suffix)
    for kind, path in special_files(folder, ".jpg"):
        yield Attack("images", kind, reader(path), (ImageLoadError,), "refuse", path.name)
    for w, h in ASPECTS:
        yield attack(f"PNG {w}x{h} ({len(png_of(w, h))} bytes)", png_of(w, h), ".png", must="accept")
    # every allowed format, intact (accepted) and cut at several points (refused, never worse)
    for fmt, kwargs in (("PNG", {}), ("JPEG", {"quality": 90}), ("JPEG", {"progressive": True}), ("BMP", {}),
                        ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"}), ("WEBP", {}), ("GIF", {}),
                        ("PPM", {})):
        data = _encoded(fmt, photo, **kwargs)
        yield attack(f"{fmt} {kwargs} intact", data, ".img", must="accept")
        for cut in (1, 8, 16, 40, len(data) // 3, len(data) // 2, len(data) - 8, len(data) - 1):
            yield attack(f"{fmt} {kwargs} cut at {cut} of {len(data)}", data[:cut], ".img", must="either")
    assert ".jpg" in IMAGE_EXTENSIONS


# =========================================================================== model files

def victim(crop: int = 8) -> tuple[Model, Graph]:
    """A tiny valid model the attacks start from: every attack is one edit of its file."""
    rng = np.random.default_rng(3)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    m = 2
    pq = PQLayer("fc", f32(1, m, 16, 2), rng.integers(0, 16, (1, 1, m, 5), dtype=np.uint8), 4, f32(5))
    nodes = [Node("conv", L.Conv2D(f32(3, 3, 3, 4), f32(4), pads=(1, 1, 1, 1), activation="relu"), ("input",)),
             Node("pool", L.Pool2D("max", (2, 2), (2, 2)), ("conv",)),
             Node("gap", L.GlobalAvgPool(), ("pool",)),
             Node("flat", L.Flatten(), ("gap",)),
             Node("fc", pq, ("flat",)),
             Node("prob", L.Softmax(), ("fc",))]
    graph = Graph(nodes)
    model = Model("victim", graph, Preprocess(resize=crop, crop=crop), tuple(f"c{i}" for i in range(5)),
                  "hostile-input target", True, {"name": "victim", "sha256": "00" * 32})
    return model, graph


def _split(blob: bytes) -> tuple[dict, bytes]:
    n = struct.unpack_from("<I", blob, 10)[0]
    return json.loads(blob[14:14 + n]), blob[14 + n:-32]


def _assemble(header: dict, arrays: bytes) -> bytes:
    raw = json.dumps(header).encode()
    body = MAGIC + struct.pack("<HI", 1, len(raw)) + raw + arrays
    return body + hashlib.sha256(body).digest()     # a valid checksum: the parser behind it is hit


def _victim_blob() -> bytes:
    model, graph = victim()
    with tempfile.TemporaryDirectory() as tmp:
        save_model(Path(tmp) / "v.qcnn", model, graph, {"app": "hostile"})
        return (Path(tmp) / "v.qcnn").read_bytes()


def _node(h: dict, name: str) -> dict:
    return next(n for n in h["graph"]["nodes"] if n["name"] == name)


def _add_nodes(h: dict, records: list[dict], output: str) -> None:
    """Keep the victim's first conv, then `records` instead of the rest."""
    h["graph"]["nodes"] = [_node(h, "conv")] + records
    h["graph"]["output"] = output
    h["arrays"] = [a for a in h["arrays"] if a["name"] in ("conv.weight", "conv.bias")]


def _only_conv_arrays(blob_arrays: bytes, h: dict) -> bytes:
    end = max(a["offset"] + a["length"] for a in h["arrays"])
    return blob_arrays[:end]


# name -> edit of the victim's header (returning nothing), on a valid checksum
GEOMETRY_EDITS: dict[str, Callable[[dict], None]] = {
    "conv: pads 65536, stride 65536 (48 GiB padded copy)":
        lambda h: _node(h, "conv")["attrs"].update(pads=[65536] * 4, stride=[65536, 65536]),
    "conv: pads 65536, stride 1":
        lambda h: _node(h, "conv")["attrs"].update(pads=[65536] * 4),
    "crop 65536 (48 GiB input)": lambda h: h["preprocess"].update(crop=65536, resize=65536),
    "crop 30000": lambda h: h["preprocess"].update(crop=30000, resize=30000),
    "resize 65536, crop 8 (resize only: harmless now)": lambda h: h["preprocess"].update(resize=65536),
    "resize 65536 warp, crop 8 (harmless now)": lambda h: h["preprocess"].update(resize=65536, warp=True),
    "pool: image-sized window, stride 1, pads window-1":
        lambda h: (h["preprocess"].update(crop=224, resize=256),
                   _node(h, "pool")["attrs"].update(kernel=[112, 112], stride=[1, 1], pads=[111] * 4)),
    "pool: window 65536": lambda h: _node(h, "pool")["attrs"].update(kernel=[65536, 65536]),
    "pool: pads larger than the window": lambda h: _node(h, "pool")["attrs"].update(pads=[5, 5, 5, 5]),
    "pool: pads = window (all-padding windows average nothing)":
        lambda h: _node(h, "pool")["attrs"].update(mode="avg", pads=[2, 2, 2, 2]),
    "pool: stride 65536, ceil mode (one window)": lambda h: _node(h, "pool")["attrs"].update(stride=[65536, 65536], ceil_mode=True),
    "FC PQ layer with pads 1 (C kernels gave 4x the outputs)":
        lambda h: _node(h, "fc")["attrs"].update(pads=[1, 1, 1, 1]),
    "FC PQ layer with stride 2": lambda h: _node(h, "fc")["attrs"].update(stride=[2, 2]),
    "FC PQ layer with 'same' pads": lambda h: _node(h, "fc")["attrs"].update(pads="same"),
    "graph output is its input": lambda h: h["graph"].update(output="input"),
    "graph output is a middle node": lambda h: h["graph"].update(output="pool"),
    "node named like the input": lambda h: _node(h, "pool").update(name="input"),
    "node reads itself": lambda h: _node(h, "pool").update(inputs=["pool"]),
    "softmax over the image": lambda h: _node(h, "prob").update(inputs=["input"]),
}


def _edit_then(edit, more):
    def both(h):
        edit(h)
        more(h)
    return both


def _graph_edits() -> dict[str, Callable[[dict], None]]:
    """Edits that replace the network after the first conv with hostile layers."""
    big = {"name": "big", "type": "Pad", "inputs": ["conv"], "attrs": {"pads": [65536] * 4, "value": 0}}
    lrn = {"name": "lrn", "type": "LRN", "inputs": ["conv"],
           "attrs": {"size": 65536, "alpha": 1e-4, "beta": 0.75, "k": 1}}
    cat = {"name": "cat", "type": "Concat", "inputs": ["conv"] * 1024, "attrs": {}}
    cat2 = {"name": "cat2", "type": "Concat", "inputs": ["cat"] * 1024, "attrs": {}}
    relus = [{"name": f"r{i}", "type": "Activation", "inputs": [f"r{i - 1}" if i else "conv"], "attrs": {"name": "relu"}}
             for i in range(20000)]
    return {
        "Pad 65536 on every side (34 GiB)": lambda h: _add_nodes(h, [big], "big"),
        "LRN over 65536 channels at 224 px": lambda h: (h["preprocess"].update(crop=224, resize=256),
                                                        _add_nodes(h, [lrn], "lrn")),
        "Concat of 1024 inputs, twice (1M channels)": lambda h: (h["preprocess"].update(crop=64, resize=64),
                                                                 _add_nodes(h, [cat, cat2], "cat2")),
        "Concat of 1025 inputs": lambda h: _add_nodes(h, [{**cat, "inputs": ["conv"] * 1025}], "cat"),
        "20000 ReLU layers in a chain": lambda h: _add_nodes(h, relus, "r19999"),
    }


METADATA_VALUES = [5, -1, 1e308, "text", "", True, None, [], [1, 2], {}, {"a": 1}, {"name": 5},
                   {"conv": 5}, {"conv": {"dsub": 0, "ksub": 16}}, {"per_layer": []}, {"per_layer": {"fc": "x"}},
                   {"layers": {"fc": {"dsub": 2}}}, {"calib_count": "16"}, {"error_correction": "yes"},
                   {"seed": 1.5}, {"iterations": -3}, {"shrinkage": "1"}, {"name": "efficientnet-lite0"}]


def model_file_attacks(folder: Path) -> Iterator[Attack]:
    from qcnn.workbench import Workbench
    blob = _victim_blob()
    photo = load_image(SAMPLES / "cat.bmp")

    def reader(path: Path):
        def run():
            model, _ = load_model_file(path)
            bench = Workbench()
            dense, dense_graph, q, note = bench.open_model_file(path)   # what the app and eval do
            dense.classify(photo)
            model.classify(photo)
        return run

    def write(name: str, data: bytes, must: str = "refuse") -> Attack:
        path = folder / f"m{len(os.listdir(folder))}.qcnn"
        path.write_bytes(data)
        return Attack("model files", name, reader(path), (ModelFileError,), must, path.name)

    yield write("the victim itself", blob, must="accept")
    for name, edit in {**GEOMETRY_EDITS, **_graph_edits()}.items():
        header, arrays = _split(blob)
        edit(header)
        must = "accept" if any(w in name for w in ("harmless", "middle node", "20000 ReLU", "ceil mode")) else \
            "either" if "softmax over the image" in name else "refuse"
        yield write(name, _assemble(header, _only_conv_arrays(arrays, header)), must)
    for key in sorted(METADATA):
        for value in METADATA_VALUES:
            header, arrays = _split(blob)
            header["metadata"][key] = value
            yield write(f"metadata {key} = {json.dumps(value)[:30]}", _assemble(header, arrays), "either")
    # NaN and infinite weights with a valid checksum
    for bad in (np.nan, np.inf, -np.inf):
        header, arrays = _split(blob)
        entry = next(a for a in header["arrays"] if a["name"] == "conv.weight")
        arrays = bytearray(arrays)
        arrays[entry["offset"]:entry["offset"] + 4] = np.float32(bad).tobytes()
        yield write(f"conv weight {bad}", _assemble(header, bytes(arrays)))
    for kind, path in special_files(folder, ".qcnn"):
        yield Attack("model files", kind, reader(path), (ModelFileError,), "refuse", path.name)
    yield write("empty file", b"")
    yield write("magic only", MAGIC)
    yield write("header length 4 GiB", MAGIC + struct.pack("<HI", 1, 2**32 - 1) + b"{}" + b"\0" * 32)


def other_model_attack(folder: Path) -> Attack:
    """A file whose metadata names EfficientNet-Lite0 with its exact identity: it must not be paired
    with Lite0's dense network (it is the victim's network)."""
    from qcnn.models import load_model
    from qcnn.workbench import Workbench, model_key
    lite0 = load_model("efficientnet-lite0")
    model, graph = victim(224)
    path = folder / "claims-lite0.qcnn"
    save_model(path, model, graph, {"model_identity": model_key(lite0)})

    def run():
        dense, _, _, note = Workbench().open_model_file(path)
        if dense.name == "efficientnet-lite0" or "differs" not in note:
            raise AssertionError(f"paired with {dense.name}: {note!r}")
        return note
    return Attack("model files", "metadata names EfficientNet-Lite0 (exact identity)", run, (), "accept")


# =========================================================================== labels, configs, tables

LABEL_FILES = {
    "binary garbage": bytes(range(256)) * 8,
    "no header": b"cat.bmp,282\n",
    "wrong columns": b"name,label\ncat.bmp,282\n",
    "missing class": b"file,class_index\ncat.bmp\n",
    "class not a number": b"file,class_index\ncat.bmp,cat\n",
    "class 10^30": b"file,class_index\ncat.bmp,1000000000000000000000000000000\n",
    "negative class": b"file,class_index\ncat.bmp,-5\n",
    "a 200,000-character field": b"file,class_index\n" + b"x" * 200_000 + b",1\n",
    "NUL bytes": b"file,class_index\ncat.bmp\x00,282\n",
    "UTF-16": "file,class_index\ncat.bmp,282\n".encode("utf-16"),
    "empty": b"",
    "only the header": b"file,class_index\n",
    "10,000 rows of missing files": b"file,class_index\n" + b"".join(b"nope%d.jpg,1\n" % i for i in range(10000)),
    "rows naming FIFOs and directories": b"file,class_index\nfifo.jpg,1\ndir.jpg,2\nzero.jpg,3\n",
    "absolute path to /etc/passwd": b"file,class_index\n/etc/passwd,1\n",
    "unclosed quote": b'file,class_index\n"cat.bmp,282\n',
}

CONFIGS = {
    "not JSON": b"{layers:",
    "NaN": b'{"layers": {}, "shrinkage": NaN}',
    "Infinity": b'{"layers": {}, "seed": Infinity}',
    "a list": b"[1, 2]",
    "a string": b'"fast4"',
    "layers a number": b'{"layers": 5}',
    "setting empty": b'{"layers": {"Conv_9": {}}}',
    "dsub a word": b'{"layers": {"Conv_9": {"dsub": "a", "ksub": 16}}}',
    "dsub 0": b'{"layers": {"Conv_9": {"dsub": 0, "ksub": 16}}}',
    "dsub 10^9": b'{"layers": {"Conv_9": {"dsub": 1000000000, "ksub": 16}}}',
    "ksub 100000": b'{"layers": {"Conv_9": {"dsub": 4, "ksub": 100000}}}',
    "iterations a string": b'{"layers": {}, "iterations": "5"}',
    "iterations negative": b'{"layers": {}, "iterations": -1}',
    "config a number": b'{"config": 5}',
    "unknown key": b'{"layers": {}, "gamma": 1}',
    "unknown layer": b'{"layers": {"nope": {"dsub": 4, "ksub": 16}}}',
    "nested 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    "not UTF-8": b'{"layers": {"\xff": null}}',
    "empty": b"",
}

SENSITIVITY = {
    "a list": b"[]",
    "layer not an object": b'{"fc": 5}',
    "setting key garbage": b'{"fc": {"banana": {"agree": 1, "keep5": 1, "kl": 0}}}',
    "setting K 1": b'{"fc": {"4x1": {"agree": 1, "keep5": 1, "kl": 0}}}',
    "metrics missing": b'{"fc": {"4x16": {}}}',
    "metrics strings": b'{"fc": {"4x16": {"agree": "1", "keep5": 1, "kl": 0}}}',
    "not JSON": b"{",
    "key 10^40": b'{"fc": {"1' + b"0" * 40 + b'x16": {"agree": 1, "keep5": 1, "kl": 0}}}',
}


def text_attacks(folder: Path) -> Iterator[Attack]:
    from qcnn.dataset import read_labels
    from qcnn.evaluate import evaluate
    from qcnn.pq.search import read_sensitivity
    model, _ = victim()
    images = folder / "images"
    images.mkdir()
    for kind, _ in special_files(images, ".jpg"):
        pass
    (images / "cat.bmp").write_bytes((SAMPLES / "cat.bmp").read_bytes())

    def labels_reader(path):
        return lambda: evaluate(model, path, images).images

    for name, data in LABEL_FILES.items():
        path = folder / f"labels{len(os.listdir(folder))}.csv"
        path.write_bytes(data)
        yield Attack("labels files", name, labels_reader(path), (ValueError,), "either", path.name)
    for kind, path in special_files(folder, ".csv"):
        yield Attack("labels files", kind, labels_reader(path), (ValueError,), "refuse", path.name)

    onnx = _tiny_onnx(folder)
    for name, data in CONFIGS.items():
        path = folder / f"config{len(os.listdir(folder))}.json"
        path.write_bytes(data)
        yield Attack("config files", name, lambda p=path: cli(["cost", "--model", str(onnx), "--config", str(p)]),
                     (CliRefusal,), "either", path.name)
    for kind, path in special_files(folder, ".json"):
        yield Attack("config files", kind, lambda p=path: cli(["cost", "--model", str(onnx), "--config", str(p)]),
                     (CliRefusal,), "refuse", path.name)
    for name, data in SENSITIVITY.items():
        path = folder / f"sens{len(os.listdir(folder))}.json"
        path.write_bytes(data)
        yield Attack("sensitivity tables", name, lambda p=path: read_sensitivity(p), (ValueError,), "refuse",
                     path.name)
    for kind, path in special_files(folder, ".sens"):
        if kind not in ("missing file", "dangling symlink"):      # absent: the table is measured
            yield Attack("sensitivity tables", kind, lambda p=path: read_sensitivity(p), (ValueError,), "refuse",
                         path.name)


def _tiny_onnx(folder: Path) -> Path:
    sys.path.insert(0, str(HERE))
    from onnx_models import mini_alexnet
    return mini_alexnet(folder / "tiny.onnx")


# =========================================================================== command line

def cli_attacks(folder: Path) -> Iterator[Attack]:
    photo = str(SAMPLES / "cat.bmp")
    onnx = str(_tiny_onnx(folder))
    fifo = folder / "cli-fifo.onnx"
    os.mkfifo(fifo)
    bad_args = {
        "--threads 0": ["--threads", "0", "classify", photo],
        "--threads -1": ["--threads", "-1", "classify", photo],
        "--threads abc": ["--threads", "abc", "classify", photo],
        "--threads 10^100": ["--threads", "1" + "0" * 100, "classify", photo, "--model", onnx],
        "--top 0": ["classify", photo, "--top", "0"],
        "--top -3": ["classify", photo, "--top", "-3"],
        "--top 10^6": ["classify", photo, "--top", "1000000", "--model", onnx],
        "bench --runs 0": ["bench", "--runs", "0"],
        "bench --images-per-run -5": ["bench", "--images-per-run", "-5"],
        "bench --layer-repeats 0": ["bench", "--layer-repeats", "0"],
        "eval --limit 0": ["eval", "--images", str(SAMPLES), "--labels", "x.csv", "--limit", "0"],
        "--kernel bogus": ["eval", "--images", str(SAMPLES), "--labels", "x.csv", "--kernel", "bogus"],
        "unknown command": ["explode"],
        "eval without --images": ["eval", "--labels", "x.csv"],
        "classify without images": ["classify"],
        "unknown model": ["classify", photo, "--model", "nope"],
        "model is a FIFO": ["classify", photo, "--model", str(fifo)],
        "model is a directory": ["classify", photo, "--model", str(folder)],
        "model is /dev/zero": ["classify", photo, "--model", "/dev/zero"],
        "quantize -o a directory": ["quantize", "--model", onnx, "--config", str(_config(folder)), "-o", str(folder)],
        "quantize -o in a missing folder": ["quantize", "--model", onnx, "--config", str(_config(folder)),
                                            "-o", str(folder / "no" / "such" / "x.qcnn")],
        "cost of a .qcnn file": ["cost", "--model", "x.qcnn"],
        "preset of another model": ["cost", "--model", "alexnet", "--preset", "accurate"],
        "eval of an unreadable folder": ["eval", "--images", str(folder / "nowhere"), "--labels",
                                         str(folder / "nowhere" / "labels.csv")],
    }
    for name, argv in bad_args.items():
        yield Attack("command line", name, lambda a=argv: cli(a), (CliRefusal,), "either")


def _config(folder: Path) -> Path:
    path = folder / "ok-config.json"
    if not path.exists():
        from qcnn.models import load_model
        from qcnn.pq.settings import quantizable_layers
        names = [layer.name for layer in quantizable_layers(load_model(folder / "tiny.onnx").graph)]
        path.write_text(json.dumps({"layers": {names[1]: {"dsub": 4, "ksub": 16}}, "error_correction": False}))
    return path


# =========================================================================== the writer

def writer_attacks(folder: Path) -> Iterator[Attack]:
    """What the writer must refuse: everything the reader would refuse."""
    model, graph = victim()

    def saving(name, g=None, metadata=None, m=None):
        path = folder / f"w{len(os.listdir(folder))}.qcnn"

        def run():
            try:
                save_model(path, m or model, g or graph, metadata)
            finally:
                leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".")]
                if leftovers or (path.exists() and _load_refuses(path)):
                    raise AssertionError(f"left {leftovers} or wrote a file the reader refuses")
        return Attack("writer", name, run, (ModelFileError,), "refuse", path.name)

    conv = graph.nodes[0]
    cat = Graph([conv, Node("cat", L.Concat(), ("conv",) * 1025)])
    yield saving("Concat of 1025 inputs", cat)
    weight = conv.layer.weight.copy()
    weight[0, 0, 0, 0] = np.nan
    yield saving("NaN weight", Graph([Node("conv", L.Conv2D(weight, conv.layer.bias, pads=conv.layer.pads), ("input",))]))
    pool = Graph([conv, Node("pool", L.Pool2D("avg", (2, 2), (2, 2), (2, 2, 2, 2)), ("conv",))])
    yield saving("pool pads = window", pool)
    huge = Graph([conv, Node("pad", L.Pad((20000, 20000, 20000, 20000)), ("conv",))])
    yield saving("padding to 40008 x 40008 x 4 (24 GiB)", huge)
    for key in sorted(METADATA):
        yield saving(f"metadata {key} = [1, 2]", metadata={key: [1, 2]})
    yield saving("metadata not JSON (a set)", metadata={"x": {1, 2}})
    yield saving("labels too large for the header", m=Model(model.name, graph, model.preprocess,
                                                            ("x" * 1000,) * 5000, "", False, {}))


def _load_refuses(path: Path) -> bool:
    try:
        load_model_file(path)
    except ModelFileError:
        return True
    return False


# =========================================================================== driver

SURFACES = {
    "images": image_attacks,
    "model files": model_file_attacks,
    "labels/configs/tables": text_attacks,
    "command line": cli_attacks,
    "writer": writer_attacks,
}


def run_all(folder: Path, surfaces=SURFACES) -> list[Outcome]:
    outcomes = []
    for name, make in surfaces.items():
        sub = folder / name.replace("/", "-").replace(" ", "-")
        sub.mkdir()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            attacks = list(make(sub))
            if name == "model files":
                attacks.append(other_model_attack(sub))
            outcomes += [attempt(a) for a in attacks]
    return outcomes


def summary(outcomes: list[Outcome]) -> str:
    counts = Counter((o.attack.surface, o.kind) for o in outcomes)
    surfaces = list(dict.fromkeys(o.attack.surface for o in outcomes))
    lines = [f"{'surface':<20} {'tried':>6} {'refused':>8} {'accepted':>9} {'DEFECT':>7}  slowest"]
    for s in surfaces:
        mine = [o for o in outcomes if o.attack.surface == s]
        slow = max(mine, key=lambda o: o.seconds)
        lines.append(f"{s:<20} {len(mine):>6} {counts[s, 'refused']:>8} {counts[s, 'accepted']:>9} "
                     f"{counts[s, 'DEFECT']:>7}  {slow.seconds:.2f} s ({slow.attack.name[:40]})")
    lines.append(f"{'total':<20} {len(outcomes):>6}")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="one line per attack")
    args = p.parse_args()
    os.environ.setdefault("QCNN_CACHE_DIR", tempfile.mkdtemp(prefix="qcnn-hostile-cache-"))
    with tempfile.TemporaryDirectory() as tmp:
        results = run_all(Path(tmp))
    if args.verbose:
        for o in results:
            print(f"{o.attack.surface:<20} {o.kind:<8} {o.seconds:6.2f}s  {o.attack.name[:50]:<50} {o.message[:90]}")
    for o in results:
        if not o.ok:
            print(f"!! {o.attack.surface}: {o.attack.name}: expected {o.attack.must}, got {o.kind}: {o.message}")
    print(summary(results))
    raise SystemExit(0 if all(o.ok for o in results) else 1)
