"""Reading a store: :class:`EmbeddingStore` looks records up by key in one sorted in-memory
index and reads them from memory-mapped values files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stage1.store.codec import decode_record
from stage1.store.manifest import open_spec, shard_paths, shard_ranks, shard_records
from stage1.store.spec import (
    DIGEST_BYTES,
    SOURCE_DIGEST,
    StoreCorruptError,
    StoreMismatchError,
    StoreSpec,
    expected_differences,
)

LISTED = 20  # problems (duplicate keys, ...) of one kind listed before "... and N more"


@dataclass
class KeyIndex:
    """All complete records of a store, by key: sorted keys and where each record lies."""

    keys: np.ndarray  # all keys, sorted, as bytes ("S" dtype), duplicates removed
    shard: np.ndarray  # int32: position of the key's shard in the shard list
    record: np.ndarray  # int64: record number inside that shard
    duplicates: list[tuple[bytes, int, int, int, int]]  # first few: key, shard/record a and b
    n_duplicates: int


def build_index(per_shard: list[list[bytes]]) -> KeyIndex:
    """Sort all keys once; find duplicates (the first occurrence in shard order is kept)."""
    flat = [k for keys in per_shard for k in keys]
    keys = np.array(flat, dtype=bytes) if flat else np.empty(0, "S1")
    shard = np.repeat(np.arange(len(per_shard), dtype=np.int32), [len(k) for k in per_shard])
    record = np.concatenate([np.arange(len(k), dtype=np.int64) for k in per_shard] or [[]])
    order = np.argsort(keys, kind="stable")
    keys, shard, record = keys[order], shard[order], record[order].astype(np.int64)
    dup = np.flatnonzero(keys[1:] == keys[:-1]) + 1
    duplicates = []
    for i in dup[:LISTED]:
        first = i - 1
        while first > 0 and keys[first - 1] == keys[i]:
            first -= 1
        pair = (int(shard[first]), int(record[first]), int(shard[i]), int(record[i]))
        duplicates.append((bytes(keys[i]), *pair))
    if dup.size:
        keep = np.ones(len(keys), bool)
        keep[dup] = False
        keys, shard, record = keys[keep], shard[keep], record[keep]
    return KeyIndex(keys, shard, record, duplicates, int(dup.size))


class EmbeddingStore:
    """Random-access reader: ``store.get(key)`` -> the record as a numpy array.

    One index (sorted numpy key array) is built at construction; values files are memory
    mapped read-only, lazily per process, so the reader can be handed to DataLoader workers
    (fork or spawn: pickling carries no open maps). ``expected`` (a :class:`StoreSpec`) is
    checked against the store: shape, encoding, and meta "preprocessing"/"context_length"
    where ``expected.meta`` has them. ``legacy_shape`` reads a public EfficientSAM3 store
    (no manifest, float16 after a 4-byte header); its cross-rank duplicates (the public
    sampler pads shards with repeated samples) are tolerated: the lowest rank wins and
    ``duplicates_ignored`` counts them. Our stores never hold duplicates: they raise.
    ``get_headers`` returns the records' header bytes (source digests in text stores whose
    ``has_source_digests``)."""

    def __init__(
        self,
        root: str | os.PathLike,
        expected: StoreSpec | None = None,
        legacy_shape: Sequence[int] | None = None,
    ) -> None:
        self.root = Path(root)
        self.legacy = legacy_shape is not None
        self.spec = open_spec(self.root, legacy_shape)
        if expected is not None:
            diffs = expected_differences(self.spec, expected, self.legacy)
            if diffs:
                raise StoreMismatchError(
                    f"the embedding store in {self.root} does not match the config ("
                    + "; ".join(diffs)
                    + ") — point DISTILL.TEACHER_EMBED_PATH at a store exported with this "
                    "config, or re-export"
                )
        rb = self.spec.record_bytes
        self.ranks = shard_ranks(self.root)
        per_shard = []
        for rank in self.ranks:
            lines, n = shard_records(self.root, rank, rb)
            per_shard.append(lines[:n])
        self.shard_counts = {r: len(k) for r, k in zip(self.ranks, per_shard)}
        index = build_index(per_shard)
        if index.duplicates and not self.legacy:
            key, sa, ra, sb, rb_ = index.duplicates[0]
            raise StoreCorruptError(
                f"key {key.decode()!r} is stored twice: rank{self.ranks[sa]} record {ra} and "
                f"rank{self.ranks[sb]} record {rb_} ({index.n_duplicates} duplicate(s) in all) "
                f"in {self.root}; our writers never do this, so two exports were mixed — "
                "re-export into an empty folder or delete one of the shards"
            )
        self.duplicates_ignored = index.n_duplicates
        self._keys, self._shard, self._record = index.keys, index.shard, index.record
        self._maps: list[np.ndarray] | None = None
        self._rows: list[np.ndarray] | None = None
        self._pid: int | None = None

    def _mapped(self) -> list[np.ndarray]:
        """Per shard: [n, *shape] float16 views (float16 stores) or [n, record_bytes] uint8
        rows (int8 stores), mapped once per process."""
        if self._pid != os.getpid() or self._maps is None:
            spec, maps, all_rows = self.spec, [], []
            for rank in self.ranks:
                n = self.shard_counts[rank]
                path = shard_paths(self.root, rank)[1]
                if n:
                    rows = np.asarray(np.memmap(path, np.uint8, "r", shape=(n, spec.record_bytes)))
                else:  # numpy cannot map an empty file
                    rows = np.empty((0, spec.record_bytes), np.uint8)
                all_rows.append(rows)
                if spec.encoding == "float16":
                    rows = rows[:, spec.header_bytes :].view("<f2").reshape(n, *spec.shape)
                maps.append(rows)
            self._maps, self._rows, self._pid = maps, all_rows, os.getpid()
        return self._maps

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"], state["_rows"], state["_pid"] = None, None, None
        return state

    @property
    def has_source_digests(self) -> bool:
        """Whether each record's header is the :func:`source_digest` of its source text."""
        return (
            self.spec.header_bytes == DIGEST_BYTES
            and self.spec.meta.get("record_header") == SOURCE_DIGEST
        )

    def get_headers(self, keys: Sequence[str]) -> list[bytes]:
        """The header bytes (``spec.header_bytes`` each: b"" in stores without headers) of the
        records of ``keys``. :class:`KeyError` if one is absent."""
        if not len(keys):
            return []
        shards, records = (np.asarray(found) for found in self._locate_many(keys))
        size = self.spec.header_bytes
        if not size:
            return [b""] * len(keys)
        self._mapped()
        out = np.empty((len(keys), size), np.uint8)
        for shard in np.unique(shards):  # one gather per shard
            pick = shards == shard
            out[pick] = self._rows[shard][records[pick], :size]
        blob = out.tobytes()
        return [blob[i : i + size] for i in range(0, len(blob), size)]

    def _locate(self, key: str) -> tuple[int, int]:
        """(shard position, record number) of ``key``: a binary search of the sorted keys."""
        raw, keys = key.encode(), self._keys
        if len(raw) <= keys.itemsize:  # a longer needle would make numpy copy the whole array
            i = keys.searchsorted(raw)
            if i < len(keys) and keys[i] == raw:
                return self._shard[i], self._record[i]
        raise KeyError(f"key {key!r} is not in the embedding store {self.root} ({len(self)} keys)")

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        try:
            self._locate(key)
        except KeyError:
            return False
        return True

    def keys(self) -> list[str]:
        """All keys, sorted."""
        return [k.decode() for k in self._keys.tolist()]

    def get(self, key: str) -> np.ndarray:
        """The record of ``key``: a read-only float16 view (float16 stores) or a new float32
        array (int8 stores). :class:`KeyError` if absent."""
        shard, record = self._locate(key)
        if self.spec.encoding == "float16":
            return self._mapped()[shard][record]
        return decode_record(self._mapped()[shard][record], self.spec)

    def _locate_many(self, keys: Sequence[str]) -> tuple[list[int], list[int]]:
        """Vectorised :meth:`_locate`: one binary search for the whole list."""
        needles = np.array([k.encode() for k in keys], dtype=bytes)
        if needles.dtype.itemsize > self._keys.dtype.itemsize:  # some keys are too long
            for key in keys:
                self._locate(key)  # raises KeyError naming the first missing key
        pos = np.minimum(self._keys.searchsorted(needles.astype(self._keys.dtype)), len(self) - 1)
        missing = np.flatnonzero(self._keys[pos] != needles) if len(self) else range(len(keys))
        if len(missing):
            self._locate(keys[missing[0]])
        return self._shard[pos].tolist(), self._record[pos].tolist()

    def get_many(self, keys: Sequence[str], out: np.ndarray | None = None) -> np.ndarray:
        """Records of ``keys`` stacked into [N, *shape] (float16 or float32): a new array, or
        ``out`` (e.g. a reused or pinned buffer of that shape) filled and returned."""
        want = (len(keys), *self.spec.shape)
        if out is None:
            out = np.empty(want, self.spec.dtype)
        elif out.shape != want:
            raise ValueError(f"get_many: out has shape {out.shape}, {len(keys)} keys need {want}")
        if not len(keys):
            return out
        maps, fp16 = self._mapped(), self.spec.encoding == "float16"
        for i, (shard, record) in enumerate(zip(*self._locate_many(keys))):
            row = maps[shard][record]
            out[i] = row if fp16 else decode_record(row, self.spec)
        return out

    def get_torch(self, key: str) -> torch.Tensor:
        """The record as a CPU tensor (float16 or float32), writable: copied out of the
        read-only map for float16 stores, shared with the decoded array for int8."""
        array = self.get(key)
        if not array.flags.writeable:
            array = array.copy()
        return torch.from_numpy(array)

    def __repr__(self) -> str:
        return (
            f"EmbeddingStore({str(self.root)!r}, {len(self)} records of {self.spec.shape} "
            f"{self.spec.encoding}, {len(self.ranks)} shard(s){', legacy' if self.legacy else ''})"
        )
