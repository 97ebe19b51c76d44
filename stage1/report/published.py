"""The spec's published figures: each student's "Params" and "% smaller" (README_stage1's model
zoo), the rule by which the spec counted them (students.md §1-§4; evaluated in
:mod:`stage1.report.students`), and the teacher figures "% smaller" refers to. Data only."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedFigure:
    """What the spec publishes for one student."""

    params_m: float  # the spec's "Params" (millions)
    smaller_pct: float  # the spec's "% smaller" than the teacher part the student replaces
    # how the spec's figure was counted (a key of stage1.report.students.PUBLISHED_RULES):
    # "backbone" = the timm backbone without the head; "whole_ctx77_with_projection_layer" = the
    # whole student with a 77-row position table and MobileCLIP's unused width x width projection;
    # "tower_ctx16_with_projection_no_projector" = the tower alone with a 16-row table
    rule: str


_CTX77 = "whole_ctx77_with_projection_layer"
_L_RULE = "tower_ctx16_with_projection_no_projector"

# By canonical student name (sam3.backbones.list_students()), in the spec's model-zoo order.
PUBLISHED: dict[str, PublishedFigure] = {
    "repvit_m0_9": PublishedFigure(4.72, 98.98, "backbone"),
    "repvit_m1_1": PublishedFigure(7.77, 98.32, "backbone"),
    "repvit_m2_3": PublishedFigure(22.40, 95.15, "backbone"),
    "tiny_vit_5m": PublishedFigure(5.07, 98.90, "backbone"),
    "tiny_vit_11m": PublishedFigure(10.55, 97.72, "backbone"),
    "tiny_vit_21m": PublishedFigure(20.62, 95.53, "backbone"),
    "efficientvit_b0": PublishedFigure(0.68, 99.85, "backbone"),
    "efficientvit_b1": PublishedFigure(4.64, 99.00, "backbone"),
    "efficientvit_b2": PublishedFigure(14.98, 96.76, "backbone"),
    "MobileCLIP-S0": PublishedFigure(42.57, 87.96, _CTX77),
    "MobileCLIP-S1": PublishedFigure(63.56, 82.03, _CTX77),
    "MobileCLIP2-L": PublishedFigure(123.6, 65.06, _L_RULE),
}

# SAM3's vision and language backbones as the spec publishes them, in millions, by the kind of
# student that replaces a part of each: the references of "% smaller" (README_stage1 "Parameter
# Analysis") and two of the "Parameter Breakdown" figures (stage1.report.params.SPEC_FIGURES).
PUBLISHED_TEACHER_M = {"image": 461.84, "text": 353.72}
