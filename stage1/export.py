"""Phase 1: run a SAM3 teacher over a dataset and append its outputs to the embedding store.

Every rank exports the keys that :func:`stage1.data.sharding.rank_of` gives it and that no shard
holds yet, into its own shard: a restarted export resumes where it stopped, and no key is ever
stored twice, whatever the world size of each run.
"""

from __future__ import annotations

import contextlib
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
from tqdm.contrib.logging import logging_redirect_tqdm
from yacs.config import CfgNode

from . import distributed as dist
from .config import dump_json
from .data.recap_datacomp import CaptionShard, iter_captions
from .data.sa1b import SA1BImages, list_sa1b
from .data.sharding import select_rank
from .data.transforms import ImageTransform, preprocessing_record
from .embedding_store import (
    StoreSpec,
    StoreWriter,
    check_disk_space,
    create_store,
    existing_keys,
    finalize_manifest,
    verify,
)
from .logger import setup_logging
from .teachers import Teacher, file_sha256, resolve_teacher_weights

log = logging.getLogger("stage1.export")


@dataclass
class ExportSummary:
    """Totals over all ranks."""

    written: int = 0  # records appended by this run
    already_stored: int = 0  # keys skipped because a shard held them
    failed: int = 0  # unreadable images / unusable captions, logged one by one
    overflow: int = 0  # values beyond float16's range (clamped to +-65504 and counted)
    seconds: float = 0.0


def image_transform(cfg: CfgNode) -> ImageTransform:
    """The preprocessing the config asks for."""
    return ImageTransform(
        cfg.DATA.IMG_SIZE,
        cfg.DATA.RESIZE_MODE,
        tuple(cfg.DATA.PIXEL_MEAN),
        tuple(cfg.DATA.PIXEL_STD),
    )


def store_spec(cfg: CfgNode, teacher: Teacher) -> StoreSpec:
    """What the store of this export holds; checked against the config's expectations."""
    meta = {"teacher": teacher.record, "tag": cfg.TAG}
    if teacher.kind == "image":
        want = (cfg.DISTILL.EMBED_DIM, cfg.DISTILL.EMBED_SIZE, cfg.DISTILL.EMBED_SIZE)
        if tuple(teacher.out_shape) != want:
            raise ValueError(
                f"the teacher ({cfg.MODEL.TEACHER_ARCH} at DATA.IMG_SIZE {cfg.DATA.IMG_SIZE}) "
                f"outputs {teacher.out_shape} per image, but DISTILL.EMBED_DIM/EMBED_SIZE say "
                f"{want}: set DISTILL.EMBED_DIM {teacher.out_shape[0]} and DISTILL.EMBED_SIZE "
                f"{teacher.out_shape[1]}"
            )
        meta["preprocessing"] = preprocessing_record(image_transform(cfg))
    else:
        want = (cfg.DISTILL.CONTEXT_LENGTH, cfg.DISTILL.TEXT_DIM)
        if tuple(teacher.out_shape) != want:
            raise ValueError(
                f"the text teacher outputs {teacher.out_shape} per caption, but the config says "
                f"{want} (DISTILL.CONTEXT_LENGTH, DISTILL.TEXT_DIM)"
            )
        meta["context_length"] = cfg.DISTILL.CONTEXT_LENGTH
    return StoreSpec(shape=teacher.out_shape, encoding=cfg.DISTILL.STORE_DTYPE, meta=meta)


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


def _image_batches(cfg: CfgNode, info: dist.DistInfo, stored: set[str], device: torch.device):
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
    already = len(items) - len(todo)
    return loader, len(mine), len(todo), already


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
    setup_logging(cfg.OUTPUT, info.rank)
    start = time.perf_counter()
    try:
        return _run(cfg, kind, check_only, device, info, start)
    finally:
        dist.cleanup()


