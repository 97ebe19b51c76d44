"""Reduced model sizes that several tests build: a small trunk, and the grounding oracle's
reduced image model (with the oracle job that builds Meta's at the same sizes)."""

from __future__ import annotations

from pathlib import Path

import torch

from sam3.arch import BackboneConfig, ImageModelConfig
from sam3.model.heads_config import HeadsConfig
from sam3.model.sam3_image import Sam3ImageModel
from sam3.model.text_encoder import TextConfig
from sam3.model.vit import ViTConfig
from sam3.model_builder import build_sam3_image_model

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"

# A 4-block trunk at 112 px (an 8x8 grid, two 4x4 windows a side, global blocks 1 and 3).
SMALL_VIT = ViTConfig(
    img_size=112,
    embed_dim=64,
    depth=4,
    num_heads=4,
    window_size=4,
    global_blocks=(1, 3),
    pretrain_img_size=56,
)

# A 2-block trunk at 112 px (global block 1): the smallest the neck and checkpoint tests build.
TWO_BLOCK_VIT = ViTConfig(
    img_size=112,
    embed_dim=64,
    depth=2,
    num_heads=4,
    window_size=4,
    global_blocks=(1,),
    pretrain_img_size=56,
)

# The grounding oracle's reduced image model, in the job's (Meta's) parameter names.
GROUNDING_VISION = dict(
    img_size=112,
    patch_size=14,
    embed_dim=64,
    depth=2,
    num_heads=4,
    mlp_ratio=4.625,
    window_size=4,
    global_att_blocks=[1],
    pretrain_img_size=56,
)
GROUNDING_TEXT = dict(width=64, heads=4, layers=2)
GROUNDING_HEADS = dict(
    d_model=64,
    num_heads=4,
    dim_feedforward=128,
    geometry_layers=2,
    encoder_layers=2,
    decoder_layers=2,
    num_queries=12,
    scoring_hidden=96,
)
# Text only; text with a positive and a negative box (cx, cy, w, h in [0, 1]); boxes only.
GROUNDING_CASES = [
    {"image": 0, "text": "a cat"},
    {
        "image": 0,
        "text": "the cat's left ear",
        "boxes": [[0.45, 0.5, 0.4, 0.5], [0.2, 0.3, 0.1, 0.2]],
        "labels": [1, 0],
    },
    {"image": 1, "text": None, "boxes": [[0.5, 0.4, 0.3, 0.6]], "labels": [1]},
]


def grounding_job() -> dict:
    """The ``grounding`` oracle job at the reduced sizes, on two sample photos."""
    return {
        "kind": "grounding",
        "size": "reduced",
        "seed": 0,
        "vision": GROUNDING_VISION,
        "text": GROUNDING_TEXT,
        "heads": GROUNDING_HEADS,
        "images": [str(SAMPLES / "chelsea.jpg"), str(SAMPLES / "rocket.jpg")],
        "cases": GROUNDING_CASES,
    }


def grounding_config() -> ImageModelConfig:
    """Our image model's configuration at :func:`grounding_job`'s sizes."""
    v = GROUNDING_VISION
    vit = ViTConfig(
        img_size=v["img_size"],
        patch_size=v["patch_size"],
        embed_dim=v["embed_dim"],
        depth=v["depth"],
        num_heads=v["num_heads"],
        mlp_ratio=v["mlp_ratio"],
        window_size=v["window_size"],
        global_blocks=tuple(v["global_att_blocks"]),
        pretrain_img_size=v["pretrain_img_size"],
    )
    text = TextConfig(**GROUNDING_TEXT)
    backbone = BackboneConfig(vit=vit, text=text, d_model=GROUNDING_HEADS["d_model"])
    return ImageModelConfig(backbone=backbone, heads=HeadsConfig(**GROUNDING_HEADS))


def uninitialised_sam3(interactive: bool = True) -> Sam3ImageModel:
    """SAM3's image model at its real sizes (with the SAM heads if ``interactive``) with its
    weights left uninitialised, for seeding (no time spent on a random initialisation that is
    overwritten); the RoPE tables, which seeding leaves alone, are set."""
    model = build_sam3_image_model(device="meta", enable_inst_interactivity=interactive)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for block in model.backbone.vision_backbone.trunk.blocks:
            block.attn.freqs_cis.copy_(block.attn.expected_freqs_cis())
    return model
