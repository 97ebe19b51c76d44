"""The checks a phase-2 run passes before it writes anything or builds its student.

:func:`check_run` validates the output folder, the student name, the dataset, the precision, the
store and the data paired with it, the schedule and the checkpoints already in OUTPUT, and
returns what the run needs. It creates nothing: a run that fails a check leaves no folder, log
or config behind (log with :func:`stage1.common.logger.setup_console` meanwhile).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from yacs.config import CfgNode

from stage1.common.config import ConfigError
from stage1.common.distributed import DistInfo
from stage1.common.preflight import check_input_path, check_output_folder
from stage1.common.students import student_name
from stage1.store import EmbeddingStore
from stage1.train.checkpointing import load_checkpoint
from stage1.train.data import (
    build_datasets,
    dataset_name,
    make_loader,
    open_store,
    store_provenance,
)
from stage1.train.optim import (
    LearningRates,
    Precision,
    effective_lr,
    resolve_precision,
    schedule_warnings,
)
from stage1.train.resume import check_resume, plan_folder

log = logging.getLogger("stage1.train")


def updates_per_epoch(cfg: CfgNode, loader: DataLoader, samples: int, world: int) -> int:
    """Optimizer steps per epoch; :class:`ConfigError`, with a setting that works, for none."""
    steps, accum = len(loader), cfg.TRAIN.ACCUMULATION_STEPS
    cap = cfg.TRAIN.MAX_STEPS_PER_EPOCH
    if cap:
        steps = min(steps, cap)
    if steps // accum:
        return steps // accum
    largest = samples // world // accum  # the largest batch that gives one step
    if cap and cap < accum:
        fix = f"set TRAIN.MAX_STEPS_PER_EPOCH {accum} or more (0: no cap)"
    elif largest >= 1:
        fix = f"set DATA.BATCH_SIZE {largest} or less"
    else:
        fix = "use fewer processes or a lower TRAIN.ACCUMULATION_STEPS, or more data"
    raise ConfigError(
        f"{samples} training samples give no optimizer step with DATA.BATCH_SIZE "
        f"{cfg.DATA.BATCH_SIZE} x {world} process(es) x TRAIN.ACCUMULATION_STEPS {accum} — {fix}"
    )


@dataclass
class RunInputs:
    """What :func:`check_run` found and opened."""

    name: str  # the student's canonical name
    precision: Precision
    store: EmbeddingStore
    provenance: dict[str, Any]  # what checkpoints record about the store (see train.data)
    train_ds: Dataset
    val_ds: Dataset | None
    train_loader: DataLoader
    val_loader: DataLoader | None
    updates_per_epoch: int
    lrs: LearningRates
    clear: str  # "move" or "delete" the earlier run in OUTPUT first, or ""
    resume: tuple[Path, dict] | None  # the checkpoint to continue from, loaded
    start_epoch: int  # epochs done by the run resumed (0 for a new run)


def check_run(cfg: CfgNode, kind: str, info: DistInfo, device: torch.device) -> RunInputs:
    """Every check that needs no student, in order of cost; creates nothing. Raises a
    :class:`~stage1.common.errors.UserError` (one line: what is wrong — what to do) on the first
    failure."""
    out = check_output_folder(cfg.OUTPUT)
    plan = plan_folder(out, cfg)
    name = student_name(cfg, kind)
    dataset = dataset_name(cfg, kind)
    if cfg.MODEL.PRETRAINED:
        hint = 'give a local weight file, or "" for none'
        check_input_path(cfg.MODEL.PRETRAINED, "MODEL.PRETRAINED", hint)
    precision = resolve_precision(cfg.TRAIN.AMP, device)
    hint = "point DATA.DATA_PATH (DATA_PATH=, --data-path) at the dataset the store was made from"
    check_input_path(cfg.DATA.DATA_PATH, "DATA.DATA_PATH", hint)
    store = open_store(cfg, kind)
    provenance = store_provenance(store)
    train_ds, val_ds = build_datasets(cfg, dataset, store)
    train_loader = make_loader(train_ds, cfg, info, device, train=True)
    val_loader = make_loader(val_ds, cfg, info, device, train=False) if val_ds else None
    steps = updates_per_epoch(cfg, train_loader, len(train_ds), info.world_size)
    lrs = effective_lr(cfg, info.world_size)
    for warning in schedule_warnings(lrs, cfg.TRAIN.WARMUP_EPOCHS):
        log.warning(warning)
    start, resume = 0, None
    if plan.resume is not None:
        resume = plan.resume, load_checkpoint(plan.resume)
        start = check_resume(*resume, cfg, kind, info.world_size, steps, provenance)
    return RunInputs(
        name,
        precision,
        store,
        provenance,
        train_ds,
        val_ds,
        train_loader,
        val_loader,
        steps,
        lrs,
        plan.clear,
        resume,
        start,
    )
