"""The pre-norm transformer encoder layer shared by SAM3's geometry and fusion encoders.

The attentions use ``nn.MultiheadAttention``'s parameters (``sam3.pt``'s keys) but not its
forward: the projections run through :func:`~sam3.model.packed_linear.inference_linear`
(oneDNN for fp32 CPU inference) and :func:`attention` picks the cheapest of three equivalent
formulations for the sequence lengths at hand (see there).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .packed_linear import inference_linear


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """``[L, B, C]`` -> ``[B, heads, L, C / heads]`` (a view)."""
    return x.unflatten(-1, (heads, -1)).permute(1, 2, 0, 3)


def _padded(padding_mask: Tensor | None) -> Tensor | None:
    """``padding_mask`` if some key is padding, else None (no mask to apply)."""
    if padding_mask is None or not bool(padding_mask.any()):
        return None
    return padding_mask


def attention(
    mha: nn.MultiheadAttention,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    padding_mask: Tensor | None = None,
) -> Tensor:
    """``mha(query, key, value, key_padding_mask=padding_mask)[0]`` of an eval-mode,
    sequence-first ``nn.MultiheadAttention`` (with biases, no bias_kv, no zero_attn).

    ``query [L, B, C]``, ``key``/``value [M, B, C]``, ``padding_mask [B, M]`` (True = pad).
    Three formulations, the same function of the inputs, chosen by their multiply count:

    * projected heads through ``F.scaled_dot_product_attention`` (self-attention);
    * few queries, many keys (the geometry encoder's prompt attending to the image): the key
      and value projections move to the query side (:func:`_attend_few_queries`), so the
      image tokens are never projected;
    * many queries, few keys (the image attending to the prompt): the query and output
      projections move to the key side (:func:`_attend_few_keys`), two GEMMs over the queries.
    """
    lq, m, dim, heads = query.shape[0], key.shape[0], mha.embed_dim, mha.num_heads
    mask = _padded(padding_mask)
    # multiply counts / (2 * dim): heads form L*C + M*C + L*M, few queries 2*L*C + heads*L*M,
    # few keys 2*M*C + heads*L*M (C = dim)
    if lq and m and lq * dim + (heads - 1) * lq * m < m * dim:
        return _attend_few_queries(mha, query, key, value, mask)
    if lq and m and m * dim + (heads - 1) * lq * m < lq * dim:
        return _attend_few_keys(mha, query, key, value, mask)
    keep = None if mask is None else ~mask[:, None, None, :]
    return project_attend(mha, query, key, value, keep)


def project_attend(
    mha: nn.MultiheadAttention,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
) -> Tensor:
    """Project with ``mha``'s weights, attend head by head in one SDPA call, project back.

    Sequence-first inputs; the same tensor given twice (``query is key``, ``key is value``)
    is projected once. ``attn_mask``: keep-True bool or additive float, broadcastable to
    ``[B, heads, L, M]``."""
    dim, heads = mha.embed_dim, mha.num_heads
    w, b = mha.in_proj_weight, mha.in_proj_bias
    if query is key and key is value:
        q, k, v = inference_linear(query, w, b).chunk(3, dim=-1)
    elif query is key:
        q, k = inference_linear(query, w[: 2 * dim], b[: 2 * dim]).chunk(2, dim=-1)
        v = inference_linear(value, w[2 * dim :], b[2 * dim :])
    elif key is value:
        q = inference_linear(query, w[:dim], b[:dim])
        k, v = inference_linear(key, w[dim:], b[dim:]).chunk(2, dim=-1)
    else:
        q = inference_linear(query, w[:dim], b[:dim])
        k = inference_linear(key, w[dim : 2 * dim], b[dim : 2 * dim])
        v = inference_linear(value, w[2 * dim :], b[2 * dim :])
    length, batch = query.shape[:2]
    out = F.scaled_dot_product_attention(
        _split_heads(q, heads),
        _split_heads(k, heads),
        _split_heads(v, heads),
        attn_mask=attn_mask,
    )
    out = out.permute(2, 0, 1, 3).reshape(length, batch, dim)
    return inference_linear(out, mha.out_proj.weight, mha.out_proj.bias)


def _attend_few_queries(
    mha: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None
) -> Tensor:
    """Attention with the key and value projections applied on the query side.

    Per head ``q . (W_k m + b_k) = (W_k^T q) . m + q . b_k``, the last term constant over the
    keys (softmax drops it); and since softmax rows sum to one, the value projection applies
    after the weighted sum of the raw values: ``W_v (sum_j p_j m_j) + b_v``.
    """
    dim, heads = mha.embed_dim, mha.num_heads
    head_dim = dim // heads
    w, b = mha.in_proj_weight, mha.in_proj_bias
    length, batch = query.shape[:2]
    q = inference_linear(query, w[:dim], b[:dim]) * head_dim**-0.5
    w_k = w[dim : 2 * dim].view(heads, head_dim, dim)
    q_keys = torch.einsum("lbhd,hdc->bhlc", q.view(length, batch, heads, head_dim), w_k)
    mixed = []  # per batch entry: [heads * L, C], the attention-weighted raw values
    for i in range(batch):
        logits = inference_linear(q_keys[i].reshape(heads * length, dim), key[:, i])
        if mask is not None:
            logits = logits.masked_fill(mask[i], float("-inf"))
        mixed.append(logits.softmax(-1) @ value[:, i])
    mixed = torch.stack(mixed).view(batch, heads, length, dim)
    w_v = w[2 * dim :].view(heads, head_dim, dim)
    out = torch.einsum("bhlc,hdc->lbhd", mixed, w_v) + b[2 * dim :].view(heads, head_dim)
    return inference_linear(out.reshape(length, batch, dim), mha.out_proj.weight, mha.out_proj.bias)


def _attend_few_keys(
    mha: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None
) -> Tensor:
    """Attention with the query and output projections applied on the key side.

    Per head ``(W_q x + b_q) . k = x . (W_q^T k) + b_q . k``: the logits of every head are one
    linear of the raw queries against ``heads * M`` folded keys (padded keys get a -inf bias);
    the output projection of head ``h`` folds into its values, ``W_o[:, h] v``, so the output
    is a second linear of the probabilities against ``heads * M`` folded values.
    """
    dim, heads = mha.embed_dim, mha.num_heads
    head_dim = dim // heads
    w, b = mha.in_proj_weight, mha.in_proj_bias
    length, batch = query.shape[:2]
    m = key.shape[0]
    if key is value:
        k, v = inference_linear(key, w[dim:], b[dim:]).chunk(2, dim=-1)
    else:
        k = inference_linear(key, w[dim : 2 * dim], b[dim : 2 * dim])
        v = inference_linear(value, w[2 * dim :], b[2 * dim :])
    k = _split_heads(k, heads) * head_dim**-0.5  # [B, heads, M, d]
    w_q = w[:dim].view(heads, head_dim, dim)
    keys = torch.matmul(k, w_q).reshape(batch, heads * m, dim)
    key_bias = torch.matmul(k, b[:dim].view(heads, head_dim, 1)).reshape(batch, heads, m)
    if mask is not None:
        key_bias = key_bias.masked_fill(mask[:, None], float("-inf"))
    key_bias = key_bias.reshape(batch, heads * m)
    w_o = mha.out_proj.weight.view(dim, heads, head_dim).transpose(0, 1)  # [heads, C, d]
    # [B, C, heads * M]: the weight layout of the second linear
    values = torch.matmul(w_o, _split_heads(v, heads).transpose(-1, -2))
    values = values.permute(0, 2, 1, 3).reshape(batch, dim, heads * m)
    outs = []
    for i in range(batch):
        logits = inference_linear(query[:, i], keys[i], key_bias[i]).view(length, heads, m)
        probs = logits.softmax(-1).view(length, heads * m)
        outs.append(inference_linear(probs, values[i], mha.out_proj.bias))
    return outs[0][:, None] if batch == 1 else torch.stack(outs, dim=1)


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
        True where a token is padding. ``x`` itself is not modified.
        """
        h = self.norm1(x)
        qk = h if pos is None else h + pos
        # each branch returns a fresh tensor: the residual is added into it in place
        x = attention(self.self_attn, qk, qk, h, padding_mask).add_(x)
        h = self.norm2(x)
        keys = memory if memory_keys is None else memory_keys
        x = attention(self.cross_attn_image, h, keys, memory, memory_padding_mask).add_(x)
        h = inference_linear(self.norm3(x), self.linear1.weight, self.linear1.bias, relu=True)
        return inference_linear(h, self.linear2.weight, self.linear2.bias).add_(x)
