"""Recap-DataComp caption streaming and hash sharding, on tiny parquet files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stage1.data.recap_datacomp import (
    CaptionShard,
    CaptionStats,
    caption_key,
    check_parquet_files,
    iter_captions,
    list_parquet_files,
)
from stage1.data.sharding import key_hash, rank_of

EXPECTED = [
    ("k1", "a dog on a beach"),
    ("k3", "two cats"),
    ("k4", "a red car"),
    ("k5", "a blue sky"),
    ("k6", "a tree"),
    (caption_key("a caption without key"), "a caption without key"),
    (caption_key("another one"), "another one"),
]


def _write(path: Path, columns: dict[str, list], row_group_size: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({name: pa.array(values, type=pa.string()) for name, values in columns.items()})
    pq.write_table(table, path, row_group_size=row_group_size)


@pytest.fixture()
def recap(tmp_path: Path) -> Path:
    """a.parquet: nulls, blanks, a repeated key; sub/b.parquet: more rows, a key seen in a;
    c_empty.parquet: 0 rows; d_nokey.parquet: no key column (hashed keys, one repeat)."""
    root = tmp_path / "recap"
    _write(
        root / "a.parquet",
        {
            "key": ["k1", "k2", "k3", "k1", "k7", "k8"],
            "re_caption": ["a dog on a beach", None, "two cats", "a dog again", "", "   \n"],
            "url": ["u"] * 6,
        },
        row_group_size=2,
    )
    _write(
        root / "sub" / "b.parquet",
        {
            "key": ["k4", "k3", "k5", "k6"],
            "re_caption": ["a red car", "two cats (duplicate key)", "a blue sky", "a tree"],
        },
    )
    _write(root / "c_empty.parquet", {"key": [], "re_caption": []})
    _write(
        root / "d_nokey.parquet",
        {"re_caption": ["a caption without key", "another one", "a caption without key"]},
    )
    _write(root / ".cache" / "hidden.parquet", {"key": ["x"], "re_caption": ["never read"]})
    return root


def test_list_parquet_files_sorted_recursive(recap: Path, tmp_path: Path) -> None:
    names = [p.relative_to(recap).as_posix() for p in list_parquet_files(recap)]
    assert names == ["a.parquet", "c_empty.parquet", "d_nokey.parquet", "sub/b.parquet"]
    assert list_parquet_files(recap / "a.parquet") == [recap / "a.parquet"]
    with pytest.raises(FileNotFoundError, match="DATA.DATA_PATH"):
        list_parquet_files(tmp_path / "missing")
    (tmp_path / "none").mkdir()
    with pytest.raises(FileNotFoundError, match="download_datacomp"):
        list_parquet_files(tmp_path / "none")


@pytest.mark.parametrize("batch_rows", [1, 2, 8192])
def test_iter_captions_skips_and_counts(recap: Path, batch_rows: int) -> None:
    stats = CaptionStats()
    got = list(iter_captions(recap, batch_rows=batch_rows, stats=stats))
    assert sorted(got) == sorted(EXPECTED)
    assert got[:2] == [("k1", "a dog on a beach"), ("k3", "two cats")]  # sorted file order
    assert (stats.files, stats.empty_files, stats.rows) == (4, 1, 13)
    assert (stats.yielded, stats.empty, stats.duplicates) == (7, 3, 3)
    assert stats.hashed_keys == 3 and stats.filtered == 0
    assert stats.key_fallback_files == [str(recap / "d_nokey.parquet")]


def test_streams_in_batches_never_whole_tables(recap: Path, monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("whole-table read")

    monkeypatch.setattr(pq, "read_table", forbidden)
    monkeypatch.setattr(pq.ParquetFile, "read", forbidden)
    sizes = []
    original = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        sizes.append((kwargs.get("batch_size"), tuple(kwargs.get("columns"))))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    assert len(list(iter_captions(recap, batch_rows=3))) == 7
    assert sizes[0] == (3, ("re_caption", "key"))  # "url" is never decoded
    assert (3, ("re_caption",)) in sizes


def test_wrong_caption_column_names_file_and_columns(recap: Path) -> None:
    with pytest.raises(ValueError) as info:
        list(iter_captions(recap, caption_column="caption"))
    message = str(info.value)
    assert "a.parquet" in message and "'caption'" in message
    assert "['key', 're_caption', 'url']" in message and "DATA.CAPTION_COLUMN" in message


def test_non_string_caption_column_is_an_error(tmp_path: Path) -> None:
    pq.write_table(pa.table({"key": ["a"], "re_caption": [3]}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="not string"):
        list(iter_captions(tmp_path))


def test_corrupt_parquet_is_an_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match="broken.parquet.*download it again"):
        list(iter_captions(tmp_path))


def test_no_usable_caption_is_an_error_at_the_end(tmp_path: Path) -> None:
    _write(tmp_path / "empty.parquet", {"key": [], "re_caption": []})
    _write(tmp_path / "blank.parquet", {"key": ["a", "b"], "re_caption": [None, " "]})
    with pytest.raises(ValueError, match="no usable caption"):
        list(iter_captions(tmp_path))


def test_custom_key_column_and_bad_keys_fall_back_to_hash(tmp_path: Path) -> None:
    _write(
        tmp_path / "x.parquet",
        {"uid": ["u1", "bad\nkey", None, ""], "text": ["one", "two", "three", "four"]},
    )
    stats = CaptionStats()
    got = list(iter_captions(tmp_path, caption_column="text", key_column="uid", stats=stats))
    assert got == [("u1", "one")] + [(caption_key(c), c) for c in ("two", "three", "four")]
    assert stats.hashed_keys == 3 and stats.key_fallback_files == []
    assert len(list(iter_captions(tmp_path, caption_column="text", key_column=None))) == 4


def test_caption_key_and_rank_of_are_stable() -> None:
    assert caption_key("a photo of a cat") == "sha1:14daf9698460c28f0b6308040bbdf1839d235b2d"
    assert [rank_of(k, 4) for k in ("sa_1", "sa_2", "000000012345", "sha1:abc")] == [2, 2, 0, 2]
    assert [rank_of(k, 3) for k in ("sa_1", "sa_2", "000000012345", "sha1:abc")] == [1, 0, 0, 1]
    assert rank_of("anything", 1) == 0
    # Literal values (computed once) prove the hash is not Python's per-process salted hash().
    assert key_hash("sa_1") == int.from_bytes(
        hashlib.blake2b(b"sa_1", digest_size=8).digest(), "big"
    )
    with pytest.raises(ValueError, match="world_size"):
        rank_of("x", 0)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shards_cover_every_key_exactly_once(recap: Path, world_size: int) -> None:
    everything = dict(iter_captions(recap))
    seen: list[str] = []
    for rank in range(world_size):
        shard = CaptionShard(recap, rank, world_size)
        pairs = list(shard)
        assert pairs == list(CaptionShard(recap, rank, world_size))  # deterministic
        assert all(rank_of(k, world_size) == rank and everything[k] == c for k, c in pairs)
        assert shard.stats.yielded == len(pairs)
        seen += [k for k, _ in pairs]
    assert sorted(seen) == sorted(everything)


def test_resume_with_another_world_size_never_duplicates(recap: Path) -> None:
    everything = dict(iter_captions(recap))
    # A first run with 2 ranks stored rank 0's captions, then died.
    stored = {k for k, _ in CaptionShard(recap, 0, 2)}
    assert stored and stored != set(everything)
    resumed: list[str] = []
    for rank in range(3):
        shard = CaptionShard(recap, rank, 3, skip_keys=stored)
        resumed += [k for k, _ in shard]
        assert not stored & {k for k, _ in shard}
    assert sorted(resumed + sorted(stored)) == sorted(everything)
    assert len(resumed) == len(set(resumed))


def test_shard_counts_already_stored(recap: Path) -> None:
    shard = CaptionShard(recap, 0, 1, skip_keys={"k1", "k4"})
    keys = [k for k, _ in shard]
    assert "k1" not in keys and "k4" not in keys and len(keys) == 5
    assert shard.already_stored == 3  # k1 twice (a duplicate row) and k4
    with pytest.raises(ValueError, match="rank"):
        CaptionShard(recap, 3, 3)


def test_keys_the_store_cannot_hold_are_percent_encoded(tmp_path: Path) -> None:
    _write(
        tmp_path / "x.parquet",
        {
            "key": ["k 1", "tab\tkey", "50%", "ok", "bad\nkey"],
            "re_caption": ["one", "two", "three", "four", "five"],
        },
    )
    stats = CaptionStats()
    got = list(iter_captions(tmp_path, stats=stats))
    assert got == [
        ("k%201", "one"),
        ("tab%09key", "two"),
        ("50%25", "three"),
        ("ok", "four"),
        (caption_key("five"), "five"),  # a line break still falls back to the caption hash
    ]
    assert stats.encoded_keys == 3 and stats.hashed_keys == 1


def test_check_parquet_files_counts_rows_and_finds_a_bad_file(recap: Path) -> None:
    assert check_parquet_files(recap) == 13  # footers only: every row, usable or not
    _write(recap / "sub" / "z.parquet", {"key": ["q"], "caption": ["wrong column"]})
    with pytest.raises(ValueError, match=r"z\.parquet has no caption column 're_caption'"):
        check_parquet_files(recap)
