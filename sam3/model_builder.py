"""Public builders for SAM3 models (our implementation, ``sam3.pt``-compatible)."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import LoadReport, load_sam3_checkpoint
from .model.neck import DualViTDetNeck
from .model.text_encoder import TextConfig, VETextEncoder
from .model.vit import ViT, ViTConfig
from .model.vl_backbone import SAM3VLBackbone

log = logging.getLogger(__name__)

BACKBONE_PREFIX = "detector.backbone."  # where the VL backbone lives in sam3.pt


@dataclass(frozen=True)
class BackboneConfig:
    """Architecture of the VL backbone; the defaults are SAM3's."""

    vit: ViTConfig = field(default_factory=ViTConfig)  # vision trunk
    text: TextConfig = field(default_factory=TextConfig)  # text encoder
    d_model: int = 256  # neck / detector width
    scalp: int = 1  # coarsest pyramid levels dropped from the outputs


def build_vl_backbone(
    cfg: BackboneConfig | None = None,
    enable_vision: bool = True,
    enable_text: bool = True,
    enable_sam2_neck: bool = False,
) -> SAM3VLBackbone:
    """Construct (randomly initialised) the parts of the VL backbone that are enabled."""
    cfg = cfg or BackboneConfig()
    visual = None
    if enable_vision:
        visual = DualViTDetNeck(ViT(cfg.vit), cfg.d_model, add_sam2_neck=enable_sam2_neck)
    elif enable_sam2_neck:
        raise ValueError("enable_sam2_neck needs enable_vision")
    text = VETextEncoder(cfg.text, cfg.d_model) if enable_text else None
    return SAM3VLBackbone(visual, text, scalp=cfg.scalp)


def build_sam3_backbone(
    checkpoint_path: str | Path | None = None,
    device: torch.device | str = "cpu",
    enable_vision: bool = True,
    enable_text: bool = True,
    enable_sam2_neck: bool = False,
    cfg: BackboneConfig | None = None,
    eval_mode: bool = True,
) -> SAM3VLBackbone:
    """Build SAM3's VL backbone and, given a checkpoint, load it strictly.

    Args:
        checkpoint_path: a SAM3 checkpoint (``sam3.pt`` layout); its ``detector.backbone.*``
            keys must cover every built module. ``None`` keeps the random initialisation.
        device: where the weights live.
        enable_vision: build the ViT trunk and the neck.
        enable_text: build the text encoder and tokenizer.
        enable_sam2_neck: also build the neck's ``sam2_convs`` copy.
        cfg: architecture (SAM3's by default; reduced ones for tests and smoke runs).
        eval_mode: return the module in ``eval()`` mode.

    Returns:
        The backbone; ``backbone.load_report`` holds the :class:`LoadReport` (or ``None``).
    """
    device = torch.device(device)
    build = lambda: build_vl_backbone(cfg, enable_vision, enable_text, enable_sam2_neck)  # noqa: E731
    report: LoadReport | None = None
    if checkpoint_path is None:
        with torch.device(device) if device.type != "cpu" else contextlib.nullcontext():
            model = build()
    else:
        with torch.device("meta"):  # no time spent on an initialisation that is overwritten
            model = build()
        model.to_empty(device=device)
        report = load_sam3_checkpoint(model, checkpoint_path, BACKBONE_PREFIX)
    model.load_report = report
    return model.eval() if eval_mode else model
