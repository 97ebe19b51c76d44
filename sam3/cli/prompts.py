"""The prompt of ``python -m sam3.predict``, checked against the photo before the model loads.

With ``--text`` it is the detector's: the text, example boxes (``--box``, ``--negative-box``)
and ``--threshold``. Without, it is the interactive heads': all ``--point`` s form one prompt
set, with the ``--box`` when exactly one is given; several ``--box`` es without points are one
prompt set each. Multimask follows SAM's advice: three candidates for a single click, one mask
otherwise, unless ``--multimask`` / ``--single-mask`` say so. A box reaching outside the photo
is clipped to it (with a warning); one entirely outside is an error. A mistake raises
:class:`~sam3.cli.inputs.PredictError`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..preprocess import clip_box
from .inputs import PredictError

DEFAULT_THRESHOLD = 0.5  # the detector's --threshold when none is given


@dataclass
class DetectPrompt:
    """A checked detector prompt: the text, the clipped boxes with their positive flags."""

    text: str
    boxes: list[tuple[list[float], bool]]
    threshold: float


@dataclass
class InstPrompt:
    """A checked interactive prompt in the photo's pixels."""

    points: list[list[float]]  # [x, y, label] per click, label 1 positive / 0 negative
    boxes: list[list[float]]  # clipped xyxy boxes
    multimask: bool

    def sets(self) -> list[dict[str, Any]]:
        """The prompt sets, in the order of their masks: ``{"points": [...], "box": ...}``."""
        if len(self.boxes) > 1:
            return [{"points": [], "box": b} for b in self.boxes]
        return [{"points": self.points, "box": self.boxes[0] if self.boxes else None}]

    def record(self) -> dict[str, Any]:
        """The prompt as the JSON file records it."""
        return {
            "points": self.points,
            "boxes": self.boxes,
            "multimask": self.multimask,
            "sets": self.sets(),
        }


def _fmt(values: Sequence[float]) -> str:
    return " ".join(f"{v:g}" for v in values)


def check_box(flag: str, raw: Sequence[float], width: int, height: int) -> list[float]:
    """``raw`` clipped to the photo (with a warning when it reaches outside); ``ValueError`` for
    a box that is not finite, inverted or entirely outside."""
    try:
        clipped = clip_box(raw, width, height)
    except ValueError as err:
        raise ValueError(
            f"{flag} {_fmt(raw)}: {err} — give X0 Y0 X1 Y1 in pixels of the {width}x{height} "
            "photo, x1 > x0 and y1 > y0"
        ) from None
    if clipped != [float(v) for v in raw]:
        print(
            f"warning: {flag} {list(raw)} reaches outside the photo; clipped to {clipped}",
            file=sys.stderr,
        )
    return clipped


def check_point(raw: Sequence[float], width: int, height: int) -> list[float]:
    """``[x, y, label]`` of one ``--point X Y LABEL``; ``ValueError`` for a label other than
    0/1 or a point that is not finite or lies outside the photo."""
    x, y, label = (float(v) for v in raw)
    if label not in (0.0, 1.0):
        raise ValueError(
            f"--point {_fmt(raw)}: the label {label:g} is neither 1 (positive) nor 0 "
            "(negative) — give --point X Y 1 for the object, --point X Y 0 for background"
        )
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"--point {_fmt(raw)}: X and Y must be finite — give pixels of the photo")
    if not (0 <= x <= width and 0 <= y <= height):
        raise ValueError(
            f"--point {_fmt(raw)} lies outside the {width}x{height} photo — give X in "
            f"[0, {width}] and Y in [0, {height}], pixels of the photo"
        )
    return [x, y, int(label)]


def _check_inst(args: argparse.Namespace, width: int, height: int) -> InstPrompt:
    """The interactive prompt of a command line without ``--text`` (see the module)."""
    if args.negative_box:
        raise ValueError(
            "--negative-box needs --text (it is an example for the detector) — use "
            "--point X Y 0 for a negative click on the object's background"
        )
    if args.threshold is not None:
        raise ValueError(
            "--threshold filters --text detections; points and boxes keep every mask (each "
            "scored by its predicted IoU) — drop --threshold"
        )
    if args.multimask and args.single_mask:
        raise ValueError(
            "--multimask and --single-mask contradict each other — give at most one of them"
        )
    if args.point and len(args.box) > 1:
        raise ValueError(
            f"--point with {len(args.box)} --box prompts: clicks go with at most one box — "
            "give one --box with the points, or several --box without points (one object each)"
        )
    points = [check_point(p, width, height) for p in args.point]
    boxes = [check_box("--box", b, width, height) for b in args.box]
    auto = len(points) == 1 and not boxes
    chosen = True if args.multimask else False if args.single_mask else auto
    return InstPrompt(points=points, boxes=boxes, multimask=chosen)


def _check_detect(args: argparse.Namespace, width: int, height: int) -> DetectPrompt:
    """The detector's prompt of a command line with ``--text``."""
    if args.point:
        raise ValueError(
            "--point goes without --text (points prompt the interactive heads, which take "
            "no text) — drop --text to segment what the points mark, or drop --point"
        )
    if args.multimask or args.single_mask:
        raise ValueError(
            f"{'--multimask' if args.multimask else '--single-mask'} applies to --point / "
            "--box without --text — drop it (the detector returns one mask per detection)"
        )
    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"--threshold {threshold} is outside [0, 1] — give e.g. 0.5")
    boxes = [(check_box("--box", b, width, height), True) for b in args.box]
    negative = [(check_box("--negative-box", b, width, height), False) for b in args.negative_box]
    return DetectPrompt(text=args.text, boxes=boxes + negative, threshold=threshold)


def check_prompt(args: argparse.Namespace, width: int, height: int) -> DetectPrompt | InstPrompt:
    """The detector's prompt when ``--text`` is given, else the interactive one."""
    if args.text is not None and not args.text.strip():
        raise PredictError('the --text prompt is empty — give a phrase such as --text "a dog"')
    if args.text is None and not (args.box or args.negative_box or args.point):
        raise PredictError(
            'no prompt given — pass --text "a dog" (with example --box X0 Y0 X1 Y1 if you like), '
            "or --point X Y 1 and/or --box X0 Y0 X1 Y1 to segment one object"
        )
    try:
        if args.text is None:
            return _check_inst(args, width, height)
        return _check_detect(args, width, height)
    except ValueError as err:
        raise PredictError(str(err)) from None
