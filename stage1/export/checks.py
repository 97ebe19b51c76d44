"""What an export checks before it hashes or loads the teacher; the checks create nothing.

In order: the dataset ``DATA.DATASET`` names (one of this export's kind); the run folder
(``OUTPUT``); the teacher (its checkpoint file or the random opt-in, its architecture at
``DATA.IMG_SIZE``, the record shape it outputs against ``DISTILL.*``); the data (listed, at least
one image or parquet file, every parquet file's columns); the store folder (an existing manifest
must agree with this export, shard files without one are refused); the disk space for the
records left to export. A run that fails them leaves no folder, log or store.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yacs.config import CfgNode

from stage1.common.config import resolve_dataset
from stage1.common.errors import UserError
from stage1.common.preflight import check_output_folder
from stage1.data.errors import DataNotFoundError
from stage1.data.recap_datacomp import check_parquet_files
from stage1.data.sa1b import SA1BItem, SA1BListStats, list_sa1b
from stage1.data.transforms import image_transform, preprocessing_record
from stage1.export.teachers import resolve_teacher_weights, teacher_out_shape, teacher_record
from stage1.store import (
    DIGEST_BYTES,
    SOURCE_DIGEST,
    TEACHER_IDENTITY,
    StoreMismatchError,
    StoreSpec,
    check_disk_space,
    check_store_folder,
    existing_keys,
    format_bytes,
    open_spec,
)

log = logging.getLogger("stage1.export")

# the entry point that exports each kind of data
EXPORT_ENTRY = {"image": "save_embedding_image_stage1.py", "text": "save_embedding_text_stage1.py"}


class ExportConfigError(UserError, ValueError):
    """The config's record shape disagrees with what the teacher outputs."""


@dataclass
class ExportPlan:
    """What the checks found; ``items`` stays on the rank that listed them."""

    weights: Path | None  # the teacher checkpoint (None: an opted-in random teacher)
    spec: StoreSpec  # the store's spec; meta["teacher"]["checkpoint_sha256"] is "" until hashed
    existing: StoreSpec | None  # the spec of the store this export resumes, if there is one
    todo: int = 0  # records left to export (captions: rows not stored yet, an upper bound)
    rejected: int = 0  # images skipped at listing because the store cannot hold their key
    items: list[SA1BItem] | None = None  # the listed images (image exports)


def store_spec(
    cfg: CfgNode, kind: str, teacher: dict[str, Any], existing: StoreSpec | None = None
) -> StoreSpec:
    """The spec of this export's store; :class:`ExportConfigError` when the teacher's output
    shape is not the one ``DISTILL.*`` describes. A new text store carries a source digest per
    record; one that ``existing`` shows was made without them keeps that layout."""
    shape = teacher_out_shape(cfg, kind)
    meta: dict[str, Any] = {"teacher": teacher, "tag": cfg.TAG}
    header = 0
    if kind == "image":
        want = (cfg.DISTILL.EMBED_DIM, cfg.DISTILL.EMBED_SIZE, cfg.DISTILL.EMBED_SIZE)
        if shape != want:
            raise ExportConfigError(
                f"the teacher ({cfg.MODEL.TEACHER_ARCH} at DATA.IMG_SIZE {cfg.DATA.IMG_SIZE}) "
                f"outputs {shape} per image, but DISTILL.EMBED_DIM/EMBED_SIZE say {want} — set "
                f"DISTILL.EMBED_DIM {shape[0]} and DISTILL.EMBED_SIZE {shape[1]}"
            )
        meta["preprocessing"] = preprocessing_record(image_transform(cfg))
    else:
        want = (cfg.DISTILL.CONTEXT_LENGTH, cfg.DISTILL.TEXT_DIM)
        if shape != want:
            raise ExportConfigError(
                f"the text teacher ({cfg.MODEL.TEACHER_ARCH}) outputs {shape} per caption, but "
                f"DISTILL.CONTEXT_LENGTH/TEXT_DIM say {want} — set DISTILL.TEXT_DIM {shape[1]}"
            )
        meta["context_length"] = cfg.DISTILL.CONTEXT_LENGTH
        if existing is None or existing.meta.get("record_header") == SOURCE_DIGEST:
            header, meta["record_header"] = DIGEST_BYTES, SOURCE_DIGEST
    return StoreSpec(shape=shape, encoding=cfg.DISTILL.STORE_DTYPE, header_bytes=header, meta=meta)


def _mismatch(root: Path, diffs: list[str]) -> StoreMismatchError:
    return StoreMismatchError(
        f"the embedding store in {root} was created with another spec ({'; '.join(diffs)}) — "
        "export into another folder (a new OUTPUT or DISTILL.TEACHER_EMBED_PATH), or delete "
        "this one to start over"
    )


