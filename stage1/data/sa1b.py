"""SA-1B images: listing, a Dataset that never raises on a bad file, and a collate function.

Layout (what ``data/reorg_sa1b.py`` produces)::

    root/images/{split}/<stem>.jpg        # an image's key is its stem, e.g. "sa_307767"
    root/annotations/{split}/<stem>.json  # optional; only the path is recorded, never parsed

Keys: the stem, made a valid store key by :func:`stage1.data.keys.encode_key` (``my photo.jpg``
-> ``my%20photo``; plain names such as ``sa_307767`` are unchanged). A name the store still
rejects is skipped, counted in :class:`SA1BListStats` and named in the log.

Annotation policy: when ``root/annotations/{split}`` does not exist, images are listed with
``annotation_path=None`` silently (the export does not need the masks). When it exists but an
image's JSON is missing, the image is still listed (with ``None``); such images, and JSON files
without an image, are counted in :class:`SA1BListStats` and logged as a warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageFile
from torch.utils.data import Dataset

from stage1.data.errors import DataError, DataNotFoundError
from stage1.data.keys import encode_key, key_problem
from stage1.data.transforms import ImageTransform

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg")  # matched case-insensitively
_SHOW = 5  # names shown in messages before "..."


@dataclass(frozen=True, slots=True)
class SA1BItem:
    """One SA-1B image: its key (the encoded file stem, unique across splits), split and paths."""

    key: str
    split: str
    image_path: Path
    annotation_path: Path | None


@dataclass
class SA1BListStats:
    """What :func:`list_sa1b` found. Counts refer to the listed items (after ``num_samples``),
    except ``orphan_annotations`` (JSON files in a split's folder without an image)."""

    images: dict[str, int] = field(default_factory=dict)  # listed images per split
    missing_annotations: int = 0  # listed images whose split has annotations but not theirs
    orphan_annotations: int = 0  # JSON files without an image of the same stem
    missing_examples: list[str] = field(default_factory=list)  # a few keys without JSON
    orphan_examples: list[str] = field(default_factory=list)  # a few orphan JSON stems
    encoded_keys: int = 0  # images whose key is their percent-encoded stem (not the stem)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (file name, why): skipped


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOW])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _SHOW else "")


def _is_image_name(name: str) -> bool:
    """A .jpg/.jpeg name that is not hidden (macOS copies leave ``._sa_1.jpg`` files behind)."""
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def _image_files(folder: Path, stats: SA1BListStats) -> dict[str, Path]:
    """Key -> path of the images in ``folder``; two files with one key are an error, a file
    whose key the store rejects is skipped (logged, recorded in ``stats.rejected``)."""
    found: dict[str, Path] = {}
    with os.scandir(folder) as entries:  # DirEntry.is_file() needs no extra stat per file
        paths = [Path(e.path) for e in entries if e.is_file() and _is_image_name(e.name)]
    for path in paths:
        key = encode_key(path.stem)
        problem = key_problem(key)
        if problem:
            logger.warning("skipped %s: its key %r cannot be stored: %s", path, key, problem)
            stats.rejected.append((path.name, problem))
            continue
        if key in found:
            raise DataError(
                f"two images with the key {key!r} in {folder}: {found[key].name} and "
                f"{path.name} — keys must be unique: remove or rename one of them"
            )
        stats.encoded_keys += key != path.stem
        found[key] = path
    return found


def _annotation_files(folder: Path) -> dict[str, Path]:
    """Key -> path of the annotation JSON files in ``folder`` (hidden files skipped)."""
    return {encode_key(p.stem): p for p in folder.glob("*.json") if not p.name.startswith(".")}


