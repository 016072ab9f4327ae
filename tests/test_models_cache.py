"""The converted-weights cache: damaged entries are rebuilt, an unusable directory means no caching
(never no model), concurrent converters never publish a partial file, entries name their maker."""
import contextlib
import errno
import json
import logging
import multiprocessing
import os
import re
import time
import zipfile

import numpy as np
import pytest

from qcnn.models import load_model
from qcnn.models import weights_cache as wc

DIGEST = "ab" * 32


def arrays(scale=1.0, n=1000):
    rng = np.random.default_rng(0)
    return {"a.weight": (rng.standard_normal((n, 64)) * scale).astype(np.float32), "a.bias": np.arange(3.0)}


class Converter:
    def __init__(self, **kw):
        self.calls, self.kw = 0, kw

    def __call__(self):
        self.calls += 1
        return arrays(**self.kw)


def convert(converter, version=1):
    return wc.cached_conversion("toy", DIGEST, version, converter)


@pytest.fixture
def warned(caplog):
    """warned(pattern): a context in which the cache must log one warning matching pattern."""
    @contextlib.contextmanager
    def expect(pattern):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=wc.__name__):
            yield
        messages = [r.getMessage() for r in caplog.records if r.name == wc.__name__]
        assert len(messages) == 1 and re.search(pattern, messages[0]), messages
    return expect


def same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QCNN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_entry_is_made_once_and_says_what_made_it(cache):
    c = Converter()
    first = convert(c)
    again = convert(c)
    assert c.calls == 1 and same(first, again) and same(first, arrays())
    (entry,) = cache.glob("*.npz")
    assert entry.name == f"toy-{DIGEST[:16]}-v1.npz"
    with np.load(entry) as z:
        meta = json.loads(bytes(z[wc.META]))
    assert meta == {"converter": "toy", "version": 1, "source_sha256": DIGEST,
                    "arrays": {"a.weight": [[1000, 64], "<f4"], "a.bias": [[3], "<f8"]}}
    assert not list(cache.glob(".*.tmp"))


def damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[:len(data) // 2]
    elif how == "empty":
        data = bytearray()
    elif how == "flipped byte":            # inside a.weight's data: only the zip CRC notices
        data[len(data) // 3] ^= 0x40
    elif how == "garbage":
        data = bytearray(b"not a zip" * 10)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "empty", "flipped byte", "garbage"])
def test_damaged_entry_is_removed_and_rebuilt(cache, how, warned, caplog):
    c = Converter()
    convert(c)
    (entry,) = cache.glob("*.npz")
    damage(entry, how)
    with warned("damaged cache entry removed"):
        rebuilt = convert(c)
    assert c.calls == 2 and same(rebuilt, arrays())
    with caplog.at_level(logging.WARNING, logger=wc.__name__):
        caplog.clear()                      # and sound again: no warning, no conversion
        assert same(convert(c), arrays()) and c.calls == 2
    assert not caplog.records


def test_entry_whose_record_disagrees_is_rebuilt(cache, warned):
    """A file under this name but made by another converter version (or from another source) is
    not trusted: the record inside decides, not the name."""
    convert(Converter())
    (v1,) = cache.glob("*.npz")
    v2 = v1.with_name(v1.name.replace("-v1", "-v2"))
    v1.rename(v2)
    c = Converter(scale=2.0)
    with warned("another converter version"):
        assert same(convert(c, version=2), arrays(scale=2.0))
    assert c.calls == 1
    with np.load(v2) as z:
        assert json.loads(bytes(z[wc.META]))["version"] == 2


def test_unusable_cache_directory_means_no_caching_with_a_message(tmp_path, monkeypatch, warned):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory should be")   # fails even for root
    monkeypatch.setenv("QCNN_CACHE_DIR", str(blocker))
    c = Converter()
    for _ in range(2):
        with warned("cannot cache converted toy weights"):
            assert same(convert(c), arrays())
    assert c.calls == 2 and blocker.read_text().startswith("a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_cache_directory(cache, warned):
    cache.mkdir()
    cache.chmod(0o555)
    try:
        with warned("cannot cache"):
            assert same(convert(Converter()), arrays())
    finally:
        cache.chmod(0o755)


def test_full_disk_leaves_no_partial_file(cache, monkeypatch, warned):
    real_save = wc._save

    def half_then_enospc(f, arrs, meta):
        f.write(b"PK\x03\x04" + b"\0" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(wc, "_save", half_then_enospc)
    c = Converter()
    with warned("No space left on device"):
        assert same(convert(c), arrays())
    assert not list(cache.iterdir())                # neither an entry nor a temporary file
    monkeypatch.setattr(wc, "_save", real_save)
    convert(c)
    assert c.calls == 2 and len(list(cache.glob("*.npz"))) == 1


def test_stale_temporary_files_of_killed_conversions_are_removed(cache):
    cache.mkdir()
    path = wc.entry_path("toy", DIGEST, 1)
    stale, fresh = cache / f".{path.name}.123-dead.tmp", cache / f".{path.name}.456-busy.tmp"
    for t in (stale, fresh):
        t.write_bytes(b"partial")
    old = time.time() - 2 * wc.STALE_TEMP_SECONDS
    os.utime(stale, (old, old))
    convert(Converter())
    assert not stale.exists() and fresh.exists()    # another process may still be writing that one


def _converter_process(cache_dir, start, results, i):
    os.environ["QCNN_CACHE_DIR"] = cache_dir
    start.wait()
    out = wc.cached_conversion("toy", DIGEST, 1, lambda: arrays(n=20000))     # 5 MB per entry
    results.put((i, same(out, arrays(n=20000))))


def _reader_process(cache_dir, start, stop, results):
    """Reads the entry over and over while the writers publish it: any partial file shows."""
    os.environ["QCNN_CACHE_DIR"] = cache_dir
    path = wc.entry_path("toy", DIGEST, 1)
    start.wait()
    seen, bad = 0, []
    while not stop.is_set():
        try:
            got = wc._read(path, "toy", DIGEST, 1)
            seen += 1
            if not same(got, arrays(n=20000)):
                bad.append("wrong arrays")
        except FileNotFoundError:
            pass
        except Exception as exc:
            bad.append(f"{type(exc).__name__}: {exc}")
    results.put(("reader", seen, bad))


def test_processes_converting_at_once_never_publish_a_partial_entry(cache):
    ctx = multiprocessing.get_context("fork")
    start, stop, results = ctx.Barrier(5), ctx.Event(), ctx.Queue()
    writers = [ctx.Process(target=_converter_process, args=(str(cache), start, results, i)) for i in range(4)]
    reader = ctx.Process(target=_reader_process, args=(str(cache), start, stop, results))
    for p in writers + [reader]:
        p.start()
    outcomes = [results.get(timeout=120) for _ in writers]
    stop.set()
    _, seen, bad = results.get(timeout=60)
    for p in writers + [reader]:
        p.join(timeout=60)
    assert sorted(outcomes) == [(i, True) for i in range(4)]
    assert not bad, bad[:3]
    assert seen > 0
    assert [p.name for p in cache.iterdir()] == [f"toy-{DIGEST[:16]}-v1.npz"]
    with zipfile.ZipFile(cache / f"toy-{DIGEST[:16]}-v1.npz") as z:
        assert z.testzip() is None


def test_default_model_loads_with_an_unusable_cache(tmp_path, monkeypatch, warned):
    blocker = tmp_path / "cache"
    blocker.write_text("not a directory")
    monkeypatch.setenv("QCNN_CACHE_DIR", str(blocker))
    with warned("cannot cache converted efficientnet-lite0 weights"):
        model = load_model("efficientnet-lite0")
    assert model.graph["fc"].layer.out_channels == 1000
