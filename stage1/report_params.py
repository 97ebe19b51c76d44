"""Parameter counts for ``stage1/compare_models.py``: SAM3, its students, the merged models.

Every count comes from modules built on the ``meta`` device (nothing is allocated) and summed
with ``parameters()``: SAM3's default image model (:func:`build_sam3_image_model`) part by part,
each student, and each merged model (students in SAM3's place, SAM3's neck convs and detector
heads kept, assembled as :mod:`sam3.merged` does). The spec's published figures, the parts each
of them sums and the one part no module here builds are data (:data:`SPEC_FIGURES`,
:data:`NOT_BUILT`), not logic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sam3.backbones import STUDENTS, StudentInfo
from sam3.merged import StudentTrunk
from sam3.model.neck import DualViTDetNeck
from sam3.model.sam3_image import Sam3ImageModel
from sam3.model.vl_backbone import SAM3VLBackbone
from sam3.model_builder import build_sam3_image_model

TRUNK, CONVS = "backbone.vision_backbone.trunk", "backbone.vision_backbone.convs"
SAM2_CONVS = "backbone.vision_backbone.sam2_convs"  # in sam3.pt; the image model ignores it
TEXT_ENCODER, RESIZER = "backbone.language_backbone.encoder", "backbone.language_backbone.resizer"
# The detector heads, as sam3.pt names them under ``detector.`` (sam3_model.md §4).
HEAD_PARTS = (
    "geometry_encoder",
    "transformer.encoder",
    "transformer.decoder",
    "segmentation_head",
    "dot_prod_scoring",
)
IMAGE_MODEL_PARTS = (TRUNK, CONVS, TEXT_ENCODER, RESIZER, *HEAD_PARTS)  # what it builds
HEADS, IMAGE_MODEL = "heads", "image model"  # the sums of HEAD_PARTS / of the built model

# Parts of sam3.pt that no module here builds: name -> (published count, where it comes from).
NOT_BUILT: dict[str, tuple[int, str]] = {
    "inst_interactive_predictor": (
        11_743_362,
        "the interactive predictor's tracker (sam3.pt's 309 tracker.* tensors), built only by "
        "Meta's build_sam3_image_model(enable_inst_interactivity=True); published figure, "
        "sam3_model.md §5",
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
    SpecFigure("vision backbone", 461.84, False, (TRUNK, CONVS, SAM2_CONVS)),
    SpecFigure("language backbone", 353.72, False, (TEXT_ENCODER, RESIZER)),
    SpecFigure("decoder/heads", 45.0, True, (HEADS, "inst_interactive_predictor")),
    SpecFigure("total", 860.06, False, (IMAGE_MODEL, SAM2_CONVS, "inst_interactive_predictor")),
)
# The spec's "% smaller" references (README_stage1 "Parameter Analysis"), in millions.
PUBLISHED_TEACHER_M = {"vision": 461.84, "text": 353.72}
TOLERANCE_M = 0.005  # a count "matches" a published figure within half of its last digit


def params(module: nn.Module) -> int:
    """Number of parameters of ``module`` (shared tensors once)."""
    return sum(p.numel() for p in module.parameters())


def short_name(part: str) -> str:
    """``backbone.vision_backbone.trunk`` -> ``trunk``; head names stay as they are."""
    for prefix in ("backbone.vision_backbone.", "backbone.language_backbone."):
        part = part.removeprefix(prefix)
    return part


def build_teacher() -> Sam3ImageModel:
    """SAM3's default image model (backbone + heads), on the meta device."""
    return build_sam3_image_model(device="meta")


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


def teacher_counts(model: Sam3ImageModel | None = None) -> dict[str, Any]:
    """SAM3's parts, the image model's total and the spec's figures recomputed from them.

    ``parts`` holds each of :data:`IMAGE_MODEL_PARTS` and ``sam2_convs`` (from a neck built with
    the sam2 copy) by its ``sam3.pt`` name, ``unassigned`` what the image model holds outside
    them (0 for SAM3), ``vision`` / ``text`` the backbones as the spec counts them.
    """
    model = model or build_teacher()
    parts = {name: params(model.get_submodule(name)) for name in IMAGE_MODEL_PARTS}
    trunk = model.backbone.vision_backbone.trunk
    with torch.device("meta"):
        neck = DualViTDetNeck(trunk, model.cfg.d_model, add_sam2_neck=True)
    parts[SAM2_CONVS] = params(neck.sam2_convs)
    total = params(model)
    heads = {p: parts[p] for p in HEAD_PARTS}
    heads["total"] = sum(heads.values())
    counts = {**parts, HEADS: heads["total"], IMAGE_MODEL: total}
    counts.update({name: count for name, (count, _) in NOT_BUILT.items()})
    vision = {short_name(p): parts[p] for p in (TRUNK, CONVS, SAM2_CONVS)}
    vision["total"] = sum(vision.values())
    text = {short_name(p): parts[p] for p in (TEXT_ENCODER, RESIZER)}
    text["total"] = sum(text.values())
    return {
        "vision": vision,
        "text": text,
        "heads": heads,
        "parts": parts,
        "image_model": total,
        "unassigned": total - sum(parts[p] for p in IMAGE_MODEL_PARTS),
        "not_built": {name: {"count": c, "source": s} for name, (c, s) in NOT_BUILT.items()},
        "spec_figures": [spec_figure(f, counts) for f in SPEC_FIGURES],
    }


