"""Phase 2's inputs, opened and checked before anything heavy is built or written: the teacher
store (ours, or a public EfficientSAM3 one once confirmed), the datasets paired with it (the one
``DATA.DATASET`` names, through :data:`DATASETS`) and their loaders, and the provenance every
checkpoint records."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler
from yacs.config import CfgNode

from stage1.common.config import resolve_dataset
from stage1.common.distributed import DistInfo
from stage1.common.preflight import check_input_path
from stage1.common.students import TRAIN_ENTRY
from stage1.data.distill import (
    ImageDistillDataset,
    TextDistillDataset,
    TrainDataError,
    check_source_digests,
)
from stage1.data.recap_datacomp import iter_captions
from stage1.data.sa1b import list_sa1b
from stage1.data.sharding import key_hash
from stage1.data.transforms import image_transform, preprocessing_record
from stage1.store import (
    LEGACY_HEADER_BYTES,
    MANIFEST,
    EmbeddingStore,
    StoreError,
    StoreMismatchError,
    StoreSpec,
)

log = logging.getLogger("stage1.train")


def expected_spec(cfg: CfgNode, kind: str) -> StoreSpec:
    """The store this config trains on: shape, encoding and preprocessing / context length."""
    if kind == "image":
        d, s = cfg.DISTILL.EMBED_DIM, cfg.DISTILL.EMBED_SIZE
        meta = {"preprocessing": preprocessing_record(image_transform(cfg))}
        return StoreSpec((d, s, s), cfg.DISTILL.STORE_DTYPE, meta=meta)
    shape = (cfg.DISTILL.CONTEXT_LENGTH, cfg.DISTILL.TEXT_DIM)
    meta = {"context_length": cfg.DISTILL.CONTEXT_LENGTH}
    return StoreSpec(shape, cfg.DISTILL.STORE_DTYPE, meta=meta)


def _assumed(cfg: CfgNode, kind: str) -> str:
    if kind == "image":
        d = cfg.DATA
        return (
            f"DATA.IMG_SIZE {d.IMG_SIZE}, DATA.RESIZE_MODE {d.RESIZE_MODE}, DATA.PIXEL_MEAN "
            f"{list(d.PIXEL_MEAN)}, DATA.PIXEL_STD {list(d.PIXEL_STD)}"
        )
    return f"DISTILL.CONTEXT_LENGTH {cfg.DISTILL.CONTEXT_LENGTH} (SAM3's tokenizer)"


_SHAPE_KEYS = {  # the keys that give a store's record shape
    "image": "DISTILL.EMBED_DIM / EMBED_SIZE",
    "text": "DISTILL.CONTEXT_LENGTH / TEXT_DIM",
}


def _check_legacy_shards(root: Path, shape: tuple[int, ...], kind: str) -> None:
    """A public store's shards must hold one whole record of ``shape`` per key."""
    spec = StoreSpec(shape, header_bytes=LEGACY_HEADER_BYTES)
    keys = _SHAPE_KEYS[kind]
    for values in sorted(root.glob("rank*-values.bin")):
        key_file = values.with_name(values.name.replace("-values.bin", "-keys.txt"))
        n = key_file.read_bytes().count(b"\n") if key_file.exists() else 0
        size = values.stat().st_size
        if size == n * spec.record_bytes:
            continue
        if n and size == n * 2 * spec.numel:
            raise StoreMismatchError(
                f"{values} holds {2 * spec.numel}-byte records without the public store's "
                f"4-byte header: a store of this code whose {MANIFEST} was lost — restore the "
                "manifest, or export a new store with phase 1"
            )
        exact = n and size % n == 0
        found = f"{size // n}-byte records" if exact else f"{size} bytes"
        hint = f" ({(size // n - 4) // 2} float16 values a record)" if exact else ""
        raise StoreMismatchError(
            f"{values} holds {found} for {n} keys, but the config's record shape {shape} makes "
            f"{spec.record_bytes}-byte records (a 4-byte header, then float16) — set {keys} to "
            f"the store's record shape{hint}"
        )


def open_store(cfg: CfgNode, kind: str) -> EmbeddingStore:
    """The teacher store of ``DISTILL.TEACHER_EMBED_PATH``, checked against the config. A
    store without a manifest (the public EfficientSAM3's) needs ``DISTILL.ACCEPT_LEGACY_STORE``
    and is read with the record shape the config gives."""
    root = check_input_path(
        cfg.DISTILL.TEACHER_EMBED_PATH,
        "DISTILL.TEACHER_EMBED_PATH",
        "run phase 1 (the export) first, or point DISTILL.TEACHER_EMBED_PATH at the store it wrote",
    )
    expected = expected_spec(cfg, kind)
    legacy = root.is_dir() and not (root / MANIFEST).exists() and any(root.glob("rank*-*"))
    if not legacy:
        store = EmbeddingStore(root, expected)
    else:
        assumed = _assumed(cfg, kind)
        if not cfg.DISTILL.ACCEPT_LEGACY_STORE:
            raise StoreError(
                f"{root} holds shard files but no {MANIFEST}: a store of the public "
                "EfficientSAM3 (or one whose manifest was lost), whose teacher and preprocessing "
                f"are unknown — if it was exported with this config's {assumed}, train on it "
                "with DISTILL.ACCEPT_LEGACY_STORE True (records are read as "
                f"{expected.shape} float16, the config's {_SHAPE_KEYS[kind]}); otherwise export a "
                "new store with phase 1"
            )
        _check_legacy_shards(root, expected.shape, kind)
        store = EmbeddingStore(root, expected, legacy_shape=expected.shape)
        log.warning(
            "!!! DISTILL.ACCEPT_LEGACY_STORE: %s has no %s (a public EfficientSAM3 store). Its "
            "teacher is unknown, and its preprocessing is unknown and assumed to be this "
            "config's %s; if it was made otherwise, the student learns the wrong mapping. "
            "Checkpoints record its teacher as unknown. !!!",
            root,
            MANIFEST,
            assumed,
        )
    log.info("teacher store %s: %d records of %s", root, len(store), store.spec.shape)
    return store


