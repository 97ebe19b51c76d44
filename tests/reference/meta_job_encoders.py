"""Oracle job ``encoders``: Meta's geometry (prompt) encoder and fusion encoder on seeded inputs.

Job parameters: ``d_model, num_heads, dim_feedforward, geometry_layers, encoder_layers,
roi_size, grid ([H, W]), seed`` and ``cases``, a list of dicts with ``name``, ``batch``,
``box_labels`` / ``point_labels`` (nested lists ``[n][batch]``, 1 = positive), ``box_valid`` /
``point_valid`` (valid entries per batch element, right-padded; default: all), ``text_len`` and
``text_valid`` (the text-like prompt tokens put before the geometry tokens) and ``input_seed``.

Both modules are built as ``model_builder._create_geometry_encoder`` and
``_create_transformer_encoder`` build them, with the job's sizes (checked against the real
builders at SAM3's sizes). Returns ``geometry_shapes`` / ``fusion_shapes`` (the job-size
modules' state-dict key -> shape), ``sam3_geometry_shapes`` / ``sam3_fusion_shapes`` (those of
the real builders) and, per case ``<name>.``: the inputs ``feats``, ``pos``, ``boxes``,
``box_labels``, ``box_mask``, ``points``, ``point_labels``, ``point_mask``, ``text``,
``text_mask``, the geometry outputs ``geo``, ``geo_mask``, the fusion inputs ``prompt``,
``prompt_mask`` (text then geometry, as ``Sam3Image._encode_prompt`` concatenates them) and the
fusion outputs ``memory``, ``pos_embed``.
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
    "dim_feedforward",
    "geometry_layers",
    "encoder_layers",
    "roi_size",
    "grid",
    "seed",
    "cases",
)
SAM3_SIZES = dict(
    d_model=256, num_heads=8, dim_feedforward=2048, geometry_layers=3, encoder_layers=6, roi_size=7
)
LAYER_FLAGS = (
    "pre_norm",
    "pos_enc_at_attn",
    "pos_enc_at_cross_attn_keys",
    "pos_enc_at_cross_attn_queries",
    "activation_str",
    "d_model",
    "dim_feedforward",
)


def _layer(sizes: dict[str, Any], geometry: bool) -> nn.Module:
    """A ``TransformerEncoderLayer`` with the flags of SAM3's geometry or fusion encoder."""
    from sam3.model.encoder import TransformerEncoderLayer
    from sam3.model.model_misc import MultiheadAttentionWrapper

    d, heads = int(sizes["d_model"]), int(sizes["num_heads"])
    return TransformerEncoderLayer(
        activation="relu",
        d_model=d,
        dim_feedforward=int(sizes["dim_feedforward"]),
        dropout=0.1,
        pos_enc_at_attn=not geometry,
        pos_enc_at_cross_attn_keys=geometry,
        pos_enc_at_cross_attn_queries=False,
        pre_norm=True,
        self_attention=MultiheadAttentionWrapper(
            num_heads=heads, dropout=0.1, embed_dim=d, batch_first=not geometry
        ),
        cross_attention=MultiheadAttentionWrapper(
            num_heads=heads, dropout=0.1, embed_dim=d, batch_first=not geometry
        ),
    )


def build_geometry(sizes: dict[str, Any]) -> nn.Module:
    """Meta's ``SequenceGeometryEncoder`` as ``_create_geometry_encoder`` builds it."""
    from sam3.model.geometry_encoders import SequenceGeometryEncoder
    from sam3.model.position_encoding import PositionEmbeddingSine

    d = int(sizes["d_model"])
    return SequenceGeometryEncoder(
        pos_enc=PositionEmbeddingSine(num_pos_feats=d, normalize=True, scale=None),
        encode_boxes_as_points=False,
        points_direct_project=True,
        points_pool=True,
        points_pos_enc=True,
        boxes_direct_project=True,
        boxes_pool=True,
        boxes_pos_enc=True,
        d_model=d,
        num_layers=int(sizes["geometry_layers"]),
        layer=_layer(sizes, geometry=True),
        roi_size=int(sizes["roi_size"]),
        use_act_ckpt=True,
        add_cls=True,
        add_post_encode_proj=True,
    )


def build_fusion(sizes: dict[str, Any]) -> nn.Module:
    """Meta's ``TransformerEncoderFusion`` as ``_create_transformer_encoder`` builds it."""
    from sam3.model.encoder import TransformerEncoderFusion

    return TransformerEncoderFusion(
        layer=_layer(sizes, geometry=False),
        num_layers=int(sizes["encoder_layers"]),
        d_model=int(sizes["d_model"]),
        num_feature_levels=1,
        frozen=False,
        use_act_checkpoint=True,
        add_pooled_text_to_img_feat=False,
        pool_text_with_mask=True,
    )


def _shapes(module: nn.Module) -> dict[str, list[int]]:
    return {k: [int(s) for s in v.shape] for k, v in module.state_dict().items()}


