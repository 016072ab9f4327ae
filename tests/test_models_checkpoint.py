"""The restricted reader of legacy PyTorch checkpoints, as an attacker would feed it: round trips of
what torch writes, bombs that once hung it or made it allocate gigabytes, and fuzzing."""
import collections
import pickle
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from legacy_torch import LEGACY_MAGIC, View, legacy_bytes
from qcnn.models.torch_pickle import MAX_DEPTH, MAX_MEMO, CheckpointError, load_legacy_state_dict

REPO = Path(__file__).resolve().parent.parent
RESNET18 = REPO / "assets" / "models" / "kill-the-bits" / "resnet18_small_blocks.pth"


def header() -> bytes:
    return b"".join(pickle.dumps(v, protocol=2) for v in (LEGACY_MAGIC, 1001, {"little_endian": True}))


def same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    return type(a) is type(b) and a == b


def reason(data: bytes, name="f.pth") -> str:
    with pytest.raises(CheckpointError) as info:
        load_legacy_state_dict(data, name)
    assert info.value.path == name and str(info.value).startswith(f"{name}: ")
    return info.value.reason


# -- what torch writes --------------------------------------------------------------------------------
def test_the_kill_the_bits_file_round_trips_through_a_torch_style_writer():
    sd = load_legacy_state_dict(RESNET18.read_bytes(), str(RESNET18))
    assert sd["fc"]["assignments"].dtype == np.int16 and sd["fc"]["centroids"].dtype == np.float16
    assert sd["layer1.0.conv1"]["assignments"].dtype == np.uint8 and sd["layer1.0.conv1"]["n_blocks"] == 64
    assert sd["layer1.0.conv1"]["is_conv"] is True and sd["conv1"]["weight"].shape == (64, 3, 7, 7)
    assert same(load_legacy_state_dict(legacy_bytes(sd)), sd)


def test_views_offsets_scalars_and_shared_storages():
    base = np.arange(24, dtype=np.float32)
    data = legacy_bytes({"t": View("s", (3, 4), (1, 3), 2), "again": View("s", (24,), (1,)),
                         "scalar": View("s", (), (), 5), "empty": View("s", (0, 3), (3, 1))},
                        storages={"s": base})
    sd = load_legacy_state_dict(data)
    np.testing.assert_array_equal(sd["t"], np.lib.stride_tricks.as_strided(base[2:], (3, 4), (4, 12)))
    np.testing.assert_array_equal(sd["again"], base)
    assert sd["scalar"].shape == () and sd["scalar"] == 5 and sd["empty"].shape == (0, 3)
    sd["t"][0, 0] = -1                                   # copies, not views of one buffer
    assert sd["again"][2] == 2


# -- refused ------------------------------------------------------------------------------------------
def test_globals_beyond_the_allow_list_are_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "pwned"
    assert reason(header() + f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()) == "refusing to load global os.system"
    assert not marker.exists()
    # inside a real file: a storage class swapped for a callable
    data = RESNET18.read_bytes().replace(b"ctorch\nFloatStorage\n", b"cposix\nsystem\n")
    assert reason(data) == "refusing to load global posix.system"
    # the header pickles may hold no globals at all
    assert reason(pickle.dumps(LEGACY_MAGIC, 2) + b"ccollections\nOrderedDict\n)R.").startswith("refusing")


def test_big_endian_files_are_refused():
    data = b"".join(pickle.dumps(v, protocol=2) for v in (LEGACY_MAGIC, 1001, {"little_endian": False}))
    assert reason(data + pickle.dumps({}, 2) + pickle.dumps([], 2)) == "written on a big-endian machine: not supported"


@pytest.mark.parametrize("cut", [0, 1, 10, 137, 5000, 100000, -1])
def test_truncation_anywhere_is_one_clear_error(cut):
    data = RESNET18.read_bytes()
    assert reason(data[:cut % len(data)]).startswith(("truncated", "corrupt", "not a legacy", "storages claim"))


