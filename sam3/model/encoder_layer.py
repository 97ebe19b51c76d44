"""The pre-norm transformer encoder layer shared by SAM3's geometry and fusion encoders."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class PreNormEncoderLayer(nn.Module):
    """Self-attention, cross-attention to a memory, then a ReLU FFN, each a pre-norm residual.

    Sequence-first tensors (``[L, B, C]``). Parameter names follow ``sam3.pt``: ``self_attn``,
    ``cross_attn_image``, ``linear1``/``linear2`` (the FFN) and ``norm1``-``norm3``. The layer
    has eval-mode semantics: SAM3's 0.1 dropouts are not applied.
    """

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads)
        self.cross_attn_image = nn.MultiheadAttention(d_model, num_heads)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        pos: Tensor | None = None,
        memory_keys: Tensor | None = None,
        padding_mask: Tensor | None = None,
        memory_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Update ``x [L, B, C]`` attending to itself and to ``memory [M, B, C]``.

        ``pos`` (``[L, B, C]``) is added to the self-attention queries and keys (not values);
        ``memory_keys`` replaces ``memory`` as the cross-attention keys (e.g. memory plus its
        position encoding, computed once by the caller). Masks are ``[B, L]`` / ``[B, M]``,
        True where a token is padding.
        """
        h = self.norm1(x)
        qk = h if pos is None else h + pos
        x = x + self.self_attn(qk, qk, h, key_padding_mask=padding_mask, need_weights=False)[0]
        h = self.norm2(x)
        keys = memory if memory_keys is None else memory_keys
        attended = self.cross_attn_image(
            h, keys, memory, key_padding_mask=memory_padding_mask, need_weights=False
        )[0]
        x = x + attended
        return x + self.linear2(F.relu(self.linear1(self.norm3(x)), inplace=True))
