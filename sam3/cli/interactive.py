"""The interactive run of ``python -m sam3.predict`` (clicks and boxes, no text): one or more
prompt sets through :meth:`sam3.predictor.Sam3Predictor.predict_inst`, each mask scored by its
predicted IoU, and the JSON entries of the masks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..predictor import Sam3Predictor
from .outputs import PromptRun, rle
from .prompts import InstPrompt


@dataclass
class InstResult:
    """The masks of every prompt set, flattened in set order: ``masks`` bool ``[M, H, W]``,
    ``scores`` (predicted IoU), ``mask_index`` (decoder token) and ``prompt`` (set) ``[M]``."""

    masks: np.ndarray
    scores: np.ndarray
    mask_index: np.ndarray
    prompt: np.ndarray


def run_inst(predictor: Sam3Predictor, state: Any, prompt: InstPrompt) -> InstResult:
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
    return [
        {
            "box_xyxy": mask_box(mask),
            "score": round(float(score), 5),
            "area": int(mask.sum()),
            "mask": encoded,
            "mask_index": int(index),
            "prompt": int(which),
        }
        for mask, score, index, which, encoded in zip(
            result.masks, result.scores, result.mask_index, result.prompt, rles
        )
    ]


def segment(predictor: Sam3Predictor, state: Any, prompt: InstPrompt) -> PromptRun:
    """Run ``prompt`` on a ``set_image`` state; the JSON entries and the overlay's arguments
    (each mask's box is its tight box, none for an empty mask)."""
    result = run_inst(predictor, state, prompt)
    entries = inst_entries(result, rle(result.masks) if len(result.masks) else [])
    boxes = np.array([e["box_xyxy"] or [np.nan] * 4 for e in entries], dtype=np.float32)
    sizes = f"{len(prompt.points)} point(s), {len(prompt.boxes)} box(es)"
    multimask = "on" if prompt.multimask else "off"
    return PromptRun(
        prompt=prompt.record(),
        header={},
        entries=entries,
        overlay={
            "masks": result.masks,
            "boxes": boxes.reshape(-1, 4),
            "scores": result.scores.tolist(),
            "prompt_boxes": [(b, True) for b in prompt.boxes],
            "prompt_points": [(x, y, bool(label)) for x, y, label in prompt.points],
        },
        kind="mask(s)",
        what=f"(score = predicted IoU) for {sizes}, multimask {multimask}",
    )
