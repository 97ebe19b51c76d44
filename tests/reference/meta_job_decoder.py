"""Oracle job ``decoder``: Meta's ``TransformerDecoder`` as SAM3's image model runs it in eval.

Parameters: ``d_model, num_heads, dim_feedforward, layers, num_queries, height, width, batch,
prompt_len, prompt_pad`` (padded tokens at the end of each batch entry's prompt), ``seed``,
``input_seed`` and optionally ``fan_in_init`` (default False: see :func:`rescale_to_fan_in`).

The decoder is built as ``model_builder._create_transformer_decoder`` builds it, with the job's
sizes (``resolution = 14 * height``, ``stride = 14``), then ``eval()``, ``seeded_state`` (and
``rescale_to_fan_in`` if asked). Inputs:
``memory`` / ``memory_pos`` ``[H*W, B, C]`` and ``prompt`` ``[S, B, C]`` from ``seeded_input``
with seeds ``input_seed``, ``+1``, ``+2``; ``prompt_mask`` ``[B, S]`` (True = padding).

Returns the inputs, ``hs`` ``[L, Q, B, C]``, ``reference_boxes`` ``[L, Q, B, 4]``,
``presence_logits``, ``presence_feats`` (as the decoder returns them), ``pred_boxes`` and
``pred_boxes_xyxy`` ``[L, B, Q, 4]`` (as ``Sam3Image._update_scores_and_boxes`` computes them)
and ``shapes`` (the decoder's state-dict key -> shape).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from meta_oracle import fail, require
from seeded_init import WEIGHT_STD, seeded_input, seeded_state

PARAMS = (
    "d_model",
    "num_heads",
    "dim_feedforward",
    "layers",
    "num_queries",
    "height",
    "width",
    "batch",
    "prompt_len",
    "prompt_pad",
    "seed",
    "input_seed",
)
STRIDE = 14


def rescale_to_fan_in(module: torch.nn.Module) -> None:
    """Rescale every 2-D tensor of ``module``'s state (linear and attention weights, embedding
    tables) from ``seeded_state``'s std 0.02 to std ``1 / sqrt(shape[-1])``, in place.

    Pure torch, keyed by shape only, so two models with the same keys and shapes stay equal.
    With std 0.02 the box bias, the box refinement and the attention patterns hardly move the
    outputs (a wrong box bias changes them by less than the oracle tolerance); at unit fan-in
    they are O(1).
    """
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point() and tensor.dim() == 2:
                tensor.mul_(1.0 / (WEIGHT_STD * tensor.shape[-1] ** 0.5))


def build_meta_decoder(job: dict[str, Any]) -> torch.nn.Module:
    """Meta's decoder with ``_create_transformer_decoder``'s flags and the job's sizes."""
    from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer
    from sam3.model.model_misc import MultiheadAttentionWrapper

    d_model, heads = int(job["d_model"]), int(job["num_heads"])
    layer = TransformerDecoderLayer(
        activation="relu",
        d_model=d_model,
        dim_feedforward=int(job["dim_feedforward"]),
        dropout=0.1,
        cross_attention=MultiheadAttentionWrapper(num_heads=heads, dropout=0.1, embed_dim=d_model),
        n_heads=heads,
        use_text_cross_attention=True,
    )
    return TransformerDecoder(
        layer=layer,
        num_layers=int(job["layers"]),
        num_queries=int(job["num_queries"]),
        return_intermediate=True,
        box_refine=True,
        num_o2m_queries=0,
        dac=True,
        boxRPB="log",
        d_model=d_model,
        frozen=False,
        interaction_layer=None,
        dac_use_selfatt_ln=True,
        resolution=STRIDE * int(job["height"]),
        stride=STRIDE,
        use_act_checkpoint=True,
        presence_token=True,
    )


def run(meta: SimpleNamespace, job: dict[str, Any]) -> dict[str, Any]:
    """Seed Meta's decoder, run it as ``Sam3Image._run_decoder`` does and dump its outputs."""
    from sam3.model.box_ops import box_cxcywh_to_xyxy
    from sam3.model.model_misc import inverse_sigmoid

    require(job, PARAMS)
    batch, length = int(job["batch"]), int(job["prompt_len"])
    pad = [int(p) for p in job["prompt_pad"]]
    if len(pad) != batch or any(not 0 <= p < length for p in pad):
        fail(f"prompt_pad {pad} needs one entry per batch element, each in [0, prompt_len)")
    seed, input_seed = int(job["seed"]), int(job["input_seed"])
    height, width, d_model = int(job["height"]), int(job["width"]), int(job["d_model"])

    torch.manual_seed(seed)
    decoder = build_meta_decoder(job).eval()
    seeded_state(decoder, seed)
    if job.get("fan_in_init", False):
        rescale_to_fan_in(decoder)

    tokens = height * width
    memory = seeded_input([tokens, batch, d_model], input_seed)
    memory_pos = seeded_input([tokens, batch, d_model], input_seed + 1)
    prompt = seeded_input([length, batch, d_model], input_seed + 2)
    prompt_mask = torch.arange(length)[None, :] >= torch.tensor([length - p for p in pad])[:, None]

    tgt = decoder.query_embed.weight.unsqueeze(1).repeat(1, batch, 1)
    with torch.no_grad():
        hs, reference_boxes, presence_logits, presence_feats = decoder(
            tgt=tgt,
            memory=memory,
            memory_key_padding_mask=None,
            pos=memory_pos,
            reference_boxes=None,
            level_start_index=torch.zeros(1, dtype=torch.long),
            spatial_shapes=torch.tensor([[height, width]], dtype=torch.long),
            valid_ratios=torch.ones(batch, 1, 2),
            tgt_mask=None,
            memory_text=prompt,
            text_attention_mask=prompt_mask,
            apply_dac=False,
        )
        # Sam3Image._run_decoder / _update_scores_and_boxes, batch-first
        boxes = (
            inverse_sigmoid(reference_boxes.transpose(1, 2))
            + decoder.bbox_embed(hs.transpose(1, 2))
        ).sigmoid()
    return {
        "memory": memory,
        "memory_pos": memory_pos,
        "prompt": prompt,
        "prompt_mask": prompt_mask,
        "hs": hs,
        "reference_boxes": reference_boxes,
        "presence_logits": presence_logits,
        "presence_feats": presence_feats,
        "pred_boxes": boxes,
        "pred_boxes_xyxy": box_cxcywh_to_xyxy(boxes),
        "shapes": {k: [int(s) for s in v.shape] for k, v in decoder.state_dict().items()},
    }
