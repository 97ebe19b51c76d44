"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

Each block (post-norm): token self-attention (the first block without position encoding and
without a residual), tokens -> image cross-attention, a token MLP, image -> tokens
cross-attention. A final tokens -> image attention and norm follow the blocks. The
cross-attentions project to half the width (``downsample_rate=2``). The token position
encoding is the original prompt tokens in every block; the image's is the dense random-Fourier
encoding. No RoPE, no dropout. Names follow ``tracker.sam_mask_decoder.transformer.*``.

A prompt has a handful of tokens and the image thousands, so the cross-attentions fold the
projections of the image side into the token side where that needs fewer multiplies
(:meth:`Attention.forward` picks): the image tokens are then never projected, and each
cross-attention costs two GEMMs of the image tokens against ``heads x tokens`` rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .packed_linear import inference_linear

SMALL_LINEAR = 1 << 22  # multiplies below which F.linear beats oneDNN's per-call overhead


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, relu: bool = False) -> Tensor:
    """``F.linear`` (then ReLU) for small products, which run several times faster that way
    than through oneDNN's per-call setup; :func:`inference_linear` for the rest."""
    if x.numel() // max(x.shape[-1], 1) * weight.numel() < SMALL_LINEAR:
        y = F.linear(x, weight, bias)
        return y.relu_() if relu else y
    return inference_linear(x, weight, bias, relu)


