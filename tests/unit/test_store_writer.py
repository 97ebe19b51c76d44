"""The store's writer: record headers, torn tails and their repair, a crash between the values
and keys writes, rollback of a failed write, duplicate keys, one writer per shard, and a
SIGKILLed export resumed into the same bytes as an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import stage1.store.writer as store_writer
from stage1.store import (
    SOURCE_DIGEST,
    DuplicateKeyError,
    EmbeddingStore,
    StoreCorruptError,
    StoreError,
    StoreSpec,
    StoreWriter,
    create_store,
    encode_records,
    existing_keys,
    source_digest,
    verify,
)

from helpers.store import TXT, batch, digest_spec, new_store, raw_records

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("encoding", ["float16", "int8"])
def test_headers_round_trip_and_survive_a_torn_tail(tmp_path, encoding):
    spec = digest_spec(encoding=encoding)
    create_store(tmp_path / "digests", spec, 1)
    plain = new_store(tmp_path / "plain", TXT, encoding)
    keys, values = batch(range(5), TXT)
    digests = [source_digest(f"caption {i}") for i in range(5)]
    with StoreWriter(tmp_path / "digests", 0) as w, StoreWriter(tmp_path / "plain", 0) as p:
        w.write(keys[:3], values[:3], headers=digests[:3])
        p.write(keys, values)
    with open(tmp_path / "digests" / "rank0-values.bin", "ab") as f:
        f.write(b"\x07" * (spec.record_bytes - 1))  # a torn record
    with open(tmp_path / "digests" / "rank0-keys.txt", "ab") as f:
        f.write(b"k00")
    with StoreWriter(tmp_path / "digests", 0) as w:
        assert w.repair_message and existing_keys(tmp_path / "digests") == set(keys[:3])
        w.write(keys[3:4], values[3:4], headers=digests[3:4])
        w.write(keys[4:], values[4:])  # no headers given: zeros
    store, other = EmbeddingStore(tmp_path / "digests"), EmbeddingStore(tmp_path / "plain")
    assert store.has_source_digests and not other.has_source_digests
    assert store.get_headers(keys[3::-1]) == digests[3::-1]
    assert store.get_headers(keys[4:]) == [bytes(8)] and store.get_headers([]) == []
    assert other.get_headers(keys[:2]) == [b"", b""]
    np.testing.assert_array_equal(store.get_many(keys), other.get_many(keys))
    on_disk = raw_records(tmp_path / "digests")
    assert on_disk["k0002"][:8] == digests[2]
    assert on_disk["k0002"][8:] == raw_records(tmp_path / "plain")["k0002"]
    assert spec.record_bytes == plain.record_bytes + 8
    with pytest.raises(KeyError, match="k0042"):
        store.get_headers(["k0042"])
    assert verify(tmp_path / "digests").ok


def test_bad_headers_are_refused_and_nothing_is_written(tmp_path):
    create_store(tmp_path, digest_spec(), 1)
    keys, values = batch(range(2), TXT)
    good = source_digest("a")
    with StoreWriter(tmp_path, 0) as w:
        for bad in ([good], [good, good[:7]], [good, good + b"9"], [good, good.hex()]):
            with pytest.raises(ValueError, match="header"):
                w.write(keys, values, headers=bad)
    assert (tmp_path / "rank0-values.bin").stat().st_size == 0
    assert (tmp_path / "rank0-keys.txt").stat().st_size == 0
    new_store(tmp_path / "plain", TXT)
    with StoreWriter(tmp_path / "plain", 0) as w:
        with pytest.raises(ValueError, match="0 bytes"):
            w.write(keys, values, headers=[good, good])
        w.write(keys, values, headers=[b"", b""])
    with pytest.raises(ValueError, match="header_bytes"):
        StoreSpec(TXT, header_bytes=0, meta={"record_header": SOURCE_DIGEST})


def test_torn_tail_is_ignored_by_readers_and_repaired_by_the_writer(tmp_path):
    spec = new_store(tmp_path)
    rb = spec.record_bytes
    keys, values = batch(range(3))
    with StoreWriter(tmp_path, 0) as w:
        w.write(keys, values)
    with open(tmp_path / "rank0-values.bin", "ab") as f:
        f.write(b"\x01" * (rb // 2))  # half a record
    with open(tmp_path / "rank0-keys.txt", "ab") as f:
        f.write(b"k00")  # a partial key line
    assert existing_keys(tmp_path) == set(keys)
    assert len(EmbeddingStore(tmp_path)) == 3
    assert any("partial line" in p for p in verify(tmp_path).problems)
    with StoreWriter(tmp_path, 0) as w:
        assert "kept 3 complete records" in w.repair_message
        assert (tmp_path / "rank0-values.bin").stat().st_size == 3 * rb
        assert (tmp_path / "rank0-keys.txt").read_bytes().endswith(b"k0002\n")
        more_keys, more = batch(range(3, 5))
        w.write(more_keys, more)
    assert verify(tmp_path).ok
    np.testing.assert_array_equal(EmbeddingStore(tmp_path).get("k0004"), more[1].astype("f2"))


def test_crash_between_values_and_keys_write(tmp_path):
    spec = new_store(tmp_path)
    keys, values = batch(range(3))
    with StoreWriter(tmp_path, 0) as w:
        w.write(keys[:2], values[:2])
    with open(tmp_path / "rank0-values.bin", "ab") as f:  # values written, then the crash
        f.write(encode_records(values[2:], spec).tobytes())
    assert existing_keys(tmp_path) == set(keys[:2])
    report = verify(tmp_path)
    assert not report.ok
    assert any(
        "trailing garbage" in p and f"offset {2 * spec.record_bytes}" in p for p in report.problems
    )
    with StoreWriter(tmp_path, 0) as w:  # resume: the orphan record is dropped, then rewritten
        assert (tmp_path / "rank0-values.bin").stat().st_size == 2 * spec.record_bytes
        w.write(keys[2:], values[2:])
    assert verify(tmp_path).ok and len(EmbeddingStore(tmp_path)) == 3


def test_failed_write_rolls_back(tmp_path, monkeypatch):
    spec = new_store(tmp_path)
    keys, values = batch(range(3))
    real_write_all = store_writer._write_all
    calls = []

    def failing_keys_write(fd, data):
        calls.append(fd)
        if len(calls) == 2:  # the keys write of the first batch
            raise OSError(28, "No space left on device")
        real_write_all(fd, data)

    with StoreWriter(tmp_path, 0) as w:
        monkeypatch.setattr(store_writer, "_write_all", failing_keys_write)
        with pytest.raises(OSError, match="No space"):
            w.write(keys[:2], values[:2])
        assert (tmp_path / "rank0-values.bin").stat().st_size == 0
        monkeypatch.setattr(store_writer, "_write_all", real_write_all)
        w.write(keys, values)
    assert (tmp_path / "rank0-values.bin").stat().st_size == 3 * spec.record_bytes
    assert verify(tmp_path).ok


def test_existing_keys_across_ranks(tmp_path):
    new_store(tmp_path, world_size=2)
    keys, values = batch(range(5))
    with StoreWriter(tmp_path, 0) as w0, StoreWriter(tmp_path, 1) as w1:
        w0.write(keys[:2], values[:2])
        w1.write(keys[2:], values[2:])
        assert existing_keys(tmp_path) == set(keys)
    todo = [k for k in [*keys, "k0099"] if k not in existing_keys(tmp_path)]
    assert todo == ["k0099"]


def test_duplicate_keys_are_refused_and_detected(tmp_path):
    new_store(tmp_path, world_size=2)
    keys, values = batch(range(2))
    with StoreWriter(tmp_path, 0) as w:
        with pytest.raises(DuplicateKeyError, match="twice in one write"):
            w.write([keys[0], keys[0]], values)
        w.write(keys, values)
    with StoreWriter(tmp_path, 0) as w, pytest.raises(DuplicateKeyError, match="already stored"):
        w.write(keys[:1], values[:1])  # still known after reopening
    with StoreWriter(tmp_path, 1) as w:  # another rank does not check: existing_keys does
        w.write(keys[1:], values[1:])
    with pytest.raises(StoreCorruptError, match="k0001.*rank0.*rank1"):
        EmbeddingStore(tmp_path)
    assert any("stored twice" in p for p in verify(tmp_path).problems)


def test_one_writer_per_shard(tmp_path):
    new_store(tmp_path)
    with StoreWriter(tmp_path, 0), pytest.raises(StoreError, match="another writer"):
        StoreWriter(tmp_path, 0)
    StoreWriter(tmp_path, 0).close()  # released on close
    w = StoreWriter(tmp_path, 0)
    w.close()
    with pytest.raises(StoreError, match="closed"):
        w.write(*batch([0]))


def test_writer_needs_a_manifest_and_the_record_shape(tmp_path):
    with pytest.raises(StoreError, match="create_store"):
        StoreWriter(tmp_path, 0)
    new_store(tmp_path)
    with StoreWriter(tmp_path, 0) as w, pytest.raises(ValueError, match="shape"):
        w.write(["k"], np.zeros((1, 4, 3, 4), np.float32))


CHILD = """
import sys, time
import numpy as np
from stage1.store import StoreWriter
root, n = sys.argv[1], int(sys.argv[2])
with StoreWriter(root, 0) as w:
    for i in range(n):
        x = np.random.default_rng(i).standard_normal((16, 32, 32)).astype(np.float32)
        w.write([f"k{i:04d}"], x[None])
        print(i, flush=True)
        time.sleep(0.01)  # slow enough that the kill lands long before the end
"""


def test_sigkill_mid_export_then_resume_equals_uninterrupted(tmp_path):
    shape, n = (16, 32, 32), 300
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for root in (reference, killed):
        new_store(root, shape)
    with StoreWriter(reference, 0) as w:
        for i in range(n):
            w.write(*batch([i], shape))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(killed), str(n)],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env={**env, "OMP_NUM_THREADS": "1"},
    )
    try:
        for _ in range(30):  # let it write ~30 records, then kill it mid-loop
            assert child.stdout.readline(), "the writer process died before it was killed"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    done = existing_keys(killed)
    assert 30 <= len(done) < n
    with StoreWriter(killed, 0) as w:
        for i in range(n):
            keys, values = batch([i], shape)
            if keys[0] not in done:
                w.write(keys, values)
    assert verify(killed).ok
    assert raw_records(killed) == raw_records(reference)
