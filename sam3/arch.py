"""Architectures of SAM3's image model, and reading one back from a checkpoint's tensors.

A SAM3 checkpoint carries no configuration, so :func:`infer_image_config` reads the sizes from
the tensor shapes (``sam3.pt`` gives SAM3's defaults; a reduced smoke-run file gives its own).
Two numbers have no tensor of their own and follow the rules SAM3 itself obeys: the text
encoder's heads are ``width // 64`` and the detector heads' attention heads ``d_model // 32``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor

from .checkpoint import CheckpointError
from .model.heads_config import HeadsConfig, SamHeadsConfig
from .model.text_encoder import TextConfig
from .model.vit import ViTConfig
from .schema import TRACKER

TRUNK = "backbone.vision_backbone.trunk."  # the teacher trunk's keys (under ``detector.``)
NECK = "backbone.vision_backbone."  # the neck's keys
TEXT = "backbone.language_backbone."  # the text encoder's keys
HEAD_ROOTS = (  # where each detector head lives (under ``detector.``)
    "geometry_encoder.",
    "transformer.",
    "dot_prod_scoring.",
    "segmentation_head.",
)
SAM_HEAD_ROOTS = (TRACKER + "sam_prompt_encoder.", TRACKER + "sam_mask_decoder.")
SAM2_NECK = "detector." + NECK + "sam2_convs."  # the second neck the interactive heads read
TEXT_HEAD_WIDTH = 64  # width per text attention head (SAM3: 1024 / 16)
HEADS_HEAD_WIDTH = 32  # width per detector attention head (SAM3: 256 / 8)


@dataclass(frozen=True)
class BackboneConfig:
    """Architecture of the VL backbone; the defaults are SAM3's."""

    vit: ViTConfig = field(default_factory=ViTConfig)  # vision trunk
    text: TextConfig = field(default_factory=TextConfig)  # text encoder
    d_model: int = 256  # neck / detector width
    scalp: int = 1  # coarsest pyramid levels dropped from the outputs


@dataclass(frozen=True)
class ImageModelConfig:
    """Architecture of the whole image model; the defaults are SAM3's (``sam3.pt``)."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)  # trunk, neck, text
    heads: HeadsConfig = field(default_factory=HeadsConfig)  # everything after the backbone
    sam_heads: SamHeadsConfig = field(default_factory=SamHeadsConfig)  # interactive heads


def _count(state: Mapping[str, Tensor], prefix: str) -> int:
    """Number of numbered children ``prefix{i}.`` in ``state``."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in state if (m := pattern.match(k))})


def _need(state: Mapping[str, Tensor], key: str, what: str) -> Tensor:
    if key not in state:
        raise CheckpointError(f"cannot read the {what} sizes: no tensor {key!r} in the file")
    return state[key]


def infer_vit_config(state: Mapping[str, Tensor], prefix: str = "detector." + TRUNK) -> ViTConfig:
    """The trunk's sizes from its tensors (its RoPE tables give the grid and window)."""
    embed, _, patch, _ = _need(state, prefix + "patch_embed.proj.weight", "trunk").shape
    depth = _count(state, prefix + "blocks.")
    tables = [_need(state, f"{prefix}blocks.{i}.attn.freqs_cis", "trunk") for i in range(depth)]
    grid = math.isqrt(max(t.shape[0] for t in tables))
    global_blocks = tuple(i for i, t in enumerate(tables) if t.shape[0] == grid * grid)
    window = math.isqrt(min(t.shape[0] for t in tables))
    pretrain = math.isqrt(_need(state, prefix + "pos_embed", "trunk").shape[1] - 1)
    hidden = _need(state, prefix + "blocks.0.mlp.fc1.weight", "trunk").shape[0]
    return ViTConfig(
        img_size=grid * patch,
        patch_size=patch,
        embed_dim=embed,
        depth=depth,
        num_heads=embed // (2 * tables[0].shape[1]),
        mlp_ratio=hidden / embed,
        window_size=window,
        global_blocks=global_blocks,
        pretrain_img_size=pretrain * patch,
    )