def list_sa1b(
    root: str | Path,
    splits: Sequence[str] = ("train", "val"),
    num_samples: int = 0,
    stats: SA1BListStats | None = None,
) -> list[SA1BItem]:
    """List the SA-1B images of ``splits`` under ``root``, sorted by key (lexical order).

    ``num_samples > 0`` keeps the first N images of each split in sorted order. ``stats``, when
    given, is filled in (see :class:`SA1BListStats`). Raises :class:`DataNotFoundError` when the
    root, ``images/`` or a split folder is missing or no image is found, and :class:`DataError`
    when a key occurs twice (within or across splits).
    """
    root = Path(root)
    stats = stats if stats is not None else SA1BListStats()
    if not splits:
        raise DataError("no split requested — set DATA.SPLITS, e.g. ['train', 'val']")
    if len(set(splits)) != len(splits):
        raise DataError(f"DATA.SPLITS names a split twice: {list(splits)} — list each once")
    if num_samples < 0:
        raise DataError(f"DATA.NUM_SAMPLES is {num_samples} — use 0 (all) or a positive number")
    if not root.is_dir():
        raise DataNotFoundError(
            f"SA-1B root {root} does not exist — set DATA.DATA_PATH to the folder holding "
            "images/{train,val} (data/reorg_sa1b.py builds it from the SA-1B tar files)"
        )
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise DataNotFoundError(
            f"{images_dir} does not exist — an SA-1B root holds images/{{split}}/*.jpg: run "
            "data/reorg_sa1b.py on the downloaded tar files to build it"
        )
    existing = sorted(p.name for p in images_dir.iterdir() if p.is_dir())
    missing = [s for s in splits if s not in existing]
    if missing:
        raise DataNotFoundError(
            f"split folder(s) {missing} not found in {images_dir}, which has "
            f"{existing or 'no split folders'} — set DATA.SPLITS to the splits that exist"
        )

    items: list[SA1BItem] = []
    owner: dict[str, str] = {}
    duplicates: list[str] = []
    for split in splits:
        start = time.perf_counter()
        images = _image_files(images_dir / split, stats)
        keys = sorted(images)
        if num_samples:
            keys = keys[:num_samples]
        ann_dir = root / "annotations" / split
        annotations: dict[str, Path] | None = None
        if ann_dir.is_dir():
            annotations = _annotation_files(ann_dir)
            orphans = sorted(annotations.keys() - images.keys())
            stats.orphan_annotations += len(orphans)
            stats.orphan_examples.extend(orphans[: _SHOW - len(stats.orphan_examples)])
        for key in keys:
            if key in owner:
                duplicates.append(f"{key} ({owner[key]}, {split})")
                continue
            owner[key] = split
            ann: Path | None = None
            if annotations is not None:
                ann = annotations.get(key)
                if ann is None:
                    stats.missing_annotations += 1
                    if len(stats.missing_examples) < _SHOW:
                        stats.missing_examples.append(key)
            items.append(SA1BItem(key, split, images[key], ann))
        stats.images[split] = len(keys)
        if not keys:
            logger.warning("SA-1B split %r in %s holds no .jpg image", split, images_dir / split)
        else:
            seconds = time.perf_counter() - start
            logger.info("listed %d images of split %r in %.1f s", len(keys), split, seconds)
    if duplicates:
        raise DataError(
            f"{len(duplicates)} key(s) occur in more than one split: {_names(duplicates)} — keys "
            "must be unique in a store, so keep each image in one split only"
        )
    if not items:
        raise DataNotFoundError(
            f"no .jpg image found in {images_dir} for splits {list(splits)} — check "
            "DATA.DATA_PATH and DATA.SPLITS"
        )
    if stats.encoded_keys:
        logger.info(
            "%d file name(s) hold characters a store key cannot: their keys are "
            "percent-encoded (e.g. 'my photo.jpg' -> 'my%%20photo')",
            stats.encoded_keys,
        )
    if stats.missing_annotations:
        logger.warning(
            "%d SA-1B image(s) have no annotation JSON (listed anyway): %s",
            stats.missing_annotations,
            _names(stats.missing_examples),
        )
    if stats.orphan_annotations:
        logger.warning(
            "%d SA-1B annotation JSON file(s) have no image: %s",
            stats.orphan_annotations,
            _names(stats.orphan_examples),
        )
    items.sort(key=lambda item: item.key)
    return items


@contextlib.contextmanager
def _strict_truncation() -> Iterator[None]:
    """Make PIL raise on truncated files even if some other code enabled lenient loading."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def load_rgb(path: str | Path) -> Image.Image:
    """Open and fully decode an image as RGB; raises on unreadable, corrupt or truncated files."""
    with _strict_truncation(), Image.open(path) as image:
        image.load()  # decodes everything now: a truncated JPEG raises OSError here
        rgb = image.convert("RGB")
    if rgb.width < 1 or rgb.height < 1:
        raise ValueError(f"image has no pixels ({rgb.width}x{rgb.height})")
    return rgb


class SA1BImages(Dataset):
    """A map-style Dataset over :class:`SA1BItem` s.

    ``dataset[i]`` is ``{"key", "image": float32 [3, S, S], "valid_hw": int64 [2]}``, or
    ``{"key", "error": message}`` when the file cannot be read or decoded (missing, zero bytes,
    not an image, truncated, ...): a bad image never raises. Use :attr:`collate` (or
    :func:`collate_images`) as the DataLoader's ``collate_fn``.
    """

    def __init__(self, items: Sequence[SA1BItem], transform: ImageTransform) -> None:
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    @property
    def collate(self) -> partial:
        """:func:`collate_images` bound to this dataset's image size (picklable for workers)."""
        return partial(collate_images, img_size=self.transform.img_size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        try:
            image = load_rgb(item.image_path)
        except Exception as exc:  # any decoder failure is reported, never raised
            return {"key": item.key, "error": f"{item.image_path}: {type(exc).__name__}: {exc}"}
        x, (h, w) = self.transform(image)
        return {"key": item.key, "image": x, "valid_hw": torch.tensor([h, w], dtype=torch.int64)}


def collate_images(batch: Sequence[dict[str, Any]], img_size: int | None = None) -> dict[str, Any]:
    """Stack the good samples of ``batch``; report the bad ones.

    Returns ``{"keys": [...], "images": [N, 3, S, S], "valid_hw": int64 [N, 2],
    "failed": [(key, message), ...]}``. When every sample failed, ``images`` is empty with shape
    ``[0, 3, img_size, img_size]`` (``[0, 3, 0, 0]`` if ``img_size`` is not given).
    """
    good = [sample for sample in batch if "error" not in sample]
    failed = [(sample["key"], sample["error"]) for sample in batch if "error" in sample]
    if good:
        images = torch.stack([sample["image"] for sample in good])
        valid_hw = torch.stack([sample["valid_hw"] for sample in good])
    else:
        side = img_size or 0
        images = torch.empty(0, 3, side, side, dtype=torch.float32)
        valid_hw = torch.empty(0, 2, dtype=torch.int64)
    return {
        "keys": [sample["key"] for sample in good],
        "images": images,
        "valid_hw": valid_hw,
        "failed": failed,
    }
