"""SAM3's geometry encoder: box and point prompts -> a sequence of prompt tokens plus CLS."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from .box_ops import box_cxcywh_to_xyxy
from .encoder_layer import PreNormEncoderLayer
from .heads_config import HeadsConfig
from .prompt import GeometricPrompt


def concat_right_padded(
    seq1: Tensor, mask1: Tensor, seq2: Tensor, mask2: Tensor
) -> tuple[Tensor, Tensor]:
    """Concatenate two right-padded sequences so that the result is right-padded too.

    Sequences are ``[L, B, C]``, masks ``[B, L]`` (True = padding). Per batch entry the valid
    part of ``seq2`` is placed right after the valid part of ``seq1``; what lands in padded
    slots (leftover padding of either input, or zeros) is kept as SAM3 keeps it, since the
    tokens there still flow through the encoder layers.
    """
    n1, n2 = seq1.shape[0], seq2.shape[0]
    len1 = (~mask1).sum(dim=1)
    lengths = len1 + (~mask2).sum(dim=1)
    mask = torch.arange(n1 + n2, device=seq2.device)[None] >= lengths[:, None]
    if n2 == 0:
        return seq1, mask
    if n1 == 0:  # the scatter below would put seq2 in place unchanged
        return seq2, mask
    out = torch.cat([seq1.to(seq2.dtype), seq2.new_zeros(seq2.shape)])
    index = torch.arange(n2, device=seq2.device)[:, None] + len1[None]
    return out.scatter(0, index[:, :, None].expand(-1, -1, seq2.shape[2]), seq2), mask


class GeometryEncoder(nn.Module):
    """Encode a :class:`GeometricPrompt` against the 1x image features (SAM3's configuration).

    Each point is ``label_embed + direct projection + projection of the bilinear sample of the
    pre-normed features + projection of its sine encoding cat(x, y)``; each box is
    ``label_embed + direct projection (cxcywh) + Conv2d of its roi_align crop + projection of
    cat(sine y, sine x, h, w)``. The sequence ``[points, boxes, CLS]`` (right-padded) goes
    through ``final_proj``, ``norm``, ``cfg.geometry_layers`` pre-norm layers (self-attention,
    then cross-attention to the features with position-encoded keys) and ``encode_norm``.
    Parameter names follow ``sam3.pt``'s ``detector.geometry_encoder.*``.
    """

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        d = cfg.d_model
        if d % 4:
            raise ValueError(f"d_model must be divisible by 4 (sine encoding), got {d}")
        self.d_model = d
        self.roi_size = cfg.roi_size
        self.label_embed = nn.Embedding(2, d)
        self.cls_embed = nn.Embedding(1, d)
        self.points_direct_project = nn.Linear(2, d)
        self.points_pool_project = nn.Linear(d, d)
        self.points_pos_enc_project = nn.Linear(d, d)
        self.boxes_direct_project = nn.Linear(4, d)
        self.boxes_pool_project = nn.Conv2d(d, d, cfg.roi_size)
        self.boxes_pos_enc_project = nn.Linear(d + 2, d)
        self.final_proj = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.img_pre_norm = nn.LayerNorm(d)
        self.encode = nn.ModuleList(
            PreNormEncoderLayer(d, cfg.num_heads, cfg.dim_feedforward)
            for _ in range(cfg.geometry_layers)
        )
        self.encode_norm = nn.LayerNorm(d) if cfg.geometry_layers else nn.Identity()
        # sine encoding of one normalised coordinate: d/2 channels, temperature 10000, scale 2pi
        self._sine_half = d // 2
        self._freq_cache: dict[str, Tensor] = {}
        self._scale_cache: dict[tuple[int, int, str, torch.dtype], Tensor] = {}

    def _sine(self, coord: Tensor) -> Tensor:
        """``[...]`` normalised coordinates -> ``[..., d/2]``: sin on even, cos on odd channels."""
        key = str(coord.device)
        if key not in self._freq_cache:
            k = torch.arange(self._sine_half, dtype=torch.float32, device=coord.device)
            self._freq_cache[key] = 10000 ** (
                2 * torch.div(k, 2, rounding_mode="floor") / self._sine_half
            )
        p = (coord * (2 * math.pi))[..., None] / self._freq_cache[key]
        return torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), dim=-1).flatten(-2)

    def _pixel_scale(self, h: int, w: int, like: Tensor) -> Tensor:
        """``[W, H, W, H]`` on ``like``'s device, cached (no per-call host-to-device copy)."""
        key = (h, w, str(like.device), like.dtype)
        if key not in self._scale_cache:
            self._scale_cache[key] = torch.tensor([w, h, w, h], dtype=like.dtype).to(like.device)
        return self._scale_cache[key]

    def _embed_points(self, points: Tensor, labels: Tensor, feats: Tensor) -> Tensor:
        """``points [P, B, 2]`` (x, y in [0, 1]) -> ``[P, B, C]``; ``feats`` is ``[B, C, H, W]``."""
        embed = self.points_direct_project(points)
        grid = points.transpose(0, 1).unsqueeze(2) * 2 - 1  # [B, P, 1, 2] in [-1, 1]
        sampled = F.grid_sample(feats, grid, align_corners=False)  # [B, C, P, 1]
        embed = embed + self.points_pool_project(sampled.squeeze(-1).permute(2, 0, 1))
        x, y = points.unbind(-1)
        embed = embed + self.points_pos_enc_project(torch.cat([self._sine(x), self._sine(y)], -1))
        return self.label_embed(labels.long()) + embed

    def _embed_boxes(self, boxes: Tensor, labels: Tensor, feats: Tensor) -> Tensor:
        """``boxes [N, B, 4]`` (cxcywh in [0, 1]) -> ``[N, B, C]``; ``feats``: ``[B, C, H, W]``."""
        n, b = boxes.shape[:2]
        embed = self.boxes_direct_project(boxes)
        xyxy = box_cxcywh_to_xyxy(boxes) * self._pixel_scale(*feats.shape[-2:], boxes)
        xyxy = xyxy.to(feats.dtype).transpose(0, 1).reshape(b * n, 4)
        ids = torch.arange(b, device=boxes.device, dtype=xyxy.dtype).repeat_interleave(n)
        crops = roi_align(feats, torch.cat([ids[:, None], xyxy], dim=1), self.roi_size)
        pooled = self.boxes_pool_project(crops).view(b, n, self.d_model).transpose(0, 1)
        embed = embed + pooled
        cx, cy, w, h = boxes.unbind(-1)
        enc = torch.cat([self._sine(cy), self._sine(cx), h[..., None], w[..., None]], dim=-1)
        embed = embed + self.boxes_pos_enc_project(enc)
        return self.label_embed(labels.long()) + embed

    def forward(
        self,
        prompt: GeometricPrompt,
        img_feats: Tensor,
        img_pos: Tensor,
        feat_size: tuple[int, int],
    ) -> tuple[Tensor, Tensor]:
        """Encode ``prompt`` given the image features and their position encoding.

        ``img_feats``/``img_pos`` are ``[H*W, B, C]`` (sequence-first, one feature level) with
        ``feat_size = (H, W)``. Returns the tokens ``[S, B, C]`` with ``S = P + N + 1`` and their
        padding mask ``[B, S]`` (True = pad); an empty prompt gives the CLS token alone.
        """
        h, w = feat_size
        hw, b, c = img_feats.shape
        if hw != h * w or prompt.batch != b:
            raise ValueError(
                f"img_feats {tuple(img_feats.shape)} do not fit feat_size {feat_size} and a "
                f"batch of {prompt.batch} prompts"
            )
        n_points, n_boxes = prompt.points.shape[0], prompt.boxes.shape[0]
        seq, mask = img_feats.new_zeros(0, b, c), prompt.point_mask
        if n_points or n_boxes:
            feats = self.img_pre_norm(img_feats).permute(1, 2, 0).reshape(b, c, h, w)
            feats = feats.contiguous()
            if n_points:
                seq = self._embed_points(prompt.points, prompt.point_labels, feats)
            if n_boxes:
                boxes = self._embed_boxes(prompt.boxes, prompt.box_labels, feats)
                seq, mask = concat_right_padded(seq, mask, boxes, prompt.box_mask)
        cls = self.cls_embed.weight[:, None].expand(1, b, c)
        cls_mask = torch.zeros(b, 1, dtype=torch.bool, device=img_feats.device)
        seq, mask = concat_right_padded(seq, mask, cls, cls_mask)
        x = self.norm(self.final_proj(seq))
        if len(self.encode):
            keys = img_feats + img_pos
            for layer in self.encode:
                x = layer(x, img_feats, memory_keys=keys, padding_mask=mask)
        return self.encode_norm(x), mask
