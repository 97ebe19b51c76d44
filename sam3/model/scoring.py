"""SAM3's query classifier: dot product of each query with the mean-pooled prompt."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .heads_config import HeadsConfig
from .mlp import MLP

CLAMP = 12.0  # |logit| bound


class DotProductScoring(nn.Module):
    """``logit = <hs_proj(hs), prompt_proj(pool(prompt_mlp(prompt)))> / sqrt(d)``, clamped.

    ``prompt_mlp`` is a 2-layer MLP with a residual and an output LayerNorm; ``pool`` is the mean
    over non-padding prompt tokens. Parameter names follow ``sam3.pt``'s
    ``detector.dot_prod_scoring.*``.
    """

    def __init__(self, cfg: HeadsConfig | None = None):
        super().__init__()
        cfg = cfg or HeadsConfig()
        d = cfg.d_model
        self.prompt_mlp = MLP(d, cfg.scoring_hidden, d, 2, residual=True, out_norm=True)
        self.prompt_proj = nn.Linear(d, d)
        self.hs_proj = nn.Linear(d, d)
        self.scale = 1.0 / math.sqrt(d)

    def pooled_prompt(self, prompt: Tensor, prompt_mask: Tensor) -> Tensor:
        """``prompt [S, B, C]``, ``prompt_mask [B, S]`` (True = padding) -> ``[B, C]``: the
        projected mean of the MLP-refined valid tokens (all-padding rows pool to zero)."""
        valid = (~prompt_mask).to(prompt.dtype)  # [B, S]
        weights = valid / valid.sum(1, keepdim=True).clamp_min(1.0)
        pooled = torch.einsum("bs,sbc->bc", weights, self.prompt_mlp(prompt))
        return self.prompt_proj(pooled)

    def forward(self, hs: Tensor, prompt: Tensor, prompt_mask: Tensor) -> Tensor:
        """Query logits ``[L, B, Q, 1]`` of decoder outputs ``hs [L, B, Q, C]`` (pass
        ``hs[-1:]`` for the last layer only); ``prompt [S, B, C]``, ``prompt_mask [B, S]``."""
        if hs.dim() != 4 or prompt.dim() != 3 or prompt_mask.dim() != 2:
            raise ValueError(
                f"expected hs [L, B, Q, C], prompt [S, B, C], prompt_mask [B, S]; got "
                f"{tuple(hs.shape)}, {tuple(prompt.shape)}, {tuple(prompt_mask.shape)}"
            )
        target = self.pooled_prompt(prompt, prompt_mask) * self.scale  # [B, C]
        # <W h + b, t> = <h, W^T t> + <b, t>: project the one pooled vector, not every query.
        kernel = target @ self.hs_proj.weight  # [B, C]
        offset = target @ self.hs_proj.bias  # [B]
        scores = torch.matmul(hs, kernel[:, :, None]) + offset[:, None, None]
        return scores.clamp_(-CLAMP, CLAMP)