def memo_bombs() -> dict[str, bytes]:
    """~2.7 KB each: level i holds level i - 1 twice (through the memo), 70 levels.  A walk that
    follows every reference visits 2**70 nodes; nested tuples used as a dict key make hashing
    them as slow (the C unpickler hashes while it loads, so it never returned)."""
    levels = 70
    dicts = b"\x80\x02}(X\x02\x00\x00\x00w0}r\x00\x00\x00\x00"
    for i in range(1, levels + 1):
        prev, key = struct.pack("<I", i - 1), f"w{i}".encode()
        dicts += b"X" + struct.pack("<I", len(key)) + key          # outer key, then level i:
        dicts += b"}(X\x01\x00\x00\x00aj" + prev + b"X\x01\x00\x00\x00bj" + prev + b"ur" + struct.pack("<I", i)
    tuples = b"\x80\x02)r\x00\x00\x00\x00" + b"".join(
        b"j" + struct.pack("<I", i - 1) + b"j" + struct.pack("<I", i - 1) + b"\x86r" + struct.pack("<I", i)
        for i in range(1, levels + 1))
    assert 2500 < len(dicts) < 3000
    return {"shared dicts": header() + dicts + b"u." + pickle.dumps([], 2),
            "tuple key": header() + tuples + b"}j" + struct.pack("<I", levels) + b"Ns." + pickle.dumps([], 2)}


@pytest.mark.parametrize("kind", ["shared dicts", "tuple key"])
def test_memo_reference_bombs_finish_at_once(tmp_path, kind, linux):
    data = memo_bombs()[kind]
    assert len(data) < 3200
    message, _ = run_isolated(tmp_path, data)          # a hang fails on the time limit
    if kind == "shared dicts":   # loaded, each level converted once (shared as in the file)
        assert message == "loaded"
        sd = load_legacy_state_dict(data)
        assert sd["w70"]["a"] is sd["w70"]["b"] is sd["w69"]
    else:
        assert message == "dictionary key is not a string or an integer"


def test_memo_size_is_bounded():
    many = b"\x80\x02N" + b"".join(b"r" + struct.pack("<I", i) for i in range(MAX_MEMO + 1)) + b"."
    assert reason(header() + many) == f"pickle memo holds more than {MAX_MEMO} entries"


# Peak RSS from VmHWM: ru_maxrss would include the forked copy of pytest before exec.
BOMB_SCRIPT = textwrap.dedent("""
    import re, sys
    from qcnn.models.torch_pickle import CheckpointError, load_legacy_state_dict
    try:
        load_legacy_state_dict(open(sys.argv[1], "rb").read(), "bomb.pth")
        print("loaded")
    except CheckpointError as exc:
        print(exc.reason)
    print(int(re.search(r"VmHWM:\\s*(\\d+) kB", open("/proc/self/status").read()).group(1)) // 1024)
""")


@pytest.fixture
def linux():
    if not Path("/proc/self/status").exists():
        pytest.skip("peak memory is read from /proc/self/status (Linux)")


def run_isolated(tmp_path, data: bytes) -> tuple[str, int]:
    """(error reason, peak RSS in MiB) of loading `data` in a fresh process with a time limit."""
    path = tmp_path / "bomb.pth"
    path.write_bytes(data)
    done = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, str(path)], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    message, rss = done.stdout.strip().splitlines()
    return message, int(rss)


@pytest.mark.parametrize("kind", ["stride-0 view", "storage that claims 3 GB", "many views of one storage"])
def test_small_files_cannot_make_the_reader_allocate_gigabytes(tmp_path, kind, linux):
    one = {"s": np.zeros(1, np.float32)}
    if kind == "stride-0 view":          # 750 M float32 = 3 GB from one stored number
        data = legacy_bytes({"w": View("s", (750_000_000,), (0,))}, storages=one)
        expect = "tensor of shape (750000000,) has more elements than its storage (1)"
    elif kind == "storage that claims 3 GB":
        data = legacy_bytes({"w": View("s", (1,), (1,))}, storages=one, numel_claims={"s": 750_000_000})
        expect = "storages claim 3000000000 bytes"
    else:                                # 20,000 references to a 40 KB tensor: 800 MB
        big = {"s": np.zeros(10_000, np.float32)}
        view = View("s", (10_000,), (1,))
        data = legacy_bytes({"w": [view] * 20_000}, storages=big)
        expect = "tensors ask for 800000000 bytes"
    assert len(data) < 120_000
    message, rss = run_isolated(tmp_path, data)
    assert message.startswith(expect), message
    assert rss < 400, f"peak RSS {rss} MiB"


