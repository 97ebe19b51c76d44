"""The distillation loss and the optimizer / schedule pieces of phase 2."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stage1.common.config import load_config
from stage1.train.losses import distill_loss
from stage1.train.optim import (
    LearningRates,
    build_optimizer,
    build_scheduler,
    effective_lr,
    layer_ids,
    param_groups,
    schedule_warnings,
)


def test_loss_ignores_invalid_cells_and_matches_hand_computation():
    torch.manual_seed(0)
    s, t = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    valid = torch.zeros(2, 3, 3, dtype=torch.bool)
    valid[:, :2, :] = True  # bottom row is padding
    parts = distill_loss(s, t, valid, channel_dim=1)
    s2 = s.clone()
    s2[:, :, 2, :] += 100.0  # garbage in the padding changes nothing
    assert torch.equal(distill_loss(s2, t, valid, channel_dim=1).total, parts.total)
    sq = (s - t).square().sum(1)[:, :2].mean((1, 2)).mean()
    cos = torch.nn.functional.cosine_similarity(s, t, dim=1)[:, :2].mean((1, 2)).mean()
    assert torch.allclose(parts.mse, sq) and torch.allclose(parts.cosine, 1 - cos)
    assert torch.allclose(parts.total, sq + (1 - cos))
    mean = distill_loss(s, t, valid, channel_dim=1, mse_reduction="mean")
    assert torch.allclose(mean.mse * 4, parts.mse)
    assert distill_loss(t, t, valid, channel_dim=1).total.abs() < 1e-6


def test_text_loss_over_non_pad_tokens_and_shape_errors():
    s, t = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    valid = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    base = distill_loss(s, t, valid, channel_dim=2, mse_reduction="mean").total
    s[0, 3:] = 9.0
    assert torch.equal(distill_loss(s, t, valid, channel_dim=2, mse_reduction="mean").total, base)
    with pytest.raises(ValueError, match="EMBED_DIM"):
        distill_loss(s, t[:, :4], valid, channel_dim=2)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.blocks = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1))
        self.head = nn.Linear(4, 2)


def test_layer_decay_gives_early_layers_smaller_lr_and_no_decay_on_1d():
    model = Toy()
    ids = layer_ids(model)
    assert ids["stem.weight"] == 0 and ids["head.weight"] == max(ids.values())
    assert ids["blocks.0.weight"] < ids["blocks.2.weight"]
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert scale[id(model.stem.weight)] < scale[id(model.blocks[2].weight)] < 1.0
    assert scale[id(model.head.weight)] == 1.0
    assert decay[id(model.blocks[1].weight)] == 0.0 and decay[id(model.head.bias)] == 0.0
    assert decay[id(model.head.weight)] == 0.05
    flat = param_groups(model, 0.05, 1.0)
    assert {g["lr_scale"] for g in flat} == {1.0}


def test_warmup_then_cosine_per_update():
    cfg = load_config(
        "stage1/configs/es_ev_s.yaml",
        ["TRAIN.EPOCHS", "10", "TRAIN.WARMUP_EPOCHS", "2", "TRAIN.LAYER_DECAY", "0.5"],
    )
    model = Toy()
    opt = build_optimizer(model, cfg, lr=1e-3)
    lrs = LearningRates(1e-3, cfg.TRAIN.WARMUP_LR, cfg.TRAIN.MIN_LR)
    sched = build_scheduler(opt, cfg, updates_per_epoch=5, lrs=lrs)
    head = next(g for g in opt.param_groups if g["lr_scale"] == 1.0 and g["weight_decay"] > 0)
    stem = min(opt.param_groups, key=lambda g: g["lr_scale"])
    sched.step_update(0)
    assert head["lr"] == pytest.approx(cfg.TRAIN.WARMUP_LR)
    sched.step_update(5)  # half-way through the linear warm-up
    assert head["lr"] == pytest.approx(cfg.TRAIN.WARMUP_LR + (1e-3 - cfg.TRAIN.WARMUP_LR) / 2)
    sched.step_update(10)  # cosine over all 50 updates, warm-up included (published recipe)
    cosine = cfg.TRAIN.MIN_LR + 0.5 * (1e-3 - cfg.TRAIN.MIN_LR) * (1 + math.cos(math.pi / 5))
    assert head["lr"] == pytest.approx(cosine, rel=1e-6)
    assert stem["lr"] == pytest.approx(cosine * stem["lr_scale"], rel=1e-6)  # decay applied once
    sched.step_update(50)
    assert head["lr"] == pytest.approx(cfg.TRAIN.MIN_LR, rel=1e-3)


def test_batch_scaling_scales_peak_warmup_and_minimum_alike():
    """Swin/TinyViT and the public EfficientSAM3 scale all three rates by total batch / 512."""
    cfg = load_config("stage1/configs/es_ev_s.yaml", ["DATA.BATCH_SIZE", "4"])  # spec's example
    lrs = effective_lr(cfg, world_size=1)
    assert lrs.factor == pytest.approx(4 / 512)
    assert lrs.peak == pytest.approx(1e-3 * 4 / 512)
    assert lrs.warmup == pytest.approx(1e-6 * 4 / 512)
    assert lrs.min == pytest.approx(1e-5 * 4 / 512)
    assert schedule_warnings(lrs, cfg.TRAIN.WARMUP_EPOCHS) == []
    two = effective_lr(cfg, world_size=2)  # two processes: twice the total batch
    assert two.peak == pytest.approx(2 * lrs.peak) and two.min == pytest.approx(2 * lrs.min)
    opt = build_optimizer(Toy(), cfg, lr=lrs.peak)
    sched = build_scheduler(opt, cfg, updates_per_epoch=2, lrs=lrs)
    sched.step_update(0)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-6 * 4 / 512)
    sched.step_update(cfg.TRAIN.WARMUP_EPOCHS * 2)  # the end of warm-up
    after_warmup = opt.param_groups[0]["lr"]
    sched.step_update(cfg.TRAIN.EPOCHS * 2)
    end = opt.param_groups[0]["lr"]
    assert end == pytest.approx(1e-5 * 4 / 512) and end < after_warmup  # it decays
    off = effective_lr(load_config("stage1/configs/es_ev_s.yaml", ["TRAIN.LR_SCALE_BATCH", "0"]), 8)
    assert (off.peak, off.warmup, off.min, off.factor) == (1e-3, 1e-6, 1e-5, 1.0)


def test_a_schedule_that_would_not_decay_warns():
    flat = schedule_warnings(LearningRates(1e-3, 1e-6, 2e-3), warmup_epochs=5)
    assert len(flat) == 1 and "TRAIN.MIN_LR" in flat[0] and "does not decay" in flat[0]
    high = schedule_warnings(LearningRates(1e-3, 5e-3, 1e-5), warmup_epochs=5)
    assert len(high) == 1 and "TRAIN.WARMUP_LR" in high[0]
    assert schedule_warnings(LearningRates(1e-3, 5e-3, 1e-5), warmup_epochs=0) == []
