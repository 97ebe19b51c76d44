"""Public builders for SAM3 models (our implementation, ``sam3.pt``-compatible)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from .arch import BackboneConfig, ImageModelConfig, has_heads, infer_image_config
from .checkpoint import CheckpointError, LoadReport, load_sam3_checkpoint, read_checkpoint
from .merged import (
    BACKBONE_PREFIX,
    MERGED_FORMAT,
    TEXT_PREFIX,
    VISION_STUDENT_PREFIX,
    VISION_TRUNK_PREFIX,
    StudentTrunk,
    check_no_foreign_keys,
    merged_backbone,
    student_entry,
)
from .model.neck import DualViTDetNeck
from .model.sam3_image import SAM3_PREPROCESSING, Sam3ImageModel
from .model.text_encoder import VETextEncoder
from .model.vit import ViT
from .model.vl_backbone import SAM3VLBackbone

log = logging.getLogger(__name__)

DETECTOR_PREFIX = "detector."  # the image model's keys in sam3.pt
__all__ = [
    "BACKBONE_PREFIX",
    "MERGED_FORMAT",
    "TEXT_PREFIX",
    "VISION_STUDENT_PREFIX",
    "VISION_TRUNK_PREFIX",
    "BackboneConfig",
    "ImageModelConfig",
    "StudentTrunk",
    "build_efficientsam3_backbone",
    "build_efficientsam3_image_model",
    "build_sam3_backbone",
    "build_sam3_image_model",
    "build_vl_backbone",
    "load_image_model",
]


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
    image, text = _students(meta, path, image_student, text_student, enable_vision, enable_text)
    model = merged_backbone(image, text, cfg, enable_vision, enable_text, enable_sam2_neck)
    model = model.to(device)
    report = load_sam3_checkpoint(model, state, BACKBONE_PREFIX, source=str(path))
    roots = [p for p, on in ((VISION_TRUNK_PREFIX, image), (TEXT_PREFIX, text)) if on]
    check_no_foreign_keys(state, model, BACKBONE_PREFIX, roots, path)
    model.load_report = report
    model.meta = meta
    return model.eval() if eval_mode else model


def _students(
    meta: dict,
    path: Path,
    image_student: str | None,
    text_student: str | None,
    enable_vision: bool = True,
    enable_text: bool = True,
) -> tuple[dict | None, dict | None]:
    """The merged file's student records (``None`` where SAM3's part stays); at least one."""
    image = student_entry(meta, "image", image_student, path) if enable_vision else None
    text = student_entry(meta, "text", text_student, path) if enable_text else None
    if image is None and text is None:
        raise CheckpointError(
            f"{path} names no student for the parts built (its meta has "
            f"{sorted(meta.get('students') or {})}) — use the SAM3 builders for a plain SAM3 "
            "checkpoint, or pass image_student=/text_student= for a merged file without meta"
        )
    return image, text


def _no_heads_error(path: Path | str) -> CheckpointError:
    return CheckpointError(
        f"{path} holds SAM3's backbone but not its detector heads (no geometry_encoder / "
        "transformer / segmentation_head keys under 'detector.') — use a full sam3.pt, or merge "
        "the students again into the full sam3.pt (the Stage-1 converters keep the heads)"
    )


def _load_image_model(
    model: Sam3ImageModel, state: dict[str, Tensor], source: str, device: torch.device
) -> LoadReport:
    """Materialise ``model`` on ``device`` and load every built tensor from ``detector.*``."""
    model.to_empty(device=device)
    return load_sam3_checkpoint(model, state, DETECTOR_PREFIX, source=source)


def build_sam3_image_model(
    checkpoint_path: str | Path | None = None,
    device: torch.device | str = "cpu",
    cfg: ImageModelConfig | None = None,
    eval_mode: bool = True,
) -> Sam3ImageModel:
    """Build SAM3's image model (backbone + detector heads) and, given a checkpoint, load it.

    Args:
        checkpoint_path: a ``sam3.pt``-layout file. Every built tensor must be in it under
            ``detector.``; what is not built (``sam2_convs``, ``tracker.*``) is reported by
            prefix in ``model.load_report``. ``None`` keeps a random initialisation.
        device: where the weights live.
        cfg: architecture; by default read from the checkpoint's tensors (SAM3's when there
            is no checkpoint).
        eval_mode: return the model in ``eval()`` mode.
    """
    device = torch.device(device)
    if checkpoint_path is None:
        with torch.device(device) if device.type != "cpu" else contextlib.nullcontext():
            model = _new_image_model(cfg or ImageModelConfig())
        model.load_report = None
        return model.eval() if eval_mode else model
    state, _ = read_checkpoint(checkpoint_path)
    return _sam3_image_model(state, str(checkpoint_path), device, cfg, eval_mode)


def _new_image_model(cfg: ImageModelConfig) -> Sam3ImageModel:
    """SAM3's image model at ``cfg`` with SAM3's preprocessing at the trunk's input size."""
    preprocessing = {**SAM3_PREPROCESSING, "img_size": cfg.backbone.vit.img_size}
    return Sam3ImageModel(build_vl_backbone(cfg.backbone), cfg.heads, preprocessing)


