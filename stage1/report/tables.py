"""The human-readable tables of ``stage1/compare_models.py`` (counts:
:mod:`stage1.report.params`)."""

from __future__ import annotations

from typing import Any

from sam3.backbones import STUDENTS
from stage1.report.params import (
    BACKBONE_PARTS,
    HEAD_PARTS,
    INTERACTIVE_PARTS,
    VIDEO_ONLY,
    short_name,
)

WIDTH = 36  # the name column of the by-part table


def m(count: int) -> str:
    """A count in millions, as the spec prints them."""
    return f"{count / 1e6:.2f}M"


def _row(name: str, count: int, note: str = "") -> str:
    return f"  {name:{WIDTH}} {count:>12,}{note}"


def format_teacher(teacher: dict[str, Any]) -> list[str]:
    """The spec's teacher figures, each as the sum of its parts, then the image model by part."""
    lines = ["SAM3 teacher (random weights, built on the meta device, with interactivity)"]
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
            parts = ", ".join(f"{k} {v:,}" for k, v in entry["parts"].items())
            lines.append(f"  * {name} {entry['count']:,}, not built: {entry['source']}")
            lines.append(f"    ({parts})")
    tracker = teacher["tracker"]
    lines += [
        f"  tracker (sam3.pt's tracker.*) {tracker['total']:,} = interactive heads "
        f"{tracker['interactive_heads']:,} (built) + video-only {tracker['video_only']:,}* "
        f"(+ {tracker['buffer_numel']:,} buffer elements: the prompt encoder's Gaussian matrix)",
        "",
        "SAM3 image model with interactivity "
        "(build_sam3_image_model(enable_inst_interactivity=True)), by part",
    ]
    parts = teacher["parts"]
    lines += [_row(name, parts[name]) for name in (*BACKBONE_PARTS, *HEAD_PARTS)]
    lines.append(_row("detector heads (the five above)", teacher["heads"]["total"]))
    lines += [_row(name, parts[name]) for name in INTERACTIVE_PARTS]
    lines.append(_row("interactive heads (the three above)", teacher["interactive_heads"]["total"]))
    if teacher["unassigned"]:
        lines.append(_row("(outside the parts above)", teacher["unassigned"]))
    total, plain = teacher["image_model"], teacher["image_model_without_interactivity"]
    video_only = teacher["not_built"][VIDEO_ONLY]["count"]
    spec_total = total + video_only
    lines += [
        _row("total", total, f"  ({m(total)})"),
        _row("without interactivity", plain, f"  ({m(plain)}): no sam2_convs, no tracker"),
        _row("+ tracker video-only, not built*", video_only),
        _row("= sam3.pt's parameters (spec total)", spec_total, f"  ({m(spec_total)})"),
    ]
    return lines


def _zoo(name: str | None) -> str:
    return STUDENTS[name].zoo_name if name else "SAM3"


def _interactivity_note(rows: list[dict[str, Any]]) -> list[str]:
    extras = {(r["sam2_convs"], r["interactive_heads"]) for r in rows}
    if len(extras) == 1:
        sam2, heads = extras.pop()
        return [
            f"  with interactivity (enable_inst_interactivity=True) each also builds sam2_convs "
            f"{m(sam2)} and the interactive heads {m(heads)}: +{m(sam2 + heads)}"
        ]
    return [
        f"  {_zoo(r['image'])} + {_zoo(r['text'])} with interactivity: "
        f"{m(r['total_with_interactivity'])} (sam2_convs {m(r['sam2_convs'])}, interactive heads "
        f"{m(r['interactive_heads'])})"
        for r in rows
    ]


def format_merged(rows: list[dict[str, Any]], sam3_total: int) -> list[str]:
    """One row per single-student merged model, then a matrix of the two-student ones."""
    if not rows:
        return []
    lines = [
        "",
        "Merged models (students in SAM3's place; SAM3's neck convs and detector heads kept; "
        f"'% smaller' vs SAM3's image model without interactivity {m(sam3_total)})",
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
    lines += _interactivity_note(rows)
    lines.append(
        "  students: the student's backbone + head; SAM3 kept: the encoder a merged model keeps "
        "(the text encoder beside a vision student, the trunk beside a text student)"
    )
    return lines
