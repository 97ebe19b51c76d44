"""SAM3's detector decoder: 200 box queries refined over 6 post-norm layers (eval path).

Each layer attends the queries (plus a presence token in front) to themselves, to the prompt
tokens and to the fused image memory; the image cross-attention carries a per-head additive
bias from each query's current box (boxRPB "log"). After every layer the normed queries refine
the boxes (``box_refine``) and the presence token gives a logit. Layouts are sequence-first, as
in ``sam3.pt``'s model; parameter names follow ``transformer.decoder.*``.

For fp32 CPU inference (no gradient recorded) the linear layers run through oneDNN, and the image
cross-attention adds its box bias head by head to logits computed there (no full-size mask);
otherwise the same arithmetic runs through ``F.linear`` and one masked SDPA per attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .box_ops import box_cxcywh_to_xyxy, inverse_sigmoid
from .encoder_layer import project_attend
from .heads_config import HeadsConfig
from .mlp import MLP
from .packed_linear import inference_linear, onednn_linear, onednn_linear_applies

_SINE_SCALE = 2 * math.pi
_SINE_TEMPERATURE = 10000.0


def _mlp(mlp: MLP, x: Tensor) -> Tensor:
    """``mlp(x)`` for a plain MLP (no residual, no output norm) through :func:`inference_linear`."""
    last = len(mlp.layers) - 1
    for i, layer in enumerate(mlp.layers):
        x = inference_linear(x, layer.weight, layer.bias, relu=i < last)
    return x


def _box_attention(
    mha: nn.MultiheadAttention,
    query: Tensor,
    keyed: Tensor,
    memory: Tensor,
    bias_y: Tensor,
    bias_x: Tensor,
    feat_size: tuple[int, int],
) -> Tensor:
    """Attention of ``query`` ``[1+Q, B, C]`` (presence token first) to an ``H x W`` memory
    (keys from ``keyed``, values from ``memory``, ``[HW, B, C]``) with the additive box bias
    ``bias_y[b, h, q, i] + bias_x[b, h, q, j]`` on key ``(i, j)``; none on the presence token.

    On the fp32 CPU inference path the bias is added head by head to the logits, which are
    computed with oneDNN, instead of building the full ``[B, heads, 1+Q, HW]`` mask.
    """
    dim, heads = mha.embed_dim, mha.num_heads
    w, b = mha.in_proj_weight, mha.in_proj_bias
    length, batch = query.shape[:2]
    height, width = feat_size
    if not (onednn_linear_applies(query, w) and onednn_linear_applies(memory, w)):
        bias = (bias_y[..., None] + bias_x[..., None, :]).flatten(3)  # [B, heads, Q, HW]
        return project_attend(mha, query, keyed, memory, F.pad(bias, (0, 0, 1, 0)))
    head_dim = dim // heads
    q = onednn_linear(query, w[:dim], b[:dim]) * head_dim**-0.5
    q = q.view(length, batch, heads, head_dim).permute(1, 2, 0, 3).contiguous()
    out = query.new_empty(length, batch, dim)
    for i in range(batch):
        k = onednn_linear(keyed[:, i], w[dim : 2 * dim], b[dim : 2 * dim])
        k = k.view(-1, heads, head_dim).transpose(0, 1).contiguous()  # [heads, HW, d]
        # values transposed, without their bias: softmax rows sum to one, so it is added after
        values_t = onednn_linear(w[2 * dim :], memory[:, i].contiguous(), None)  # [C, HW]
        for h in range(heads):
            logits = onednn_linear(q[i, h], k[h], None)  # [1+Q, HW]
            box = logits[1:].view(length - 1, height, width)
            box.add_(bias_y[i, h, :, :, None]).add_(bias_x[i, h, :, None, :])
            cols = slice(h * head_dim, (h + 1) * head_dim)
            out[:, i, cols] = onednn_linear(logits.softmax(-1), values_t[cols], None)
    out += b[2 * dim :]
    return inference_linear(out, mha.out_proj.weight, mha.out_proj.bias)


class TransformerDecoderLayer(nn.Module):
    """Post-norm layer: self-attention, prompt cross-attention, image cross-attention, FFN."""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int):
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(d_model, num_heads)
        self.norm1 = nn.LayerNorm(d_model)
        self.ca_text = nn.MultiheadAttention(d_model, num_heads)
        self.catext_norm = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, num_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        x: Tensor,
        pos: Tensor,
        prompt: Tensor,
        prompt_keep: Tensor,
        memory: Tensor,
        memory_keyed: Tensor,
        box_bias: tuple[Tensor, Tensor],
        feat_size: tuple[int, int],
    ) -> Tensor:
        """One layer on ``x`` ``[1+Q, B, C]`` (presence token first).

        ``pos``: query position ``[1+Q, B, C]`` (zero for the presence token); ``prompt``
        ``[S, B, C]`` with ``prompt_keep`` ``[B, 1, 1, S]`` (True = real token); ``memory`` and
        ``memory_keyed`` (= memory + its position) ``[HW, B, C]`` on the ``H x W`` grid
        ``feat_size``; ``box_bias``: the row and column terms ``[B, heads, Q, H]`` and
        ``[B, heads, Q, W]`` of the queries' box bias.
        """
        q = x + pos
        x = self.norm2(x + project_attend(self.self_attn, q, q, x, None))
        x = self.catext_norm(x + project_attend(self.ca_text, x + pos, prompt, prompt, prompt_keep))
        attended = _box_attention(
            self.cross_attn, x + pos, memory_keyed, memory, *box_bias, feat_size
        )
        x = self.norm1(x + attended)
        hidden = inference_linear(x, self.linear1.weight, self.linear1.bias, relu=True)
        return self.norm3(x + inference_linear(hidden, self.linear2.weight, self.linear2.bias))


class TransformerDecoder(nn.Module):
    """SAM3's decoder (``transformer.decoder``): queries, box refinement, presence token.

    ``bbox_embed`` is public: the image model turns the outputs into boxes with
    :meth:`predict_boxes`.
    """

    def __init__(self, cfg: HeadsConfig | None = None):
        super().__init__()
        cfg = cfg or HeadsConfig()
        if cfg.d_model % 4:
            raise ValueError(f"d_model must be divisible by 4 (4-D sine embedding): {cfg.d_model}")
        d = cfg.d_model
        self.d_model = d
        self.num_heads = cfg.num_heads
        self.num_queries = cfg.num_queries
        self.layers = nn.ModuleList(
            TransformerDecoderLayer(d, cfg.num_heads, cfg.dim_feedforward)
            for _ in range(cfg.decoder_layers)
        )
        self.norm = nn.LayerNorm(d)
        self.bbox_embed = MLP(d, d, 4, 3)
        self.query_embed = nn.Embedding(cfg.num_queries, d)
        self.reference_points = nn.Embedding(cfg.num_queries, 4)
        self.boxRPB_embed_x = MLP(2, d, cfg.num_heads, 2)
        self.boxRPB_embed_y = MLP(2, d, cfg.num_heads, 2)
        self.presence_token = nn.Embedding(1, d)
        self.presence_token_head = MLP(d, d, 1, 3)
        self.presence_token_out_norm = nn.LayerNorm(d)
        self.ref_point_head = MLP(2 * d, d, d, 2)
        # box refinement starts from the reference points: the last box layer begins at zero
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)
        self._coords: dict[tuple[int, int, str], tuple[Tensor, Tensor]] = {}
        self._sine_freqs: dict[str, Tensor] = {}

    def grid_coords(self, height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """``arange(n) / n`` for the rows and the columns of the memory grid (cached)."""
        key = (height, width, str(device))
        if key not in self._coords:
            rows = torch.arange(height, dtype=torch.float32, device=device) / height
            cols = torch.arange(width, dtype=torch.float32, device=device) / width
            self._coords[key] = (rows, cols)
        return self._coords[key]

    def sine_embed(self, boxes: Tensor) -> Tensor:
        """``[Q, B, 4]`` cxcywh -> ``[Q, B, 2 * d_model]``: ``d_model / 2`` channels per
        coordinate in the order (cy, cx, w, h), each ``sin, cos`` interleaved over
        ``2 * pi * v / 10000 ** (2k / (d_model / 2))``."""
        key = str(boxes.device)
        if key not in self._sine_freqs:
            per_coord = self.d_model // 2
            k = torch.arange(0, per_coord, 2, dtype=torch.float32, device=boxes.device)
            self._sine_freqs[key] = _SINE_TEMPERATURE ** (k / per_coord)
        freqs = self._sine_freqs[key]
        scaled = boxes[..., [1, 0, 2, 3]] * _SINE_SCALE
        angles = scaled[..., None] / freqs  # [Q, B, 4, per_coord / 2]
        return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(2)

    def box_bias(self, boxes: Tensor, feat_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """The boxRPB "log" bias of ``boxes`` ``[Q, B, 4]`` on an ``H x W`` grid as its row and
        column terms ``[B, heads, Q, H]`` and ``[B, heads, Q, W]``: the bias of key ``(i, j)``
        is ``row[..., i] + col[..., j]``, from ``embed_y`` / ``embed_x`` of the signed log
        distances of the grid coordinates to the box edges."""
        height, width = feat_size
        rows, cols = self.grid_coords(height, width, boxes.device)
        xyxy = box_cxcywh_to_xyxy(boxes).transpose(0, 1)  # [B, Q, 4]
        dy = self._log_distance(rows[:, None] - xyxy[:, :, None, 1::2])  # [B, Q, H, 2]
        dx = self._log_distance(cols[:, None] - xyxy[:, :, None, 0::2])  # [B, Q, W, 2]
        # contiguous: broadcasting them over the grid runs twice as fast
        by = _mlp(self.boxRPB_embed_y, dy).permute(0, 3, 1, 2).contiguous()
        bx = _mlp(self.boxRPB_embed_x, dx).permute(0, 3, 1, 2).contiguous()
        return by, bx

    @staticmethod
    def _log_distance(delta: Tensor) -> Tensor:
        """``sign(8d) * log2(|8d| + 1) / 3``."""
        scaled = delta * 8
        return torch.sign(scaled) * torch.log2(scaled.abs() + 1.0) / 3.0

    def predict_boxes(self, hs: Tensor, reference_boxes: Tensor) -> Tensor:
        """Refined cxcywh boxes in [0, 1]: ``sigmoid(inverse_sigmoid(ref) + bbox_embed(hs))``
        (any layout, as long as ``hs`` and ``reference_boxes`` agree)."""
        return (inverse_sigmoid(reference_boxes) + self.bbox_embed(hs)).sigmoid()

    def forward(
        self,
        memory: Tensor,
        memory_pos: Tensor,
        prompt: Tensor,
        prompt_mask: Tensor,
        feat_size: tuple[int, int],
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Decode the queries against ``memory`` ``[HW, B, C]`` (``memory_pos`` likewise) and
        ``prompt`` ``[S, B, C]`` (``prompt_mask`` ``[B, S]``, True = padding) on an ``H x W``
        grid ``feat_size``.

        Returns ``hs`` ``[L, Q, B, C]`` (normed output of every layer), ``reference_boxes``
        ``[L, Q, B, 4]`` (the cxcywh boxes each layer's output refines, the first being
        ``sigmoid(reference_points)``), ``presence_logits`` ``[L, 1, B]`` (unclamped) and
        ``presence_feats`` ``[1, B, C]`` (the last layer's presence token, before its norm).
        """
        length, batch, dim = memory.shape
        height, width = int(feat_size[0]), int(feat_size[1])
        if height * width != length:
            raise ValueError(f"feat_size {feat_size} does not match {length} memory tokens")
        num_q = self.num_queries
        x = torch.cat(
            (
                self.presence_token.weight[:, None].expand(1, batch, dim),
                self.query_embed.weight[:, None].expand(num_q, batch, dim),
            )
        )
        ref = self.reference_points.weight.sigmoid()[:, None].expand(num_q, batch, 4)
        memory_keyed = memory + memory_pos
        prompt_keep = ~prompt_mask[:, None, None, :]
        pos = x.new_zeros(1 + num_q, batch, dim)
        hs, refs, presence = [], [], []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            pos[1:] = _mlp(self.ref_point_head, self.sine_embed(ref))
            bias = self.box_bias(ref, (height, width))
            x = layer(x, pos, prompt, prompt_keep, memory, memory_keyed, bias, (height, width))
            out = self.norm(x[1:])
            hs.append(out)
            refs.append(ref)
            if i < last:  # the last refinement is the image model's (pred_boxes)
                ref = self.predict_boxes(out, ref)
            token = self.presence_token_out_norm(x[:1])
            presence.append(self.presence_token_head(token).squeeze(-1))
        return torch.stack(hs), torch.stack(refs), torch.stack(presence), x[:1].clone()
