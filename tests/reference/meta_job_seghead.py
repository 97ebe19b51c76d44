"""Oracle job ``seghead``: Meta's segmentation head and dot-product scoring, as SAM3 runs them.

Parameters: ``d_model, num_heads, scoring_hidden, grid, num_queries, layers, batch,
prompt_lengths, seed, input_seed``; optional ``shared_image`` (default false: ``batch`` images;
true: one image whose features every prompt shares, Meta's batch-1 broadcasting path).
``prompt_lengths`` holds the number of valid prompt tokens of each batch entry (the prompt is
padded to the longest).

The modules are built as ``model_builder._create_segmentation_head`` and
``_create_dot_product_scoring`` do, with the job's sizes, held as ``segmentation_head`` and
``dot_prod_scoring`` of one container (so the seeded keys equal the image model's), in eval.
Returns the inputs (``fpn.{0,1,2}``, ``hs [L, B, Q, C]``, ``encoder_hidden_states [HW, B, C]``,
``prompt [S, B, C]``, ``prompt_mask [B, S]``), ``pred_logits [L, B, Q, 1]``, ``pred_masks``,
``semantic_seg`` and ``shapes`` (state-dict key -> shape).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from seeded_init import seeded_input, seeded_state

PARAMS = (
    "d_model",
    "num_heads",
    "scoring_hidden",
    "grid",
    "num_queries",
    "layers",
    "batch",
    "prompt_lengths",
    "seed",
    "input_seed",
)


def build(d: int, heads: int, hidden: int) -> nn.Module:
    """The container with Meta's ``segmentation_head`` and ``dot_prod_scoring`` (builder flags)."""
    from sam3.model.maskformer_segmentation import PixelDecoder, UniversalSegmentationHead
    from sam3.model.model_misc import MLP, DotProductScoring
    from sam3.model.model_misc import MultiheadAttentionWrapper as MultiheadAttention

    pixel_decoder = PixelDecoder(
        num_upsampling_stages=3, interpolation_mode="nearest", hidden_dim=d, compile_mode=None
    )
    cross_attend_prompt = MultiheadAttention(num_heads=heads, dropout=0, embed_dim=d)
    container = nn.Module()
    container.segmentation_head = UniversalSegmentationHead(
        hidden_dim=d,
        upsampling_stages=3,
        aux_masks=False,
        presence_head=False,
        dot_product_scorer=None,
        act_ckpt=True,
        cross_attend_prompt=cross_attend_prompt,
        pixel_decoder=pixel_decoder,
    )
    prompt_mlp = MLP(
        input_dim=d,
        hidden_dim=hidden,
        output_dim=d,
        num_layers=2,
        dropout=0.1,
        residual=True,
        out_norm=nn.LayerNorm(d),
    )
    container.dot_prod_scoring = DotProductScoring(d_model=d, d_proj=d, prompt_mlp=prompt_mlp)
    return container


def run(meta: SimpleNamespace, job: dict[str, Any]) -> dict[str, Any]:
    """Seed Meta's heads, run them on seeded inputs as ``Sam3Image`` calls them, dump all."""
    missing = [name for name in PARAMS if name not in job]
    if missing:
        raise SystemExit(f"meta_oracle: error: seghead job is missing parameters {missing}")
    d, batch, grid = int(job["d_model"]), int(job["batch"]), int(job["grid"])
    lengths = [int(n) for n in job["prompt_lengths"]]
    if len(lengths) != batch or min(lengths) < 1:
        raise SystemExit("meta_oracle: error: prompt_lengths needs one length >= 1 per batch entry")
    seed, input_seed = int(job["seed"]), int(job["input_seed"])
    torch.manual_seed(seed)
    model = build(d, int(job["num_heads"]), int(job["scoring_hidden"]))
    model.eval()
    seeded_state(model, seed)

    images = 1 if job.get("shared_image", False) else batch
    fpn = [
        seeded_input([images, d, grid * s, grid * s], input_seed + i)
        for i, s in enumerate((4, 2, 1))
    ]
    hs = seeded_input([int(job["layers"]), batch, int(job["num_queries"]), d], input_seed + 3)
    enc = seeded_input([grid * grid, batch, d], input_seed + 4)
    seq = max(lengths)
    prompt = seeded_input([seq, batch, d], input_seed + 5)
    prompt_mask = torch.arange(seq)[None, :] >= torch.tensor(lengths)[:, None]  # True = pad

    with torch.no_grad():
        logits = model.dot_prod_scoring(hs, prompt, prompt_mask)
        seg = model.segmentation_head(
            backbone_feats=fpn,
            obj_queries=hs,
            image_ids=torch.arange(batch),
            encoder_hidden_states=enc,
            prompt=prompt,
            prompt_mask=prompt_mask,
        )
    result: dict[str, Any] = {f"fpn.{i}": f for i, f in enumerate(fpn)}
    result.update(
        hs=hs,
        encoder_hidden_states=enc,
        prompt=prompt,
        prompt_mask=prompt_mask,
        pred_logits=logits,
        pred_masks=seg["pred_masks"],
        semantic_seg=seg["semantic_seg"],
        shapes={k: [int(s) for s in v.shape] for k, v in model.state_dict().items()},
    )
    return result
