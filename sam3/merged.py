"""Merged EfficientSAM3 checkpoints: the students named in ``meta`` in SAM3's place.

A merged file is a SAM3 state dict in which a vision student's keys replace the teacher trunk's
(under ``detector.backbone.vision_backbone.trunk.model.``) and/or a text student's replace the
text encoder's (under ``detector.backbone.language_backbone.``); ``meta`` (written by the
Stage-1 converters) names the students and their geometry.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .arch import BackboneConfig
from .backbones import UnknownStudentError, build_student, resolve_student, student_kind
from .checkpoint import MAX_LISTED, CheckpointError
from .model.neck import DualViTDetNeck
from .model.text_encoder import VETextEncoder
from .model.vit import ViT
from .model.vl_backbone import SAM3VLBackbone

BACKBONE_PREFIX = "detector.backbone."  # where the VL backbone lives in sam3.pt
VISION_TRUNK_PREFIX = BACKBONE_PREFIX + "vision_backbone.trunk."  # the teacher trunk's keys
VISION_STUDENT_PREFIX = VISION_TRUNK_PREFIX + "model."  # a merged vision student's keys
TEXT_PREFIX = BACKBONE_PREFIX + "language_backbone."  # the text encoder's (teacher or student)
MERGED_FORMAT = "efficientsam3-merged"  # meta["format"] of a merged checkpoint


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


def student_entry(meta: dict, kind: str, override: str | None, path: Path) -> dict | None:
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


def merged_backbone(
    image: dict | None,
    text: dict | None,
    cfg: BackboneConfig,
    enable_vision: bool = True,
    enable_text: bool = True,
    enable_sam2_neck: bool = False,
) -> SAM3VLBackbone:
    """The (unloaded) VL backbone with the students of ``image`` / ``text`` (meta records) in
    SAM3's place; a side without a student is SAM3's own at ``cfg``."""
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
    return SAM3VLBackbone(visual, language, scalp=cfg.scalp)


def check_no_foreign_keys(
    state: dict[str, Tensor], model: nn.Module, prefix: str, roots: list[str], path: Path
) -> None:
    """Refuse keys under a student's ``roots`` that the built model lacks (leftover teacher
    keys beside the student's would otherwise be silently ignored)."""
    own = {prefix + k for k in model.state_dict()}
    foreign = [k for k in state if k not in own and any(k.startswith(r) for r in roots)]
    if foreign:
        raise CheckpointError(
            f"{path}: {len(foreign)} keys under the student parts that the students do not have, "
            f"first: {foreign[:MAX_LISTED]}. Leftover teacher keys? Merge again with the Stage-1 "
            "converters: they remove the whole teacher part a student replaces"
        )


def merged_students(
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
