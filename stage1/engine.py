"""Phase 2: the shared training loop of vision and text students (DDP + AMP, resumable).

A student regresses the teacher outputs stored in phase 1. Each epoch reseeds every random
source from ``(SEED, rank, epoch)`` and the sampler from the epoch, so a run resumed from
``ckpt_epoch_N.pth`` retraces the same steps as an uninterrupted one. What a run checks before
it starts is in :mod:`stage1.train_checks`; what a resumed run may change, in
:mod:`stage1.resume`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm
from yacs.config import CfgNode

from sam3.backbones import build_student

from . import distributed as dist
from .checkpointing import TrainCheckpointError, save_checkpoint
from .config import dump_json
from .errors import UserError
from .logger import setup_console, setup_logging
from .losses import distill_loss
from .optim import build_optimizer, build_scheduler, cpu_has_native_bf16
from .resume import clear_previous_run
from .train_checks import check_run, student_name
from .train_data import expected_spec

__all__ = ["TrainResult", "Trainer", "build_model", "expected_spec", "run_training"]

log = logging.getLogger("stage1.train")


@dataclass
class TrainResult:
    """What a finished run reports."""

    epochs_run: int = 0
    train_loss: list[float] = field(default_factory=list)  # mean loss per epoch
    val_loss: list[float] = field(default_factory=list)
    val_cos: list[float] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)


class TrainingDivergedError(UserError, FloatingPointError):
    """The loss stopped being finite."""


class TokenStudent(nn.Module):
    """Tensor-in wrapper so DDP sees the text student's token path as ``forward``."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B, L]`` -> ``[B, L, 256]``."""
        return self.student.encode_tokens(tokens)


def build_model(cfg: CfgNode, kind: str) -> nn.Module:
    """The student the config names (vision or text), on the CPU."""
    name = student_name(cfg, kind)
    if kind == "vision":
        return build_student(
            name,
            embed_dim=cfg.DISTILL.EMBED_DIM,
            embed_size=cfg.DISTILL.EMBED_SIZE,
            img_size=cfg.DATA.IMG_SIZE,
            pretrained_path=cfg.MODEL.PRETRAINED,
        )
    return build_student(
        name,
        context_length=cfg.DISTILL.CONTEXT_LENGTH,
        d_model=cfg.DISTILL.TEXT_DIM,
        mask_padding=cfg.DISTILL.MASK_PAD_TOKENS,
        pretrained_path=cfg.MODEL.PRETRAINED,
    )


