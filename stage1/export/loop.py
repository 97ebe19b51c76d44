"""Phase 1: run a SAM3 teacher over a dataset and append its outputs to the embedding store.

Every rank exports the keys that :func:`stage1.data.sharding.rank_of` gives it and that no shard
holds yet, into its own shard: a restarted export resumes where it stopped, and no key is ever
stored twice, whatever the world size of each run. Rank 0 first runs the checks of
:mod:`stage1.export.checks` (nothing is created until they pass), then hashes the teacher
checkpoint and builds the teacher. Text records carry the digest of their caption.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm
from yacs.config import CfgNode

from sam3.files import file_sha256
from stage1.common import distributed as dist
from stage1.common.config import dump_json
from stage1.common.logger import setup_console, setup_logging
from stage1.data.recap_datacomp import CaptionShard, iter_captions
from stage1.data.sa1b import SA1BImages, SA1BItem, list_sa1b
from stage1.data.sharding import select_rank
from stage1.data.transforms import image_transform
from stage1.export.checks import ExportPlan, preflight, with_checkpoint_hash
from stage1.export.teachers import Teacher
from stage1.store import (
    SOURCE_DIGEST,
    StoreSpec,
    StoreWriter,
    create_store,
    existing_keys,
    finalize_manifest,
    format_bytes,
    source_digest,
    verify,
)

log = logging.getLogger("stage1.export")

__all__ = ["ExportSummary", "run_export"]


@dataclass
class ExportSummary:
    """Totals over all ranks."""

    written: int = 0  # records appended by this run
    already_stored: int = 0  # keys skipped because a shard held them
    failed: int = 0  # unreadable images, unusable captions or keys, logged one by one
    overflow: int = 0  # values beyond float16's range (clamped to +-65504 and counted)
    seconds: float = 0.0


def _batched(items: Iterable, n: int) -> Iterator[list]:
    it = iter(items)
    while batch := list(itertools.islice(it, n)):
        yield batch


def _on_main(info: dist.DistInfo, fn) -> object:
    """Run ``fn`` on rank 0 and hand its result, or its error, to every rank."""
    result: tuple[str, object] = ("ok", None)
    if info.is_main:
        try:
            result = ("ok", fn())
        except Exception as err:  # re-raised on every rank below
            result = ("error", err)
    status, value = dist.broadcast_object(result)
    if status == "error":
        raise value  # type: ignore[misc]
    return value


def _plan(cfg: CfgNode, kind: str, check_only: bool, info: dist.DistInfo) -> ExportPlan:
    """Rank 0's :func:`preflight`; its listed images stay on rank 0 (the others list later)."""
    mine: list[ExportPlan] = []

    def checks() -> ExportPlan:
        mine.append(preflight(cfg, kind, check_only))
        return dataclasses.replace(mine[0], items=None)

    shared = _on_main(info, checks)
    return mine[0] if mine else shared  # type: ignore[return-value]


def _image_batches(
    cfg: CfgNode, info: dist.DistInfo, stored: set[str], device: torch.device, items
) -> tuple[DataLoader, int, int]:
    if items is None:
        items = list_sa1b(cfg.DATA.DATA_PATH, tuple(cfg.DATA.SPLITS), cfg.DATA.NUM_SAMPLES)
    todo = [it for it in items if it.key not in stored]
    mine = select_rank(todo, info.rank, info.world_size)
    dataset = SA1BImages(mine, image_transform(cfg))
    loader = DataLoader(
        dataset,
        batch_size=cfg.DATA.BATCH_SIZE,
        num_workers=cfg.DATA.NUM_WORKERS,
        collate_fn=dataset.collate,
        pin_memory=cfg.DATA.PIN_MEMORY and device.type == "cuda",
        persistent_workers=False,
    )
    return loader, len(mine), len(items) - len(todo)


def _caption_batches(cfg: CfgNode, info: dist.DistInfo, stored: set[str]):
    shard = CaptionShard(
        cfg.DATA.DATA_PATH,
        info.rank,
        info.world_size,
        skip_keys=stored,
        caption_column=cfg.DATA.CAPTION_COLUMN,
        key_column=cfg.DATA.KEY_COLUMN or None,
        batch_rows=cfg.DATA.PARQUET_BATCH_ROWS,
    )

    def batches() -> Iterator[dict]:
        for chunk in _batched(shard, cfg.DATA.BATCH_SIZE):
            yield {"keys": [k for k, _ in chunk], "captions": [c for _, c in chunk], "failed": []}

    return batches(), shard


def run_export(cfg: CfgNode, kind: str, check_only: bool = False) -> ExportSummary:
    """Export (or with ``check_only``, verify) the teacher embeddings the config describes."""
    device = dist.resolve_device(cfg.DEVICE, dist.world_info_from_env().local_rank)
    info = dist.init_distributed(device)
    try:
        setup_console(info.rank)  # the log file waits until the checks have passed
        plan = _plan(cfg, kind, check_only, info)
        setup_logging(cfg.OUTPUT, info.rank)
        return _run(cfg, kind, check_only, device, info, plan, time.perf_counter())
    finally:
        dist.cleanup()


def _hash(weights: Path | None) -> str:
    if weights is None:
        return ""
    log.info(
        "hashing the teacher checkpoint %s (%s)", weights, format_bytes(weights.stat().st_size)
    )
    return file_sha256(weights, progress=True)


