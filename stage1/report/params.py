"""SAM3's and the merged models' parameter counts for ``stage1/compare_models.py``.

Every count comes from modules built on the ``meta`` device (nothing is allocated) and summed
with ``parameters()``: SAM3's image model with its interactive path
(``build_sam3_image_model(enable_inst_interactivity=True)``: backbone with both necks, detector
heads, SAM heads) part by part, and each merged model (students in SAM3's place, SAM3's neck
convs and detector heads kept, assembled as :mod:`sam3.merged` does). The spec's published
figures, the parts each of them sums and the one part no module here builds (the tracker's
video-only tensors) are data (:data:`SPEC_FIGURES`, :data:`VIDEO_ONLY_PARTS`), not logic. The
students are counted in :mod:`stage1.report.students`, the tables drawn in
:mod:`stage1.report.tables`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sam3.backbones.trunk import StudentTrunk
from sam3.model.neck import DualViTDetNeck
from sam3.model.sam3_image import Sam3ImageModel
from sam3.model.vl_backbone import SAM3VLBackbone
from sam3.model_builder import build_sam3_image_model
from stage1.report.published import PUBLISHED_TEACHER_M

TRUNK, CONVS = "backbone.vision_backbone.trunk", "backbone.vision_backbone.convs"
SAM2_CONVS = "backbone.vision_backbone.sam2_convs"  # the second neck, read by the SAM heads
TEXT_ENCODER, RESIZER = "backbone.language_backbone.encoder", "backbone.language_backbone.resizer"
# The detector heads, as sam3.pt names them under ``detector.`` (sam3_model.md §4).
HEAD_PARTS = (
    "geometry_encoder",
    "transformer.encoder",
    "transformer.decoder",
    "segmentation_head",
    "dot_prod_scoring",
)
# The interactive SAM heads, as sam3.pt names them (its own ``tracker.*`` keys; a parameter, not
# a module, for ``no_mem_embed``).
INTERACTIVE_PARTS = (
    "tracker.sam_prompt_encoder",
    "tracker.sam_mask_decoder",
    "tracker.no_mem_embed",
)
BACKBONE_PARTS = (TRUNK, CONVS, SAM2_CONVS, TEXT_ENCODER, RESIZER)
IMAGE_MODEL_PARTS = (*BACKBONE_PARTS, *HEAD_PARTS, *INTERACTIVE_PARTS)  # what it builds
# sums: of HEAD_PARTS, of INTERACTIVE_PARTS, of the built model; the part not built
HEADS, INTERACTIVE, IMAGE_MODEL = "heads", "interactive heads", "image model"
VIDEO_ONLY = "tracker video-only"

# sam3.pt's tracker.* tensors that only video tracking uses, which no module here builds: numel
# (all parameters) by name under ``tracker.``, as sam3_interactive.md §8 lists them (160
# tensors, 7,521,777 in all; the tracker's 11,743,362 less the interactive heads' 4,221,585).
VIDEO_ONLY_PARTS: dict[str, int] = {
    "transformer.encoder": 5_922_304,  # memory attention: 4 RoPE layers + norm
    "maskmem_backbone": 1_384_608,  # memory encoder
    "obj_ptr_proj": 197_376,
    "obj_ptr_tpos_proj": 16_448,
    "mask_downsample": 17,
    "maskmem_tpos_enc": 448,
    "no_mem_pos_enc": 256,
    "no_obj_ptr": 256,
    "no_obj_embed_spatial": 64,
}
NOT_BUILT: dict[str, tuple[int, str]] = {  # name -> (count, where it comes from)
    VIDEO_ONLY: (
        sum(VIDEO_ONLY_PARTS.values()),
        "the tracker's video-only tensors in sam3.pt (memory attention, memory encoder, object "
        "pointers), which only Meta's video tracker builds; counts from sam3_interactive.md §8",
    ),
}


@dataclass(frozen=True)
class SpecFigure:
    """One teacher figure of the spec's "Parameter Breakdown" and the parts it sums."""

    label: str  # the spec's name
    published_m: float  # millions, as printed by the spec
    approx: bool  # the spec writes "~": within 1M counts as reproduced
    parts: tuple[str, ...]  # keys of the teacher's part counts