class Trainer:
    """One training run; ``fit()`` runs the remaining epochs.

    Construction checks everything cheap first (output folder, data, store, student name,
    schedule, the checkpoints already in OUTPUT) and creates nothing until they pass; then it
    prepares the run folder, and only then builds the student and loads a checkpoint.
    """

    def __init__(self, cfg: CfgNode, kind: str):
        self.cfg, self.kind = cfg, kind
        self.device = dist.resolve_device(cfg.DEVICE, dist.world_info_from_env().local_rank)
        self.info = dist.init_distributed(self.device)
        self.out = Path(cfg.OUTPUT)
        setup_console(self.info.rank)  # the log file waits until the checks pass
        inputs = check_run(cfg, kind, self.info, self.device)
        self.name, self.precision = inputs.name, inputs.precision
        self.store, self.provenance = inputs.store, inputs.provenance
        self.train_ds, self.val_ds = inputs.train_ds, inputs.val_ds
        self.train_loader, self.val_loader = inputs.train_loader, inputs.val_loader
        self.updates_per_epoch, self.lrs = inputs.updates_per_epoch, inputs.lrs
        self.start_epoch, resume = inputs.start_epoch, inputs.resume
        # the checks passed: from here on the run folder is written
        dist.barrier()  # every rank has seen the folder as it was
        cleared = ""
        if inputs.clear and self.info.is_main:
            cleared = clear_previous_run(self.out, inputs.clear)
        dist.barrier()
        setup_logging(self.out, self.info.rank)  # writes what was logged so far into the file
        if self.info.is_main:
            dump_json(cfg, self.out / "config.json")
        if cleared:
            log.info(cleared)
        self.student = None
        if self.start_epoch >= cfg.TRAIN.EPOCHS:
            log.info(
                "%s: the run is already complete (%d of TRAIN.EPOCHS %d done), nothing to train "
                "— raise TRAIN.EPOCHS to train longer",
                resume[0],
                self.start_epoch,
                cfg.TRAIN.EPOCHS,
            )
            return
        self._build(resume)

    def _build(self, resume: tuple[Path, dict] | None) -> None:
        """The student, its DDP wrapper, optimizer, schedule and scaler; the checkpoint's state
        when resuming."""
        cfg = self.cfg
        torch.manual_seed(cfg.SEED)  # identical initial weights on every rank
        self.student = build_model(cfg, self.kind).to(self.device)
        core = self.student if self.kind == "vision" else TokenStudent(self.student)
        self.model: nn.Module = core
        if self.info.world_size > 1:
            self.model = DistributedDataParallel(
                core,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=False,  # every student parameter gets a gradient
            )
        cpu_bf16 = self.precision.dtype == torch.bfloat16 and self.device.type == "cpu"
        if cpu_bf16 and not cpu_has_native_bf16():
            log.warning(
                "bf16 autocast on a CPU without native bf16 (AVX512-BF16/AMX) is emulated and "
                "runs several times slower than fp32 (10x measured on AVX2); consider "
                "TRAIN.AMP off"
            )
        self.optimizer = build_optimizer(self.student, cfg, self.lrs.peak)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.updates_per_epoch, self.lrs)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision.scaler)
        self.num_updates = 0
        if resume is not None:
            self._resume(*resume)
        self.tb = (
            SummaryWriter(self.out / "tensorboard", purge_step=self.num_updates or None)
            if self.info.is_main
            else None
        )

    # ------------------------------------------------------------------ checkpoints
    def _resume(self, path: Path, state: dict) -> None:
        """Load a checkpoint :func:`check_resume` accepted. The schedule is not restored: it
        is rebuilt from this config and set to the update count, so a longer ``TRAIN.EPOCHS``
        takes effect."""
        try:
            self.student.load_state_dict(state["model"], strict=True)
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as err:
            raise TrainCheckpointError(
                f"{path} does not fit this run ({err}) — choose another OUTPUT, or start afresh "
                "with TRAIN.AUTO_RESUME False and TRAIN.FRESH_START move"
            ) from err
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.num_updates = int(state.get("num_updates", self.start_epoch * self.updates_per_epoch))
        self.scheduler.step_update(self.num_updates)
        log.info("resumed from %s: continuing at epoch %d", path, self.start_epoch)
        old_epochs = (yaml.safe_load(state["config"]) or {}).get("TRAIN", {}).get("EPOCHS")
        if old_epochs is not None and old_epochs != self.cfg.TRAIN.EPOCHS:
            log.warning(
                "TRAIN.EPOCHS %s -> %s: the schedule is recomputed for %s epochs, so at update %d "
                "the learning rate goes from %.3g (where the %s-epoch schedule was) to %.3g",
                old_epochs,
                self.cfg.TRAIN.EPOCHS,
                self.cfg.TRAIN.EPOCHS,
                self.num_updates,
                state["optimizer"]["param_groups"][-1]["lr"],
                old_epochs,
                self.optimizer.param_groups[-1]["lr"],
            )

    def _save(self, epoch: int) -> str:
        path = ""
        if self.info.is_main:
            state = {
                "model": self.student.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "epoch": epoch,
                "num_updates": self.num_updates,
                "student": self.name,
                "kind": self.kind,
                "config": self.cfg.dump(),
                "world_size": self.info.world_size,
                "provenance": self.provenance,
            }
            path = str(save_checkpoint(self.out, epoch, state))
            log.info("saved %s", path)
        dist.barrier()
        return path

    # ------------------------------------------------------------------ steps
    def _forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = batch["image" if self.kind == "vision" else "tokens"].to(self.device, non_blocking=True)
        teacher = batch["teacher"].to(self.device, non_blocking=True)
        valid = batch["valid"].to(self.device, non_blocking=True)
        if self.kind == "text" and not self.cfg.DISTILL.MASK_PAD_TOKENS:
            valid = torch.ones_like(valid)
        with self.precision.autocast(self.device):
            out = self.model(x)
        return out, teacher, valid

    def _loss(self, out, teacher, valid):
        d = self.cfg.DISTILL
        return distill_loss(
            out,
            teacher,
            valid,
            channel_dim=1 if self.kind == "vision" else 2,
            pixel_wise=d.PIXEL_WISE,
            cosine=d.COSINE,
            mse_reduction=d.MSE_REDUCTION,
        )

    def train_epoch(self, epoch: int) -> float:
        """One epoch; returns the mean training loss over all ranks."""
        cfg, accum = self.cfg, self.cfg.TRAIN.ACCUMULATION_STEPS
        torch.manual_seed(cfg.SEED + 1000 * epoch + self.info.rank)
        self.train_loader.sampler.set_epoch(epoch)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        steps = self.updates_per_epoch * accum
        total, count, tick, seen = 0.0, 0, time.perf_counter(), 0
        bar = tqdm(
            total=steps,
            disable=not self.info.is_main,
            dynamic_ncols=True,
            desc=f"epoch {epoch}/{cfg.TRAIN.EPOCHS - 1}",
        )
        for i, batch in enumerate(self.train_loader):
            if i >= steps:
                break
            boundary = (i + 1) % accum == 0
            sync = contextlib.nullcontext()
            if not boundary and isinstance(self.model, DistributedDataParallel):
                sync = self.model.no_sync()
            with sync:
                parts = self._loss(*self._forward(batch))
                if not torch.isfinite(parts.total):
                    raise TrainingDivergedError(
                        f"loss is {parts.total.item()} at epoch {epoch} step {i} — lower "
                        "TRAIN.BASE_LR (or set TRAIN.AMP off) and start afresh: TRAIN.AUTO_RESUME "
                        "False with TRAIN.FRESH_START move, or another OUTPUT; if it persists, "
                        f"check the store ({self._verify_command()})"
                    )
                self.scaler.scale(parts.total / accum).backward()
            total += parts.total.item()
            count += 1
            seen += len(batch["teacher"])
            bar.update(1)
            if boundary:
                self.scaler.unscale_(self.optimizer)
                clip = cfg.TRAIN.CLIP_GRAD if cfg.TRAIN.CLIP_GRAD > 0 else math.inf
                grad_norm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.num_updates += 1
                self.scheduler.step_update(self.num_updates)
                if self.tb and self.num_updates % cfg.LOG_EVERY == 0:
                    rate = seen * self.info.world_size / (time.perf_counter() - tick)
                    self._scalars("train", parts, grad_norm.item(), rate)
                    tick, seen = time.perf_counter(), 0
                bar.set_postfix(loss=f"{parts.total.item():.4f}", cos=f"{parts.mean_cos:.3f}")
        bar.close()
        mean = dist.all_reduce_sum([total, count])
        return mean[0] / max(mean[1], 1)

    def _verify_command(self) -> str:
        shape = ",".join(map(str, self.store.spec.shape))
        legacy = f" --legacy-shape {shape}" if self.store.legacy else ""
        return f"python -m stage1.embedding_store verify {self.store.root}{legacy}"

    def _scalars(self, tag: str, parts, grad_norm: float, rate: float) -> None:
        n = self.num_updates
        self.tb.add_scalar(f"{tag}/loss", parts.total.item(), n)
        self.tb.add_scalar(f"{tag}/mse", parts.mse.item(), n)
        self.tb.add_scalar(f"{tag}/one_minus_cos", parts.cosine.item(), n)
        self.tb.add_scalar(f"{tag}/grad_norm", grad_norm, n)
        self.tb.add_scalar(f"{tag}/lr", self.optimizer.param_groups[-1]["lr"], n)
        self.tb.add_scalar(f"{tag}/samples_per_s", rate, n)

    @torch.no_grad()
    def validate(self, epoch: int) -> tuple[float, float]:
        """Mean loss and mean cosine to the teacher over the validation set (all ranks)."""
        self.model.eval()
        sums = [0.0, 0.0, 0.0]
        bar = tqdm(
            self.val_loader,
            disable=not self.info.is_main,
            dynamic_ncols=True,
            desc=f"validation epoch {epoch}",
        )
        for batch in bar:
            parts = self._loss(*self._forward(batch))
            n = len(batch["teacher"])
            sums[0] += parts.total.item() * n
            sums[1] += parts.mean_cos.item() * n
            sums[2] += n
        bar.close()
        loss, cos, n = dist.all_reduce_sum(sums)
        return loss / max(n, 1), cos / max(n, 1)

    def fit(self) -> TrainResult:
        """Train from the start (or resumed) epoch to the end; checkpoint per ``SAVE_FREQ``."""
        cfg, result = self.cfg, TrainResult()
        if self.student is None:  # already complete
            return result
        log.info(
            "training %s (%s) on %s x%d: %d samples, %d updates/epoch, lr %.3g (warm-up from "
            "%.3g, cosine to %.3g), precision %s",
            self.name,
            self.kind,
            self.device,
            self.info.world_size,
            len(self.train_ds),
            self.updates_per_epoch,
            self.lrs.peak,
            self.lrs.warmup,
            self.lrs.min,
            cfg.TRAIN.AMP,
        )
        for epoch in range(self.start_epoch, cfg.TRAIN.EPOCHS):
            loss = self.train_epoch(epoch)
            result.train_loss.append(loss)
            msg = f"epoch {epoch}: train loss {loss:.5f}"
            if self.val_loader is not None:
                val_loss, val_cos = self.validate(epoch)
                result.val_loss.append(val_loss)
                result.val_cos.append(val_cos)
                msg += f", val loss {val_loss:.5f}, val cosine {val_cos:.4f}"
                if self.tb:
                    self.tb.add_scalar("val/loss", val_loss, self.num_updates)
                    self.tb.add_scalar("val/mean_cos", val_cos, self.num_updates)
            log.info(msg)
            if (epoch + 1) % cfg.TRAIN.SAVE_FREQ == 0 or epoch == cfg.TRAIN.EPOCHS - 1:
                result.checkpoints.append(self._save(epoch))
            result.epochs_run += 1
        if self.tb:
            self.tb.close()
        return result


def run_training(cfg: CfgNode, kind: str) -> TrainResult:
    """Train the student the config names; tears the process group down at the end."""
    try:
        return Trainer(cfg, kind).fit()
    finally:
        dist.cleanup()
