"""Public builders for SAM3 models (our implementation, ``sam3.pt``-compatible): the image
model here, the VL backbone alone in :mod:`sam3.backbone_builder` (re-exported)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from .arch import (
    BackboneConfig,
    ImageModelConfig,
    has_heads,
    has_interactive_heads,
    infer_image_config,
)
from .backbone_builder import build_efficientsam3_backbone, build_sam3_backbone, build_vl_backbone
from .checkpoint import CheckpointError, LoadReport, load_sam3_checkpoint, read_checkpoint
from .merged import check_no_foreign_keys, merged_backbone, merged_students
from .model.sam3_image import Sam3ImageModel
from .schema import DETECTOR_PREFIX, SAM3_PREPROCESSING, TRACKER, is_merged

log = logging.getLogger(__name__)

ROUTES = {TRACKER: TRACKER}  # the interactive heads load from sam3.pt's own ``tracker.*`` keys
__all__ = [
    "BackboneConfig",
    "ImageModelConfig",
    "build_efficientsam3_backbone",
    "build_efficientsam3_image_model",
    "build_sam3_backbone",
    "build_sam3_image_model",
    "build_vl_backbone",
    "load_image_model",
]


def _no_heads_error(path: Path | str) -> CheckpointError:
    return CheckpointError(
        f"{path} holds SAM3's backbone but not its detector heads (no geometry_encoder / "
        "transformer / segmentation_head keys under 'detector.') — use a full sam3.pt, or merge "
        "the students again into the full sam3.pt (the Stage-1 converters keep the heads)"
    )


def _check_interactive(state: dict[str, Tensor], source: Path | str, wanted: bool) -> None:
    if wanted and not has_interactive_heads(state):
        raise CheckpointError(
            f"{source} has no interactive heads (tracker.sam_prompt_encoder / "
            "tracker.sam_mask_decoder and detector.backbone.vision_backbone.sam2_convs keys) — "
            "use a full sam3.pt or a file merged into one, or build without "
            "enable_inst_interactivity (text prompts only)"
        )


def _load_image_model(
    model: Sam3ImageModel, state: dict[str, Tensor], source: str, device: torch.device
) -> LoadReport:
    """Materialise ``model`` on ``device`` and load every built tensor: the interactive heads
    from ``tracker.*``, the rest from ``detector.*``."""
    model.to_empty(device=device)
    return load_sam3_checkpoint(model, state, DETECTOR_PREFIX, source=source, routes=ROUTES)


def build_sam3_image_model(
    checkpoint_path: str | Path | None = None,
    device: torch.device | str = "cpu",
    cfg: ImageModelConfig | None = None,
    eval_mode: bool = True,
    enable_inst_interactivity: bool = False,
) -> Sam3ImageModel:
    """Build SAM3's image model (backbone + detector heads) and, given a checkpoint, load it.

    Args:
        checkpoint_path: a ``sam3.pt``-layout file. Every built tensor must be in it (under
            ``detector.``, the interactive heads under ``tracker.``); what is not built (e.g.
            the tracker's video-only parts) is reported by prefix in ``model.load_report``.
            ``None`` keeps a random initialisation.
        device: where the weights live.
        cfg: architecture; by default read from the checkpoint's tensors (SAM3's when there
            is no checkpoint).
        eval_mode: return the model in ``eval()`` mode.
        enable_inst_interactivity: also build the second neck (``sam2_convs``) and the SAM
            heads for point, box and mask prompts (``model.tracker``).
    """
    device = torch.device(device)
    interactive = enable_inst_interactivity
    if checkpoint_path is None:
        with torch.device(device) if device.type != "cpu" else contextlib.nullcontext():
            model = _new_image_model(cfg or ImageModelConfig(), interactive)
        model.load_report = None
        return model.eval() if eval_mode else model
    state, _ = read_checkpoint(checkpoint_path)
    return _sam3_image_model(state, str(checkpoint_path), device, cfg, eval_mode, interactive)


def _new_image_model(cfg: ImageModelConfig, interactive: bool = False) -> Sam3ImageModel:
    """SAM3's image model at ``cfg`` with SAM3's preprocessing at the trunk's input size."""
    vit = cfg.backbone.vit
    preprocessing = {**SAM3_PREPROCESSING, "img_size": vit.img_size}
    return Sam3ImageModel(
        build_vl_backbone(cfg.backbone, enable_sam2_neck=interactive),
        cfg.heads,
        preprocessing,
        sam_heads=cfg.sam_heads if interactive else None,
        interactive_size=(vit.grid_size, vit.img_size),
    )


