"""Sine position encoding of a feature map (DETR-style, normalised to (0, 2*pi])."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """Fixed 2-D sine/cosine encoding: ``[B, C, H, W]`` features -> ``[B, num_pos_feats, H, W]``.

    Channels are ``[pos_y (n/2), pos_x (n/2)]``; within each half, even channels hold
    ``sin(p / t_k)`` and odd ones ``cos(p / t_k)`` with ``t_k = T ** (2 * (k // 2) / (n/2))``
    and ``p = (index + 1) / (size + 1e-6) * 2*pi``. Tables are cached per size and device.
    """

    def __init__(self, num_pos_feats: int = 256, temperature: float = 10000.0):
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
        self.half = num_pos_feats // 2
        self.temperature = temperature
        self.scale = 2 * math.pi
        self._cache: dict[tuple[int, int, str], Tensor] = {}

    def table(self, h: int, w: int, device: torch.device) -> Tensor:
        """The fp32 encoding ``[num_pos_feats, h, w]`` for one map size."""
        key = (h, w, str(device))
        if key not in self._cache:
            eps = 1e-6
            y = torch.arange(1, h + 1, dtype=torch.float32, device=device) / (h + eps) * self.scale
            x = torch.arange(1, w + 1, dtype=torch.float32, device=device) / (w + eps) * self.scale
            k = torch.arange(self.half, dtype=torch.float32, device=device)
            dim_t = self.temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / self.half)
            pos_y = self._interleave(y[:, None] / dim_t)  # [h, half]
            pos_x = self._interleave(x[:, None] / dim_t)  # [w, half]
            enc = torch.cat(
                [pos_y[:, None, :].expand(h, w, -1), pos_x[None, :, :].expand(h, w, -1)], dim=-1
            )
            self._cache[key] = enc.permute(2, 0, 1).contiguous()
        return self._cache[key]

    @staticmethod
    def _interleave(p: Tensor) -> Tensor:
        """``sin`` on even channels, ``cos`` on odd ones."""
        return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """Encoding for ``x``'s spatial size, batch-expanded, in ``x``'s dtype."""
        enc = self.table(x.shape[-2], x.shape[-1], x.device)
        return enc.to(x.dtype)[None].expand(x.shape[0], -1, -1, -1)
