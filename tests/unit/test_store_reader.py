"""The store's reader: round trips over two ranks, empty stores and shards, the expected spec,
public EfficientSAM3 (legacy) stores, DataLoader workers and pickling."""

from __future__ import annotations

import os
import pickle
import warnings

import numpy as np
import pytest
import torch

from stage1.store import (
    EmbeddingStore,
    StoreError,
    StoreMismatchError,
    StoreSpec,
    StoreWriter,
    existing_keys,
    verify,
)

from helpers.store import IMG, TXT, batch, new_store, record, write_legacy


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
    assert "nope" not in store and 3 not in store
    assert store.shard_counts == {0: 4, 1: 2}
    for key, value in zip(keys, values):
        got = store.get(key)
        assert got.dtype == np.float16 and got.shape == shape
        np.testing.assert_array_equal(got, value.astype(np.float16))
    np.testing.assert_array_equal(store.get_many(keys[::-1]), values[::-1].astype(np.float16))
    out = np.zeros((2, *shape), np.float16)
    assert store.get_many(keys[4:], out=out) is out
    np.testing.assert_array_equal(out, values[4:].astype(np.float16))
    with pytest.raises(ValueError, match="out has shape"):
        store.get_many(keys[:3], out=out)
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
    with pytest.raises(KeyError, match="k0000.*0 keys"):
        store.get_many(["k0000"])
    assert verify(tmp_path).ok and existing_keys(tmp_path) == set()


def test_reader_needs_a_store_folder(tmp_path):
    with pytest.raises(StoreError, match="does not exist.*run the export"):
        EmbeddingStore(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        EmbeddingStore(tmp_path / "file")
    with pytest.raises(StoreError, match="no manifest.json.*not an embedding store"):
        EmbeddingStore(tmp_path)


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


def test_legacy_store_is_readable(tmp_path):
    write_legacy(tmp_path)
    with pytest.raises(StoreError, match="legacy_shape"):
        EmbeddingStore(tmp_path)
    store = EmbeddingStore(tmp_path, expected=StoreSpec(TXT), legacy_shape=TXT)
    assert len(store) == 4 and store.duplicates_ignored == 1 and store.legacy
    assert store.spec.header_bytes == 4 and store.spec.encoding == "float16"
    for i in range(4):
        np.testing.assert_array_equal(store.get(f"k{i:04d}"), record(i, TXT).astype("f2"))
    assert store.get_headers(["k0001"]) == [np.int32(12346).tobytes()]
    assert not store.has_source_digests
    report = verify(tmp_path, legacy_shape=TXT)
    assert report.ok and report.records == 4 and any("twice" in n for n in report.notes)
    with pytest.raises(StoreError, match="no manifest.json"):
        StoreWriter(tmp_path, 0)
    new_store(tmp_path / "ours", TXT)
    with pytest.raises(StoreError, match="not a legacy EfficientSAM3 store"):
        EmbeddingStore(tmp_path / "ours", legacy_shape=TXT)


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
    assert "2 records of (4, 3, 3) float16, 1 shard(s)" in repr(clone)
