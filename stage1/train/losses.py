"""Distillation losses: masked MSE + cosine between student and teacher embeddings.

Image embeddings are ``[B, C, H, W]`` with a valid-cell mask ``[B, H, W]`` (padding cells are
ignored); text embeddings are ``[B, L, C]`` with a token mask ``[B, L]`` (padding tokens are
ignored). The loss is ``pixel_wise * MSE + cosine * (1 - cos)``, both averaged over valid cells
(tokens) of each sample, then over the batch.

``mse_reduction`` chooses how the squared error is normalised:

* ``"sum_channels"`` (image default, as the published EfficientSAM3 recipe): sum over channels,
  mean over valid cells -- so published learning rates and weights transfer;
* ``"mean"`` (text default): mean over channels too (a per-element MSE).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

REDUCTIONS = ("sum_channels", "mean")


@dataclass
class LossParts:
    """The total and its parts (detached parts, for logging)."""

    total: Tensor
    mse: Tensor
    cosine: Tensor  # mean (1 - cos) over valid cells
    mean_cos: Tensor  # mean cosine similarity over valid cells


def _per_cell(student: Tensor, teacher: Tensor, channel_dim: int, reduction: str):
    diff = (student.float() - teacher.float()).square()
    sq = diff.sum(channel_dim) if reduction == "sum_channels" else diff.mean(channel_dim)
    cos = F.cosine_similarity(student.float(), teacher.float(), dim=channel_dim, eps=1e-8)
    return sq, cos


def distill_loss(
    student: Tensor,
    teacher: Tensor,
    valid: Tensor,
    channel_dim: int,
    pixel_wise: float = 1.0,
    cosine: float = 1.0,
    mse_reduction: str = "sum_channels",
) -> LossParts:
    """Masked MSE + cosine; ``valid`` has the shape of the inputs without ``channel_dim``.

    Computed in fp32 whatever the inputs' dtype. A sample without any valid cell contributes 0.
    """
    if mse_reduction not in REDUCTIONS:
        raise ValueError(f"mse_reduction {mse_reduction!r}; choose one of {REDUCTIONS}")
    if student.shape != teacher.shape:
        raise ValueError(
            f"student output {tuple(student.shape)} and teacher embedding "
            f"{tuple(teacher.shape)} differ: check DISTILL.EMBED_DIM/EMBED_SIZE/CONTEXT_LENGTH"
        )
    sq, cos = _per_cell(student, teacher, channel_dim, mse_reduction)
    w = valid.to(sq.dtype)
    dims = tuple(range(1, w.ndim))
    n = w.sum(dims).clamp_min(1.0)
    mse = ((sq * w).sum(dims) / n).mean()
    one_minus_cos = (((1.0 - cos) * w).sum(dims) / n).mean()
    mean_cos = ((cos * w).sum(dims) / n).mean()
    total = pixel_wise * mse + cosine * one_minus_cos
    return LossParts(total, mse.detach(), one_minus_cos.detach(), mean_cos.detach())
