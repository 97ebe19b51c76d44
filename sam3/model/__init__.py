"""SAM3's image-model components, re-implemented with checkpoint-compatible names."""

from .neck import DualViTDetNeck
from .position_encoding import PositionEmbeddingSine
from .text_encoder import TextConfig, VETextEncoder
from .tokenizer import Sam3Tokenizer
from .vit import ViT, ViTConfig
from .vl_backbone import SAM3VLBackbone

__all__ = [
    "DualViTDetNeck",
    "PositionEmbeddingSine",
    "SAM3VLBackbone",
    "Sam3Tokenizer",
    "TextConfig",
    "VETextEncoder",
    "ViT",
    "ViTConfig",
]