def _differences(store: StoreSpec, ours: StoreSpec, hashed: bool) -> list[str]:
    """What this export disagrees with the store on; before hashing (``hashed`` False) the
    teacher is compared by everything but its checkpoint's SHA-256, and by being random."""
    diffs = [
        f"{name}: store has {getattr(store, name)!r}, this export {getattr(ours, name)!r}"
        for name in ("shape", "encoding", "header_bytes")
        if getattr(store, name) != getattr(ours, name)
    ]
    for name in ("preprocessing", "context_length", "record_header"):
        if store.meta.get(name) != ours.meta.get(name):
            diffs.append(
                f"meta[{name!r}]: store has {store.meta.get(name)!r}, this export "
                f"{ours.meta.get(name)!r}"
            )
    have, got = store.meta.get("teacher") or {}, ours.meta["teacher"]
    for name in TEACHER_IDENTITY:
        a, b = have.get(name), got[name]
        if name == "checkpoint_sha256" and not hashed:
            a, b = a == "random", b == "random"
            if a != b:
                diffs.append(
                    f"teacher: the store's is {'random' if a else 'a checkpoint'}, this "
                    f"export's {'random' if b else got['checkpoint']}"
                )
        elif a != b:
            diffs.append(f"teacher {name}: store has {a!r}, this export {b!r}")
    return diffs


def with_checkpoint_hash(plan: ExportPlan, root: Path, sha: str) -> StoreSpec:
    """``plan.spec`` with the teacher checkpoint's SHA-256. The store a run resumes must have
    been made by the same checkpoint: :class:`StoreMismatchError` otherwise, before the teacher
    is loaded for a store it cannot extend."""
    teacher = {**plan.spec.meta["teacher"], "checkpoint_sha256": sha if plan.weights else "random"}
    spec = dataclasses.replace(plan.spec, meta={**plan.spec.meta, "teacher": teacher})
    if plan.existing is not None:
        diffs = _differences(plan.existing, spec, hashed=True)
        if diffs:
            raise _mismatch(root, diffs)
    return spec


def _list_images(cfg: CfgNode, check_only: bool) -> tuple[list[SA1BItem], int]:
    stats = SA1BListStats()
    num_samples = 0 if check_only else cfg.DATA.NUM_SAMPLES  # a check looks up any stored key
    items = list_sa1b(cfg.DATA.DATA_PATH, tuple(cfg.DATA.SPLITS), num_samples, stats)
    return items, len(stats.rejected)


def _count_captions(cfg: CfgNode) -> int:
    rows = check_parquet_files(
        cfg.DATA.DATA_PATH, cfg.DATA.CAPTION_COLUMN, cfg.DATA.KEY_COLUMN or None, progress=True
    )
    if not rows:
        raise DataNotFoundError(
            f"no usable caption under {cfg.DATA.DATA_PATH}: its parquet files hold 0 rows — "
            "check DATA.DATA_PATH and the downloaded files"
        )
    return rows


def _check_disk(root: Path, todo: int, spec: StoreSpec, force: bool) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        need = check_disk_space(root, todo, spec, force)
    for warning in caught:
        log.warning("%s", warning.message)
    log.info("%d records to export, about %s on disk", todo, format_bytes(need))


def preflight(cfg: CfgNode, kind: str, check_only: bool = False) -> ExportPlan:
    """Run the checks of the module docstring; raises a :class:`UserError` (or ``OSError``)
    that says what to do. ``check_only``: the checks of ``--check-saved-embed``."""
    root = Path(cfg.DISTILL.TEACHER_EMBED_PATH)
    resolve_dataset(cfg, kind, EXPORT_ENTRY)
    check_output_folder(cfg.OUTPUT)
    weights = resolve_teacher_weights(cfg)
    spec = store_spec(cfg, kind, teacher_record(cfg, kind, weights, ""))
    items, rejected, rows = None, 0, 0
    if kind == "image":
        items, rejected = _list_images(cfg, check_only)
    else:
        rows = _count_captions(cfg)
    # a check only reads the store; an export must be able to write there
    existing = open_spec(root) if check_only else check_store_folder(root)
    if existing is not None:
        spec = store_spec(cfg, kind, spec.meta["teacher"], existing)
        diffs = _differences(existing, spec, hashed=False)
        if diffs:
            raise _mismatch(root, diffs)
        if kind == "text" and spec.header_bytes == 0 and not check_only:
            log.warning(
                "the text store in %s was made before records carried the digest of their "
                "caption: resuming in its layout, so training cannot check that its caption "
                "files match (export into a new folder to have them)",
                root,
            )
    plan = ExportPlan(weights, spec, existing, rejected=rejected, items=items)
    if not check_only:
        stored = existing_keys(root) if existing is not None else set()
        if items is not None:
            plan.todo = sum(1 for item in items if item.key not in stored)
        else:
            plan.todo = max(0, rows - len(stored))
        _check_disk(root, plan.todo, spec, cfg.DISTILL.FORCE)
    return plan
