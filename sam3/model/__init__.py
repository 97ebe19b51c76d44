"""SAM3's image-model components, re-implemented with checkpoint-compatible names."""

from .decoder import TransformerDecoder
from .fusion_encoder import FusionEncoder
from .geometry_encoder import GeometryEncoder
from .heads_config import HeadsConfig
from .neck import DualViTDetNeck
from .position_encoding import PositionEmbeddingSine
from .prompt import GeometricPrompt
from .sam3_image import Sam3ImageModel
from .scoring import DotProductScoring
from .segmentation_head import SegmentationHead
from .text_encoder import TextConfig, VETextEncoder
from .tokenizer import Sam3Tokenizer
from .vit import ViT, ViTConfig
from .vl_backbone import SAM3VLBackbone

__all__ = [
    "DotProductScoring",
    "DualViTDetNeck",
    "FusionEncoder",
    "GeometricPrompt",
    "GeometryEncoder",
    "HeadsConfig",
    "PositionEmbeddingSine",
    "SAM3VLBackbone",
    "Sam3ImageModel",
    "Sam3Tokenizer",
    "SegmentationHead",
    "TextConfig",
    "TransformerDecoder",
    "VETextEncoder",
    "ViT",
    "ViTConfig",
]
