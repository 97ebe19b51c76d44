"""The command lines of phase 3: ``convert_{image,text}_encoder_weights_stage1.py`` (one
student) and ``convert_both_encoders_weights_stage1.py`` (both), each a call of
:func:`stage1.merge.run.run_merge`."""

from __future__ import annotations

import argparse
import logging

from stage1.merge.checks import REPLACE_PREFIX
from stage1.merge.run import MergeSummary, run_merge


def _parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--sam3-ckpt",
        default="sam3_checkpoints/sam3.pt",
        help="SAM3 checkpoint (or an already merged one) to merge into",
    )
    p.add_argument("--output", help="merged checkpoint to write (default: under output/)")
    p.add_argument(
        "--replace-prefix",
        action="append",
        help="further teacher key prefix to remove, inside detector.backbone. (repeatable); the "
        f"part a student replaces ({REPLACE_PREFIX['image']} / {REPLACE_PREFIX['text']}) is "
        "always removed",
    )
    p.add_argument(
        "--safetensors",
        action="store_true",
        help="write a .safetensors file (meta in its metadata) instead of a .pth",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the output file if it exists (by default an existing file is an error)",
    )
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.add_argument(
        "--allow-random-teacher",
        action="store_true",
        help="merge students distilled from a randomly initialised teacher (smoke tests only; "
        "meta['random_teacher'] records it)",
    )
    return p


def _setup_console_logging() -> None:
    if not logging.getLogger("stage1").handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logging.getLogger("stage1").addHandler(handler)
        logging.getLogger("stage1").setLevel(logging.INFO)


def _finish(summary: MergeSummary) -> MergeSummary:
    for line in summary.lines():
        print(line)
    return summary


def main_single(kind: str, argv: list[str] | None = None) -> MergeSummary:
    """``convert_{image,text}_encoder_weights_stage1.py``: merge one student."""
    p = _parser(f"Phase 3: merge a {kind} student into a SAM3 checkpoint.")
    p.add_argument("--student-ckpt", required=True, help="phase-2 ckpt_epoch_N.pth of the student")
    p.add_argument(
        "--model-name",
        help="the student's name (checked against the checkpoint; needed for bare state dicts)",
    )
    args = p.parse_args(argv)
    _setup_console_logging()
    names = {"image_model_name" if kind == "image" else "text_model_name": args.model_name}
    return _finish(
        run_merge(
            args.sam3_ckpt,
            args.output,
            image_ckpt=args.student_ckpt if kind == "image" else None,
            text_ckpt=args.student_ckpt if kind == "text" else None,
            replace_prefix=args.replace_prefix,
            safetensors=args.safetensors,
            allow_random_teacher=args.allow_random_teacher,
            overwrite=args.overwrite,
            **names,
        )
    )


def main_both(argv: list[str] | None = None) -> MergeSummary:
    """``convert_both_encoders_weights_stage1.py``: merge a vision and a text student."""
    p = _parser("Phase 3: merge a vision and a text student into a SAM3 checkpoint.")
    p.add_argument("--image-student-ckpt", required=True, help="vision student ckpt_epoch_N.pth")
    p.add_argument("--text-student-ckpt", required=True, help="text student ckpt_epoch_N.pth")
    p.add_argument(
        "--image-model-name",
        help="vision student name (default: read from the checkpoint; checked against it)",
    )
    p.add_argument(
        "--text-model-name",
        help="text student name (default: read from the checkpoint; checked against it)",
    )
    args = p.parse_args(argv)
    _setup_console_logging()
    return _finish(
        run_merge(
            args.sam3_ckpt,
            args.output,
            image_ckpt=args.image_student_ckpt,
            text_ckpt=args.text_student_ckpt,
            image_model_name=args.image_model_name,
            text_model_name=args.text_model_name,
            replace_prefix=args.replace_prefix,
            safetensors=args.safetensors,
            allow_random_teacher=args.allow_random_teacher,
            overwrite=args.overwrite,
        )
    )
