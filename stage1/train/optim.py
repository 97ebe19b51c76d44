"""Optimizer, learning-rate schedule and mixed precision for student training."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from timm.scheduler import CosineLRScheduler
from torch import nn
from yacs.config import CfgNode

from stage1.common.config import ConfigError

_BLOCK = re.compile(r"^(.*?\.\d+)\.")  # a parameter's first indexed container, e.g. "stages.2"


def layer_ids(model: nn.Module) -> dict[str, int]:
    """Depth of every parameter: 0 for the stem, then one id per top-level indexed block in the
    order the parameters appear, the last id for everything after the last block (the head).

    Works for any student (timm stages/blocks/features, transformer resblocks) without a
    per-family table.
    """
    order: dict[str, int] = {}  # block prefix -> depth, in order of first appearance
    ids: dict[str, int | None] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            m = _BLOCK.match(name)
            if m:
                ids[name] = order.setdefault(m.group(1), len(order) + 1)
            else:  # before the first block: the stem; after it: the head
                ids[name] = 0 if not order else None
    last = len(order) + 1
    return {n: (last if i is None else i) for n, i in ids.items()}


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups: no decay on 1-D tensors (norms, biases, scales); with ``layer_decay < 1``,
    lr scale ``layer_decay ** (depth_max - depth)`` so early layers learn slower."""
    ids = layer_ids(model)
    top = max(ids.values(), default=0)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(".bias")
        depth = ids[name] if layer_decay < 1.0 else top
        key = (depth, no_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": layer_decay ** (top - depth),
            }
        groups[key]["params"].append(p)
    return list(groups.values())


@dataclass(frozen=True)
class LearningRates:
    """The schedule's rates after batch scaling: ``peak`` (reached after warm-up), ``warmup``
    (the first step's), ``min`` (the end of the cosine), and the ``factor`` applied to each."""

    peak: float
    warmup: float
    min: float
    factor: float = 1.0


def effective_lr(cfg: CfgNode, world_size: int) -> LearningRates:
    """``TRAIN.BASE_LR``, ``WARMUP_LR`` and ``MIN_LR``, each multiplied by the total batch
    (``BATCH_SIZE x world_size x ACCUMULATION_STEPS``) over ``TRAIN.LR_SCALE_BATCH``, as
    Swin/TinyViT and the public EfficientSAM3 scale them; ``LR_SCALE_BATCH`` 0: unscaled."""
    t = cfg.TRAIN
    factor = 1.0
    if t.LR_SCALE_BATCH > 0:
        factor = cfg.DATA.BATCH_SIZE * world_size * t.ACCUMULATION_STEPS / t.LR_SCALE_BATCH
    return LearningRates(t.BASE_LR * factor, t.WARMUP_LR * factor, t.MIN_LR * factor, factor)


def schedule_warnings(lrs: LearningRates, warmup_epochs: int) -> list[str]:
    """What is odd about a schedule: one that does not decay (minimum at or above the peak),
    or a warm-up that starts above the peak."""
    found = []
    if lrs.min >= lrs.peak:
        found.append(
            f"the learning rate does not decay: TRAIN.MIN_LR gives {lrs.min:.3g}, at or above "
            f"the peak {lrs.peak:.3g} from TRAIN.BASE_LR (both x{lrs.factor:.3g} for the batch) "
            "— set TRAIN.MIN_LR below TRAIN.BASE_LR for a cosine decay"
        )
    if warmup_epochs > 0 and lrs.warmup > lrs.peak:
        found.append(
            f"the warm-up starts above its peak: TRAIN.WARMUP_LR gives {lrs.warmup:.3g}, "
            f"TRAIN.BASE_LR {lrs.peak:.3g} (both x{lrs.factor:.3g} for the batch) — set "
            "TRAIN.WARMUP_LR below TRAIN.BASE_LR"
        )
    return found


def build_optimizer(model: nn.Module, cfg: CfgNode, lr: float) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups`; every group starts at ``lr``: the timm scheduler
    multiplies each group's value by its ``lr_scale`` whenever it sets the rate."""
    groups = param_groups(model, cfg.TRAIN.WEIGHT_DECAY, cfg.TRAIN.LAYER_DECAY)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: CfgNode, updates_per_epoch: int, lrs: LearningRates
) -> CosineLRScheduler:
    """Per-update linear warm-up from ``lrs.warmup`` to the optimizer's rate, then cosine decay
    to ``lrs.min`` over ``TRAIN.EPOCHS`` (timm). It is a function of the update count alone:
    ``step_update(n)`` sets update ``n``'s rate, so a resumed run needs no scheduler state and
    a longer ``TRAIN.EPOCHS`` continues on the longer schedule at the current update (at a higher
    rate than the shorter schedule had decayed to)."""
    return CosineLRScheduler(
        optimizer,
        t_initial=max(1, cfg.TRAIN.EPOCHS * updates_per_epoch),
        lr_min=lrs.min,
        warmup_t=cfg.TRAIN.WARMUP_EPOCHS * updates_per_epoch,
        warmup_lr_init=lrs.warmup,
        t_in_epochs=False,
    )


@dataclass(frozen=True)
class Precision:
    """Autocast settings of a run."""

    enabled: bool
    dtype: torch.dtype
    scaler: bool  # fp16 needs loss scaling

    def autocast(self, device: torch.device) -> torch.autocast:
        """The autocast context for ``device``."""
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.enabled)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); without it, bf16 autocast
    is emulated and runs several times slower than fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    cpu = getattr(torch._C, "_cpu", None)
    return any(getattr(cpu, name, lambda: False)() for name in probes)


def resolve_precision(setting: str, device: torch.device) -> Precision:
    """``TRAIN.AMP`` -> :class:`Precision` ("auto": bf16 on CPU, fp16 + scaler on CUDA)."""
    if setting == "auto":
        setting = "fp16" if device.type == "cuda" else "bf16"
    if setting == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"TRAIN.AMP fp16 needs CUDA, but this run is on {device} — set TRAIN.AMP auto, bf16 "
            "or off"
        )
    return {
        "off": Precision(False, torch.float32, False),
        "bf16": Precision(True, torch.bfloat16, False),
        "fp16": Precision(True, torch.float16, True),
    }[setting]
