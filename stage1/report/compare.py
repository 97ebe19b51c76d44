"""Parameter (and latency) report: SAM3's image model, the students, the merged models.

The command line and the report of ``stage1/compare_models.py`` (its docstring says what is
printed); the counting is in :mod:`stage1.report.params` and :mod:`stage1.report.students`, the
tables in :mod:`stage1.report.tables`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from sam3.backbones import (
    STUDENTS,
    UnknownStudentError,
    list_students,
    resolve_student,
)
from sam3.model.text_encoder import VETextEncoder
from sam3.model.vit import ViT, ViTConfig
from stage1.report.params import build_teacher, merged_counts, teacher_counts
from stage1.report.published import PUBLISHED_TEACHER_M
from stage1.report.students import build_meta, student_report
from stage1.report.tables import format_merged, format_teacher, m

# ---- latency -------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_latency(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time (seconds) of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def _vision_job(
    model: nn.Module, device: torch.device, img_size: int, context: int
) -> Callable[[], Any]:
    x = torch.randn(1, 3, img_size, img_size, device=device)
    return lambda: model(x)


def _text_job(
    model: nn.Module, device: torch.device, img_size: int, context: int
) -> Callable[[], Any]:
    tokens = model.tokenizer(["a photo of a red car parked next to a tall building"], context)
    tokens = tokens.to(device)
    if hasattr(model, "encode_tokens"):  # a student
        return lambda: model.encode_tokens(tokens)
    return lambda: model.resizer(model.encoder(tokens))  # SAM3's text encoder


LATENCY_JOBS = {"image": _vision_job, "text": _text_job}  # kind -> (model, ...) -> callable


def _teacher_module(kind: str, img_size: int) -> nn.Module:
    """The teacher part a student of ``kind`` replaces, randomly initialised."""
    if kind == "image":
        return ViT(ViTConfig(img_size=img_size))
    return VETextEncoder()


def latency_report(
    names: list[str],
    device: torch.device,
    img_size: int,
    repeats: int,
    warmup: int,
    teacher: bool,
) -> dict[str, Any]:
    """Forward latency (batch 1, eval, random weights) of the students and their teachers.

    Vision: one ``img_size`` image through the student vs SAM3's trunk; text: one caption
    (32 tokens) through the student vs SAM3's text encoder + resizer.
    """
    out: dict[str, Any] = {"device": str(device), "img_size": img_size, "repeats": repeats}
    teachers: dict[str, float] = {}
    kinds = list(dict.fromkeys(STUDENTS[n].kind for n in names))
    if teacher:
        for kind in kinds:
            model = _teacher_module(kind, img_size).to(device).eval()
            job = LATENCY_JOBS[kind](model, device, img_size, 32)
            teachers[kind] = median_latency(job, device, repeats, warmup)
            del model
    out["teacher_s"] = teachers
    students = {}
    for name in names:
        info = STUDENTS[name]
        kwargs = {"img_size": img_size} if info.kind == "image" else {}
        model = info.builder(**kwargs).to(device).eval()
        seconds = median_latency(
            LATENCY_JOBS[info.kind](model, device, img_size, 32), device, repeats, warmup
        )
        row = {"seconds": seconds}
        if info.kind in teachers:
            row["speedup"] = teachers[info.kind] / seconds
        students[name] = row
    out["students"] = students
    return out


# ---- output --------------------------------------------------------------------------------


def format_report(report: dict[str, Any]) -> str:
    """The human-readable tables."""
    lines = format_teacher(report["teacher"])
    latency = report.get("latency")
    for kind, title in (("image", "Vision students"), ("text", "Text students")):
        rows = [r for r in report["students"] if r["kind"] == kind]
        if not rows:
            continue
        part = "trunk" if kind == "image" else "language backbone"
        lines += [
            "",
            f"{title} (spec: vs the teacher's {PUBLISHED_TEACHER_M[kind]}M; "
            f"'total vs replaced': whole student vs the {part} it replaces)",
            f"  {'model':8} {'backbone':16} {'backbone':>9} {'head':>7} {'total':>8} "
            f"{'published':>9} {'by rule':>8} {'% smaller':>10} {'(spec)':>7} "
            f"{'total vs replaced':>18}",
        ]
        for r in rows:
            mark = "=" if r["published_reproduced"] else "!"
            lines.append(
                f"  {r['zoo_name']:8} {r['label']:16} {m(r['backbone_params']):>9} "
                f"{m(r['head_params']):>7} {m(r['total_params']):>8} "
                f"{r['published_params_m']:>8.2f}M {m(r['params_by_published_rule']):>7}{mark} "
                f"{r['smaller_pct_by_published_rule']:>9.2f}% "
                f"{r['published_smaller_pct']:>6.2f}% "
                f"{r['total_smaller_pct_than_replaced']:>17.2f}%"
            )
        for r in rows:
            lines += [f"  {r['zoo_name']}: {note}" for note in r["notes"]]
        if latency:
            given = (
                f"{latency['img_size']}x{latency['img_size']} image"
                if kind == "image"
                else "one caption, 32 tokens"
            )
            lines.append(
                f"  latency ({latency['device']}, batch 1, {given}, median of "
                f"{latency['repeats']}):"
            )
            if kind in latency["teacher_s"]:
                lines.append(f"    teacher {latency['teacher_s'][kind]:.3f} s")
            for r in rows:
                row = latency["students"].get(r["name"])
                if row:
                    speed = f"  ({row['speedup']:.1f}x faster)" if "speedup" in row else ""
                    lines.append(f"    {r['zoo_name']:8} {row['seconds']:.3f} s{speed}")
    plain = report["teacher"]["image_model_without_interactivity"]
    lines += format_merged(report["merged"], plain)
    lines += [
        "",
        "'by rule': the published figure recomputed the way the spec counted it "
        "('=' reproduced, '!' not); see the notes for every difference.",
    ]
    return "\n".join(lines)


def _parse_students(value: str) -> list[str]:
    if value.strip().lower() == "all":
        return list_students()
    try:
        return [resolve_student(v) for v in value.split(",") if v.strip()]
    except UnknownStudentError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--student",
        type=_parse_students,
        default=list_students(),
        help="'all' (default), a student name (repvit_m0_9, MobileCLIP-S0, ...), a model-zoo name "
        "(ES-EV-S, ...) or a comma-separated list of them",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--latency",
        action="store_true",
        help="also time the forward pass (batch 1, eval) of each student and of the teacher "
        "part it replaces; on a CPU the teacher trunk takes over a minute per 1008 px forward",
    )
    parser.add_argument(
        "--latency-repeats", type=int, default=3, help="timed runs per model (median reported)"
    )
    parser.add_argument(
        "--latency-warmup", type=int, default=1, help="untimed runs before the timed ones"
    )
    parser.add_argument(
        "--img-size",
        type=int,
        default=1008,
        help="input side for the vision latency (the teacher trunk needs a multiple of 336)",
    )
    parser.add_argument("--no-teacher-latency", action="store_true", help="time the students only")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="device for the latency runs (default: cuda if available, else cpu)",
    )
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print the parameter (and latency) report; returns it as a dict."""
    args = build_parser().parse_args(argv)
    if args.latency_repeats < 1 or args.latency_warmup < 0:
        raise SystemExit(
            "error: --latency-repeats must be >= 1 and --latency-warmup >= 0 — pass such numbers"
        )
    vision = any(STUDENTS[n].kind == "image" for n in args.student)
    if args.latency and vision and not args.no_teacher_latency and args.img_size % 336:
        raise SystemExit(
            f"error: --img-size {args.img_size}: SAM3's trunk needs a multiple of 336 (patch 14 "
            "x window 24) — pick one (e.g. 336 or 1008) or pass --no-teacher-latency"
        )
    model = build_teacher()
    teacher = teacher_counts(model)
    students = {n: build_meta(STUDENTS[n]) for n in args.student}
    by_kind = {
        kind: {n: s for n, s in students.items() if STUDENTS[n].kind == kind}
        for kind in ("image", "text")
    }
    report: dict[str, Any] = {
        "teacher": teacher,
        "students": [student_report(STUDENTS[n], teacher, s) for n, s in students.items()],
        "merged": merged_counts(model, by_kind["image"], by_kind["text"]),
    }
    if args.latency:
        report["latency"] = latency_report(
            args.student,
            torch.device(args.device),
            args.img_size,
            args.latency_repeats,
            args.latency_warmup,
            teacher=not args.no_teacher_latency,
        )
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return report