def _sam3_image_model(
    state: dict[str, Tensor],
    source: str,
    device: torch.device,
    cfg: ImageModelConfig | None,
    eval_mode: bool,
) -> Sam3ImageModel:
    if not any(k.startswith(DETECTOR_PREFIX) for k in state):
        raise CheckpointError(
            f"{source} is not a SAM3 checkpoint (no 'detector.*' keys) — pass sam3.pt or a "
            "merged EfficientSAM3 checkpoint"
        )
    if not has_heads(state):
        raise _no_heads_error(source)
    cfg = cfg or infer_image_config(state)
    with torch.device("meta"):  # no time spent on an initialisation that is overwritten
        model = _new_image_model(cfg)
    model.load_report = _load_image_model(model, state, source, device)
    return model.eval() if eval_mode else model


def build_efficientsam3_image_model(
    checkpoint_path: str | Path,
    device: torch.device | str = "cpu",
    image_student: str | None = None,
    text_student: str | None = None,
    eval_mode: bool = True,
) -> Sam3ImageModel:
    """Build the image model of a merged checkpoint: its students (named in ``meta``) in SAM3's
    place, SAM3's neck and heads from the same file; ``model.preprocessing`` is the one the
    file records. ``image_student`` / ``text_student`` override the names in ``meta``.

    Raises:
        CheckpointError: no student named, a SAM3 part without the heads, a missing or
            mismatched key, or leftover teacher keys under a student's part.
    """
    path = Path(checkpoint_path)
    state, meta = read_checkpoint(path)
    return _merged_image_model(
        state, meta, path, torch.device(device), image_student, text_student, eval_mode
    )


def _merged_image_model(
    state: dict[str, Tensor],
    meta: dict,
    path: Path,
    device: torch.device,
    image_student: str | None,
    text_student: str | None,
    eval_mode: bool,
) -> Sam3ImageModel:
    image, text = _students(meta, path, image_student, text_student)
    if not has_heads(state):
        raise _no_heads_error(path)
    cfg = infer_image_config(state, vision=image is None, text=text is None)
    backbone = merged_backbone(image, text, cfg.backbone)
    with torch.device("meta"):
        heads = Sam3ImageModel(_Placeholder(), cfg.heads, meta.get("preprocessing"))
    heads.backbone = backbone
    report = _load_image_model(heads, state, str(path), device)
    roots = [p for p, on in ((VISION_TRUNK_PREFIX, image), (TEXT_PREFIX, text)) if on]
    check_no_foreign_keys(state, heads, DETECTOR_PREFIX, roots, path)
    heads.load_report = report
    heads.meta = meta
    return heads.eval() if eval_mode else heads


class _Placeholder(nn.Module):
    """Stands for the backbone while the heads are built on the meta device."""


def load_image_model(
    checkpoint_path: str | Path, device: torch.device | str = "cpu", eval_mode: bool = True
) -> Sam3ImageModel:
    """Open ``sam3.pt`` (or a reduced file of its layout) or a merged EfficientSAM3 checkpoint
    and return its image model, loaded strictly; the file is read once."""
    path = Path(checkpoint_path)
    state, meta = read_checkpoint(path)
    device = torch.device(device)
    if meta.get("format") == MERGED_FORMAT or meta.get("students"):
        return _merged_image_model(state, meta, path, device, None, None, eval_mode)
    return _sam3_image_model(state, str(path), device, None, eval_mode)