def _describe(module: nn.Module) -> dict[str, Any]:
    """Shapes plus every configuration flag that changes the numerics."""
    out: dict[str, Any] = {"shapes": _shapes(module), "repr": repr(module)}
    for name, sub in module.named_modules():
        if hasattr(sub, "pre_norm"):
            out[name] = [getattr(sub, f) for f in LAYER_FLAGS]
            out[name] += [sub.self_attn.batch_first, sub.cross_attn_image.batch_first]
    for flag in ("encode_boxes_as_points", "roi_size", "add_pooled_text_to_img_feat"):
        if hasattr(module, flag):
            out[flag] = getattr(module, flag)
    if hasattr(module, "pos_enc"):
        enc = module.pos_enc
        out["pos_enc"] = [enc.num_pos_feats, enc.temperature, enc.normalize, enc.scale]
    return out


def check_mirrors_builders(meta: SimpleNamespace) -> tuple[nn.Module, nn.Module]:
    """Fail unless our job-size builders, at SAM3's sizes, equal Meta's real builders."""
    from sam3 import model_builder

    real = (model_builder._create_geometry_encoder(), model_builder._create_transformer_encoder())
    mine = (build_geometry(SAM3_SIZES), build_fusion(SAM3_SIZES))
    for a, b in zip(real, mine):
        if _describe(a) != _describe(b):
            raise RuntimeError(f"{type(a).__name__} built for the job differs from SAM3's builder")
    return real


def _unit(shape: list[int], seed: int) -> torch.Tensor:
    return (seeded_input(shape, seed) + 1) / 2


def _valid_mask(valid: list[int] | None, batch: int, n: int) -> torch.Tensor:
    valid = [n] * batch if valid is None else [int(v) for v in valid]
    return torch.arange(n)[None] >= torch.tensor(valid)[:, None]


def make_inputs(case: dict[str, Any], d: int, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Seeded features, position encoding, boxes (valid cxcywh), points and text tokens."""
    b, s = int(case["batch"]), int(case["input_seed"])
    hw = grid[0] * grid[1]
    box_labels = torch.tensor(case.get("box_labels", []), dtype=torch.long).reshape(-1, b)
    point_labels = torch.tensor(case.get("point_labels", []), dtype=torch.long).reshape(-1, b)
    n, p, t = box_labels.shape[0], point_labels.shape[0], int(case["text_len"])
    u = _unit([n, b, 4], s + 3)
    boxes = torch.cat([0.2 + 0.6 * u[..., :2], 0.05 + 0.35 * u[..., 2:]], dim=-1)
    return {
        "feats": seeded_input([hw, b, d], s + 1),
        "pos": seeded_input([hw, b, d], s + 2),
        "boxes": boxes,
        "box_labels": box_labels,
        "box_mask": _valid_mask(case.get("box_valid"), b, n),
        "points": 0.05 + 0.9 * _unit([p, b, 2], s + 4),
        "point_labels": point_labels,
        "point_mask": _valid_mask(case.get("point_valid"), b, p),
        "text": seeded_input([t, b, d], s + 5),
        "text_mask": _valid_mask(case.get("text_valid"), b, t),
    }


def run(meta: SimpleNamespace, job: dict[str, Any]) -> dict[str, Any]:
    """Build, seed and run both encoders on every case of the job."""
    from sam3.model.geometry_encoders import Prompt

    missing = [k for k in PARAMS if k not in job]
    if missing:
        raise SystemExit(f"meta_oracle: error: encoders job is missing {missing}")
    seed, d = int(job["seed"]), int(job["d_model"])
    grid = (int(job["grid"][0]), int(job["grid"][1]))
    real_geo, real_fusion = check_mirrors_builders(meta)
    torch.manual_seed(seed)
    geo, fusion = build_geometry(job).eval(), build_fusion(job).eval()
    seeded_state(geo, seed)
    seeded_state(fusion, seed)
    result: dict[str, Any] = {
        "geometry_shapes": _shapes(geo),
        "fusion_shapes": _shapes(fusion),
        "sam3_geometry_shapes": _shapes(real_geo),
        "sam3_fusion_shapes": _shapes(real_fusion),
    }
    for case in job["cases"]:
        x = make_inputs(case, d, grid)
        prompt = Prompt(
            box_embeddings=x["boxes"],
            box_mask=x["box_mask"],
            box_labels=x["box_labels"],
            point_embeddings=x["points"],
            point_mask=x["point_mask"],
            point_labels=x["point_labels"],
        )
        with torch.no_grad():
            geo_feats, geo_mask = geo(
                geo_prompt=prompt,
                img_feats=[x["feats"]],
                img_sizes=[grid],
                img_pos_embeds=[x["pos"]],
            )
            tokens = torch.cat([x["text"], geo_feats])
            mask = torch.cat([x["text_mask"], geo_mask], dim=1)
            out = fusion(
                src=[x["feats"].clone()],
                src_key_padding_mask=None,
                src_pos=[x["pos"].clone()],
                prompt=tokens,
                prompt_pos=torch.zeros_like(tokens),
                prompt_key_padding_mask=mask,
                feat_sizes=[grid],
            )
        x.update(
            geo=geo_feats,
            geo_mask=geo_mask,
            prompt=tokens,
            prompt_mask=mask,
            memory=out["memory"].contiguous(),
            pos_embed=out["pos_embed"].contiguous(),
        )
        result.update({f"{case['name']}.{k}": v for k, v in x.items()})
    return result
