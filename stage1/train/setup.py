"""Phase 2 before its first step: the run checked and its folder prepared, then the student and
what trains it (DDP wrapper, optimizer, schedule, scaler), resumed from a checkpoint if any.

:func:`prepare_run` checks everything cheap first (:func:`stage1.train.checks.check_run`: output
folder, student name, dataset, data, store, schedule, the checkpoints already in OUTPUT) and
creates nothing until they pass; then it prepares the run folder. Only then does
:func:`build_parts` build the student and load the checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from yacs.config import CfgNode

from stage1.common import distributed as dist
from stage1.common.config import dump_json
from stage1.common.distributed import DistInfo
from stage1.common.logger import setup_console, setup_logging
from stage1.common.students import build_configured_student
from stage1.train.checkpointing import TrainCheckpointError
from stage1.train.checks import RunInputs, check_run
from stage1.train.optim import build_optimizer, build_scheduler, cpu_has_native_bf16
from stage1.train.resume import clear_previous_run

log = logging.getLogger("stage1.train")


@dataclass(frozen=True)
class Run:
    """A run that passed its checks, with its folder prepared (log file, ``config.json``)."""

    cfg: CfgNode
    kind: str  # "image" or "text"
    device: torch.device
    info: DistInfo
    inputs: RunInputs

    @property
    def complete(self) -> bool:
        """Whether the checkpoint resumed from has done every epoch already."""
        return self.inputs.start_epoch >= self.cfg.TRAIN.EPOCHS


@dataclass
class Parts:
    """The student and what trains it."""

    student: nn.Module
    model: nn.Module  # what a step calls: the student (text: its token path), DDP-wrapped if > 1
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    scaler: torch.amp.GradScaler
    num_updates: int = 0  # optimizer steps taken so far


class TokenStudent(nn.Module):
    """Tensor-in wrapper so DDP sees the text student's token path as ``forward``."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B, L]`` -> ``[B, L, 256]``."""
        return self.student.encode_tokens(tokens)


def prepare_run(cfg: CfgNode, kind: str) -> Run:
    """Join the process group, run :func:`check_run`, then (only once it passed) clear an
    earlier run as ``TRAIN.FRESH_START`` asks, start the log file and write ``config.json``."""
    device = dist.resolve_device(cfg.DEVICE, dist.world_info_from_env().local_rank)
    info = dist.init_distributed(device)
    setup_console(info.rank)  # the log file waits until the checks pass
    inputs = check_run(cfg, kind, info, device)
    out = Path(cfg.OUTPUT)
    # the checks passed: from here on the run folder is written
    dist.barrier()  # every rank has seen the folder as it was
    cleared = ""
    if inputs.clear and info.is_main:
        cleared = clear_previous_run(out, inputs.clear)
    dist.barrier()
    setup_logging(out, info.rank)  # writes what was logged so far into the file
    if info.is_main:
        dump_json(cfg, out / "config.json")
    if cleared:
        log.info(cleared)
    run = Run(cfg, kind, device, info, inputs)
    if run.complete:
        log.info(
            "%s: the run is already complete (%d of TRAIN.EPOCHS %d done), nothing to train "
            "— raise TRAIN.EPOCHS to train longer",
            inputs.resume[0],
            inputs.start_epoch,
            cfg.TRAIN.EPOCHS,
        )
    return run


def build_parts(run: Run) -> Parts:
    """The student (the same initial weights on every rank), its DDP wrapper, optimizer,
    schedule and scaler; the checkpoint's state when resuming."""
    cfg, device, inputs = run.cfg, run.device, run.inputs
    torch.manual_seed(cfg.SEED)  # identical initial weights on every rank
    student = build_configured_student(cfg, run.kind).to(device)
    model: nn.Module = student if run.kind == "image" else TokenStudent(student)
    if run.info.world_size > 1:
        model = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=False,  # every student parameter gets a gradient
        )
    cpu_bf16 = inputs.precision.dtype == torch.bfloat16 and device.type == "cpu"
    if cpu_bf16 and not cpu_has_native_bf16():
        log.warning(
            "bf16 autocast on a CPU without native bf16 (AVX512-BF16/AMX) is emulated and "
            "runs several times slower than fp32 (10x measured on AVX2); consider "
            "TRAIN.AMP off"
        )
    optimizer = build_optimizer(student, cfg, inputs.lrs.peak)
    parts = Parts(
        student,
        model,
        optimizer,
        build_scheduler(optimizer, cfg, inputs.updates_per_epoch, inputs.lrs),
        torch.amp.GradScaler("cuda", enabled=inputs.precision.scaler),
    )
    if inputs.resume is not None:
        _resume(run, parts, *inputs.resume)
    return parts


def _resume(run: Run, parts: Parts, path: Path, state: dict) -> None:
    """Load a checkpoint :func:`~stage1.train.resume.check_resume` accepted. The schedule is not
    restored: it is rebuilt from this config and set to the update count, so a longer
    ``TRAIN.EPOCHS`` takes effect."""
    cfg, start = run.cfg, run.inputs.start_epoch
    try:
        parts.student.load_state_dict(state["model"], strict=True)
        parts.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError) as err:
        raise TrainCheckpointError(
            f"{path} does not fit this run ({err}) — choose another OUTPUT, or start afresh "
            "with TRAIN.AUTO_RESUME False and TRAIN.FRESH_START move"
        ) from err
    if state.get("scaler"):
        parts.scaler.load_state_dict(state["scaler"])
    parts.num_updates = int(state.get("num_updates", start * run.inputs.updates_per_epoch))
    parts.scheduler.step_update(parts.num_updates)
    log.info("resumed from %s: continuing at epoch %d", path, start)
    old_epochs = (yaml.safe_load(state["config"]) or {}).get("TRAIN", {}).get("EPOCHS")
    if old_epochs is not None and old_epochs != cfg.TRAIN.EPOCHS:
        log.warning(
            "TRAIN.EPOCHS %s -> %s: the schedule is recomputed for %s epochs, so at update %d "
            "the learning rate goes from %.3g (where the %s-epoch schedule was) to %.3g",
            old_epochs,
            cfg.TRAIN.EPOCHS,
            cfg.TRAIN.EPOCHS,
            parts.num_updates,
            state["optimizer"]["param_groups"][-1]["lr"],
            old_epochs,
            parts.optimizer.param_groups[-1]["lr"],
        )
