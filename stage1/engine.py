"""Phase 2: the shared training loop of vision and text students (DDP + AMP, resumable).

A student regresses the teacher outputs stored in phase 1. Each epoch reseeds every random
source from ``(SEED, rank, epoch)`` and the sampler from the epoch, so a run resumed from
``ckpt_epoch_N.pth`` retraces the same steps as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from yacs.config import CfgNode

from sam3.backbones import build_student, student_kind

from . import distributed as dist
from .checkpointing import TrainCheckpointError, latest_checkpoint, save_checkpoint
from .config import dump_json
from .data.distill import ImageDistillDataset, TextDistillDataset
from .data.recap_datacomp import iter_captions
from .data.sa1b import list_sa1b
from .data.sharding import key_hash
from .data.transforms import preprocessing_record
from .embedding_store import EmbeddingStore, StoreSpec
from .export import image_transform
from .logger import setup_logging
from .losses import distill_loss
from .optim import (
    build_optimizer,
    build_scheduler,
    cpu_has_native_bf16,
    effective_lr,
    resolve_precision,
)

log = logging.getLogger("stage1.train")


@dataclass
class TrainResult:
    """What a finished run reports."""

    epochs_run: int = 0
    train_loss: list[float] = field(default_factory=list)  # mean loss per epoch
    val_loss: list[float] = field(default_factory=list)
    val_cos: list[float] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)


class TokenStudent(nn.Module):
    """Tensor-in wrapper so DDP sees the text student's token path as ``forward``."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B, L]`` -> ``[B, L, 256]``."""
        return self.student.encode_tokens(tokens)


def expected_spec(cfg: CfgNode, kind: str) -> StoreSpec:
    """The store this config trains on: shape, encoding and preprocessing / context length."""
    if kind == "vision":
        d, s = cfg.DISTILL.EMBED_DIM, cfg.DISTILL.EMBED_SIZE
        meta = {"preprocessing": preprocessing_record(image_transform(cfg))}
        return StoreSpec((d, s, s), cfg.DISTILL.STORE_DTYPE, meta=meta)
    shape = (cfg.DISTILL.CONTEXT_LENGTH, cfg.DISTILL.TEXT_DIM)
    meta = {"context_length": cfg.DISTILL.CONTEXT_LENGTH}
    return StoreSpec(shape, cfg.DISTILL.STORE_DTYPE, meta=meta)


def _image_datasets(cfg: CfgNode, store: EmbeddingStore):
    transform = image_transform(cfg)
    out = []
    for split in (cfg.DATA.TRAIN_SPLIT, cfg.DATA.VAL_SPLIT):
        if not split:
            out.append(None)
            continue
        items = list_sa1b(cfg.DATA.DATA_PATH, (split,), cfg.DATA.NUM_SAMPLES)
        kept = [it for it in items if it.key in store]
        if len(kept) < len(items):
            log.warning(
                "%s: %d of %d images have no teacher embedding (skipped at export, or the store "
                "is from a subset); training on the other %d",
                split,
                len(items) - len(kept),
                len(items),
                len(kept),
            )
        if not kept:
            raise ValueError(
                f"no image of split {split!r} under {cfg.DATA.DATA_PATH} has an embedding in "
                f"{store.root}: run phase 1 on this dataset or fix DISTILL.TEACHER_EMBED_PATH"
            )
        out.append(ImageDistillDataset(kept, store, transform))
    return out


def _text_datasets(cfg: CfgNode, store: EmbeddingStore):
    pairs = list(
        iter_captions(
            cfg.DATA.DATA_PATH,
            caption_column=cfg.DATA.CAPTION_COLUMN,
            key_column=cfg.DATA.KEY_COLUMN or None,
            batch_rows=cfg.DATA.PARQUET_BATCH_ROWS,
            key_filter=store.__contains__,
        )
    )
    cut = int(cfg.DATA.VAL_FRACTION * 10_000)
    val = [p for p in pairs if key_hash(p[0]) % 10_000 < cut]
    train = [p for p in pairs if key_hash(p[0]) % 10_000 >= cut]
    if not train:
        raise ValueError(f"no caption under {cfg.DATA.DATA_PATH} has an embedding in {store.root}")
    ctx = cfg.DISTILL.CONTEXT_LENGTH
    return TextDistillDataset(train, store, ctx), (
        TextDistillDataset(val, store, ctx) if val else None
    )


def _loader(ds, cfg, info, device, train: bool) -> DataLoader:
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


