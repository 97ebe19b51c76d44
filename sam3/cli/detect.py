"""The detector's run of ``python -m sam3.predict``: every instance of the text (with example
boxes), each mask scored by SAM3's detection score and kept above the threshold."""

from __future__ import annotations

from typing import Any

from ..predictor import Sam3Predictor
from .outputs import PromptRun, rle
from .prompts import DetectPrompt


def detect(predictor: Sam3Predictor, state: Any, prompt: DetectPrompt) -> PromptRun:
    """Run ``prompt`` on a ``set_image`` state; the JSON entries and the overlay's arguments."""
    boxes = prompt.boxes
    det = predictor.predict(state, prompt.text, [b for b, _ in boxes], [p for _, p in boxes])
    masks = det.masks.cpu().numpy()
    entries = [
        {
            "box_xyxy": [round(float(v), 2) for v in box],
            "score": round(float(score), 5),
            "area": int(mask.sum()),
            "mask": encoded,
        }
        for box, score, mask, encoded in zip(
            det.boxes.tolist(), det.scores.tolist(), masks, rle(masks) if len(det) else []
        )
    ]
    return PromptRun(
        prompt={
            "text": prompt.text,
            "boxes": [b for b, positive in boxes if positive],
            "negative_boxes": [b for b, positive in boxes if not positive],
        },
        header={"threshold": prompt.threshold},
        entries=entries,
        overlay={
            "masks": masks,
            "boxes": det.boxes.cpu().numpy(),
            "scores": det.scores.tolist(),
            "prompt_boxes": boxes,
        },
        kind="detection(s)",
        what=f"above {prompt.threshold:g} for {prompt.text!r}",
    )
