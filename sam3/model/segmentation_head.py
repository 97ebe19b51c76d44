"""SAM3's segmentation head: prompt-aware pixel decoder and per-query mask logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .heads_config import HeadsConfig
from .mlp import MLP

GROUPS = 8  # GroupNorm groups of the pixel decoder


def upsample_add(skip: Tensor, x: Tensor) -> Tensor:
    """``skip + nearest_upsample(x, skip's size)``, broadcasting ``skip`` over ``x``'s batch.

    The sum is accumulated in place into the upsampled map (one full-size allocation, which is
    a large part of the cost at 288x288: fresh pages).
    """
    up = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
    return up.add_(skip) if skip.shape[0] <= up.shape[0] else up + skip


class PixelDecoder(nn.Module):
    """FPN-style top-down decoder: per finer level, upsample + add the skip, 3x3 conv,
    GroupNorm(8), ReLU. ``conv_layers``/``norms`` hold ``stages`` pairs; a pyramid of ``n``
    maps uses the first ``n - 1`` (SAM3 builds 3 and uses 2)."""

    def __init__(self, d_model: int, stages: int):
        super().__init__()
        if d_model % GROUPS:
            raise ValueError(f"d_model must be divisible by {GROUPS} (GroupNorm), got {d_model}")
        self.conv_layers = nn.ModuleList(
            nn.Conv2d(d_model, d_model, 3, padding=1) for _ in range(stages)
        )
        self.norms = nn.ModuleList(nn.GroupNorm(GROUPS, d_model) for _ in range(stages))

    def forward(self, feats: list[Tensor]) -> Tensor:
        """``feats`` fine to coarse (``[B|1, C, 2^k H, 2^k W]`` ... ``[B, C, H, W]``) -> the
        finest-resolution embedding ``[B, C, 2^k H, 2^k W]``."""
        if not 2 <= len(feats) <= len(self.conv_layers) + 1:
            raise ValueError(f"need 2..{len(self.conv_layers) + 1} maps, got {len(feats)}")
        x = feats[-1]
        for i, skip in enumerate(reversed(feats[:-1])):
            x = self.conv_layers[i](upsample_add(skip, x))
            x = F.relu_(self.norms[i](x))
        return x


class MaskPredictor(nn.Module):
    """Holds ``mask_embed``, the 3-layer MLP that turns object queries into mask kernels."""

    def __init__(self, d_model: int):
        super().__init__()
        self.mask_embed = MLP(d_model, d_model, d_model, 3)

    def forward(self, queries: Tensor) -> Tensor:
        """``[..., C]`` queries -> ``[..., C]`` mask kernels."""
        return self.mask_embed(queries)


class SegmentationHead(nn.Module):
    """SAM3's ``UniversalSegmentationHead`` as its text/box-prompted path runs it (eval).

    The encoder's image tokens first cross-attend to the prompt (pre-norm, residual) and
    replace the coarsest pyramid level; the pixel decoder upsamples them to the finest level;
    ``instance_seg_head`` (1x1 conv) and the query kernels give the mask logits, and
    ``semantic_seg_head`` (1x1 conv) one semantic logit map. Parameter names follow
    ``sam3.pt``'s ``detector.segmentation_head.*``.
    """

    def __init__(self, cfg: HeadsConfig | None = None):
        super().__init__()
        cfg = cfg or HeadsConfig()
        d = cfg.d_model
        self.pixel_decoder = PixelDecoder(d, cfg.pixel_decoder_stages)
        self.mask_predictor = MaskPredictor(d)
        self.cross_attend_prompt = nn.MultiheadAttention(d, cfg.num_heads, dropout=0.0)
        self.cross_attn_norm = nn.LayerNorm(d)
        self.semantic_seg_head = nn.Conv2d(d, 1, kernel_size=1)
        self.instance_seg_head = nn.Conv2d(d, d, kernel_size=1)

    def pixel_embed(
        self,
        backbone_fpn: list[Tensor],
        encoder_hidden_states: Tensor,
        prompt: Tensor,
        prompt_mask: Tensor,
    ) -> Tensor:
        """The pixel decoder's output ``[B, C, 4H, 4W]``, shared by every query.

        ``backbone_fpn``: fine-to-coarse maps ``[B|1, C, 4H, 4W], [B|1, C, 2H, 2W],
        [B|1, C, H, W]`` (views, e.g. one image expanded over ``B`` prompts, are fine; the
        coarsest is only used for its size); ``encoder_hidden_states [HW(+extra), B, C]``;
        ``prompt [S, B, C]``; ``prompt_mask [B, S]`` (True = padding).
        """
        enc = encoder_hidden_states
        attended = self.cross_attend_prompt(
            self.cross_attn_norm(enc),
            prompt,
            prompt,
            key_padding_mask=prompt_mask,
            need_weights=False,
        )[0]
        enc = enc + attended
        h, w = backbone_fpn[-1].shape[-2:]
        coarse = enc[: h * w].permute(1, 2, 0).unflatten(-1, (h, w))  # [B, C, H, W] view
        return self.pixel_decoder([*backbone_fpn[:-1], coarse])

    def mask_logits(
        self, pixel_embed: Tensor, queries: Tensor, query_index: Tensor | None = None
    ) -> Tensor:
        """Mask logits ``[B, Q, 4H, 4W]`` of ``queries [B, Q, C]``, or ``[B, K, 4H, 4W]`` of
        the queries picked by ``query_index`` (long ``[K]`` for every batch entry, or ``[B, K]``).
        """
        if query_index is not None:
            if query_index.dim() == 1:
                queries = queries[:, query_index]
            else:
                index = query_index[..., None].expand(-1, -1, queries.shape[-1])
                queries = torch.gather(queries, 1, index)
        kernels = self.mask_predictor(queries)  # [B, K, C]
        # The 1x1 instance conv is folded into the kernels (linear maps commute), so the
        # full-resolution [B, C, 4H, 4W] instance embedding is never built.
        weight = self.instance_seg_head.weight.flatten(1)  # [C_out, C_in]
        bias = kernels @ self.instance_seg_head.bias  # [B, K]
        b, c, hh, ww = pixel_embed.shape
        logits = torch.bmm(kernels @ weight, pixel_embed.reshape(b, c, -1))
        # not baddbmm: it would first copy the bias broadcast to the full output size
        return logits.add_(bias[..., None]).unflatten(-1, (hh, ww))

    def semantic_logits(self, pixel_embed: Tensor) -> Tensor:
        """The semantic segmentation logits ``[B, 1, 4H, 4W]``."""
        # A matmul, not the 1x1 conv module: oneDNN's 1-channel conv is far slower on CPUs.
        b, c, h, w = pixel_embed.shape
        head = self.semantic_seg_head
        logits = torch.matmul(head.weight.view(1, c), pixel_embed.reshape(b, c, -1))
        return logits.add_(head.bias.view(1, 1, 1)).view(b, 1, h, w)

    def forward(
        self,
        backbone_fpn: list[Tensor],
        queries: Tensor,
        encoder_hidden_states: Tensor,
        prompt: Tensor,
        prompt_mask: Tensor,
        query_index: Tensor | None = None,
        semantic: bool = True,
    ) -> dict[str, Tensor]:
        """``pred_masks [B, Q|K, 4H, 4W]`` and (if ``semantic``) ``semantic_seg [B, 1, 4H, 4W]``.

        ``queries [B, Q, C]`` is the last decoder layer's output, batch first; ``query_index``
        restricts the masks to some queries (see :meth:`mask_logits`); other arguments as in
        :meth:`pixel_embed`.
        """
        pixels = self.pixel_embed(backbone_fpn, encoder_hidden_states, prompt, prompt_mask)
        out = {"pred_masks": self.mask_logits(pixels, queries, query_index)}
        if semantic:
            out["semantic_seg"] = self.semantic_logits(pixels)
        return out