def build_model(cfg: CfgNode, kind: str) -> nn.Module:
    """The student the config names (vision or text), on the CPU."""
    name = cfg.MODEL.BACKBONE
    if student_kind(name) != kind:
        raise ValueError(
            f"MODEL.BACKBONE {name!r} is a {student_kind(name)} student; this entry point trains "
            f"{kind} students"
        )
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
    """One training run; ``fit()`` runs the remaining epochs."""

    def __init__(self, cfg: CfgNode, kind: str):
        self.cfg, self.kind = cfg, kind
        self.device = dist.resolve_device(cfg.DEVICE, dist.world_info_from_env().local_rank)
        self.info = dist.init_distributed(self.device)
        self.out = Path(cfg.OUTPUT)
        setup_logging(self.out, self.info.rank)
        if self.info.is_main:
            dump_json(cfg, self.out / "config.json")
        torch.manual_seed(cfg.SEED)  # identical initial weights on every rank
        self.store = EmbeddingStore(cfg.DISTILL.TEACHER_EMBED_PATH, expected_spec(cfg, kind))
        log.info(
            "teacher store %s: %d records of %s",
            self.store.root,
            len(self.store),
            self.store.spec.shape,
        )
        if kind == "vision":
            self.train_ds, self.val_ds = _image_datasets(cfg, self.store)
        else:
            self.train_ds, self.val_ds = _text_datasets(cfg, self.store)
        self.student = build_model(cfg, kind).to(self.device)
        core = self.student if kind == "vision" else TokenStudent(self.student)
        self.model: nn.Module = core
        if self.info.world_size > 1:
            self.model = DistributedDataParallel(
                core,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=False,  # every student parameter gets a gradient
            )
        self.precision = resolve_precision(cfg.TRAIN.AMP, self.device)
        cpu_bf16 = self.precision.dtype == torch.bfloat16 and self.device.type == "cpu"
        if cpu_bf16 and not cpu_has_native_bf16():
            log.warning(
                "bf16 autocast on a CPU without native bf16 (AVX512-BF16/AMX) is emulated and "
                "runs several times slower than fp32 (10x measured on AVX2); consider "
                "TRAIN.AMP off"
            )
        self.train_loader = _loader(self.train_ds, cfg, self.info, self.device, train=True)
        self.val_loader = (
            _loader(self.val_ds, cfg, self.info, self.device, train=False) if self.val_ds else None
        )
        steps = len(self.train_loader)
        if cfg.TRAIN.MAX_STEPS_PER_EPOCH:
            steps = min(steps, cfg.TRAIN.MAX_STEPS_PER_EPOCH)
        self.updates_per_epoch = steps // cfg.TRAIN.ACCUMULATION_STEPS
        if self.updates_per_epoch == 0:
            raise ValueError(
                f"{len(self.train_ds)} training samples give no optimizer step with DATA.BATCH_SIZE"
                f" {cfg.DATA.BATCH_SIZE} x {self.info.world_size} process(es) x "
                f"TRAIN.ACCUMULATION_STEPS {cfg.TRAIN.ACCUMULATION_STEPS}: lower them"
            )
        self.lr = effective_lr(cfg, self.info.world_size)
        self.optimizer = build_optimizer(self.student, cfg, self.lr)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.updates_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision.scaler)
        self.start_epoch, self.num_updates = 0, 0
        if cfg.TRAIN.AUTO_RESUME:
            self._resume()
        self.tb = (
            SummaryWriter(self.out / "tensorboard", purge_step=self.num_updates or None)
            if self.info.is_main
            else None
        )

    # ------------------------------------------------------------------ checkpoints
    def _resume(self) -> None:
        found = latest_checkpoint(self.out)
        if found is None:
            return
        path, state = found
        if state["student"] != self.cfg.MODEL.BACKBONE:
            raise TrainCheckpointError(
                f"{path} holds a {state['student']} student but MODEL.BACKBONE is "
                f"{self.cfg.MODEL.BACKBONE}: each student needs its own OUTPUT folder"
            )
        try:
            self.student.load_state_dict(state["model"], strict=True)
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as err:
            raise TrainCheckpointError(f"{path} does not fit this run: {err}") from err
        self.scheduler.load_state_dict(state["lr_scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = int(state["epoch"]) + 1
        self.num_updates = int(state.get("num_updates", self.start_epoch * self.updates_per_epoch))
        log.info("resumed from %s: continuing at epoch %d", path, self.start_epoch)

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
                "student": self.cfg.MODEL.BACKBONE,
                "kind": self.kind,
                "config": self.cfg.dump(),
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
                    raise FloatingPointError(
                        f"loss is {parts.total.item()} at epoch {epoch} step {i}: lower "
                        "TRAIN.BASE_LR, or try TRAIN.AMP off"
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

    def _scalars(self, tag: str, parts, grad_norm: float, rate: float) -> None:
        n = self.num_updates
        self.tb.add_scalar(f"{tag}/loss", parts.total.item(), n)
        self.tb.add_scalar(f"{tag}/mse", parts.mse.item(), n)
        self.tb.add_scalar(f"{tag}/one_minus_cos", parts.cosine.item(), n)
        self.tb.add_scalar(f"{tag}/grad_norm", grad_norm, n)
        self.tb.add_scalar(f"{tag}/lr", self.optimizer.param_groups[-1]["lr"], n)
        self.tb.add_scalar(f"{tag}/samples_per_s", rate, n)

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """Mean loss and mean cosine to the teacher over the validation set (all ranks)."""
        self.model.eval()
        sums = [0.0, 0.0, 0.0]
        for batch in self.val_loader:
            parts = self._loss(*self._forward(batch))
            n = len(batch["teacher"])
            sums[0] += parts.total.item() * n
            sums[1] += parts.mean_cos.item() * n
            sums[2] += n
        loss, cos, n = dist.all_reduce_sum(sums)
        return loss / max(n, 1), cos / max(n, 1)

    def fit(self) -> TrainResult:
        """Train from the start (or resumed) epoch to the end; checkpoint per ``SAVE_FREQ``."""
        cfg, result = self.cfg, TrainResult()
        log.info(
            "training %s (%s) on %s x%d: %d samples, %d updates/epoch, lr %.3g, precision %s",
            cfg.MODEL.BACKBONE,
            self.kind,
            self.device,
            self.info.world_size,
            len(self.train_ds),
            self.updates_per_epoch,
            self.lr,
            cfg.TRAIN.AMP,
        )
        console = logging_redirect_tqdm([log]) if self.info.is_main else contextlib.nullcontext()
        with console:
            for epoch in range(self.start_epoch, cfg.TRAIN.EPOCHS):
                loss = self.train_epoch(epoch)
                result.train_loss.append(loss)
                msg = f"epoch {epoch}: train loss {loss:.5f}"
                if self.val_loader is not None:
                    val_loss, val_cos = self.validate()
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