SPEC_FIGURES = (
    SpecFigure("vision backbone", PUBLISHED_TEACHER_M["image"], False, (TRUNK, CONVS, SAM2_CONVS)),
    SpecFigure("language backbone", PUBLISHED_TEACHER_M["text"], False, (TEXT_ENCODER, RESIZER)),
    SpecFigure("decoder/heads", 45.0, True, (HEADS, INTERACTIVE, VIDEO_ONLY)),
    SpecFigure("total", 860.06, False, (IMAGE_MODEL, VIDEO_ONLY)),
)
TOLERANCE_M = 0.005  # a count "matches" a published figure within half of its last digit


def params(module: nn.Module) -> int:
    """Number of parameters of ``module`` (shared tensors once)."""
    return sum(p.numel() for p in module.parameters())


def part_params(model: nn.Module, name: str) -> int:
    """Parameters of the submodule ``name`` of ``model``, or the size of the parameter ``name``."""
    try:
        return params(model.get_submodule(name))
    except AttributeError:
        return model.get_parameter(name).numel()


def short_name(part: str) -> str:
    """``backbone.vision_backbone.trunk`` -> ``trunk``; head names stay as they are."""
    for prefix in ("backbone.vision_backbone.", "backbone.language_backbone."):
        part = part.removeprefix(prefix)
    return part


def build_teacher() -> Sam3ImageModel:
    """SAM3's image model with interactivity (both necks, detector and SAM heads), on meta."""
    return build_sam3_image_model(device="meta", enable_inst_interactivity=True)


def spec_figure(figure: SpecFigure, counts: dict[str, int]) -> dict[str, Any]:
    """``figure`` recomputed from ``counts`` (part name -> count) and whether it matches."""
    count = sum(counts[p] for p in figure.parts)
    gap = abs(count / 1e6 - figure.published_m)
    return {
        "label": figure.label,
        "published_m": figure.published_m,
        "approx": figure.approx,
        "parts": {p: counts[p] for p in figure.parts},
        "count": count,
        "reproduced": gap < (1.0 if figure.approx else TOLERANCE_M),
    }


def _subtotal(parts: dict[str, int], names: tuple[str, ...], prefix: str = "") -> dict[str, int]:
    out = {name.removeprefix(prefix): parts[name] for name in names}
    return {**out, "total": sum(out.values())}


def teacher_counts(model: Sam3ImageModel | None = None) -> dict[str, Any]:
    """SAM3's parts, the image model's total and the spec's figures recomputed from them.

    ``model``: SAM3's image model built with interactivity (:func:`build_teacher`). ``parts``
    holds each of :data:`IMAGE_MODEL_PARTS` by its ``sam3.pt`` name, ``unassigned`` what the
    model holds outside them (0 for SAM3), ``vision`` / ``text`` the backbones as the spec counts
    them, ``tracker`` sam3.pt's tracker (the built interactive heads + the video-only tensors),
    ``image_model_without_interactivity`` the default build (no ``sam2_convs``, no tracker).
    """
    model = model or build_teacher()
    if getattr(model, "tracker", None) is None or model.backbone.vision_backbone.sam2_convs is None:
        raise ValueError("count SAM3 built with enable_inst_interactivity=True (build_teacher())")
    parts = {name: part_params(model, name) for name in IMAGE_MODEL_PARTS}
    total = params(model)
    heads = _subtotal(parts, HEAD_PARTS)
    interactive = _subtotal(parts, INTERACTIVE_PARTS, "tracker.")
    video_only = NOT_BUILT[VIDEO_ONLY][0]
    counts = {
        **parts,
        HEADS: heads["total"],
        INTERACTIVE: interactive["total"],
        IMAGE_MODEL: total,
        VIDEO_ONLY: video_only,
    }
    return {
        "image": _subtotal(parts, (TRUNK, CONVS, SAM2_CONVS), "backbone.vision_backbone."),
        "text": _subtotal(parts, (TEXT_ENCODER, RESIZER), "backbone.language_backbone."),
        "heads": heads,
        "interactive_heads": interactive,
        "tracker": {
            "interactive_heads": interactive["total"],
            "video_only": video_only,
            "total": interactive["total"] + video_only,
            "buffer_numel": sum(b.numel() for b in model.tracker.buffers()),
        },
        "parts": parts,
        "image_model": total,
        "image_model_without_interactivity": total - parts[SAM2_CONVS] - interactive["total"],
        "unassigned": total - sum(parts.values()),
        "not_built": {
            name: {"count": c, "source": s, "parts": dict(VIDEO_ONLY_PARTS)}
            for name, (c, s) in NOT_BUILT.items()
        },
        "spec_figures": [spec_figure(f, counts) for f in SPEC_FIGURES],
    }


