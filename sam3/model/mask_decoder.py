"""SAM's mask decoder with SAM3's options: high-resolution skips, sigmoid IoU, object score.

Output tokens ``[obj_score, iou, mask x 4]`` are prepended to the prompt tokens and run through
the two-way transformer with the image embedding (+ the dense prompt). The image tokens are
upscaled 4x by two transposed convs, adding ``conv_s1``/``conv_s0`` projections of the neck's
2x/4x maps; each mask token's hypernetwork MLP turns it into a 1x1 filter over the upscaled map.
The IoU head predicts each mask's quality (sigmoid) and the object-score head a presence logit.
Names follow ``tracker.sam_mask_decoder.*`` in ``sam3.pt``.

The upscaling runs channels-last: a kernel-2 stride-2 transposed conv is one GEMM of the pixels
(each makes its 2x2 outputs) whose pixel shuffle the skip's add writes, the LayerNorm2d a plain
layer norm over the last dim; the skips are kept channels-last from :meth:`MaskDecoder.high_res`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .heads_config import SamHeadsConfig
from .mlp import MLP
from .norms import LayerNorm2d
from .two_way_transformer import TwoWayTransformer, linear


class MaskDecoder(nn.Module):
    """Image embedding + prompts -> the logits of all ``1 + num_multimask`` masks, their
    predicted IoUs and the object-score logit."""

    def __init__(self, cfg: SamHeadsConfig):
        super().__init__()
        d = cfg.embed_dim
        self.cfg = cfg
        self.num_mask_tokens = cfg.num_multimask + 1
        self.transformer = TwoWayTransformer(cfg.depth, d, cfg.num_heads, cfg.mlp_dim)
        self.iou_token = nn.Embedding(1, d)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, d)
        self.obj_score_token = nn.Embedding(1, d)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(d, d // 4, kernel_size=2, stride=2),
            LayerNorm2d(d // 4),
            nn.GELU(),
            nn.ConvTranspose2d(d // 4, d // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.conv_s0 = nn.Conv2d(d, d // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(d, d // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(d, d, d // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(d, cfg.iou_head_hidden, self.num_mask_tokens, 3)
        self.pred_obj_score_head = MLP(d, d, 1, 3)

    def high_res(self, level0: Tensor, level1: Tensor) -> tuple[Tensor, Tensor]:
        """The neck's 4x and 2x maps -> the skips the upscaling adds (``conv_s0``, ``conv_s1``),
        kept channels-last in memory (the layout :meth:`forward` adds them in; same values)."""
        return _conv1x1_channels_last(self.conv_s0, level0), _conv1x1_channels_last(
            self.conv_s1, level1
        )

    def forward(
        self,
        image: Tensor,
        image_pe: Tensor,
        sparse: Tensor,
        dense: Tensor,
        high_res: tuple[Tensor, Tensor],
    ) -> dict[str, Tensor]:
        """All masks for ``N`` prompt sets on one image.

        Args:
            image: the image embedding ``[1 or N, C, S, S]`` (``no_mem_embed`` already added).
            image_pe: ``[1, C, S, S]``.
            sparse, dense: the prompt encoder's ``[N, T, C]`` and ``[N, C, S, S]``.
            high_res: the ``conv_s0`` / ``conv_s1`` maps ``[1 or N, C/8, 4S, 4S]`` and
                ``[1 or N, C/4, 2S, 2S]``.

        Returns:
            ``masks [N, 4, 4S, 4S]`` (logits; token 0 is the single-mask output),
            ``iou [N, 4]`` (sigmoid), ``object_score_logits [N, 1]``.
        """
        n = sparse.shape[0]
        out_tokens = torch.cat(
            [self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight]
        )
        tokens = torch.cat([out_tokens.to(sparse.dtype).expand(n, -1, -1), sparse], dim=1)
        _, c, h, w = image.shape
        # image + dense straight into [N, HW, C] memory: the transformer's token layout
        src = _add_contiguous(_tokens_view(image), _tokens_view(dense.to(tokens.dtype)))
        hs, keys = self.transformer(src.transpose(1, 2).view(n, c, h, w), image_pe, tokens)
        _, norm, act, _, _ = self.output_upscaling
        s0, s1 = high_res
        x = self._upscale(keys, 0, h, w, s1)  # [N, 2h, 2w, C/4], channels last
        x = _gelu_(F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps), act)
        x = _gelu_(self._upscale(x.flatten(1, 2), 3, 2 * h, 2 * w, s0), act)  # [N, 4h, 4w, C/8]
        mask_tokens = hs[:, 2 : 2 + self.num_mask_tokens]
        hyper = torch.stack(
            [mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )
        masks = torch.matmul(hyper, x.flatten(1, 2).transpose(1, 2)).view(n, -1, 4 * h, 4 * w)
        return {
            "masks": masks,
            "iou": self.iou_prediction_head(hs[:, 1]).sigmoid(),
            "object_score_logits": self.pred_obj_score_head(hs[:, 0]),
        }

    def _upscale(self, x: Tensor, index: int, h: int, w: int, skip: Tensor) -> Tensor:
        """``output_upscaling[index]`` (a kernel-2 stride-2 transposed conv) of channels-last
        ``x [N, h*w, C_in]`` plus ``skip [1 or N, C_out, 2h, 2w]``, as one GEMM: each input
        pixel makes its 2x2 output pixels. Returns channels-last ``[N, 2h, 2w, C_out]``."""
        conv = self.output_upscaling[index]
        c_out = conv.weight.shape[1]
        # weight [C_in, C_out, 2, 2] -> rows (dy, dx, C_out) of a linear
        weight = conv.weight.permute(2, 3, 1, 0).reshape(4 * c_out, -1).to(x.dtype)
        y = linear(x, weight, conv.bias.to(x.dtype).repeat(4))
        # [N, h, w, dy, dx, C] read as [N, h, dy, w, dx, C]: the add writes the pixel shuffle
        y = y.view(-1, h, w, 2, 2, c_out).transpose(2, 3)
        out = _add_contiguous(y, skip.permute(0, 2, 3, 1).unflatten(1, (h, 2)).unflatten(3, (w, 2)))
        return out.view(-1, 2 * h, 2 * w, c_out)

    def select(
        self, masks: Tensor, iou: Tensor, multimask_output: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """SAM3's choice of outputs: ``(masks [N, K, ...], iou [N, K], token index [N, K])``.

        Multimask: tokens 1.. in token order. Single mask: token 0 if its stability score
        (the area above ``+delta`` over the area above ``-delta``; 1 when both are empty) is
        at least the threshold, else the multimask token with the highest predicted IoU.
        """
        n = masks.shape[0]
        if multimask_output:
            index = torch.arange(1, self.num_mask_tokens, device=masks.device).expand(n, -1)
            return masks[:, 1:], iou[:, 1:], index
        delta, flat = self.cfg.stability_delta, masks[:, 0].flatten(1)
        inner = (flat > delta).sum(-1).float()
        outer = (flat > -delta).sum(-1).float()
        stability = torch.where(outer > 0, inner / outer, torch.ones_like(outer))
        best = iou[:, 1:].argmax(-1) + 1
        index = torch.where(stability >= self.cfg.stability_thresh, torch.zeros_like(best), best)
        rows = torch.arange(n, device=masks.device)
        return masks[rows, index][:, None], iou[rows, index][:, None], index[:, None]


def _add_contiguous(a: Tensor, b: Tensor) -> Tensor:
    """``a + b`` (broadcast) written straight into contiguous memory of the result's shape;
    where a gradient is recorded, the sum then a copy (``out=`` has no backward)."""
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return (a + b).contiguous()
    shape = torch.broadcast_shapes(a.shape, b.shape)
    return torch.add(a, b, out=torch.empty(shape, dtype=a.dtype, device=a.device))


def _tokens_view(x: Tensor) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, HW, C]`` (a view)."""
    return x.flatten(2).transpose(1, 2)