def _run(cfg, kind, check_only, device, info, plan: ExportPlan, start: float) -> ExportSummary:
    root = Path(cfg.DISTILL.TEACHER_EMBED_PATH)
    log.info("%s export on %s, rank %d of %d -> %s", kind, device, info.rank, info.world_size, root)
    sha = _on_main(info, lambda: _hash(plan.weights))
    spec = _on_main(info, lambda: with_checkpoint_hash(plan, root, sha))
    if info.is_main and not check_only:  # only once the store has accepted this teacher
        dump_json(cfg, Path(cfg.OUTPUT) / "config.json")
    teacher = Teacher(cfg, kind, device, checkpoint_sha=sha)
    if teacher.backbone.load_report is not None:
        log.info(teacher.backbone.load_report.summary())

    if check_only:
        return _check(cfg, kind, teacher, spec, root, info, plan.items)

    _on_main(info, lambda: create_store(root, spec, info.world_size))
    stored = existing_keys(root)
    summary = ExportSummary(failed=plan.rejected if info.is_main else 0)  # rank 0 listed them
    with StoreWriter(root, info.rank, allow_overflow=True) as writer:
        if writer.repair_message:
            log.warning("shard %d: %s", info.rank, writer.repair_message)
        if kind == "image":
            batches, total, summary.already_stored = _image_batches(
                cfg, info, stored, device, plan.items
            )
            unit = "img"
        else:
            batches, shard = _caption_batches(cfg, info, stored)
            unit, total = "cap", None
        bar = tqdm(
            total=total,
            unit=unit,
            disable=not info.is_main,
            dynamic_ncols=True,
            desc=f"export {kind} (rank 0 of {info.world_size})",
        )
        digests = spec.meta.get("record_header") == SOURCE_DIGEST  # each record's caption
        _export_loop(cfg, kind, teacher, writer, batches, bar, summary, digests)
        bar.close()
        summary.overflow = writer.overflow_count
        if kind == "text":
            summary.already_stored = shard.already_stored
            summary.failed += shard.stats.duplicates  # each key's rank counts its duplicates
            if info.is_main:  # every rank reads (and counts) the rows no rank can use
                summary.failed += shard.stats.empty + shard.stats.rejected
    totals = dist.all_reduce_sum(
        [summary.written, summary.already_stored, summary.failed, summary.overflow]
    )
    summary = ExportSummary(*(int(t) for t in totals), seconds=time.perf_counter() - start)
    dist.barrier()
    if info.is_main:
        counts = finalize_manifest(root)
        log.info(
            "export done in %.1f s: %d written, %d already stored, %d skipped (unreadable/empty/"
            "duplicate/unstorable key), %d float16 overflows; the store holds %d records in %d "
            "shard(s)",
            summary.seconds,
            summary.written,
            summary.already_stored,
            summary.failed,
            summary.overflow,
            sum(counts.values()),
            len(counts),
        )
        if summary.overflow:
            log.warning("%d values exceeded float16's range and were clamped", summary.overflow)
    return summary


def _export_loop(
    cfg, kind, teacher, writer, batches, bar, summary: ExportSummary, digests: bool
) -> None:
    """Teacher forward and store append, batch by batch; counts go into ``summary``."""
    for step, batch in enumerate(batches):
        for key, message in batch["failed"]:
            log.warning("skipped %s: %s", key, message)
        summary.failed += len(batch["failed"])
        if batch["keys"]:
            inputs = batch["images"] if kind == "image" else batch["captions"]
            headers = [source_digest(c) for c in batch["captions"]] if digests else None
            summary.written += writer.write(batch["keys"], teacher(inputs).cpu(), headers=headers)
        bar.update(len(batch["keys"]) + len(batch["failed"]))
        if step % cfg.LOG_EVERY == 0:
            log.info("step %d: %d written, %d skipped", step, summary.written, summary.failed)


def _check(
    cfg, kind, teacher: Teacher, spec: StoreSpec, root: Path, info, items: list[SA1BItem] | None
) -> ExportSummary:
    """``--check-saved-embed``: verify the store; rank 0 recomputes a sample with the teacher."""
    if not info.is_main:
        return ExportSummary()
    batch_size = cfg.DATA.BATCH_SIZE
    if kind == "image":
        by_key = {it.key: it for it in items or ()}
        dataset = SA1BImages([], image_transform(cfg))

        def recompute(keys: list[str]) -> np.ndarray:
            dataset.items = [by_key[k] for k in keys]
            batch = dataset.collate([dataset[i] for i in range(len(keys))])
            return teacher(batch["images"]).cpu().numpy()
    else:
        batch_size = max(1, cfg.DISTILL.VERIFY_SAMPLES)  # one pass over the captions for all

        def recompute(keys: list[str]) -> np.ndarray:
            log.info("looking up %d sampled captions in %s", len(keys), cfg.DATA.DATA_PATH)
            wanted = set(keys)
            found = dict(
                iter_captions(
                    cfg.DATA.DATA_PATH,
                    caption_column=cfg.DATA.CAPTION_COLUMN,
                    key_column=cfg.DATA.KEY_COLUMN or None,
                    key_filter=wanted.__contains__,
                )
            )
            captions = [found[k] for k in keys]
            chunks = _batched(captions, cfg.DATA.BATCH_SIZE)
            return np.concatenate([teacher(chunk).cpu().numpy() for chunk in chunks])

    report = verify(
        root,
        expected=spec,
        recompute=recompute,
        sample=cfg.DISTILL.VERIFY_SAMPLES,
        progress=True,
        recompute_batch=batch_size,
    )
    log.info(report.summary())
    report.raise_if_bad()
    return ExportSummary()
