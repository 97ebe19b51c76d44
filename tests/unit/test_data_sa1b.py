"""SA-1B listing, the never-raising Dataset and the collate function, on tiny synthetic files."""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader

from stage1.data.keys import decode_key
from stage1.data.sa1b import (
    SA1BImages,
    SA1BItem,
    SA1BListStats,
    collate_images,
    list_sa1b,
    load_rgb,
)
from stage1.data.sharding import rank_of, select_rank
from stage1.data.transforms import ImageTransform

SIZE = 32


def _jpeg_bytes(w: int, h: int, mode: str = "RGB", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _png_bytes(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (w, h), (10, 20, 30, 128)).save(buf, format="PNG")
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture()
def sa1b(tmp_path: Path) -> Path:
    """train: 5 good images (landscape, portrait, grayscale, PNG-named-.jpg, big) + 3 bad;
    val: 2 images. Annotations for all but sa_3 and sa_bad_zero; one orphan JSON."""
    root = tmp_path / "sa-1b"
    good = {
        "sa_1": _jpeg_bytes(40, 30, seed=1),
        "sa_2": _jpeg_bytes(30, 40, seed=2),
        "sa_3": _jpeg_bytes(25, 25, mode="L", seed=3),
        "sa_4": _png_bytes(20, 10),
        "sa_5": _jpeg_bytes(200, 150, seed=5),
    }
    truncated = _jpeg_bytes(200, 150, seed=6)
    bad = {
        "sa_bad_random": np.random.default_rng(7).bytes(2000),
        "sa_bad_trunc": truncated[: len(truncated) // 2],
        "sa_bad_zero": b"",
    }
    for stem, data in {**good, **bad}.items():
        _write(root / "images" / "train" / f"{stem}.jpg", data)
    for stem in ("sa_10", "sa_11"):
        _write(root / "images" / "val" / f"{stem}.jpg", _jpeg_bytes(16, 12, seed=len(stem)))
    for split, stems in (("train", [*good, *bad]), ("val", ["sa_10", "sa_11"])):
        for stem in stems:
            if stem not in ("sa_3", "sa_bad_zero"):
                _write(root / "annotations" / split / f"{stem}.json", b'{"annotations": []}')
    _write(root / "annotations" / "train" / "sa_99.json", b"{}")  # orphan
    _write(root / "images" / "train" / "._sa_1.jpg", b"macOS resource fork")  # hidden: ignored
    (root / "images" / "train" / "notes.txt").write_text("not an image")
    return root


def test_list_sorted_with_annotations_and_stats(sa1b: Path, caplog) -> None:
    stats = SA1BListStats()
    with caplog.at_level(logging.WARNING):
        items = list_sa1b(sa1b, stats=stats)
    keys = [item.key for item in items]
    assert keys == sorted(keys) and len(keys) == 10
    assert {item.split for item in items if item.key in ("sa_10", "sa_11")} == {"val"}
    by_key = {item.key: item for item in items}
    assert by_key["sa_1"].annotation_path == sa1b / "annotations/train/sa_1.json"
    assert by_key["sa_3"].annotation_path is None
    assert by_key["sa_1"].image_path == sa1b / "images/train/sa_1.jpg"
    assert stats.images == {"train": 8, "val": 2}
    assert stats.missing_annotations == 2 and set(stats.missing_examples) == {"sa_3", "sa_bad_zero"}
    assert stats.orphan_annotations == 1 and stats.orphan_examples == ["sa_99"]
    assert "no annotation JSON" in caplog.text and "sa_99" in caplog.text
    assert list_sa1b(sa1b) == items  # deterministic
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'key'"):
        items[0].key = "x"  # frozen


def test_num_samples_takes_first_n_per_split(sa1b: Path) -> None:
    items = list_sa1b(sa1b, num_samples=2)
    assert [i.key for i in items] == ["sa_1", "sa_10", "sa_11", "sa_2"]
    assert [i.key for i in list_sa1b(sa1b, splits=("val",), num_samples=1)] == ["sa_10"]


def test_without_annotations_folder_nothing_is_missing(sa1b: Path, tmp_path: Path) -> None:
    root = tmp_path / "images-only"
    (root / "images").mkdir(parents=True)
    (sa1b / "images" / "val").rename(root / "images" / "val")
    stats = SA1BListStats()
    items = list_sa1b(root, splits=("val",), stats=stats)
    assert [i.annotation_path for i in items] == [None, None]
    assert stats.missing_annotations == 0


def test_listing_errors_are_actionable(sa1b: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="DATA.DATA_PATH"):
        list_sa1b(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="reorg_sa1b"):
        list_sa1b(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"\['test'\].*\['train', 'val'\]"):
        list_sa1b(sa1b, splits=("train", "test"))
    empty = tmp_path / "empty"
    (empty / "images" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no .jpg image"):
        list_sa1b(empty, splits=("train",))
    with pytest.raises(ValueError, match="DATA.SPLITS names a split twice"):
        list_sa1b(sa1b, splits=("train", "train"))


def test_duplicate_keys_are_errors(sa1b: Path) -> None:
    _write(sa1b / "images" / "val" / "sa_1.jpg", _jpeg_bytes(8, 8))
    _write(sa1b / "images" / "val" / "sa_2.jpg", _jpeg_bytes(8, 8))
    with pytest.raises(ValueError, match=r"2 key\(s\).*sa_1 \(train, val\)"):
        list_sa1b(sa1b)
    _write(sa1b / "images" / "val" / "sa_10.JPEG", _jpeg_bytes(8, 8))
    with pytest.raises(ValueError, match="two images with the key 'sa_10'"):
        list_sa1b(sa1b, splits=("val",))


def test_dataset_good_and_bad_images(sa1b: Path) -> None:
    ds = SA1BImages(list_sa1b(sa1b, splits=("train",)), ImageTransform(SIZE, "pad"))
    out = {ds.items[i].key: ds[i] for i in range(len(ds))}
    for key, hw in {"sa_1": (24, 32), "sa_2": (32, 24), "sa_3": (32, 32), "sa_4": (16, 32)}.items():
        sample = out[key]
        assert sample["image"].shape == (3, SIZE, SIZE) and sample["image"].dtype == torch.float32
        assert sample["valid_hw"].dtype == torch.int64 and tuple(sample["valid_hw"]) == hw
    for key in ("sa_bad_random", "sa_bad_trunc", "sa_bad_zero"):
        assert set(out[key]) == {"key", "error"}, key
        assert f"{key}.jpg" in out[key]["error"]
    assert "truncated" in out["sa_bad_trunc"]["error"]


def test_truncated_jpeg_detected_even_if_lenient_loading_was_enabled(
    sa1b: Path, monkeypatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    item = SA1BItem("sa_bad_trunc", "train", sa1b / "images/train/sa_bad_trunc.jpg", None)
    sample = SA1BImages([item], ImageTransform(SIZE))[0]
    assert "error" in sample
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_missing_file_is_reported_not_raised(tmp_path: Path) -> None:
    item = SA1BItem("sa_gone", "train", tmp_path / "sa_gone.jpg", None)
    assert "FileNotFoundError" in SA1BImages([item], ImageTransform(SIZE))[0]["error"]


def test_collate_mixed_and_all_bad(sa1b: Path) -> None:
    ds = SA1BImages(list_sa1b(sa1b, splits=("train",)), ImageTransform(SIZE, "squash"))
    batches = list(DataLoader(ds, batch_size=4, collate_fn=ds.collate))
    keys = [k for b in batches for k in b["keys"]]
    failed = [k for b in batches for k, _ in b["failed"]]
    assert sorted(keys) == ["sa_1", "sa_2", "sa_3", "sa_4", "sa_5"]
    assert sorted(failed) == ["sa_bad_random", "sa_bad_trunc", "sa_bad_zero"]
    for b in batches:
        n = len(b["keys"])
        assert b["images"].shape == (n, 3, SIZE, SIZE)
        assert b["valid_hw"].shape == (n, 2) and (b["valid_hw"] == SIZE).all()
    bad = [{"key": "a", "error": "boom"}, {"key": "b", "error": "bang"}]
    out = ds.collate(bad)
    assert out["images"].shape == (0, 3, SIZE, SIZE) and out["valid_hw"].shape == (0, 2)
    assert out["keys"] == [] and out["failed"] == [("a", "boom"), ("b", "bang")]
    assert collate_images(bad)["images"].shape == (0, 3, 0, 0)


def test_select_rank_partitions_items(sa1b: Path) -> None:
    items = list_sa1b(sa1b)
    for world in (1, 2, 3, 4):
        parts = [select_rank(items, r, world) for r in range(world)]
        assert sorted(i.key for p in parts for i in p) == sorted(i.key for i in items)
        for r, part in enumerate(parts):
            assert all(rank_of(i.key, world) == r for i in part)
    with pytest.raises(ValueError, match="rank"):
        select_rank(items, 2, 2)


def test_annotation_json_is_not_parsed(sa1b: Path) -> None:
    """Only paths are recorded: a broken JSON does not stop the listing."""
    (sa1b / "annotations" / "train" / "sa_1.json").write_text("{not json")
    items = list_sa1b(sa1b, splits=("train",))
    assert any(i.key == "sa_1" and i.annotation_path is not None for i in items)


def test_dataset_and_collate_pickle_for_worker_processes(sa1b: Path) -> None:
    ds = SA1BImages(list_sa1b(sa1b, splits=("val",)), ImageTransform(SIZE))
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[0]["image"], ds[0]["image"])
    assert pickle.loads(pickle.dumps(ds.collate))([ds[0]])["images"].shape == (1, 3, SIZE, SIZE)


def test_names_a_store_cannot_hold_become_reversible_keys(tmp_path: Path) -> None:
    """A space, a '%' and a non-UTF-8 byte in a file name: listed under a percent-encoded key
    that decodes back to the file name's bytes; plain names keep their key."""
    folder = tmp_path / "sa-1b" / "images" / "train"
    for name in ("my photo.jpg", "100%.jpg", "sa_12345.jpg"):
        _write(folder / name, _jpeg_bytes(8, 8))
    with open(os.fsencode(folder) + b"/caf\xe9.jpg", "wb") as f:  # Latin-1, not UTF-8
        f.write(_jpeg_bytes(8, 8))
    _write(tmp_path / "sa-1b" / "annotations" / "train" / "my photo.json", b"{}")
    stats = SA1BListStats()
    items = list_sa1b(tmp_path / "sa-1b", splits=("train",), stats=stats)
    assert [i.key for i in items] == ["100%25", "caf%E9", "my%20photo", "sa_12345"]
    for item in items:
        assert os.fsencode(decode_key(item.key)) == os.fsencode(item.image_path.stem)
        assert load_rgb(item.image_path).size == (8, 8)
    assert items[2].annotation_path == tmp_path / "sa-1b/annotations/train/my photo.json"
    assert stats.encoded_keys == 3 and stats.rejected == []


def test_keys_the_store_rejects_are_skipped_and_named(sa1b: Path, monkeypatch, caplog) -> None:
    import stage1.data.keys as keys

    _write(sa1b / "images" / "train" / "sa 6.jpg", _jpeg_bytes(8, 8))
    monkeypatch.setattr(keys, "_store_check", lambda key: "too long" if key == "sa%206" else None)
    stats = SA1BListStats()
    with caplog.at_level(logging.WARNING):
        items = list_sa1b(sa1b, splits=("train",), stats=stats)
    assert len(items) == 8 and "sa%206" not in [i.key for i in items]
    assert stats.rejected == [("sa 6.jpg", "too long")]
    assert "sa 6.jpg" in caplog.text and "too long" in caplog.text