def store_provenance(store: EmbeddingStore) -> dict[str, Any]:
    """What a checkpoint records about the store it learned from: the teacher (``None`` for a
    public EfficientSAM3 store), the store's absolute path and spec."""
    teacher = None if store.legacy else store.spec.meta.get("teacher")
    return {
        "teacher": teacher,
        "store": {"path": str(store.root.resolve()), "spec": store.spec.to_json()},
    }


def _image_datasets(cfg: CfgNode, store: EmbeddingStore) -> list:
    transform = image_transform(cfg)
    out = []
    for split in (cfg.DATA.TRAIN_SPLIT, cfg.DATA.VAL_SPLIT):
        if not split:
            out.append(None)
            continue
        items = list_sa1b(cfg.DATA.DATA_PATH, (split,), cfg.DATA.NUM_SAMPLES)
        kept = [it for it in items if it.key in store]
        if not kept:
            raise TrainDataError(
                f"no image of split {split!r} under {cfg.DATA.DATA_PATH} has an embedding in "
                f"{store.root} — run phase 1 on this dataset, or point DISTILL.TEACHER_EMBED_PATH "
                "at its store (or DATA.DATA_PATH at the images the store was exported from)"
            )
        if len(kept) < len(items):
            log.warning(
                "%s: %d of %d images have no teacher embedding (skipped at export, or the store "
                "is from a subset); training on the other %d",
                split,
                len(items) - len(kept),
                len(items),
                len(kept),
            )
        out.append(ImageDistillDataset(kept, store, transform))
    return out


def _text_datasets(cfg: CfgNode, store: EmbeddingStore) -> list:
    pairs = list(
        iter_captions(
            cfg.DATA.DATA_PATH,
            caption_column=cfg.DATA.CAPTION_COLUMN,
            key_column=cfg.DATA.KEY_COLUMN or None,
            batch_rows=cfg.DATA.PARQUET_BATCH_ROWS,
            key_filter=store.__contains__,
        )
    )
    warning = check_source_digests(pairs, store, cfg.DATA.DATA_PATH)
    if warning:
        log.warning(warning)
    cut = int(cfg.DATA.VAL_FRACTION * 10_000)
    val = [p for p in pairs if key_hash(p[0]) % 10_000 < cut]
    train = [p for p in pairs if key_hash(p[0]) % 10_000 >= cut]
    if not train:
        raise TrainDataError(
            f"no caption under {cfg.DATA.DATA_PATH} outside the validation fraction has an "
            f"embedding in {store.root} — run phase 1 on these captions, or point "
            "DISTILL.TEACHER_EMBED_PATH at their store (or lower DATA.VAL_FRACTION)"
        )
    ctx = cfg.DISTILL.CONTEXT_LENGTH
    return [
        TextDistillDataset(train, store, ctx),
        TextDistillDataset(val, store, ctx) if val else None,
    ]


# DATA.DATASET -> the builder of its [train, val or None] datasets, each item paired with its
# record in the store (the kind of student each trains: stage1.common.defaults.DATASET_KINDS)
DATASETS: dict[str, Callable[[CfgNode, EmbeddingStore], list]] = {
    "sa1b": _image_datasets,  # SA-1B splits DATA.TRAIN_SPLIT and DATA.VAL_SPLIT
    "recap_datacomp": _text_datasets,  # captions, split by a hash of the key
}


def dataset_name(cfg: CfgNode, kind: str) -> str:
    """The dataset a ``kind`` student trains on (``DATA.DATASET``; ``""``: the kind's own);
    :class:`~stage1.common.config.ConfigError` when it is one of the other kind."""
    return resolve_dataset(cfg, kind, TRAIN_ENTRY)


def build_datasets(cfg: CfgNode, dataset: str, store: EmbeddingStore) -> list:
    """``[train, val or None]`` of ``dataset`` (a name :func:`dataset_name` gave)."""
    return DATASETS[dataset](cfg, store)


def make_loader(ds, cfg: CfgNode, info: DistInfo, device: torch.device, train: bool) -> DataLoader:
    """This rank's loader of ``ds``: shuffled per epoch (``sampler.set_epoch``) and without the
    last partial batch when ``train``."""
    sampler = DistributedSampler(
        ds,
        num_replicas=info.world_size,
        rank=info.rank,
        shuffle=train,
        seed=cfg.SEED,
        drop_last=train,
    )
    return DataLoader(
        ds,
        batch_size=cfg.DATA.BATCH_SIZE,
        sampler=sampler,
        num_workers=cfg.DATA.NUM_WORKERS,
        pin_memory=cfg.DATA.PIN_MEMORY and device.type == "cuda",
        drop_last=train,
        persistent_workers=cfg.DATA.NUM_WORKERS > 0,
    )
