"""Writing one rank's shard: :class:`StoreWriter` appends records, then their keys, under an
exclusive lock, and repairs the torn tail a crash left.

Crash safety: a key line never exists without its complete record, since a batch's values are
written before its keys. A crash leaves at most a torn tail (partial values and/or a partial
key line), which the next :class:`StoreWriter` of that rank truncates away, and which every
reader ignores (it indexes ``min(complete lines, values bytes // record bytes)`` records per
shard). With ``sync_every_write=True`` the same holds across power loss.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

try:
    import fcntl
except ImportError:  # not POSIX: no writer lock (one writer per rank is then on the caller)
    fcntl = None

from stage1.store.codec import as_numpy, check_keys, chunks, encode, header_rows, scan
from stage1.store.manifest import check_store_folder, no_manifest_error, read_lines, shard_paths
from stage1.store.spec import (
    FP16_MAX,
    DuplicateKeyError,
    Float16OverflowError,
    StoreError,
    StoreSpec,
)


def _write_all(fd: int, data: np.ndarray | bytes) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write part of it)."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view) :]


class StoreWriter:
    """Append-only writer of one rank's shard (a context manager).

    Opening it refuses a folder without a manifest (before creating anything), takes an
    exclusive lock on the shard and repairs a torn tail left by a crash (``repair_message``
    says what was dropped). ``write`` appends the records (headers and values), then the keys.
    ``allow_overflow`` clamps float16-overflowing values to +/-65504 (counted in
    ``overflow_count``) instead of raising; ``sync_every_write`` fsyncs after every batch
    (power-loss safety), otherwise only ``close`` does."""

    def __init__(
        self,
        root: str | os.PathLike,
        rank: int,
        *,
        allow_overflow: bool = False,
        sync_every_write: bool = False,
    ) -> None:
        self.root = Path(root)
        self.rank = int(rank)
        spec = check_store_folder(self.root)
        if spec is None:
            raise no_manifest_error(self.root, writing=True)
        self.spec: StoreSpec = spec
        self.allow_overflow = allow_overflow
        self.sync_every_write = sync_every_write
        self.overflow_count = 0
        self.repair_message: str | None = None
        self.keys_path, self.values_path = shard_paths(self.root, self.rank)
        self._closed = True
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        self._values_fd = os.open(self.values_path, flags, 0o644)
        self._keys_fd = -1
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(self._values_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise StoreError(
                        f"{self.values_path} is already open in another writer (each rank "
                        "writes only its own shard) — check RANK / WORLD_SIZE, or wait for the "
                        "other export to finish"
                    ) from None
            self._keys_fd = os.open(self.keys_path, flags, 0o644)
            self._repair()
        except BaseException:
            self._close_fds()
            raise
        self._closed = False

    def _repair(self) -> None:
        lines, tail = read_lines(self.keys_path)
        values_size = os.fstat(self._values_fd).st_size
        rb = self.spec.record_bytes
        n = min(len(lines), values_size // rb)
        keys_size = sum(len(line) + 1 for line in lines[:n])
        dropped_values = values_size - n * rb
        dropped_keys = len(lines) - n + (1 if tail else 0)
        if dropped_values or dropped_keys:
            os.ftruncate(self._values_fd, n * rb)
            os.ftruncate(self._keys_fd, keys_size)
            os.fsync(self._values_fd)
            os.fsync(self._keys_fd)
            self.repair_message = (
                f"rank {self.rank}: repaired a torn tail, kept {n} complete records, dropped "
                f"{dropped_values} values bytes and {dropped_keys} key line(s)"
            )
        self._keys = {line.decode() for line in lines[:n]}
        self._values_size, self._keys_size = n * rb, keys_size

    def write(
        self,
        keys: Sequence[str],
        values: np.ndarray | torch.Tensor,
        headers: Sequence[bytes] | None = None,
    ) -> int:
        """Append records: ``values`` is [len(keys), *spec.shape] (float32/16, bfloat16; numpy
        or torch); ``headers`` one bytes of exactly ``spec.header_bytes`` per key (``None``:
        zeros), e.g. :func:`source_digest` of each caption. All or nothing: on any error
        nothing of the batch stays. Returns the count."""
        if self._closed:
            raise StoreError(f"the writer of {self.values_path} is closed — open a new one")
        keys = list(keys)
        check_keys(keys)
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise DuplicateKeyError(
                f"key {dup!r} is given twice in one write call — give each key once"
            )
        stored = next((k for k in keys if k in self._keys), None)
        if stored is not None:
            raise DuplicateKeyError(
                f"key {stored!r} is already stored in {self.keys_path.name} — skip keys from "
                "existing_keys(root) when resuming"
            )
        rows = None if headers is None else header_rows(headers, keys, self.spec.header_bytes)
        array = as_numpy(values)
        if array.shape != (len(keys), *self.spec.shape):
            raise ValueError(
                f"values of shape {tuple(array.shape)} for {len(keys)} keys, but this store "
                f"holds records of shape {self.spec.shape} — give "
                f"{(len(keys), *self.spec.shape)}"
            )
        count, over_keys = scan(array, keys, self.spec)
        if count and not self.allow_overflow:
            raise Float16OverflowError(
                f"{count} values of keys {over_keys[:5]} exceed the float16 range +/-{FP16_MAX} "
                f"(max |x| = {float(np.abs(array).max()):.4g}), so nothing was written — use an "
                "int8 store (DISTILL.STORE_DTYPE int8: per-channel scales, no range limit) or "
                "open the writer with allow_overflow=True to clamp them (counted in "
                "overflow_count)"
            )
        try:
            for lo, hi in chunks(len(array), array[0].nbytes if len(array) else 1):
                head = None if rows is None else rows[lo:hi]
                _write_all(self._values_fd, encode(array[lo:hi], self.spec, head))
            if self.sync_every_write:
                os.fsync(self._values_fd)
            _write_all(self._keys_fd, "".join(k + "\n" for k in keys).encode())
            if self.sync_every_write:
                os.fsync(self._keys_fd)
        except BaseException:
            try:  # roll back to the last complete batch, so the shard stays aligned
                os.ftruncate(self._values_fd, self._values_size)
                os.ftruncate(self._keys_fd, self._keys_size)
            except OSError:
                pass
            raise
        self._values_size += len(keys) * self.spec.record_bytes
        self._keys_size += sum(len(k.encode()) + 1 for k in keys)
        self._keys.update(keys)
        self.overflow_count += count
        return len(keys)

    def _close_fds(self) -> None:
        for fd in (self._keys_fd, self._values_fd):
            if fd >= 0:
                os.close(fd)
        self._keys_fd = self._values_fd = -1

    def close(self) -> None:
        """fsync both files, release the shard lock and close (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            os.fsync(self._values_fd)
            os.fsync(self._keys_fd)
        finally:
            self._close_fds()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