def pct_smaller(count: float, reference: float) -> float:
    """How much smaller ``count`` is than ``reference``, in percent."""
    return 100.0 * (1.0 - count / reference)


# ---- merged models -------------------------------------------------------------------------


def merged_counts(
    teacher: Sam3ImageModel, vision: dict[str, nn.Module], text: dict[str, nn.Module]
) -> list[dict[str, Any]]:
    """Each merged model's parts and total: every vision student with SAM3's text encoder,
    every text student with SAM3's trunk, then every pair of them.

    ``teacher``: SAM3 built with interactivity; ``vision`` / ``text`` map student names to
    students built on the meta device. A vision student sits in the trunk's place as
    ``StudentTrunk`` under a neck of its own (``convs`` built for its channels); the heads are
    SAM3's, built once and given each backbone in turn. ``total`` is the image model without
    interactivity; ``total_with_interactivity`` adds the second neck built for the same trunk
    (``sam2_convs``) and SAM3's interactive heads.
    """
    d_model, scalp = teacher.cfg.d_model, teacher.backbone.scalp
    sam3_text = teacher.backbone.language_backbone
    trunks = {None: teacher.backbone.vision_backbone.trunk}
    trunks.update({n: StudentTrunk(m) for n, m in vision.items()})
    with torch.device("meta"):
        model = Sam3ImageModel(teacher.backbone, teacher.cfg)
        necks = {n: DualViTDetNeck(t, d_model) for n, t in trunks.items()}
        sam2 = {
            n: params(DualViTDetNeck(t, d_model, add_sam2_neck=True).sam2_convs)
            for n, t in trunks.items()
        }
    interactive = params(teacher.tracker)
    combos = [(v, None) for v in vision] + [(None, t) for t in text]
    combos += [(v, t) for v in vision for t in text]
    model.backbone = SAM3VLBackbone(necks[None], sam3_text, scalp=scalp)
    sam3_total, rows = params(model), []  # SAM3's image model without interactivity
    for image_name, text_name in combos:
        visual = necks[image_name]
        language = text[text_name] if text_name else sam3_text
        model.backbone = SAM3VLBackbone(visual, language, scalp=scalp)
        students = params(visual.trunk) if image_name else 0
        students += params(language) if text_name else 0
        kept = 0 if image_name else params(visual.trunk)
        kept += 0 if text_name else params(sam3_text)
        convs = params(visual.convs)
        heads = sum(params(model.get_submodule(p)) for p in HEAD_PARTS)
        total = params(model)
        rows.append(
            {
                "image": image_name,
                "text": text_name,
                "students": students,
                "sam3_encoders_kept": kept,
                "convs": convs,
                "heads": heads,
                "unassigned": total - students - kept - convs - heads,
                "total": total,
                "smaller_pct_than_sam3": pct_smaller(total, sam3_total),
                "sam2_convs": sam2[image_name],
                "interactive_heads": interactive,
                "total_with_interactivity": total + sam2[image_name] + interactive,
            }
        )
    return rows
