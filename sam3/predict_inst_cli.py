"""The interactive path of ``python -m sam3.predict`` (clicks and boxes, no text): the prompt
from ``--point`` / ``--box`` checked against the photo, one or more prompt sets run through
:meth:`sam3.predictor.Sam3Predictor.predict_inst`, and the JSON entries of the masks.

All ``--point`` s form one prompt set, with the ``--box`` when exactly one is given; several
``--box`` es without points are one prompt set each. Multimask follows SAM's advice: three
candidates for a single click, one mask otherwise, unless ``--multimask`` / ``--single-mask``
say so. A mistake raises ``ValueError`` whose text is ``<what is wrong> — <what to do>``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .preprocess import clip_box


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


def add_inst_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the interactive path."""
    p.add_argument(
        "--point",
        nargs=3,
        type=float,
        action="append",
        default=[],
        metavar=("X", "Y", "LABEL"),
        help="a click on the object (LABEL 1) or its background (0), pixels; no --text "
        "(repeatable)",
    )
    many = "three candidate masks per prompt set (default for a single --point)"
    p.add_argument("--multimask", action="store_true", help=many)
    one = "one mask per prompt set (default for boxes and several points)"
    p.add_argument("--single-mask", action="store_true", help=one)


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


def check_inst_prompt(
    points: Sequence[Sequence[float]],
    boxes: Sequence[Sequence[float]],
    multimask: bool,
    single_mask: bool,
    width: int,
    height: int,
) -> InstPrompt:
    """The checked prompt of ``--point`` s, ``--box`` es and the multimask flags (see module)."""
    if multimask and single_mask:
        raise ValueError(
            "--multimask and --single-mask contradict each other — give at most one of them"
        )
    if points and len(boxes) > 1:
        raise ValueError(
            f"--point with {len(boxes)} --box prompts: clicks go with at most one box — give "
            "one --box with the points, or several --box without points (one object each)"
        )
    checked = [check_point(p, width, height) for p in points]
    clipped = [check_box("--box", b, width, height) for b in boxes]
    auto = len(checked) == 1 and not clipped
    chosen = True if multimask else False if single_mask else auto
    return InstPrompt(points=checked, boxes=clipped, multimask=chosen)


def check_inst_args(args: argparse.Namespace, width: int, height: int) -> InstPrompt:
    """The interactive prompt of a command line without ``--text``; ``ValueError`` also for the
    options that belong to the detector."""
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
    return check_inst_prompt(args.point, args.box, args.multimask, args.single_mask, width, height)


@dataclass
class InstResult:
    """The masks of every prompt set, flattened in set order: ``masks`` bool ``[M, H, W]``,
    ``scores`` (predicted IoU), ``mask_index`` (decoder token) and ``prompt`` (set) ``[M]``."""

    masks: np.ndarray
    scores: np.ndarray
    mask_index: np.ndarray
    prompt: np.ndarray


def run_inst(predictor: Any, state: Any, prompt: InstPrompt) -> InstResult:
    """Run ``prompt`` on a ``set_image`` state: one call, batched when there are several boxes."""
    coords = [p[:2] for p in prompt.points] or None
    labels = [p[2] for p in prompt.points] or None
    box = prompt.boxes if len(prompt.boxes) > 1 else (prompt.boxes[0] if prompt.boxes else None)
    out = predictor.predict_inst(
        state, point_coords=coords, point_labels=labels, box=box, multimask_output=prompt.multimask
    )
    masks = out.masks.cpu().numpy()
    height, width = masks.shape[-2:]
    sets = 1 if masks.ndim == 3 else masks.shape[0]
    per_set = masks.shape[-3]
    return InstResult(
        masks=masks.reshape(-1, height, width),
        scores=out.scores.cpu().numpy().reshape(-1),
        mask_index=out.mask_index.cpu().numpy().reshape(-1),
        prompt=np.repeat(np.arange(sets), per_set),
    )


def mask_box(mask: np.ndarray) -> list[float] | None:
    """The tight box ``[x0, y0, x1, y1]`` of a bool mask in pixel-edge coordinates (a mask of
    pixel columns ``a..b`` spans ``x0 = a``, ``x1 = b + 1``); ``None`` for an empty mask."""
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if not len(cols):
        return None
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def inst_entries(result: InstResult, rles: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The JSON entries of the masks (``rles``: their COCO RLE, in the same order)."""
    entries = []
    for mask, score, index, which, rle in zip(
        result.masks, result.scores, result.mask_index, result.prompt, rles
    ):
        entries.append(
            {
                "box_xyxy": mask_box(mask),
                "score": round(float(score), 5),
                "area": int(mask.sum()),
                "mask": rle,
                "mask_index": int(index),
                "prompt": int(which),
            }
        )
    return entries


def segment(
    predictor: Any, state: Any, prompt: InstPrompt, rle: Callable[[np.ndarray], list]
) -> tuple[dict, dict, list[dict[str, Any]], tuple, str]:
    """The interactive run for ``python -m sam3.predict``: the prompt's record, nothing extra
    for the JSON header, the entries (``rle`` encodes masks), the overlay's arguments
    (:func:`sam3.visualize.draw_detections`) and the summary's wording."""
    result = run_inst(predictor, state, prompt)
    entries = inst_entries(result, rle(result.masks) if len(result.masks) else [])
    boxes = np.array([e["box_xyxy"] or [np.nan] * 4 for e in entries], dtype=np.float32)
    points = [(x, y, bool(label)) for x, y, label in prompt.points]
    prompt_boxes = [(b, True) for b in prompt.boxes]
    draw = (result.masks, boxes.reshape(-1, 4), result.scores.tolist(), prompt_boxes, points)
    sizes = f"{len(prompt.points)} point(s), {len(prompt.boxes)} box(es)"
    what = f"(score = predicted IoU) for {sizes}, multimask {'on' if prompt.multimask else 'off'}"
    return prompt.record(), {}, entries, draw, what
