"""Detections drawn on a photo: semi-transparent coloured masks, boxes, score labels (PIL)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Distinct, saturated colours (RGB), cycled over detections.
PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (0, 128, 128),
    (255, 225, 25),
)
PROMPT_COLOURS = {True: (255, 255, 255), False: (255, 0, 0)}  # positive / negative prompt boxes


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def draw_detections(
    image: Image.Image,
    masks: np.ndarray,
    boxes: np.ndarray,
    scores: Sequence[float],
    prompt_boxes: Sequence[tuple[Sequence[float], bool]] = (),
    prompt_points: Sequence[tuple[float, float, bool]] = (),
    alpha: float = 0.45,
) -> Image.Image:
    """A new RGB image: ``image`` with each mask (bool ``[N, H, W]``) blended in its colour at
    ``alpha``, its box (``[N, 4]`` xyxy pixels; a non-finite one, e.g. of an empty mask, is not
    drawn) outlined and its score written above it, and the prompt boxes (``(xyxy, positive)``)
    and clicks (``(x, y, positive)``, dots ringed in black) in white (positive) or red
    (negative)."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    if masks.shape[1:] != base.shape[:2]:
        raise ValueError(f"masks {masks.shape[1:]} do not match the image {base.shape[:2]}")
    for i, mask in enumerate(masks):
        colour = np.asarray(PALETTE[i % len(PALETTE)], dtype=np.float32)
        base[mask] = base[mask] * (1.0 - alpha) + colour * alpha
    out = Image.fromarray(base.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    h, w = base.shape[:2]
    width = max(1, round(max(h, w) / 400))
    font = _font(max(10, round(max(h, w) / 50)))
    for box, positive in prompt_boxes:
        draw.rectangle([float(v) for v in box], outline=PROMPT_COLOURS[bool(positive)], width=width)
    radius = max(3, 3 * width)
    for x, y, positive in prompt_points:
        dot = [x - radius, y - radius, x + radius, y + radius]
        draw.ellipse(dot, fill=PROMPT_COLOURS[bool(positive)], outline=(0, 0, 0), width=width)
    for i, (box, score) in enumerate(zip(boxes, scores)):
        colour = PALETTE[i % len(PALETTE)]
        x0, y0, x1, y1 = (float(v) for v in box)
        if not all(np.isfinite([x0, y0, x1, y1])):
            continue
        draw.rectangle([x0, y0, max(x0, x1), max(y0, y1)], outline=colour, width=width)
        label = f"{float(score):.2f}"
        _, _, right, bottom = draw.textbbox((0, 0), label, font=font)
        label_w, label_h = right + 4, bottom + 2
        tx = min(max(x0, 0.0), max(0.0, w - label_w))
        ty = y0 - label_h if y0 - label_h >= 0 else min(max(y0, 0.0), max(0.0, h - label_h))
        draw.rectangle([tx, ty, tx + label_w, ty + label_h], fill=colour)
        draw.text((tx + 2, ty), label, fill=(255, 255, 255), font=font)
    return out
