"""Recap-DataComp captions, streamed from parquet files with bounded memory.

Rows are read ``batch_rows`` at a time with ``pyarrow.parquet.ParquetFile.iter_batches`` and only
the caption and key columns are decoded; files are visited in sorted path order, so the stream
is deterministic.

Keys: the ``key_column`` value as a string, made a valid store key by
:func:`stage1.data.keys.encode_key` (``a b`` -> ``a%20b``; ids the store can hold are unchanged).
When a file has no such column (or a row's key is null, empty or contains a line break), the key
is ``"sha1:" + sha1(caption as UTF-8).hexdigest()`` (45 characters; identical captions get one
key, so they are stored once). :class:`CaptionStats` counts both.

Duplicates: a key is yielded once; later rows with the same key are counted and skipped. This
keeps a set of the keys yielded so far: about 95 MB per million 12-character keys (130 MB per
million ``sha1:`` keys). :class:`CaptionShard` filters by rank *before* that set, so each rank
holds only its own keys.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from stage1.data.errors import DataError, DataNotFoundError
from stage1.data.keys import encode_key, key_problem
from stage1.data.sharding import check_rank, rank_of

logger = logging.getLogger(__name__)

HASH_KEY_PREFIX = "sha1:"
_STRING_TYPES = (pa.types.is_string, pa.types.is_large_string) + (
    (pa.types.is_string_view,) if hasattr(pa.types, "is_string_view") else ()
)


@dataclass
class CaptionStats:
    """Counters filled in while captions are streamed (by :func:`iter_captions`)."""

    files: int = 0  # parquet files opened
    empty_files: int = 0  # files with 0 rows (allowed)
    rows: int = 0  # rows read
    yielded: int = 0  # (key, caption) pairs produced
    empty: int = 0  # null, empty or whitespace-only captions skipped
    duplicates: int = 0  # rows whose key was already yielded, skipped
    filtered: int = 0  # usable rows rejected by ``key_filter`` (other ranks, already stored)
    hashed_keys: int = 0  # rows keyed by the caption hash (no usable key column value)
    encoded_keys: int = 0  # rows whose key is their percent-encoded id (not the id itself)
    rejected: int = 0  # rows whose key the store rejects: skipped, each logged
    key_fallback_files: list[str] = field(default_factory=list)  # files without the key column


def caption_key(caption: str) -> str:
    """The fallback key of a caption: ``"sha1:" + sha1(caption.encode("utf-8")).hexdigest()``."""
    return HASH_KEY_PREFIX + hashlib.sha1(caption.encode("utf-8")).hexdigest()


def list_parquet_files(root: str | Path) -> list[Path]:
    """All ``*.parquet`` files under ``root`` (recursive), sorted by path; ``root`` may also be a
    single parquet file. Raises :class:`DataNotFoundError` if it is missing or holds none."""
    root = Path(root)
    if root.is_file() and root.suffix == ".parquet":
        return [root]
    if not root.is_dir():
        raise DataNotFoundError(
            f"caption folder {root} does not exist — set DATA.DATA_PATH to the folder holding the "
            "Recap-DataComp parquet files (data/download_datacomp.py fetches them)"
        )
    # Hidden files and folders are skipped (hf_hub_download keeps its state in .cache/).
    relative = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*.parquet")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    files = [root / rel for rel in relative]
    if not files:
        raise DataNotFoundError(
            f"no *.parquet file under {root} — run data/download_datacomp.py --output {root} or "
            "copy Recap-DataComp parquet files there"
        )
    return files


def _key_id(value: object) -> str | None:
    """A key column value as text (bytes that are not UTF-8 kept as lone surrogates), or None
    when it is null, empty or holds a line break (those rows fall back to the caption hash)."""
    if value is None:
        return None
    text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)
    if not text or "\n" in text or "\r" in text:
        return None
    return text


def _open(path: Path, caption_column: str, key_column: str | None) -> tuple[pq.ParquetFile, bool]:
    """Open ``path`` and check its columns; returns the file and whether it has the key column."""
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(
            f"cannot read parquet file {path}: {exc} — it may be incomplete: delete it and "
            "download it again (data/download_datacomp.py skips the complete files)"
        ) from exc
    schema = pf.schema_arrow
    names = schema.names
    if caption_column not in names:
        pf.close()
        raise DataError(
            f"{path} has no caption column {caption_column!r}; its columns are {names} — "
            "set DATA.CAPTION_COLUMN to the column that holds the captions"
        )
    ctype = schema.field(caption_column).type
    if not any(is_type(ctype) for is_type in _STRING_TYPES):
        pf.close()
        raise DataError(
            f"column {caption_column!r} of {path} has type {ctype}, not string — "
            "set DATA.CAPTION_COLUMN to a text column"
        )
    return pf, bool(key_column) and key_column in names


def check_parquet_files(
    root: str | Path,
    caption_column: str = "re_caption",
    key_column: str | None = "key",
    progress: bool = False,
) -> int:
    """Open every parquet file under ``root`` as :func:`iter_captions` will (footer and columns
    only, no rows decoded) and return their total row count; raises the error the stream would
    raise on the first bad file. ``progress`` shows a bar over the files."""
    total = 0
    files = list_parquet_files(root)
    for path in tqdm(files, desc="check parquet files", unit="file", disable=not progress):
        pf, _ = _open(path, caption_column, key_column)
        with pf:
            total += pf.metadata.num_rows
    return total


def iter_captions(
    root: str | Path,
    caption_column: str = "re_caption",
    key_column: str | None = "key",
    batch_rows: int = 8192,
    stats: CaptionStats | None = None,
    key_filter: Callable[[str], bool] | None = None,
) -> Iterator[tuple[str, str]]:
    """Yield ``(key, caption)`` from every parquet file under ``root``, in sorted file order.

    Null/blank captions and repeated keys are skipped and counted in ``stats``; ``key_filter``
    (applied before duplicate removal) drops keys this consumer does not want. A missing caption
    column is an error naming the file and its columns; a missing key column falls back to the
    caption hash (see the module docstring). Raises :class:`DataError` at the end if no row had a
    usable caption.
    """
    if batch_rows < 1:
        raise DataError(f"DATA.PARQUET_BATCH_ROWS is {batch_rows} — use a number >= 1")
    stats = stats if stats is not None else CaptionStats()
    seen: set[str] = set()
    for path in list_parquet_files(root):
        pf, has_key = _open(path, caption_column, key_column)
        with pf:
            stats.files += 1
            if not has_key:
                stats.key_fallback_files.append(str(path))
            if pf.metadata.num_rows == 0:
                stats.empty_files += 1
                continue
            columns = [caption_column] + ([key_column] if has_key else [])
            for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
                captions = batch.column(0).to_pylist()
                keys = batch.column(1).to_pylist() if has_key else [None] * len(captions)
                stats.rows += len(captions)
                for raw_key, caption in zip(keys, captions):
                    if caption is None or not caption.strip():
                        stats.empty += 1
                        continue
                    key_id = _key_id(raw_key)
                    if key_id is None:
                        key = caption_key(caption)
                        stats.hashed_keys += 1
                    else:
                        key = encode_key(key_id)
                        stats.encoded_keys += key != key_id
                        problem = key_problem(key)
                        if problem:
                            logger.warning("skipped %s row key %r: %s", path, key, problem)
                            stats.rejected += 1
                            continue
                    if key_filter is not None and not key_filter(key):
                        stats.filtered += 1
                        continue
                    if key in seen:
                        stats.duplicates += 1
                        continue
                    seen.add(key)
                    stats.yielded += 1
                    yield key, caption
    if stats.yielded + stats.filtered + stats.duplicates == 0:
        raise DataError(
            f"no usable caption in {stats.files} parquet file(s) under {root} ({stats.rows} rows, "
            f"{stats.empty} empty captions, {stats.empty_files} empty files) — check "
            f"DATA.CAPTION_COLUMN ({caption_column!r}) and the downloaded files"
        )


class CaptionShard:
    """The captions one rank exports: keys with ``rank_of(key, world_size) == rank`` that are
    not in ``skip_keys`` (keys already stored, in any shard), in the deterministic stream order.

    Every key goes to exactly one rank whatever the file order; a resumed export with another
    world size never writes a key twice because stored keys are skipped. Each iteration starts
    afresh and fills :attr:`stats` and :attr:`already_stored` (rows skipped as already stored).
    """

    def __init__(
        self,
        root: str | Path,
        rank: int,
        world_size: int,
        skip_keys: Collection[str] = frozenset(),
        caption_column: str = "re_caption",
        key_column: str | None = "key",
        batch_rows: int = 8192,
    ) -> None:
        check_rank(rank, world_size)
        self.root = Path(root)
        self.rank = rank
        self.world_size = world_size
        self.skip_keys = skip_keys
        self.caption_column = caption_column
        self.key_column = key_column
        self.batch_rows = batch_rows
        self.stats = CaptionStats()
        self.already_stored = 0

    def _keep(self, key: str) -> bool:
        if rank_of(key, self.world_size) != self.rank:
            return False
        if key in self.skip_keys:
            self.already_stored += 1
            return False
        return True

    def __iter__(self) -> Iterator[tuple[str, str]]:
        self.stats = CaptionStats()
        self.already_stored = 0
        return iter_captions(
            self.root,
            caption_column=self.caption_column,
            key_column=self.key_column,
            batch_rows=self.batch_rows,
            stats=self.stats,
            key_filter=self._keep,
        )