def _run(cfg, kind, check_only, device, info, start) -> ExportSummary:
    root = Path(cfg.DISTILL.TEACHER_EMBED_PATH)
    log.info("%s export on %s, rank %d of %d -> %s", kind, device, info.rank, info.world_size, root)
    if info.is_main and not check_only:
        dump_json(cfg, Path(cfg.OUTPUT) / "config.json")
    weights = resolve_teacher_weights(cfg)
    sha = _on_main(info, lambda: file_sha256(weights) if weights else "")
    teacher = Teacher(cfg, kind, device, checkpoint_sha=sha)
    if teacher.backbone.load_report is not None:
        log.info(teacher.backbone.load_report.summary())
    spec = store_spec(cfg, teacher)

    if check_only:
        return _check(cfg, kind, teacher, spec, root, info)

    _on_main(info, lambda: create_store(root, spec, info.world_size))
    stored = existing_keys(root)
    summary = ExportSummary()
    with StoreWriter(root, info.rank, allow_overflow=True) as writer:
        if writer.repair_message:
            log.warning("shard %d: %s", info.rank, writer.repair_message)
        if kind == "image":
            batches, mine, todo, summary.already_stored = _image_batches(cfg, info, stored, device)
            _on_main(info, lambda: _announce(root, todo, spec, cfg.DISTILL.FORCE))
            unit, total = "img", mine
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
        # rank 0's console lines go through tqdm (other ranks log to their files only)
        console = logging_redirect_tqdm([log]) if info.is_main else contextlib.nullcontext()
        with console:
            _export_loop(cfg, kind, teacher, writer, batches, bar, summary)
        bar.close()
        summary.overflow = writer.overflow_count
        if kind == "text":
            summary.already_stored = shard.already_stored
            summary.failed += shard.stats.empty + shard.stats.duplicates
    totals = dist.all_reduce_sum(
        [summary.written, summary.already_stored, summary.failed, summary.overflow]
    )
    summary = ExportSummary(*(int(t) for t in totals), seconds=time.perf_counter() - start)
    dist.barrier()
    if info.is_main:
        counts = finalize_manifest(root)
        log.info(
            "export done in %.1f s: %d written, %d already stored, %d skipped (unreadable/empty/"
            "duplicate), %d float16 overflows; the store holds %d records in %d shard(s)",
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


def _export_loop(cfg, kind, teacher, writer, batches, bar, summary: ExportSummary) -> None:
    """Teacher forward and store append, batch by batch; counts go into ``summary``."""
    for step, batch in enumerate(batches):
        for key, message in batch["failed"]:
            log.warning("skipped %s: %s", key, message)
        summary.failed += len(batch["failed"])
        if batch["keys"]:
            inputs = batch["images"] if kind == "image" else batch["captions"]
            summary.written += writer.write(batch["keys"], teacher(inputs).cpu())
        bar.update(len(batch["keys"]) + len(batch["failed"]))
        if step % cfg.LOG_EVERY == 0:
            log.info("step %d: %d written, %d skipped", step, summary.written, summary.failed)


def _announce(root: Path, todo: int, spec: StoreSpec, force: bool) -> None:
    need = check_disk_space(root, todo, spec, force)
    log.info("%d records to export, about %.2f GiB on disk", todo, need / 2**30)


def _check(cfg, kind, teacher: Teacher, spec: StoreSpec, root: Path, info) -> ExportSummary:
    """``--check-saved-embed``: verify the store; rank 0 recomputes a sample with the teacher."""
    if not info.is_main:
        return ExportSummary()
    if kind == "image":
        by_key = {it.key: it for it in list_sa1b(cfg.DATA.DATA_PATH, tuple(cfg.DATA.SPLITS))}
        dataset = SA1BImages([], image_transform(cfg))

        def recompute(keys: list[str]) -> np.ndarray:
            dataset.items = [by_key[k] for k in keys]
            batch = dataset.collate([dataset[i] for i in range(len(keys))])
            return teacher(batch["images"]).cpu().numpy()
    else:

        def recompute(keys: list[str]) -> np.ndarray:
            wanted = set(keys)
            found = dict(
                iter_captions(
                    cfg.DATA.DATA_PATH,
                    caption_column=cfg.DATA.CAPTION_COLUMN,
                    key_column=cfg.DATA.KEY_COLUMN or None,
                    key_filter=wanted.__contains__,
                )
            )
            return teacher([found[k] for k in keys]).cpu().numpy()

    report = verify(root, expected=spec, recompute=recompute, sample=cfg.DISTILL.VERIFY_SAMPLES)
    log.info(report.summary())
    report.raise_if_bad()
    return ExportSummary()
