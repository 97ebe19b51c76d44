"""Stable assignment of keys to ranks, shared by the image and caption exports.

A key goes to rank ``rank_of(key, world_size)``: the first 8 bytes of ``blake2b(key)`` read as a
big-endian unsigned integer, modulo ``world_size``. It depends on nothing but the key and the
world size, so:

* every key goes to exactly one rank, whatever the order in which files or folders are listed;
* all copies of a key (duplicates in the data) go to the same rank, so each rank can remove
  duplicates on its own;
* a resumed export with another world size assigns keys differently, but it never writes a key
  twice as long as it skips the keys already stored in *any* shard of the store.

The split is balanced in expectation only (a binomial spread of about ``sqrt(n / world_size)``
items per rank), which is fine for an export. Training, which needs equal step counts per rank,
uses ``torch.utils.data.DistributedSampler`` instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def check_rank(rank: int, world_size: int) -> None:
    """Raise ``ValueError`` unless ``world_size >= 1`` and ``0 <= rank < world_size``."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")


def key_hash(key: str) -> int:
    """The 64-bit stable hash of ``key`` (blake2b of its UTF-8 bytes, first 8 bytes, big-endian).

    Unlike Python's ``hash()``, it is the same in every process and on every machine.
    """
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rank_of(key: str, world_size: int) -> int:
    """The rank in ``[0, world_size)`` that owns ``key``; stable across processes and runs."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if world_size == 1:
        return 0
    return key_hash(key) % world_size


def select_rank(
    items: Iterable[T],
    rank: int,
    world_size: int,
    key: Callable[[T], str] = lambda item: item.key,  # type: ignore[attr-defined]
) -> list[T]:
    """The items (in input order) whose ``key(item)`` belongs to ``rank``.

    ``key`` defaults to the item's ``.key`` attribute (e.g. :class:`stage1.data.sa1b.SA1BItem`).
    """
    check_rank(rank, world_size)
    return [item for item in items if rank_of(key(item), world_size) == rank]