def _gelu_(x: Tensor, act: nn.GELU) -> Tensor:
    """``act(x)`` of a fresh ``x``, in place where no gradient is recorded."""
    if torch.is_grad_enabled() and x.requires_grad:
        return act(x)
    return torch.ops.aten.gelu_(x, approximate=act.approximate)


def _conv1x1_channels_last(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` of a 1x1 conv, channels-last in memory: for inference on large maps one GEMM
    per image of the pixels (the transposed ``[C, HW]`` map, no copy) against the weight,
    which writes channels-last directly and runs faster than the conv; else the conv, then a
    copy."""
    b, c, h, w = x.shape
    weight, bias = conv.weight, conv.bias
    plain = (
        (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        or torch.is_autocast_enabled(x.device.type)
        or x.dtype != weight.dtype
        or bias is None
        or x.numel() * weight.shape[0] < 1 << 24  # small maps: the conv's lower overhead wins
    )
    if plain:
        return conv(x).contiguous(memory_format=torch.channels_last)
    pixels = x.reshape(b, c, h * w)
    out = torch.empty(b, h * w, weight.shape[0], dtype=x.dtype, device=x.device)
    for i in range(b):
        torch.addmm(bias, pixels[i].t(), weight.view(weight.shape[0], c).t(), out=out[i])
    return out.view(b, h, w, -1).permute(0, 3, 1, 2)