# ---- students ------------------------------------------------------------------------------


def build_meta(info: StudentInfo, **kwargs: Any) -> nn.Module:
    """A student of ``info`` on the meta device."""
    with torch.device("meta"):
        return info.builder(**kwargs)


def _rule_backbone(info: StudentInfo) -> int:
    return build_meta(info).backbone_params()


def _rule_whole_ctx77(info: StudentInfo) -> int:
    model = build_meta(info, context_length=77)
    return params(model) + model.width**2


def _rule_tower_ctx16(info: StudentInfo) -> int:
    model = build_meta(info, context_length=16)
    return model.backbone_params() + model.width**2


# How the spec counted each published figure (StudentInfo.published_rule): function, reason.
PUBLISHED_RULES: dict[str, tuple[Callable[[StudentInfo], int], str]] = {
    "backbone": (
        _rule_backbone,
        "backbone only (timm features_only, last stage); the 1024-d head is not counted",
    ),
    "whole_ctx77_with_projection_layer": (
        _rule_whole_ctx77,
        "whole student with a 77-row position table (we use 32) plus MobileCLIP's unused "
        "width x width projection_layer, which our student does not keep",
    ),
    "tower_ctx16_with_projection_no_projector": (
        _rule_tower_ctx16,
        "text tower alone with a 16-row position table (we use 32) plus the unused 768 x 768 "
        "projection, without the 256-d projector; the rule of S0/S1 would give 123.85M",
    ),
}


def pct_smaller(count: float, reference: float) -> float:
    """How much smaller ``count`` is than ``reference``, in percent."""
    return 100.0 * (1.0 - count / reference)


def student_report(
    info: StudentInfo, teacher: dict[str, Any], model: nn.Module | None = None
) -> dict[str, Any]:
    """Counts, the published figures and their reconstruction for one student (``model``: the
    student built on the meta device, built here if not given)."""
    model = model if model is not None else build_meta(info)
    backbone, head = model.backbone_params(), model.head_params()
    total = backbone + head
    rule_fn, rule_reason = PUBLISHED_RULES[info.published_rule]
    by_rule = rule_fn(info)
    teacher_total = teacher[info.kind]["total"]
    replaced = teacher["vision"]["trunk"] if info.kind == "vision" else teacher_total
    pct_rule = pct_smaller(by_rule, teacher_total)
    pct_rounded = pct_smaller(info.published_params_m, PUBLISHED_TEACHER_M[info.kind])
    notes = []
    if abs(by_rule / 1e6 - info.published_params_m) >= TOLERANCE_M:
        notes.append(f"published {info.published_params_m}M not reproduced by {rule_reason}")
    if by_rule != backbone and info.kind == "text":
        notes.append(
            f"published {info.published_params_m}M = {rule_reason} ({by_rule:,}); "
            f"our tower {backbone:,} + projector {head:,} = {total:,}"
        )
    if f"{pct_rule:.2f}" != f"{info.published_smaller_pct:.2f}":
        notes.append(
            f"published {info.published_smaller_pct:.2f}% smaller; exact counts give "
            f"{pct_rule:.4f}%, the rounded {info.published_params_m}M / "
            f"{PUBLISHED_TEACHER_M[info.kind]}M give {pct_rounded:.4f}%"
        )
    return {
        "name": info.name,
        "zoo_name": info.zoo_name,
        "label": info.label,
        "kind": info.kind,
        "backbone_params": backbone,
        "head_params": head,
        "total_params": total,
        "published_params_m": info.published_params_m,
        "published_rule": info.published_rule,
        "params_by_published_rule": by_rule,
        "published_reproduced": abs(by_rule / 1e6 - info.published_params_m) < TOLERANCE_M,
        "published_smaller_pct": info.published_smaller_pct,
        "smaller_pct_by_published_rule": pct_rule,
        "replaces": "trunk" if info.kind == "vision" else "language backbone",
        "replaced_params": replaced,
        "total_smaller_pct_than_replaced": pct_smaller(total, replaced),
        "notes": notes,
    }


# ---- merged models -------------------------------------------------------------------------


