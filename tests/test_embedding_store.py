"""The embedding store: round trips, record headers (source digests), crash repair, resume,
duplicates, mismatches, manifest-less folders, legacy stores, verify and its progress, overflow,
DataLoader workers, disk-space refusal, the CLI and its one-line errors, SIGKILL resume."""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import subprocess
import sys
import warnings
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

import stage1.embedding_store as es
from stage1.cli import EXIT_USER_ERROR, error_line
from stage1.embedding_store import (
    DIGEST_BYTES,
    SOURCE_DIGEST,
    DuplicateKeyError,
    EmbeddingStore,
    Float16OverflowError,
    InsufficientDiskError,
    StoreCorruptError,
    StoreError,
    StoreMismatchError,
    StoreSpec,
    StoreWriter,
    check_disk_space,
    check_store_folder,
    create_store,
    estimate_bytes,
    existing_keys,
    finalize_manifest,
    format_bytes,
    source_digest,
    verify,
)
from stage1.errors import UserError
from stage1.store_cli import main

REPO = Path(__file__).resolve().parents[1]
IMG = (4, 3, 3)
TXT = (8, 16)
META = {
    "teacher": {"checkpoint": "random", "arch": "sam3_tiny"},
    "preprocessing": {"resize": "pad", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
    "context_length": 32,
}


def record(i: int, shape: tuple[int, ...] = IMG) -> np.ndarray:
    """The deterministic float32 embedding of key number ``i``."""
    return np.random.default_rng(i).standard_normal(shape).astype(np.float32)


def batch(ids, shape=IMG) -> tuple[list[str], np.ndarray]:
    ids = list(ids)
    return [f"k{i:04d}" for i in ids], np.stack([record(i, shape) for i in ids])


def new_store(root: Path, shape=IMG, encoding="float16", world_size=1, **meta) -> StoreSpec:
    spec = StoreSpec(shape, encoding, meta={**META, **meta})
    create_store(root, spec, world_size)
    return spec


def digest_spec(shape=TXT, encoding="float16") -> StoreSpec:
    """A text-store spec whose record headers carry each caption's source digest."""
    meta = {**META, "record_header": SOURCE_DIGEST}
    return StoreSpec(shape, encoding, header_bytes=DIGEST_BYTES, meta=meta)


def write_legacy(root: Path, shards=None) -> None:
    """A public-EfficientSAM3 store (no manifest, an int32 before each float16 record); by
    default rank 1 repeats key 0, as the public sampler pads its shards."""
    root.mkdir(parents=True, exist_ok=True)
    for rank, ids in (shards or {0: [0, 1, 2], 1: [3, 0]}).items():
        with open(root / f"rank{rank}-values.bin", "wb") as f:
            for i in ids:
                f.write(np.int32(12345 + i).tobytes())  # the unused "aug seed"
                f.write(record(i, TXT).astype("<f2").tobytes())
        (root / f"rank{rank}-keys.txt").write_text("".join(f"k{i:04d}\n" for i in ids))


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def raw_records(root: Path) -> dict[str, bytes]:
    """key -> record bytes, straight from the shard files (complete records only)."""
    rb = es.load_manifest(root)["spec"].record_bytes
    out = {}
    for keys_file in sorted(root.glob("rank*-keys.txt")):
        data = keys_file.with_name(keys_file.name.replace("keys.txt", "values.bin")).read_bytes()
        for i, key in enumerate(keys_file.read_bytes().split(b"\n")[:-1]):
            if (i + 1) * rb <= len(data):
                out[key.decode()] = data[i * rb : (i + 1) * rb]
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


# ----------------------------------------------------------------------------- spec


def test_spec_sizes_and_json_round_trip():
    fp16 = StoreSpec(IMG, "float16", meta=META)
    assert fp16.record_bytes == 2 * 36
    assert StoreSpec(IMG, "int8").record_bytes == 4 * 4 + 36
    assert StoreSpec(IMG, "float16", header_bytes=4).record_bytes == 76
    again = StoreSpec.from_json(fp16.to_json())
    assert again == fp16 and again.meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="encoding"):
        StoreSpec(IMG, "bfloat16")
    with pytest.raises(ValueError, match="JSON"):
        StoreSpec(IMG, meta={"bad": object()})


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("shape", [IMG, TXT])
def test_float16_round_trip_over_two_ranks(tmp_path, shape):
    new_store(tmp_path, shape, world_size=2)
    keys, values = batch(range(6), shape)
    with StoreWriter(tmp_path, 0) as w:
        w.write(keys[:4], values[:4])
    with StoreWriter(tmp_path, 1) as w:
        w.write(keys[4:], torch.from_numpy(values[4:]))
    store = EmbeddingStore(tmp_path)
    assert len(store) == 6 and store.keys() == sorted(keys) and "k0003" in store
    assert "nope" not in store
    for key, value in zip(keys, values):
        got = store.get(key)
        assert got.dtype == np.float16 and got.shape == shape
        np.testing.assert_array_equal(got, value.astype(np.float16))
    np.testing.assert_array_equal(store.get_many(keys[::-1]), values[::-1].astype(np.float16))
    out = np.zeros((2, *shape), np.float16)
    assert store.get_many(keys[4:], out=out) is out
    np.testing.assert_array_equal(out, values[4:].astype(np.float16))
    with pytest.raises(KeyError, match="k0042"):
        store.get_many([keys[0], "k0042"])
    with pytest.raises(KeyError, match="a-much-longer-key"):
        store.get_many([keys[0], "a-much-longer-key"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "non-writable tensor" warning
        tensor = store.get_torch("k0001")
    tensor += 1  # writable, and the store is unchanged
    np.testing.assert_array_equal(store.get("k0001"), values[1].astype(np.float16))
    with pytest.raises(KeyError, match="k9999"):
        store.get("k9999")


def test_empty_store_and_empty_shard(tmp_path):
    new_store(tmp_path, world_size=2)
    StoreWriter(tmp_path, 1).close()  # a rank that had nothing to write
    store = EmbeddingStore(tmp_path)
    assert len(store) == 0 and store.keys() == [] and "k0000" not in store
    assert store.get_many([]).shape == (0, *IMG)
    with pytest.raises(KeyError):
        store.get_many(["k0000"])
    assert verify(tmp_path).ok and existing_keys(tmp_path) == set()


def test_bfloat16_tensor_input(tmp_path):
    new_store(tmp_path)
    keys, values = batch(range(2))
    with StoreWriter(tmp_path, 0) as w:
        w.write(keys, torch.from_numpy(values).bfloat16())
    want = torch.from_numpy(values).bfloat16().float().numpy().astype(np.float16)
    np.testing.assert_array_equal(EmbeddingStore(tmp_path).get("k0001"), want[1])


def test_int8_round_trip_fidelity_and_zero_channel(tmp_path):
    spec = new_store(tmp_path, TXT, "int8")
    keys, values = batch(range(8), TXT)
    values[:, 2] *= 40.0  # an outlier channel has its own scale
    values[3, 5] = 0.0  # a zero channel decodes to zeros
    with StoreWriter(tmp_path, 0) as w:
        w.write(keys, values)
    store = EmbeddingStore(tmp_path)
    assert spec.record_bytes < StoreSpec(TXT).record_bytes
    for key, value in zip(keys, values):
        got = store.get(key)
        assert got.dtype == np.float32
        assert cosine(got, value.astype(np.float16)) >= 0.9999
    assert not store.get("k0003")[5].any()
    np.testing.assert_array_equal(store.get_many(keys[2:4])[1], store.get("k0003"))
    assert store.get_torch("k0000").dtype == torch.float32


# ----------------------------------------------------------------------------- headers


def test_source_digest_is_the_head_of_the_sha256_of_the_utf8_text():
    assert DIGEST_BYTES == 8 and SOURCE_DIGEST == "source-sha256-64"
    text = "a photo of a café, 東京"
    assert source_digest(text) == hashlib.sha256(text.encode("utf-8")).digest()[:8]
    assert source_digest("dog") == bytes.fromhex("cd6357efdd966de8")  # sha256("dog")[:8]


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
        assert w.repair_message and w.records == 3
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
        assert w.records == 0
    assert (tmp_path / "rank0-values.bin").stat().st_size == 0
    assert (tmp_path / "rank0-keys.txt").stat().st_size == 0
    new_store(tmp_path / "plain", TXT)
    with StoreWriter(tmp_path / "plain", 0) as w:
        with pytest.raises(ValueError, match="0 bytes"):
            w.write(keys, values, headers=[good, good])
        w.write(keys, values, headers=[b"", b""])
    with pytest.raises(ValueError, match="header_bytes"):
        StoreSpec(TXT, header_bytes=0, meta={"record_header": SOURCE_DIGEST})


# ----------------------------------------------------------------------------- crashes


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
        assert w.repair_message and w.records == 3
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
        f.write(es.encode_records(values[2:], spec).tobytes())
    assert existing_keys(tmp_path) == set(keys[:2])
    report = verify(tmp_path)
    assert not report.ok
    assert any(
        "trailing garbage" in p and f"offset {2 * spec.record_bytes}" in p for p in report.problems
    )
    with StoreWriter(tmp_path, 0) as w:  # resume: the orphan record is dropped, then rewritten
        assert w.records == 2
        w.write(keys[2:], values[2:])
    assert verify(tmp_path).ok and len(EmbeddingStore(tmp_path)) == 3


def test_failed_write_rolls_back(tmp_path, monkeypatch):
    spec = new_store(tmp_path)
    keys, values = batch(range(3))
    real_write_all = es._write_all
    calls = []

    def failing_keys_write(fd, data):
        calls.append(fd)
        if len(calls) == 2:  # the keys write of the first batch
            raise OSError(28, "No space left on device")
        real_write_all(fd, data)

    with StoreWriter(tmp_path, 0) as w:
        monkeypatch.setattr(es, "_write_all", failing_keys_write)
        with pytest.raises(OSError, match="No space"):
            w.write(keys[:2], values[:2])
        assert (tmp_path / "rank0-values.bin").stat().st_size == 0
        monkeypatch.setattr(es, "_write_all", real_write_all)
        w.write(keys, values)
    assert (tmp_path / "rank0-values.bin").stat().st_size == 3 * spec.record_bytes
    assert verify(tmp_path).ok


# ----------------------------------------------------------------------------- keys


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


@pytest.mark.parametrize("bad", ["", "a b", "a\nb", "tab\t", "nul\x00"])
def test_bad_keys_are_refused(tmp_path, bad):
    new_store(tmp_path)
    with StoreWriter(tmp_path, 0) as w, pytest.raises(ValueError, match="key"):
        w.write([bad], record(0)[None])


def test_one_writer_per_shard(tmp_path):
    new_store(tmp_path)
    with StoreWriter(tmp_path, 0), pytest.raises(StoreError, match="another writer"):
        StoreWriter(tmp_path, 0)
    StoreWriter(tmp_path, 0).close()  # released on close


def test_writer_needs_a_manifest_and_the_record_shape(tmp_path):
    with pytest.raises(StoreError, match="create_store"):
        StoreWriter(tmp_path, 0)
    new_store(tmp_path)
    with StoreWriter(tmp_path, 0) as w, pytest.raises(ValueError, match="shape"):
        w.write(["k"], np.zeros((1, 4, 3, 4), np.float32))


# ----------------------------------------------------------------------------- mismatches


def test_create_store_rejects_a_different_spec(tmp_path):
    new_store(tmp_path)
    new_store(tmp_path)  # the same spec: fine
    with pytest.raises(StoreMismatchError, match=r"shape.*\(4, 3, 3\).*\(4, 4, 4\).*delete"):
        new_store(tmp_path, (4, 4, 4))
    with pytest.raises(StoreMismatchError, match="preprocessing.*squash"):
        new_store(tmp_path, preprocessing={"resize": "squash"})
    with pytest.raises(StoreMismatchError, match="teacher"):
        new_store(tmp_path, teacher={"checkpoint": "sam3.pt", "sha256": "ab12"})
    with pytest.raises(StoreMismatchError, match="encoding"):
        new_store(tmp_path, encoding="int8")


def test_create_store_compares_the_teacher_by_identity_not_by_path(tmp_path):
    teacher = {
        "kind": "image",
        "arch": "sam3",
        "checkpoint": "sam3_checkpoints/sam3.pt",
        "checkpoint_sha256": "ab" * 32,
        "precision": "fp32",
    }
    new_store(tmp_path, teacher=teacher)
    moved = {**teacher, "checkpoint": "/data/models/sam3.pt"}  # the same file, named otherwise
    new_store(tmp_path, teacher=moved, world_size=2)
    manifest = es.load_manifest(tmp_path)
    assert manifest["spec"].meta["teacher"] == teacher and manifest["world_size"] == 2
    changes = {"checkpoint_sha256": "cd" * 32, "precision": "bf16", "arch": "sam3_tiny"}
    for name, value in changes.items():
        with pytest.raises(StoreMismatchError, match=rf"teacher.*{name}.*{value}") as err:
            new_store(tmp_path, teacher={**moved, name: value})
        assert "checkpoint'" not in str(err.value) and " — " in str(err.value)
    random = {**teacher, "checkpoint": "random", "checkpoint_sha256": "random"}
    with pytest.raises(StoreMismatchError, match="checkpoint_sha256.*random"):
        new_store(tmp_path, teacher=random)


def test_shards_without_a_manifest_are_never_adopted(tmp_path):
    new_store(tmp_path, world_size=2)
    keys, values = batch(range(3))
    with StoreWriter(tmp_path, 0) as w:
        w.write(keys, values)
    (tmp_path / "manifest.json").unlink()
    before = folder_bytes(tmp_path)
    for change in ({"encoding": "int8"}, {"preprocessing": {"resize": "squash"}}, {}):
        with pytest.raises(
            StoreError, match=r"no manifest.json.*info\|verify .*--legacy-shape.*TEACHER_EMBED_PATH"
        ) as err:
            new_store(tmp_path, **change)
        assert " — " in str(err.value)
    for rank in (0, 1):  # rank 1 has no shard yet: none is created
        with pytest.raises(StoreError, match="no manifest.json"):
            StoreWriter(tmp_path, rank)
    with pytest.raises(StoreError, match="no manifest.json"):
        check_store_folder(tmp_path)
    assert folder_bytes(tmp_path) == before


def test_refusals_create_nothing_and_check_store_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    for root in (tmp_path / "file", tmp_path / "file" / "store"):
        with pytest.raises(UserError, match="TEACHER_EMBED_PATH.*file"):
            new_store(root)
    assert check_store_folder(tmp_path / "new" / "store") is None
    assert check_store_folder(tmp_path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    spec = new_store(tmp_path / "new")
    assert check_store_folder(tmp_path / "new") == spec
    with pytest.raises(StoreError, match="create_store"):
        StoreWriter(tmp_path, 0)  # an empty folder: not a store
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "new"]


def test_reader_checks_the_expected_spec(tmp_path):
    spec = new_store(tmp_path)
    EmbeddingStore(tmp_path, expected=spec)
    EmbeddingStore(tmp_path, expected=StoreSpec(IMG))  # no meta named: shape/encoding only
    with pytest.raises(StoreMismatchError, match=r"shape.*\(4, 3, 3\).*\(8, 16\)"):
        EmbeddingStore(tmp_path, expected=StoreSpec(TXT))
    other = StoreSpec(IMG, meta={"preprocessing": {"resize": "squash"}})
    with pytest.raises(StoreMismatchError, match="preprocessing.*pad.*squash"):
        EmbeddingStore(tmp_path, expected=other)
    with pytest.raises(StoreMismatchError, match="context_length.*32.*16"):
        EmbeddingStore(tmp_path, expected=StoreSpec(IMG, meta={"context_length": 16}))
    assert any("mismatch" in p for p in verify(tmp_path, expected=StoreSpec(TXT)).problems)


# ----------------------------------------------------------------------------- legacy


def test_legacy_store_is_readable(tmp_path):
    write_legacy(tmp_path)
    with pytest.raises(StoreError, match="legacy_shape"):
        EmbeddingStore(tmp_path)
    store = EmbeddingStore(tmp_path, expected=StoreSpec(TXT), legacy_shape=TXT)
    assert len(store) == 4 and store.duplicates_ignored == 1
    for i in range(4):
        np.testing.assert_array_equal(store.get(f"k{i:04d}"), record(i, TXT).astype("f2"))
    assert store.get_headers(["k0001"]) == [np.int32(12346).tobytes()]
    assert not store.has_source_digests
    report = verify(tmp_path, legacy_shape=TXT)
    assert report.ok and report.records == 4 and any("twice" in n for n in report.notes)
    assert main(["verify", str(tmp_path), "--legacy-shape", "8,16"]) == 0
    with pytest.raises(StoreError, match="no manifest.json"):
        StoreWriter(tmp_path, 0)


# ----------------------------------------------------------------------------- verify


def test_verify_names_the_first_incomplete_record_of_a_truncated_file(tmp_path):
    spec = new_store(tmp_path)
    keys, values = batch(range(4))
    with StoreWriter(tmp_path, 0) as w:
        w.write(keys, values)
    os.truncate(tmp_path / "rank0-values.bin", 2 * spec.record_bytes + 5)
    report = verify(tmp_path)
    assert not report.ok and report.records == 2
    text = " ".join(report.problems)
    assert "truncated" in text and "'k0002'" in text and f"offset {2 * spec.record_bytes}" in text
    with pytest.raises(StoreCorruptError, match="k0002"):
        report.raise_if_bad()
    # keys whose records are incomplete do not count as stored, and a writer drops them
    assert existing_keys(tmp_path) == set(keys[:2]) and len(EmbeddingStore(tmp_path)) == 2
    with StoreWriter(tmp_path, 0) as w:
        assert w.records == 2
        assert (tmp_path / "rank0-values.bin").stat().st_size == 2 * spec.record_bytes
        assert (tmp_path / "rank0-keys.txt").read_text() == "k0000\nk0001\n"
        w.write(keys[2:], values[2:])
    assert verify(tmp_path).ok


@pytest.mark.parametrize("encoding", ["float16", "int8"])
def test_verify_finds_a_corrupted_record(tmp_path, encoding):
    spec = new_store(tmp_path, encoding=encoding)
    keys, values = batch(range(3))
    with StoreWriter(tmp_path, 0) as w:
        w.write(keys, values)
    assert verify(tmp_path).ok
    nan = np.full(2, np.nan, "<f2" if encoding == "float16" else "<f4").tobytes()
    with open(tmp_path / "rank0-values.bin", "r+b") as f:
        f.seek(spec.record_bytes + 4)  # inside record 1 (float16 payload / int8 scales)
        f.write(nan)
    report = verify(tmp_path)
    assert not report.ok and report.checked == 3
    assert any(
        "'k0001'" in p and f"offset {spec.record_bytes}" in p and "NaN" in p
        for p in report.problems
    )


def test_verify_finds_trailing_garbage(tmp_path):
    spec = new_store(tmp_path)
    keys, values = batch(range(2))
    with StoreWriter(tmp_path, 0) as w:
        w.write(keys, values)
    with open(tmp_path / "rank0-values.bin", "ab") as f:
        f.write(b"garbage")
    problems = verify(tmp_path).problems
    assert len(problems) == 1
    assert "7 bytes of trailing garbage" in problems[0]
    assert f"offset {2 * spec.record_bytes}" in problems[0]


def test_verify_recomputes_a_sample(tmp_path):
    new_store(tmp_path)
    keys, values = batch(range(10))
    with StoreWriter(tmp_path, 0) as w:
        w.write(keys, values)
    asked = []

    def teacher(ks: list[str]) -> torch.Tensor:
        asked.extend(ks)
        return torch.from_numpy(np.stack([record(int(k[1:])) for k in ks]))

    report = verify(tmp_path, recompute=teacher, sample=4, seed=1)
    assert report.ok and report.sampled == 4 and len(set(asked)) == 4
    assert 0 < report.max_abs_error < 5e-3 and report.max_rel_error < 1e-3
    wrong = verify(tmp_path, recompute=lambda ks: np.zeros((len(ks), *IMG)) + 1, sample=3)
    assert not wrong.ok and "relative error" in wrong.summary()


def test_verify_shows_progress(tmp_path, capsys, monkeypatch):
    new_store(tmp_path, world_size=2)
    keys, values = batch(range(5))
    with StoreWriter(tmp_path, 0) as w0, StoreWriter(tmp_path, 1) as w1:
        w0.write(keys[:3], values[:3])
        w1.write(keys[3:], values[3:])
    seen, asked = [], []

    def teacher(ks: list[str]) -> np.ndarray:
        asked.append(len(ks))
        return np.stack([record(int(k[1:])) for k in ks])

    report = verify(
        tmp_path,
        recompute=teacher,
        sample=4,
        recompute_batch=3,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert report.ok and report.sampled == 4 and asked == [3, 1]
    assert seen[-1] == (9, 9) and [d for d, _ in seen] == sorted({d for d, _ in seen})
    assert capsys.readouterr().err == ""
    verify(tmp_path)  # stderr is not a terminal: no bar
    assert capsys.readouterr().err == ""
    verify(tmp_path, progress=True)
    assert "5/5" in capsys.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["verify", str(tmp_path)]) == 0
    assert "5/5" in capsys.readouterr().err


def test_finalize_manifest_counts(tmp_path):
    new_store(tmp_path, world_size=2)
    keys, values = batch(range(5))
    with StoreWriter(tmp_path, 0) as w0, StoreWriter(tmp_path, 1) as w1:
        w0.write(keys[:3], values[:3])
        w1.write(keys[3:], values[3:])
    assert finalize_manifest(tmp_path) == {0: 3, 1: 2}
    assert es.load_manifest(tmp_path)["records"] == 5
    os.truncate(tmp_path / "rank1-values.bin", es.load_manifest(tmp_path)["spec"].record_bytes)
    with StoreWriter(tmp_path, 1):  # repairs: rank 1 now holds 1 record
        pass
    assert any("records were lost" in p for p in verify(tmp_path).problems)


# ----------------------------------------------------------------------------- overflow


def test_float16_overflow_is_counted_not_silent(tmp_path):
    new_store(tmp_path)
    keys, values = batch(range(2))
    values[1, 0, 0, :2] = [1e5, -7e4]
    with StoreWriter(tmp_path, 0) as w:
        with pytest.raises(Float16OverflowError, match=r"2 values.*k0001.*int8.*allow_overflow"):
            w.write(keys, values)
        assert w.records == 0 and (tmp_path / "rank0-values.bin").stat().st_size == 0
        with pytest.raises(ValueError, match="NaN"):
            w.write(keys[:1], np.full((1, *IMG), np.nan, np.float32))
    with StoreWriter(tmp_path, 0, allow_overflow=True) as w:
        w.write(keys, values)
        assert w.overflow_count == 2
    got = EmbeddingStore(tmp_path).get("k0001")
    assert got[0, 0, 0] == 65504 and got[0, 0, 1] == -65504 and np.isfinite(got).all()


# ----------------------------------------------------------------------------- workers


class _Records(torch.utils.data.Dataset):
    def __init__(self, store: EmbeddingStore) -> None:
        self.store, self.keys = store, store.keys()

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int):
        return self.store.get_torch(self.keys[i]), os.getpid()


def test_reader_in_dataloader_workers(tmp_path):
    new_store(tmp_path, world_size=2)
    keys, values = batch(range(8))
    with StoreWriter(tmp_path, 0) as w0, StoreWriter(tmp_path, 1) as w1:
        w0.write(keys[::2], values[::2])
        w1.write(keys[1::2], values[1::2])
    store = EmbeddingStore(tmp_path)
    store.get("k0000")  # maps opened in the parent before the fork
    loader = torch.utils.data.DataLoader(
        _Records(store), batch_size=3, num_workers=2, multiprocessing_context="fork"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        got = [(x, pids) for x, pids in loader]
    stacked = torch.cat([x for x, _ in got])
    np.testing.assert_array_equal(stacked.numpy(), values.astype(np.float16))
    worker_pids = {int(p) for _, pids in got for p in pids}
    assert len(worker_pids) == 2 and os.getpid() not in worker_pids


def test_reader_pickles_without_open_maps(tmp_path):
    new_store(tmp_path)
    keys, values = batch(range(2))
    with StoreWriter(tmp_path, 0) as w:
        w.write(keys, values)
    store = EmbeddingStore(tmp_path)
    store.get("k0000")
    blob = pickle.dumps(store)
    assert len(blob) < 4096  # the index only, no record bytes
    clone = pickle.loads(blob)
    assert clone._maps is None
    np.testing.assert_array_equal(clone.get("k0001"), store.get("k0001"))


# ----------------------------------------------------------------------------- disk space


def test_disk_space_refusal(tmp_path, monkeypatch):
    spec = StoreSpec((1024, 72, 72))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(es.shutil, "disk_usage", lambda p: usage(2**40, 2**40 - 2**30, 2**30))
    need = estimate_bytes(1000, spec)
    with pytest.raises(InsufficientDiskError, match=r"9\.89 GiB.*1\.00 GiB.*int8.*FORCE"):
        check_disk_space(tmp_path / "new" / "store", 1000, spec)
    with pytest.warns(UserWarning, match="forced"):
        assert check_disk_space(tmp_path, 1000, spec, force=True) == need
    assert check_disk_space(tmp_path, 10, spec) == estimate_bytes(10, spec)
    create_store(tmp_path / "old", spec, 1)  # an existing float16 store cannot become int8
    with pytest.raises(InsufficientDiskError) as err:
        check_disk_space(tmp_path / "old", 1000, spec)
    assert "int8" not in str(err.value) and "FORCE" in str(err.value)


def test_sizes_are_given_at_their_scale(tmp_path, monkeypatch):
    assert [format_bytes(n) for n in (0, 1023, 1536, 5 << 20, 3 << 40)] == [
        "0 bytes",
        "1023 bytes",
        "1.50 KiB",
        "5.00 MiB",
        "3.00 TiB",
    ]
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(es.shutil, "disk_usage", lambda p: usage(2**40, 2**40, 300))
    with pytest.raises(InsufficientDiskError, match=r"needs about 3\.75 KiB.*only 300 bytes"):
        check_disk_space(tmp_path, 12, StoreSpec(TXT))  # 12 x (256 + 64) bytes
    spec = StoreSpec((1024, 72, 72))
    need = estimate_bytes(1000, spec)
    monkeypatch.setattr(es.shutil, "disk_usage", lambda p: usage(2**40, 0, need - 1000))
    with pytest.raises(InsufficientDiskError) as err:  # both round to 9.89 GiB
        check_disk_space(tmp_path, 1000, spec)
    assert f"{need:,} bytes" in str(err.value) and f"{need - 1000:,} bytes" in str(err.value)
    assert " — " in str(err.value)


# ----------------------------------------------------------------------------- CLI


def test_cli_verify_exit_code(tmp_path, capsys):
    new_store(tmp_path)
    keys, values = batch(range(3))
    with StoreWriter(tmp_path, 0) as w:
        w.write(keys, values)
    assert main(["verify", str(tmp_path)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["verify", str(tmp_path), "--sample", "1"]) == 0
    assert "1 decoded" in capsys.readouterr().out
    assert main(["info", str(tmp_path)]) == 0
    assert "3 records" in capsys.readouterr().out
    os.truncate(tmp_path / "rank0-values.bin", 100)
    assert main(["verify", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "truncated" in captured.out and captured.err == ""


def test_cli_mistakes_are_one_error_line(tmp_path, capsys):
    store, legacy = tmp_path / "store", tmp_path / "legacy"
    new_store(store)
    write_legacy(legacy)
    (tmp_path / "file").write_text("x")
    mistakes = [
        ["info", str(tmp_path / "missing")],
        ["verify", str(tmp_path / "missing")],
        ["verify", str(tmp_path / "file")],
        ["info", str(legacy)],
        ["verify", str(legacy)],
        ["info", str(legacy), "--legacy-shape", "abc"],
        ["verify", str(legacy), "--legacy-shape", "0,16"],
        ["verify", str(legacy), "--legacy-shape", ","],
        ["verify", str(store), "--legacy-shape", "8,16"],
        ["verify", str(store), "--sample", "-1"],
        ["verify", str(store), "--sample", "many"],
        ["info"],
        ["check", str(store)],
    ]
    for argv in mistakes:
        with pytest.raises(UserError) as err:
            main(argv)
        line = error_line(err.value)
        assert "\n" not in line and " — " in line, (argv, line)
        assert capsys.readouterr() == ("", ""), argv
    assert main(["info", str(legacy), "--legacy-shape", "8,16"]) == 0
    assert "4 records" in capsys.readouterr().out


def test_cli_error_is_one_line_without_traceback(tmp_path):
    write_legacy(tmp_path)  # no manifest, and no --legacy-shape given
    run = subprocess.run(
        [sys.executable, "-m", "stage1.embedding_store", "verify", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "STAGE1_DEBUG": ""},
        timeout=120,
    )
    assert run.returncode == EXIT_USER_ERROR and "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert "--legacy-shape" in lines[0] and run.stdout == ""


# ----------------------------------------------------------------------------- SIGKILL


CHILD = """
import sys, time
import numpy as np
from stage1.embedding_store import StoreWriter
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
