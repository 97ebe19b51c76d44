"""SAM3's text encoder: a causal CLIP-style transformer followed by a 1024->256 resizer.

Parameter names follow ``sam3.pt`` (``detector.backbone.language_backbone.*``): ``encoder``
(token and position embeddings, ``transformer.resblocks.N`` with ``attn.in_proj_weight``,
``ln_final``, the unused ``text_projection``) and ``resizer``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .tokenizer import PAD_TOKEN, Sam3Tokenizer


@dataclass(frozen=True)
class TextConfig:
    """Hyperparameters of the text encoder; the defaults are SAM3's."""

    width: int = 1024  # transformer width
    heads: int = 16  # attention heads
    layers: int = 24  # residual attention blocks
    context_length: int = 32  # tokens per caption (sot + text + eot, zero-padded)
    vocab_size: int = 49408  # CLIP BPE vocabulary
    mlp_ratio: float = 4.0  # MLP hidden width / width
    output_dim: int = 512  # width of the (unused) pooled projection kept for checkpoints


class SelfAttention(nn.Module):
    """Causal multi-head self-attention with ``nn.MultiheadAttention``'s parameter layout."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """``x [B, L, W]``; ``attn_mask`` (bool, True = attend) replaces the causal mask."""
        b, n, w = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if attn_mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, w))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: ``x += attn(ln_1(x)); x += mlp(ln_2(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.attn = SelfAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, hidden))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(hidden, width))

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Apply the block to ``x [B, L, W]``."""
        x = x + self.attn(self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of :class:`ResidualAttentionBlock` under the name ``resblocks``."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio) for _ in range(layers)
        )

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Apply every block in order."""
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class TextTransformer(nn.Module):
    """Token ids ``[B, L]`` -> per-token features ``[B, L, width]`` (after ``ln_final``)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.context_length = cfg.context_length
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio)
        self.ln_final = nn.LayerNorm(cfg.width)
        # SAM3 computes a pooled projection through this and discards it; it is kept (and
        # never applied) so that checkpoints round-trip.
        self.text_projection = nn.Parameter(torch.empty(cfg.width, cfg.output_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=cfg.width**-0.5)

    def forward(self, tokens: Tensor, embeds: Tensor | None = None) -> Tensor:
        """Encode ``tokens [B, L]`` causally (``embeds``: their embeddings, if already known)."""
        n = tokens.shape[1]
        if n > self.context_length:
            raise ValueError(f"got {n} tokens; the encoder holds {self.context_length} positions")
        if embeds is None:
            embeds = self.token_embedding(tokens)
        return self.ln_final(self.transformer(embeds + self.positional_embedding[:n]))


class VETextEncoder(nn.Module):
    """SAM3's language backbone: tokenizer, :class:`TextTransformer` and the ``resizer`` to
    ``d_model`` (the detector's width)."""

    def __init__(self, cfg: TextConfig | None = None, d_model: int = 256):
        super().__init__()
        cfg = cfg or TextConfig()
        self.cfg = cfg
        self.context_length = cfg.context_length
        self.tokenizer = Sam3Tokenizer(cfg.context_length)
        self.encoder = TextTransformer(cfg)
        self.resizer = nn.Linear(cfg.width, d_model)

    def forward(
        self,
        captions: Sequence[str],
        device: torch.device | str | None = None,
        context_length: int | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Encode captions, tokenized to ``context_length`` (default: the encoder's) tokens.

        Returns:
            ``(mask [B, L] bool, True = padding; features [L, B, d_model];
            token embeddings [L, B, width])``, sequence-first as SAM3 returns them.
        """
        device = device if device is not None else self.resizer.weight.device
        tokens = self.tokenizer(captions, context_length).to(device)
        embeds = self.encoder.token_embedding(tokens)
        memory = self.encoder(tokens, embeds).transpose(0, 1)
        return tokens == PAD_TOKEN, self.resizer(memory), embeds.transpose(0, 1)
