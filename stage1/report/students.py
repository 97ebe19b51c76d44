"""Student counts for ``stage1/compare_models.py``: each student's backbone, head and total,
and its published figure (:mod:`stage1.report.published`) recomputed with the rule the spec
used (students.md §1-§4)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from sam3.backbones import StudentInfo
from stage1.report.params import TOLERANCE_M, params, pct_smaller
from stage1.report.published import PUBLISHED, PUBLISHED_TEACHER_M


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


# How the spec counted each published figure (PublishedFigure.rule): function, reason.
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


def student_report(
    info: StudentInfo, teacher: dict[str, Any], model: nn.Module | None = None
) -> dict[str, Any]:
    """Counts, the published figures and their reconstruction for one student (``model``: the
    student built on the meta device, built here if not given)."""
    model = model if model is not None else build_meta(info)
    backbone, head = model.backbone_params(), model.head_params()
    total = backbone + head
    published = PUBLISHED[info.name]
    rule_fn, rule_reason = PUBLISHED_RULES[published.rule]
    by_rule = rule_fn(info)
    teacher_total = teacher[info.kind]["total"]
    replaced = teacher["image"]["trunk"] if info.kind == "image" else teacher_total
    pct_rule = pct_smaller(by_rule, teacher_total)
    pct_rounded = pct_smaller(published.params_m, PUBLISHED_TEACHER_M[info.kind])
    notes = []
    if abs(by_rule / 1e6 - published.params_m) >= TOLERANCE_M:
        notes.append(f"published {published.params_m}M not reproduced by {rule_reason}")
    if by_rule != backbone and info.kind == "text":
        notes.append(
            f"published {published.params_m}M = {rule_reason} ({by_rule:,}); "
            f"our tower {backbone:,} + projector {head:,} = {total:,}"
        )
    if f"{pct_rule:.2f}" != f"{published.smaller_pct:.2f}":
        notes.append(
            f"published {published.smaller_pct:.2f}% smaller; exact counts give "
            f"{pct_rule:.4f}%, the rounded {published.params_m}M / "
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
        "published_params_m": published.params_m,
        "published_rule": published.rule,
        "params_by_published_rule": by_rule,
        "published_reproduced": abs(by_rule / 1e6 - published.params_m) < TOLERANCE_M,
        "published_smaller_pct": published.smaller_pct,
        "smaller_pct_by_published_rule": pct_rule,
        "replaces": "trunk" if info.kind == "image" else "language backbone",
        "replaced_params": replaced,
        "total_smaller_pct_than_replaced": pct_smaller(total, replaced),
        "notes": notes,
    }
