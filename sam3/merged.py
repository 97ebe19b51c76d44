"""Reading merged EfficientSAM3 checkpoints: the students their ``meta`` names, and the VL
backbone with those students in SAM3's place.

The layout (key prefixes, ``meta`` fields) is :mod:`sam3.schema`'s; this module checks a file's
records against the student registry and refuses keys that the built students do not take.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .arch import BackboneConfig
from .backbones import UnknownStudentError, build_student, resolve_student, student_kind
from .backbones.trunk import StudentTrunk
from .checkpoint import MAX_LISTED, CheckpointError
from .model.neck import DualViTDetNeck
from .model.text_encoder import VETextEncoder
from .model.vit import ViT
from .model.vl_backbone import SAM3VLBackbone
from .schema import TEXT_PREFIX, VISION_TRUNK_PREFIX


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
    if student_kind(name) != kind:
        raise CheckpointError(
            f"{path}: {entry['name']!r} is a {student_kind(name)} student, not a {kind} one"
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
    state: dict[str, Tensor],
    model: nn.Module,
    prefix: str,
    image: dict | None,
    text: dict | None,
    path: Path,
) -> None:
    """Refuse keys under the part a student (``image`` / ``text``: its record, ``None`` where
    SAM3's part stays) took over that ``model`` (loaded from the keys under ``prefix``) lacks:
    leftover teacher keys beside the student's would otherwise be silently ignored."""
    roots = [p for p, on in ((VISION_TRUNK_PREFIX, image), (TEXT_PREFIX, text)) if on]
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
