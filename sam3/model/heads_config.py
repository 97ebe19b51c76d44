"""Architecture of SAM3's detector heads (geometry encoder to segmentation head)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HeadsConfig:
    """Sizes of everything after the backbone; the defaults are SAM3's (``sam3.pt``)."""

    d_model: int = 256  # width of every head; equals the neck's and the text resizer's output
    num_heads: int = 8  # attention heads in every head's attention
    dim_feedforward: int = 2048  # hidden width of the transformer FFNs
    geometry_layers: int = 3  # geometry (box/point prompt) encoder layers
    encoder_layers: int = 6  # fusion encoder layers (image tokens attend to the prompt)
    decoder_layers: int = 6  # decoder layers
    num_queries: int = 200  # object queries of the decoder
    scoring_hidden: int = 2048  # hidden width of the dot-product scorer's prompt MLP
    roi_size: int = 7  # roi_align output size for box prompts (and boxes_pool_project kernel)
    pixel_decoder_stages: int = 3  # conv/norm pairs built in the pixel decoder (2 are used)


@dataclass(frozen=True)
class SamHeadsConfig:
    """Sizes of the interactive path's SAM heads (``tracker.sam_*``); the defaults are SAM3's.

    The image-embedding grid and input size are not here: they follow the trunk's.
    """

    embed_dim: int = 256  # prompt-encoder / mask-decoder width; equals the neck's d_model
    num_heads: int = 8  # attention heads of the two-way transformer
    depth: int = 2  # two-way attention blocks
    mlp_dim: int = 2048  # hidden width of each block's token MLP
    mask_in_chans: int = 16  # channels of the mask-input downscaling (its first conv: 1/4)
    iou_head_hidden: int = 256  # hidden width of the IoU head
    num_multimask: int = 3  # masks output for ambiguous prompts (plus the single-mask token)
    stability_delta: float = 0.05  # logit offset of the single-mask stability score
    stability_thresh: float = 0.98  # stability above which the single-mask token is kept