def _sam3_image_model(
    state: dict[str, Tensor],
    source: str,
    device: torch.device,
    cfg: ImageModelConfig | None,
    eval_mode: bool,
    interactive: bool = False,
) -> Sam3ImageModel:
    if not any(k.startswith(DETECTOR_PREFIX) for k in state):
        raise CheckpointError(
            f"{source} is not a SAM3 checkpoint (no 'detector.*' keys) — pass sam3.pt or a "
            "merged EfficientSAM3 checkpoint"
        )
    if not has_heads(state):
        raise _no_heads_error(source)
    _check_interactive(state, source, interactive)
    cfg = cfg or infer_image_config(state)
    with torch.device("meta"):  # no time spent on an initialisation that is overwritten
        model = _new_image_model(cfg, interactive)
    model.load_report = _load_image_model(model, state, source, device)
    return model.eval() if eval_mode else model


def build_efficientsam3_image_model(
    checkpoint_path: str | Path,
    device: torch.device | str = "cpu",
    image_student: str | None = None,
    text_student: str | None = None,
    eval_mode: bool = True,
    enable_inst_interactivity: bool = False,
) -> Sam3ImageModel:
    """Build the image model of a merged checkpoint: its students (named in ``meta``) in SAM3's
    place, SAM3's neck and heads from the same file; ``model.preprocessing`` is the one the
    file records. ``image_student`` / ``text_student`` override the names in ``meta``.
    ``enable_inst_interactivity``: also the second neck and the SAM heads, both fed by the
    vision student (as SAM3's trunk feeds them).

    Raises:
        CheckpointError: no student named, a SAM3 part without the heads, a missing or
            mismatched key, or leftover teacher keys under a student's part.
    """
    path = Path(checkpoint_path)
    state, meta = read_checkpoint(path)
    return _merged_image_model(
        state,
        meta,
        path,
        torch.device(device),
        image_student,
        text_student,
        eval_mode,
        enable_inst_interactivity,
    )


def _merged_image_model(
    state: dict[str, Tensor],
    meta: dict,
    path: Path,
    device: torch.device,
    image_student: str | None,
    text_student: str | None,
    eval_mode: bool,
    interactive: bool = False,
) -> Sam3ImageModel:
    image, text = merged_students(meta, path, image_student, text_student)
    if not has_heads(state):
        raise _no_heads_error(path)
    _check_interactive(state, path, interactive)
    cfg = infer_image_config(state, vision=image is None, text=text is None)
    backbone = merged_backbone(image, text, cfg.backbone, enable_sam2_neck=interactive)
    vit = cfg.backbone.vit
    size = (vit.grid_size, vit.img_size)
    if image is not None:
        size = (image.get("embed_size", size[0]), image.get("img_size", size[1]))
    with torch.device("meta"):
        heads = Sam3ImageModel(
            _Placeholder(),
            cfg.heads,
            meta.get("preprocessing"),
            sam_heads=cfg.sam_heads if interactive else None,
            interactive_size=size,
        )
    heads.backbone = backbone
    report = _load_image_model(heads, state, str(path), device)
    check_no_foreign_keys(state, heads, DETECTOR_PREFIX, image, text, path)
    heads.load_report = report
    heads.meta = meta
    return heads.eval() if eval_mode else heads


class _Placeholder(nn.Module):
    """Stands for the backbone while the heads are built on the meta device."""


def load_image_model(
    checkpoint_path: str | Path,
    device: torch.device | str = "cpu",
    eval_mode: bool = True,
    enable_inst_interactivity: bool = False,
) -> Sam3ImageModel:
    """Open ``sam3.pt`` (or a reduced file of its layout) or a merged EfficientSAM3 checkpoint
    and return its image model, loaded strictly (with the interactive heads if asked); the file
    is read once."""
    path = Path(checkpoint_path)
    state, meta = read_checkpoint(path)
    device, interactive = torch.device(device), enable_inst_interactivity
    if is_merged(meta) or meta.get("students"):
        return _merged_image_model(state, meta, path, device, None, None, eval_mode, interactive)
    return _sam3_image_model(state, str(path), device, None, eval_mode, interactive)
