"""SAM3's fusion encoder: image tokens attend to themselves and to the (text + geometry) prompt."""

from __future__ import annotations

from torch import Tensor, nn

from .encoder_layer import PreNormEncoderLayer
from .heads_config import HeadsConfig


class FusionEncoder(nn.Module):
    """``cfg.encoder_layers`` pre-norm layers over the 1x image tokens, no final norm.

    Per layer: self-attention with the image position encoding added to queries and keys,
    cross-attention to the prompt tokens (keys = values = prompt, padded ones masked out), ReLU
    FFN. SAM3's configuration (one feature level, no pooled-text addition). Parameter names
    follow ``sam3.pt``'s ``detector.transformer.encoder.*``.
    """

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            PreNormEncoderLayer(cfg.d_model, cfg.num_heads, cfg.dim_feedforward)
            for _ in range(cfg.encoder_layers)
        )

    def forward(
        self,
        src: Tensor,
        src_pos: Tensor,
        prompt: Tensor,
        prompt_mask: Tensor,
        feat_size: tuple[int, int],
    ) -> tuple[Tensor, Tensor]:
        """Fuse ``src [H*W, B, C]`` (position encoding ``src_pos``, same shape) with
        ``prompt [S, B, C]`` (``prompt_mask [B, S]``, True = pad); ``feat_size = (H, W)``.

        Returns the encoded image tokens ``[H*W, B, C]`` and their position encoding (``src_pos``
        itself), both sequence-first.
        """
        h, w = feat_size
        if src.shape[0] != h * w or src_pos.shape != src.shape:
            raise ValueError(
                f"src {tuple(src.shape)} / src_pos {tuple(src_pos.shape)} do not fit "
                f"feat_size {feat_size}"
            )
        if prompt_mask.shape != (prompt.shape[1], prompt.shape[0]):
            raise ValueError(
                f"prompt_mask {tuple(prompt_mask.shape)} does not fit prompt {tuple(prompt.shape)}"
            )
        x = src
        for layer in self.layers:
            x = layer(x, prompt, pos=src_pos, memory_padding_mask=prompt_mask)
        return x, src_pos