# -- fuzzing ------------------------------------------------------------------------------------------
DTYPES = [np.float32, np.float16, np.float64, np.int64, np.int32, np.int16, np.int8, np.uint8, np.bool_]
arrays = st.builds(
    lambda dtype, shape, seed: np.asarray(np.random.default_rng(seed).standard_normal(shape) * 50).astype(dtype),
    st.sampled_from(DTYPES), st.lists(st.integers(0, 4), max_size=4).map(tuple), st.integers(0, 2**31))
values = st.recursive(
    arrays | st.integers(-2**40, 2**40) | st.booleans() | st.none() | st.text(max_size=8) | st.floats(allow_nan=False),
    lambda inner: st.dictionaries(st.text(max_size=6) | st.integers(-5, 5), inner, max_size=4)
    | st.lists(inner, max_size=4), max_leaves=12)
state_dicts = st.dictionaries(st.text(min_size=1, max_size=12), values, max_size=6)


@settings(max_examples=150, deadline=None)
@given(state_dicts)
def test_fuzz_round_trip_of_generated_state_dicts(sd):
    assert same(load_legacy_state_dict(legacy_bytes(sd)), sd)


SMALL = legacy_bytes(collections.OrderedDict(
    [("a.weight", np.arange(6, dtype=np.float16).reshape(2, 3)), ("a", {"n": 3, "codes": np.arange(4, dtype=np.uint8)}),
     ("b", [np.ones(2, np.int64), True])]))


def load_or_refuse(data: bytes):
    try:
        out = load_legacy_state_dict(data, "fuzz.pth")
    except CheckpointError as exc:
        assert exc.path == "fuzz.pth" and exc.reason
        return None
    assert isinstance(out, dict)
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "cut"]), st.integers(0, len(SMALL) - 1),
                          st.integers(0, 255)), min_size=1, max_size=6))
def test_fuzz_mutated_files_load_or_raise_checkpoint_error(edits):
    data = bytearray(SMALL)
    for what, pos, byte in edits:
        pos %= max(len(data), 1)
        if what == "flip" and data:
            data[pos] ^= byte or 1
        elif what == "insert":
            data.insert(pos, byte)
        elif what == "delete" and data:
            del data[pos]
        else:
            del data[pos:]
    load_or_refuse(bytes(data))


SNIPPETS = [b"}", b"]", b")", b"(", b"t", b"\x85", b"\x86", b"\x87", b"X\x01\x00\x00\x00k", b"X\xff\xff\xff\x7f",
            b"\x8c\x02ab", b"K\x07", b"M\x00\x01", b"J\xff\xff\xff\xff", b"\x8a\x01\xff", b"\x8a\xff", b"G" + b"\x00" * 8,
            b"q\x00", b"q\x01", b"h\x00", b"h\x01", b"r\x05\x00\x00\x00", b"j\x05\x00\x00\x00", b"\x94", b"s", b"u",
            b"a", b"e", b"N", b"\x88", b"\x89", b"R", b"b", b"Q", b"0", b"2", b"\x8f", b"\x95", b"c",
            b"ccollections\nOrderedDict\n", b"ctorch\nFloatStorage\n", b"ctorch\nByteStorage\n",
            b"ctorch._utils\n_rebuild_tensor_v2\n", b"ctorch._utils\n_rebuild_parameter\n", b"cbuiltins\ngetattr\n",
            b"X\x07\x00\x00\x00storage", b"X\x03\x00\x00\x00cpu", b"X\x01\x00\x00\x000"]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(SNIPPETS), max_size=40), st.binary(max_size=24))
def test_fuzz_opcode_streams_load_or_raise_checkpoint_error(ops, tail):
    load_or_refuse(header() + b"\x80\x02" + b"".join(ops) + b"." + pickle.dumps(["0"], 2) + tail)
