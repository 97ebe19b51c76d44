"""Phase 2: the shared training loop of image and text students (DDP + AMP, resumable).

A student regresses the teacher outputs stored in phase 1. Each epoch reseeds every random
source from ``(SEED, rank, epoch)`` and the sampler from the epoch, so a run resumed from
``ckpt_epoch_N.pth`` retraces the same steps as an uninterrupted one. What a run checks and
builds before its first step is in :mod:`stage1.train.setup`; what a resumed run may change, in
:mod:`stage1.train.resume`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm
from yacs.config import CfgNode

from stage1.common import distributed as dist
from stage1.common.errors import UserError
from stage1.train.checkpointing import save_checkpoint
from stage1.train.losses import LossParts, distill_loss
from stage1.train.setup import build_parts, prepare_run

__all__ = ["TrainResult", "Trainer", "TrainingDivergedError", "run_training"]

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


class Trainer:
    """One training run; ``fit()`` runs the remaining epochs (none when the run is complete)."""

    def __init__(self, cfg: CfgNode, kind: str):
        self.cfg, self.kind = cfg, kind
        self.run = prepare_run(cfg, kind)
        self.info, self.device, self.inputs = self.run.info, self.run.device, self.run.inputs
        self.parts = None if self.run.complete else build_parts(self.run)
        self.tb = None
        if self.parts is not None and self.info.is_main:
            purge = self.parts.num_updates or None  # a resumed run drops what came after
            self.tb = SummaryWriter(Path(cfg.OUTPUT) / "tensorboard", purge_step=purge)

    # ------------------------------------------------------------------ checkpoints
    def _save(self, epoch: int) -> str:
        path = ""
        if self.info.is_main:
            p = self.parts
            state = {
                "model": p.student.state_dict(),
                "optimizer": p.optimizer.state_dict(),
                "lr_scheduler": p.scheduler.state_dict(),
                "scaler": p.scaler.state_dict(),
                "epoch": epoch,
                "num_updates": p.num_updates,
                "student": self.inputs.name,
                "kind": self.kind,
                "config": self.cfg.dump(),
                "world_size": self.info.world_size,
                "provenance": self.inputs.provenance,
            }
            path = str(save_checkpoint(self.cfg.OUTPUT, epoch, state))
            log.info("saved %s", path)
        dist.barrier()
        return path

    # ------------------------------------------------------------------ steps
    def _forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = batch["image" if self.kind == "image" else "tokens"].to(self.device, non_blocking=True)
        teacher = batch["teacher"].to(self.device, non_blocking=True)
        valid = batch["valid"].to(self.device, non_blocking=True)
        if self.kind == "text" and not self.cfg.DISTILL.MASK_PAD_TOKENS:
            valid = torch.ones_like(valid)
        with self.inputs.precision.autocast(self.device):
            out = self.parts.model(x)
        return out, teacher, valid

    def _loss(self, out: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor) -> LossParts:
        d = self.cfg.DISTILL
        return distill_loss(
            out,
            teacher,
            valid,
            channel_dim=1 if self.kind == "image" else 2,
            pixel_wise=d.PIXEL_WISE,
            cosine=d.COSINE,
            mse_reduction=d.MSE_REDUCTION,
        )

    def _update(self) -> torch.Tensor:
        """One optimizer step on the accumulated gradients; returns their norm (before the clip)."""
        p, clip = self.parts, self.cfg.TRAIN.CLIP_GRAD
        p.scaler.unscale_(p.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(
            p.student.parameters(), clip if clip > 0 else math.inf
        )
        p.scaler.step(p.optimizer)
        p.scaler.update()
        p.optimizer.zero_grad(set_to_none=True)
        p.num_updates += 1
        p.scheduler.step_update(p.num_updates)
        return norm

    def train_epoch(self, epoch: int) -> float:
        """One epoch; returns the mean training loss over all ranks."""
        cfg, p, accum = self.cfg, self.parts, self.cfg.TRAIN.ACCUMULATION_STEPS
        torch.manual_seed(cfg.SEED + 1000 * epoch + self.info.rank)
        loader = self.inputs.train_loader
        loader.sampler.set_epoch(epoch)
        p.model.train()
        p.optimizer.zero_grad(set_to_none=True)
        steps = self.inputs.updates_per_epoch * accum
        total, count, tick, seen = 0.0, 0, time.perf_counter(), 0
        bar = tqdm(
            total=steps,
            disable=not self.info.is_main,
            dynamic_ncols=True,
            desc=f"epoch {epoch}/{cfg.TRAIN.EPOCHS - 1}",
        )
        for i, batch in enumerate(loader):
            if i >= steps:
                break
            boundary = (i + 1) % accum == 0
            sync = contextlib.nullcontext()
            if not boundary and isinstance(p.model, DistributedDataParallel):
                sync = p.model.no_sync()
            with sync:
                parts = self._loss(*self._forward(batch))
                if not torch.isfinite(parts.total):
                    raise TrainingDivergedError(
                        f"loss is {parts.total.item()} at epoch {epoch} step {i} — lower "
                        "TRAIN.BASE_LR (or set TRAIN.AMP off) and start afresh: TRAIN.AUTO_RESUME "
                        "False with TRAIN.FRESH_START move, or another OUTPUT; if it persists, "
                        f"check the store ({self._verify_command()})"
                    )
                p.scaler.scale(parts.total / accum).backward()
            total += parts.total.item()
            count += 1
            seen += len(batch["teacher"])
            bar.update(1)
            if boundary:
                grad_norm = self._update()
                if self.tb and p.num_updates % cfg.LOG_EVERY == 0:
                    rate = seen * self.info.world_size / (time.perf_counter() - tick)
                    self._scalars("train", parts, grad_norm.item(), rate)
                    tick, seen = time.perf_counter(), 0
                bar.set_postfix(loss=f"{parts.total.item():.4f}", cos=f"{parts.mean_cos:.3f}")
        bar.close()
        mean = dist.all_reduce_sum([total, count])
        return mean[0] / max(mean[1], 1)

    def _verify_command(self) -> str:
        store = self.inputs.store
        shape = ",".join(map(str, store.spec.shape))
        legacy = f" --legacy-shape {shape}" if store.legacy else ""
        return f"python -m stage1.embedding_store verify {store.root}{legacy}"

    def _scalars(self, tag: str, parts: LossParts, grad_norm: float, rate: float) -> None:
        n = self.parts.num_updates
        self.tb.add_scalar(f"{tag}/loss", parts.total.item(), n)
        self.tb.add_scalar(f"{tag}/mse", parts.mse.item(), n)
        self.tb.add_scalar(f"{tag}/one_minus_cos", parts.cosine.item(), n)
        self.tb.add_scalar(f"{tag}/grad_norm", grad_norm, n)
        self.tb.add_scalar(f"{tag}/lr", self.parts.optimizer.param_groups[-1]["lr"], n)
        self.tb.add_scalar(f"{tag}/samples_per_s", rate, n)

    @torch.no_grad()
    def validate(self, epoch: int) -> tuple[float, float]:
        """Mean loss and mean cosine to the teacher over the validation set (all ranks)."""
        self.parts.model.eval()
        sums = [0.0, 0.0, 0.0]
        bar = tqdm(
            self.inputs.val_loader,
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
        cfg, inputs, result = self.cfg, self.inputs, TrainResult()
        if self.parts is None:  # already complete
            return result
        log.info(
            "training %s (%s) on %s x%d: %d samples, %d updates/epoch, lr %.3g (warm-up from "
            "%.3g, cosine to %.3g), precision %s",
            inputs.name,
            self.kind,
            self.device,
            self.info.world_size,
            len(inputs.train_ds),
            inputs.updates_per_epoch,
            inputs.lrs.peak,
            inputs.lrs.warmup,
            inputs.lrs.min,
            cfg.TRAIN.AMP,
        )
        for epoch in range(inputs.start_epoch, cfg.TRAIN.EPOCHS):
            loss = self.train_epoch(epoch)
            result.train_loss.append(loss)
            msg = f"epoch {epoch}: train loss {loss:.5f}"
            if inputs.val_loader is not None:
                val_loss, val_cos = self.validate(epoch)
                result.val_loss.append(val_loss)
                result.val_cos.append(val_cos)
                msg += f", val loss {val_loss:.5f}, val cosine {val_cos:.4f}"
                if self.tb:
                    self.tb.add_scalar("val/loss", val_loss, self.parts.num_updates)
                    self.tb.add_scalar("val/mean_cos", val_cos, self.parts.num_updates)
            log.info(msg)
            if (epoch + 1) % cfg.TRAIN.SAVE_FREQ == 0 or epoch == cfg.TRAIN.EPOCHS - 1:
                result.checkpoints.append(self._save(epoch))
            result.epochs_run += 1
        if self.tb:
            self.tb.close()
        return result


def run_training(cfg: CfgNode, kind: str) -> TrainResult:
    """Train the ``kind`` ("image" or "text") student the config names; tears the process group
    down at the end."""
    try:
        return Trainer(cfg, kind).fit()
    finally:
        dist.cleanup()
