"""Builders of SAM3's VL backbone alone: SAM3's own and a merged file's (students in place)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from .arch import BackboneConfig
from .checkpoint import LoadReport, load_sam3_checkpoint, read_checkpoint
from .merged import check_no_foreign_keys, merged_backbone, merged_students
from .model.neck import DualViTDetNeck
from .model.text_encoder import VETextEncoder
from .model.vit import ViT
from .model.vl_backbone import SAM3VLBackbone
from .schema import BACKBONE_PREFIX


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


def build_efficientsam3_backbone(
    checkpoint_path: str | Path,
    device: torch.device | str = "cpu",
    image_student: str | None = None,
    text_student: str | None = None,
    enable_vision: bool = True,
    enable_text: bool = True,
    enable_sam2_neck: bool = False,
    cfg: BackboneConfig | None = None,
    eval_mode: bool = True,
) -> SAM3VLBackbone:
    """Build the VL backbone of a merged checkpoint (students in SAM3's place) and load it.

    The students and their geometry come from the checkpoint's ``meta`` (written by the Stage-1
    converters); ``image_student`` / ``text_student`` override the names (e.g. for files merged
    elsewhere). A side without a student is SAM3's own (architecture ``cfg``). The result keeps
    Meta's calling convention (``forward_image``, ``forward_text``): the neck and everything
    downstream run unchanged on the student's features.

    Args:
        checkpoint_path: a merged checkpoint (``.pth`` with ``{"model", "meta"}`` or
            ``.safetensors`` with ``meta`` in its metadata).
        device: where the weights live.
        image_student, text_student: student names overriding ``meta``.
        enable_vision, enable_text, enable_sam2_neck: which parts to build, as in
            :func:`build_sam3_backbone`.
        cfg: architecture of the parts that stay SAM3's (default: SAM3's).
        eval_mode: return the module in ``eval()`` mode.

    Returns:
        The backbone, with ``.load_report`` and ``.meta``.

    Raises:
        CheckpointError: no student named, a missing or mismatched key, or a foreign key under a
            built part (e.g. teacher trunk keys left beside the student's).
    """
    path, device, cfg = Path(checkpoint_path), torch.device(device), cfg or BackboneConfig()
    state, meta = read_checkpoint(path)
    image, text = merged_students(
        meta, path, image_student, text_student, enable_vision, enable_text
    )
    model = merged_backbone(image, text, cfg, enable_vision, enable_text, enable_sam2_neck)
    model = model.to(device)
    report = load_sam3_checkpoint(model, state, BACKBONE_PREFIX, source=str(path))
    check_no_foreign_keys(state, model, BACKBONE_PREFIX, image, text, path)
    model.load_report = report
    model.meta = meta
    return model.eval() if eval_mode else model