def infer_text_config(state: Mapping[str, Tensor], prefix: str = "detector." + TEXT) -> TextConfig:
    """SAM3's text encoder sizes from its tensors."""
    vocab, width = _need(state, prefix + "encoder.token_embedding.weight", "text").shape
    fc = _need(state, prefix + "encoder.transformer.resblocks.0.mlp.c_fc.weight", "text")
    return TextConfig(
        width=width,
        heads=max(1, width // TEXT_HEAD_WIDTH),
        layers=_count(state, prefix + "encoder.transformer.resblocks."),
        context_length=_need(state, prefix + "encoder.positional_embedding", "text").shape[0],
        vocab_size=vocab,
        mlp_ratio=fc.shape[0] / width,
        output_dim=_need(state, prefix + "encoder.text_projection", "text").shape[1],
    )


def has_heads(state: Mapping[str, Tensor], prefix: str = "detector.") -> bool:
    """Whether ``state`` holds SAM3's detector heads (not only a backbone)."""
    return all(any(k.startswith(prefix + root) for k in state) for root in HEAD_ROOTS)


def infer_heads_config(state: Mapping[str, Tensor], prefix: str = "detector.") -> HeadsConfig:
    """The detector heads' sizes from their tensors."""
    queries, d = _need(state, prefix + "transformer.decoder.query_embed.weight", "heads").shape
    ff = _need(state, prefix + "transformer.encoder.layers.0.linear1.weight", "heads").shape[0]
    scoring = _need(state, prefix + "dot_prod_scoring.prompt_mlp.layers.0.weight", "heads")
    roi = _need(state, prefix + "geometry_encoder.boxes_pool_project.weight", "heads")
    return HeadsConfig(
        d_model=d,
        num_heads=max(1, d // HEADS_HEAD_WIDTH),
        dim_feedforward=ff,
        geometry_layers=_count(state, prefix + "geometry_encoder.encode."),
        encoder_layers=_count(state, prefix + "transformer.encoder.layers."),
        decoder_layers=_count(state, prefix + "transformer.decoder.layers."),
        num_queries=queries,
        scoring_hidden=scoring.shape[0],
        roi_size=roi.shape[-1],
        pixel_decoder_stages=_count(state, prefix + "segmentation_head.pixel_decoder.conv_layers."),
    )


def has_interactive_heads(state: Mapping[str, Tensor]) -> bool:
    """Whether ``state`` holds the interactive path: the SAM heads and the second neck."""
    roots = (*SAM_HEAD_ROOTS, SAM2_NECK)
    return all(any(k.startswith(root) for k in state) for root in roots)


def infer_sam_heads_config(state: Mapping[str, Tensor], prefix: str = TRACKER) -> SamHeadsConfig:
    """The interactive SAM heads' sizes from their tensors (heads: ``width // 32``)."""
    dec, enc = prefix + "sam_mask_decoder.", prefix + "sam_prompt_encoder."
    tokens, width = _need(state, dec + "mask_tokens.weight", "interactive heads").shape
    mlp = _need(state, dec + "transformer.layers.0.mlp.lin1.weight", "interactive heads")
    chans = _need(state, enc + "mask_downscaling.3.weight", "interactive heads")
    iou = _need(state, dec + "iou_prediction_head.layers.0.weight", "interactive heads")
    return SamHeadsConfig(
        embed_dim=width,
        num_heads=max(1, width // HEADS_HEAD_WIDTH),
        depth=_count(state, dec + "transformer.layers."),
        mlp_dim=mlp.shape[0],
        mask_in_chans=chans.shape[0],
        iou_head_hidden=iou.shape[0],
        num_multimask=tokens - 1,
    )


def infer_image_config(
    state: Mapping[str, Tensor], vision: bool = True, text: bool = True, prefix: str = "detector."
) -> ImageModelConfig:
    """The whole image model's architecture from a ``sam3.pt``-layout state dict.

    ``vision`` / ``text`` False skip a part that a student replaces (its sizes then stay SAM3's
    defaults and are not used).
    """
    d_model = _need(state, prefix + "transformer.decoder.query_embed.weight", "heads").shape[1]
    backbone = BackboneConfig(
        vit=infer_vit_config(state, prefix + TRUNK) if vision else ViTConfig(),
        text=infer_text_config(state, prefix + TEXT) if text else TextConfig(),
        d_model=d_model,
    )
    sam_heads = infer_sam_heads_config(state) if has_interactive_heads(state) else SamHeadsConfig()
    return ImageModelConfig(
        backbone=backbone, heads=infer_heads_config(state, prefix), sam_heads=sam_heads
    )