def merged_counts(
    teacher: Sam3ImageModel, vision: dict[str, nn.Module], text: dict[str, nn.Module]
) -> list[dict[str, Any]]:
    """Each merged model's parts and total: every vision student with SAM3's text encoder,
    every text student with SAM3's trunk, then every pair of them.

    ``vision`` / ``text`` map student names to students built on the meta device. A vision
    student sits in the trunk's place as ``StudentTrunk`` under a neck of its own (``convs``
    built for its channels); the heads are SAM3's, built once and given each backbone in turn.
    """
    d_model, scalp = teacher.cfg.d_model, teacher.backbone.scalp
    sam3_vision = teacher.backbone.vision_backbone
    sam3_text = teacher.backbone.language_backbone
    with torch.device("meta"):
        model = Sam3ImageModel(teacher.backbone, teacher.cfg)
        necks = {n: DualViTDetNeck(StudentTrunk(m), d_model) for n, m in vision.items()}
    combos = [(v, None) for v in vision] + [(None, t) for t in text]
    combos += [(v, t) for v in vision for t in text]
    sam3_total, rows = params(teacher), []
    for image_name, text_name in combos:
        visual = necks[image_name] if image_name else sam3_vision
        language = text[text_name] if text_name else sam3_text
        model.backbone = SAM3VLBackbone(visual, language, scalp=scalp)
        students = params(visual.trunk) if image_name else 0
        students += params(language) if text_name else 0
        kept = 0 if image_name else params(sam3_vision.trunk)
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
            }
        )
    return rows


# ---- tables --------------------------------------------------------------------------------


def m(count: int) -> str:
    """A count in millions, as the spec prints them."""
    return f"{count / 1e6:.2f}M"


def format_teacher(teacher: dict[str, Any]) -> list[str]:
    """The spec's teacher figures, each as the sum of its parts, then the image model by part."""
    lines = ["SAM3 teacher (random weights, built on the meta device)"]
    starred = False
    for fig in teacher["spec_figures"]:
        terms = []
        for part, count in fig["parts"].items():
            star = "*" if part in teacher["not_built"] else ""
            starred |= bool(star)
            terms.append(f"{short_name(part)} {m(count)}{star}")
        published = f"{'~' if fig['approx'] else ''}{fig['published_m']:g}M"
        published += "" if fig["reproduced"] else ", NOT reproduced"
        lines.append(
            f"  {fig['label']:17} {m(fig['count']):>7} = {' + '.join(terms)}   (spec: {published})"
        )
    if starred:
        for name, entry in teacher["not_built"].items():
            lines.append(f"  * {name} {entry['count']:,}: {entry['source']}")
    lines += [
        f"  {short_name(SAM2_CONVS)}: counted on a neck built with SAM3's second copy of convs; "
        "the image model does not build it (sam3.pt holds it)",
        "",
        "SAM3 image model (build_sam3_image_model), by part",
    ]
    parts = teacher["parts"]
    lines += [f"  {name:36} {parts[name]:>12,}" for name in IMAGE_MODEL_PARTS]
    if teacher["unassigned"]:
        lines.append(f"  {'(outside the parts above)':36} {teacher['unassigned']:>12,}")
    lines += [
        f"  {'detector heads (the last five)':36} {teacher['heads']['total']:>12,}",
        f"  {'total':36} {teacher['image_model']:>12,}  ({m(teacher['image_model'])})",
    ]
    return lines


def _zoo(name: str | None) -> str:
    return STUDENTS[name].zoo_name if name else "SAM3"


def format_merged(rows: list[dict[str, Any]], sam3_total: int) -> list[str]:
    """One row per single-student merged model, then a matrix of the two-student ones."""
    if not rows:
        return []
    lines = [
        "",
        "Merged models (students in SAM3's place; SAM3's neck convs and detector heads kept; "
        f"'% smaller' vs SAM3's image model {m(sam3_total)})",
        f"  {'image':8} {'text':8} {'students':>9} {'SAM3 kept':>10} {'convs':>7} {'heads':>7} "
        f"{'total':>8} {'% smaller':>10}",
    ]
    pairs = [r for r in rows if r["image"] and r["text"]]
    for r in rows:
        if r in pairs:
            continue
        lines.append(
            f"  {_zoo(r['image']):8} {_zoo(r['text']):8} {m(r['students']):>9} "
            f"{m(r['sam3_encoders_kept']):>10} {m(r['convs']):>7} {m(r['heads']):>7} "
            f"{m(r['total']):>8} {r['smaller_pct_than_sam3']:>9.2f}%"
        )
    lines += [
        f"  {_zoo(r['image'])} + {_zoo(r['text'])}: {r['unassigned']:,} parameters outside "
        "the columns above"
        for r in rows
        if r["unassigned"]
    ]
    if pairs:
        texts = list(dict.fromkeys(r["text"] for r in pairs))
        lines.append("  both students (total, % smaller):")
        lines.append("  " + " " * 8 + "".join(f"{_zoo(t):>19}" for t in texts))
        for image in dict.fromkeys(r["image"] for r in pairs):
            cells = {r["text"]: r for r in pairs if r["image"] == image}
            row = "".join(
                f"{m(cells[t]['total']):>10} ({cells[t]['smaller_pct_than_sam3']:5.2f}%)"
                for t in texts
            )
            lines.append(f"  {_zoo(image):8}{row}")
    lines.append(
        "  students: the student's backbone + head; SAM3 kept: the encoder a merged model keeps "
        "(the text encoder beside a vision student, the trunk beside a text student)"
    )
    return lines