class Attention(nn.Module):
    """Multi-head attention with separate ``q/k/v_proj`` to ``dim // downsample_rate`` and an
    ``out_proj`` back to ``dim`` (all with bias)."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1):
        super().__init__()
        inner = dim // downsample_rate
        if inner % num_heads:
            raise ValueError(f"{num_heads} heads do not divide the attention width {inner}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Batch-first ``q [B, L, dim]``, ``k``/``v [B, M, dim]`` -> ``[B, L, dim]``.

        Three formulations of the same function, chosen by their multiply count: projected
        heads through SDPA (:meth:`project_attend`), few queries against many keys
        (:meth:`attend_few_queries`) and many queries against few keys
        (:meth:`attend_few_keys`)."""
        lq, m, dim = q.shape[1], k.shape[1], q.shape[-1]
        inner, heads = self.q_proj.out_features, self.num_heads
        # multiplies / 2 (I: the projected width, D: dim, H: heads): plain projects all and
        # attends, (L + M) D I + L M I; a fold keeps the projections of one side, 2 L D I or
        # 2 M D I, and runs two GEMMs of L against H M rows (or M against H L), H L M D
        plain = (lq + m) * dim * inner + lq * m * inner
        few_queries = 2 * lq * dim * inner + heads * lq * m * dim
        few_keys = 2 * m * dim * inner + heads * lq * m * dim
        if lq and m and few_queries < min(plain, few_keys):
            return self.attend_few_queries(q, k, v)
        if lq and m and few_keys < plain:
            return self.attend_few_keys(q, k, v)
        return self.project_attend(q, k, v)

    def _heads(self, x: Tensor, proj: nn.Linear) -> Tensor:
        """``[B, L, dim]`` -> projected ``[B, heads, L, head_dim]``."""
        y = linear(x, proj.weight, proj.bias)
        return y.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def project_attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Project all three, attend head by head in one SDPA call, project back."""
        out = F.scaled_dot_product_attention(
            self._heads(q, self.q_proj), self._heads(k, self.k_proj), self._heads(v, self.v_proj)
        )
        out = out.transpose(1, 2).flatten(2)
        return linear(out, self.out_proj.weight, self.out_proj.bias)

    def attend_few_queries(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention with the key and value projections moved to the query side.

        Per head ``q . (W_k m + b_k) = (W_k^T q) . m + q . b_k``, the last term constant over
        the keys (softmax drops it); softmax rows sum to one, so the value projection applies
        after the weighted sum of the raw values: ``W_v (sum_j p_j m_j) + b_v``.
        """
        heads, (b, length, dim) = self.num_heads, q.shape
        w_k, w_v = self.k_proj.weight, self.v_proj.weight
        head_dim = w_k.shape[0] // heads
        qh = linear(q, self.q_proj.weight, self.q_proj.bias) * head_dim**-0.5
        # [B, heads * L, dim]: the queries as rows against the raw keys
        q_keys = torch.matmul(
            qh.view(b, length, heads, head_dim).transpose(1, 2), _rows(w_k, heads)
        )
        mixed = []
        for i in range(b):
            logits = linear(q_keys[i].reshape(heads * length, dim), k[i].contiguous())
            mixed.append(logits.softmax(-1) @ v[i])
        mixed = torch.stack(mixed).view(b, heads, length, dim)
        # per head W_v,h (mixed_h) + b_v,h -> [B, L, heads * head_dim]
        out = torch.matmul(mixed, _rows(w_v, heads).transpose(1, 2)).transpose(1, 2)
        out = out.reshape(b, length, heads * head_dim) + self.v_proj.bias
        return linear(out, self.out_proj.weight, self.out_proj.bias)

    def attend_few_keys(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention with the query and output projections moved to the key side.

        Per head ``(W_q x + b_q) . k = x . (W_q^T k) + b_q . k``: the logits of every head are
        one linear of the raw queries against ``heads * M`` folded keys; the output projection
        of head ``h`` folds into its values, ``W_o[:, h] v``, so the output is a second linear
        of the probabilities against ``heads * M`` folded values.
        """
        heads, (b, length, dim), m = self.num_heads, q.shape, k.shape[1]
        head_dim = self.q_proj.out_features // heads
        kh = self._heads(k, self.k_proj) * head_dim**-0.5  # [B, heads, M, d]
        vh = self._heads(v, self.v_proj)
        keys = torch.matmul(kh, _rows(self.q_proj.weight, heads)).reshape(b, heads * m, dim)
        key_bias = torch.matmul(kh, self.q_proj.bias.view(heads, head_dim, 1))  # [B, H, M, 1]
        w_o = self.out_proj.weight.view(dim, heads, head_dim).transpose(0, 1)  # [heads, dim, d]
        # [B, dim, heads * M]: the weight layout of the second linear
        values = torch.matmul(w_o, vh.transpose(-1, -2)).permute(0, 2, 1, 3)
        values = values.reshape(b, dim, heads * m)
        outs = []
        for i in range(b):
            # the logits transposed, [heads, M, L]: the softmax runs along contiguous rows
            logits = linear(keys[i], q[i].contiguous()).view(heads, m, length)
            probs = logits.add_(key_bias[i]).softmax(1).view(heads * m, length)
            outs.append(linear(probs.t(), values[i], self.out_proj.bias))
        return outs[0][None] if b == 1 else torch.stack(outs)


def _rows(weight: Tensor, heads: int) -> Tensor:
    """A projection ``[heads * d, dim]`` as ``[heads, d, dim]`` (a view)."""
    return weight.view(heads, -1, weight.shape[-1])


class MLPBlock(nn.Module):
    """``lin2(ReLU(lin1(x)))``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., dim]`` -> ``[..., dim]``."""
        h = linear(x, self.lin1.weight, self.lin1.bias, relu=True)
        return linear(h, self.lin2.weight, self.lin2.bias)


class TwoWayAttentionBlock(nn.Module):
    """One block; ``skip_first_layer_pe`` for the first (self-attention without PE/residual)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool):
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads, downsample_rate=2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads, downsample_rate=2)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Tokens ``[B, T, C]`` and image tokens ``[B, HW, C]`` -> both, updated."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        keys_pe = keys + key_pe
        queries = self.norm2(
            queries + self.cross_attn_token_to_image(queries + query_pe, keys_pe, keys)
        )
        queries = self.norm3(queries + self.mlp(queries))
        q = queries + query_pe
        keys = self.norm4(self.cross_attn_image_to_token(keys_pe, q, queries).add_(keys))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """``depth`` blocks, then a final token -> image attention and ``norm_final_attn``."""

    def __init__(self, depth: int, dim: int, num_heads: int, mlp_dim: int):
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(dim, num_heads, mlp_dim, skip_first_layer_pe=i == 0)
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(dim, num_heads, downsample_rate=2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: Tensor, image_pe: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """``image``/``image_pe [B, C, H, W]`` (``image_pe`` may have batch 1), ``tokens
        [B, T, C]`` -> ``(tokens [B, T, C], image tokens [B, HW, C])``.

        The image tokens are made contiguous once (a no-op for an ``image`` that is a view of
        ``[B, HW, C]`` memory, as the mask decoder passes it)."""
        keys = image.flatten(2).transpose(1, 2).contiguous()
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous().expand_as(keys)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        attn = self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys
