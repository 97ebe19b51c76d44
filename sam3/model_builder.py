"""Public builders for SAM3 models (our implementation, ``sam3.pt``-compatible)."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .backbones import UnknownStudentError, build_student, resolve_student, student_kind
from .checkpoint import (
    MAX_LISTED,
    CheckpointError,
    LoadReport,
    load_sam3_checkpoint,
    read_checkpoint,
)
from .model.neck import DualViTDetNeck
from .model.text_encoder import TextConfig, VETextEncoder
from .model.vit import ViT, ViTConfig
from .model.vl_backbone import SAM3VLBackbone

log = logging.getLogger(__name__)

BACKBONE_PREFIX = "detector.backbone."  # where the VL backbone lives in sam3.pt
VISION_TRUNK_PREFIX = BACKBONE_PREFIX + "vision_backbone.trunk."  # the teacher trunk's keys
VISION_STUDENT_PREFIX = VISION_TRUNK_PREFIX + "model."  # a merged vision student's keys
TEXT_PREFIX = BACKBONE_PREFIX + "language_backbone."  # the text encoder's (teacher or student)
MERGED_FORMAT = "efficientsam3-merged"  # meta["format"] of a merged checkpoint


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


class StudentTrunk(nn.Module):
    """A vision student in the teacher trunk's place: ``[B, 3, S, S]`` -> ``[map]``.

    Holds the student as ``model`` (so its keys sit under ``trunk.model.``) and exposes the
    trunk's interface that the neck relies on: ``channel_list`` and a list of one map.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.channel_list = [model.embed_dim]

    def forward(self, images: Tensor) -> list[Tensor]:
        """Images -> ``[student map [B, embed_dim, embed_size, embed_size]]``."""
        return [self.model(images)]


def _student_entry(meta: dict, kind: str, override: str | None, path: Path) -> dict | None:
    """The merged checkpoint's record of its ``kind`` student, with the name overridden."""
    entry = dict((meta.get("students") or {}).get(kind) or {})
    if override:
        entry["name"] = override
    if not entry:
        return None
    if "name" not in entry:
        raise CheckpointError(f"{path}: meta['students'][{kind!r}] names no student")
    try:
        name = resolve_student(entry["name"])
    except UnknownStudentError as err:
        raise CheckpointError(f"{path}: {err}") from err
    want = "vision" if kind == "image" else "text"
    if student_kind(name) != want:
        raise CheckpointError(
            f"{path}: {entry['name']!r} is a {student_kind(name)} student, not a {want} one"
        )
    entry["name"] = name
    return entry


def _foreign_keys(state: dict[str, Tensor], model: nn.Module, roots: list[str]) -> list[str]:
    """Keys under ``roots`` that the built model does not have (e.g. leftover teacher keys)."""
    own = {BACKBONE_PREFIX + k for k in model.state_dict()}
    return [k for k in state if k not in own and any(k.startswith(r) for r in roots)]


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
    image = _student_entry(meta, "image", image_student, path) if enable_vision else None
    text = _student_entry(meta, "text", text_student, path) if enable_text else None
    if image is None and text is None:
        raise CheckpointError(
            f"{path} names no student for the parts built (its meta has "
            f"{sorted(meta.get('students') or {})}). Use build_sam3_backbone for a plain SAM3 "
            "checkpoint, or pass image_student=/text_student= for a merged file without meta"
        )
    visual = None
    if enable_vision:
        if image is not None:
            trunk: nn.Module = StudentTrunk(
                build_student(
                    image["name"],
                    embed_dim=image.get("embed_dim", cfg.vit.embed_dim),
                    embed_size=image.get("embed_size", cfg.vit.grid_size),
                    img_size=image.get("img_size", cfg.vit.img_size),
                )
            )
        else:
            with torch.device("meta"):
                trunk = ViT(cfg.vit)
            trunk.to_empty(device="cpu")
        visual = DualViTDetNeck(trunk, cfg.d_model, add_sam2_neck=enable_sam2_neck)
    language = None
    if enable_text:
        if text is not None:
            language = build_student(
                text["name"],
                context_length=text.get("context_length", cfg.text.context_length),
                d_model=text.get("d_model", cfg.d_model),
                mask_padding=text.get("mask_padding", True),
            )
        else:
            with torch.device("meta"):
                language = VETextEncoder(cfg.text, cfg.d_model)
            language.to_empty(device="cpu")
    model = SAM3VLBackbone(visual, language, scalp=cfg.scalp).to(device)
    report = load_sam3_checkpoint(model, state, BACKBONE_PREFIX, source=str(path))
    roots = [p for p, on in ((VISION_TRUNK_PREFIX, image), (TEXT_PREFIX, text)) if on]
    foreign = _foreign_keys(state, model, roots)
    if foreign:
        raise CheckpointError(
            f"{path}: {len(foreign)} keys under the student parts that the students do not have, "
            f"first: {foreign[:MAX_LISTED]}. Leftover teacher keys? Merge again with the Stage-1 "
            "converters: they remove the whole teacher part a student replaces"
        )
    model.load_report = report
    model.meta = meta
    return model.eval() if eval_mode else model
