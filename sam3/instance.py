"""Point, box and mask prompts on one photo (SAM's task): validation, coordinates, masks.

Prompts arrive in the photo's pixels and are checked before the model runs; they are mapped to
the input square as SAM3's image predictor maps them (``x / W * side``). The low-resolution
logits become masks at the photo's size as SAM3 does: background holes of at most
``max_hole_area`` low-resolution cells (8-connected) are filled, then the logits are upsampled
bilinearly and kept where positive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from .preprocess import ImageGeometry, clip_box

MAX_HOLE_AREA = 256.0  # SAM3's default: holes up to this many low-res cells are filled
HOLE_FILL_LOGIT = 10.0  # the logit a filled hole gets
LOW_RES_CLAMP = 32.0  # returned low-res logits are clamped to +-this (as SAM3 returns them)
_EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)


@dataclass
class InstanceMasks:
    """What one interactive call returns. ``K`` masks per prompt set (3, or 1 without
    multimask), with a leading ``N`` when the prompts were batched.

    ``masks`` bool ``[(N,) K, H, W]`` at the photo's size; ``scores`` float32 ``[(N,) K]``
    (predicted IoU); ``low_res_logits`` float32 ``[(N,) K, 4S, 4S]`` (feed one back as
    ``mask_input``); ``object_score_logits`` ``[(N,) 1]``; ``mask_index`` ``[(N,) K]`` (which
    decoder token each mask is: 0 single-mask, 1-3 multimask).
    """

    masks: Tensor
    scores: Tensor
    low_res_logits: Tensor
    object_score_logits: Tensor
    mask_index: Tensor

    def __len__(self) -> int:
        return int(self.scores.numel())


@dataclass
class InstancePrompt:
    """Validated prompts in input-square pixels, ``N`` prompt sets."""

    point_coords: Tensor | None  # [N, P, 2]
    point_labels: Tensor | None  # [N, P]
    boxes: Tensor | None  # [N, 4] xyxy
    mask_input: Tensor | None  # [N, 1, 4S, 4S]
    batched: bool  # whether the caller gave a leading N


def _array(value: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value.cpu() if isinstance(value, Tensor) else value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be numbers, got {value!r}") from None
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} must be finite numbers, got {value!r}")
    return arr


def _points(
    coords: Any, labels: Any, geometry: ImageGeometry
) -> tuple[np.ndarray, np.ndarray] | None:
    if coords is None and labels is None:
        return None
    if coords is None or labels is None:
        raise ValueError("point_coords and point_labels go together: give both or neither")
    xy, lab = _array(coords, "point_coords"), _array(labels, "point_labels")
    if xy.ndim not in (2, 3) or xy.shape[-1] != 2 or xy.shape[-2] == 0:
        raise ValueError(f"point_coords are [P, 2] or [N, P, 2] (x, y), got shape {xy.shape}")
    if lab.shape != xy.shape[:-1]:
        raise ValueError(
            f"point_labels need shape {xy.shape[:-1]} for those points, got {lab.shape}"
        )
    bad = sorted({float(v) for v in lab.ravel() if v not in (0.0, 1.0)})
    if bad:
        raise ValueError(f"point labels are 1 (positive) or 0 (negative), got {bad}")
    w, h = geometry.orig_w, geometry.orig_h
    outside = (xy[..., 0] < 0) | (xy[..., 0] > w) | (xy[..., 1] < 0) | (xy[..., 1] > h)
    if outside.any():
        first = xy[outside][0].tolist()
        raise ValueError(
            f"point {first} lies outside the {w}x{h} image (x in [0, {w}], y in [0, {h}])"
        )
    return xy, lab


def _boxes(box: Any, geometry: ImageGeometry) -> np.ndarray | None:
    if box is None:
        return None
    arr = _array(box, "box")
    if arr.ndim not in (1, 2) or arr.shape[-1] != 4 or arr.size == 0:
        raise ValueError(f"a box is [x0, y0, x1, y1] (or [N, 4] for many), got shape {arr.shape}")
    rows = [clip_box(b, geometry.orig_w, geometry.orig_h) for b in arr.reshape(-1, 4)]
    return np.asarray(rows, dtype=np.float64).reshape(arr.shape)


def prepare_prompt(
    geometry: ImageGeometry,
    mask_size: int,
    point_coords: Any = None,
    point_labels: Any = None,
    box: Any = None,
    mask_input: Any = None,
    device: torch.device | str = "cpu",
) -> InstancePrompt:
    """Check the prompts of one call and map them to the input square (see module doc).

    Raises ``ValueError`` with what is wrong: no prompt, points outside the photo, a label
    other than 0/1, a box with ``x1 <= x0`` or ``y1 <= y0`` or outside the photo, shapes that
    disagree, a ``mask_input`` not ``mask_size`` square.
    """
    points, boxes = _points(point_coords, point_labels, geometry), _boxes(box, geometry)
    if points is None and boxes is None and mask_input is None:
        raise ValueError("no prompt: give point_coords + point_labels, a box, or a mask_input")
    batched = (points is not None and points[0].ndim == 3) or (
        boxes is not None and boxes.ndim == 2
    )
    n = {len(points[0]) if points[0].ndim == 3 else 1} if points is not None else set()
    if boxes is not None:
        n.add(len(boxes) if boxes.ndim == 2 else 1)
    if len(n) > 1:
        raise ValueError(
            f"boxes and point sets disagree in number ({sorted(n)}): give one box per set"
        )
    count = n.pop() if n else 1
    as_float = lambda v: torch.as_tensor(v, dtype=torch.float32, device=device)  # noqa: E731
    coords = labels = boxes_in = None
    if points is not None:
        coords = as_float(points[0]).reshape(count, -1, 2)
        coords = _to_input(coords, geometry)
        labels = torch.as_tensor(points[1], dtype=torch.long, device=device).reshape(count, -1)
    if boxes is not None:
        boxes_in = _to_input(as_float(boxes).reshape(count, 2, 2), geometry).reshape(count, 4)
    mask = None if mask_input is None else _mask(mask_input, mask_size, count, device)
    return InstancePrompt(coords, labels, boxes_in, mask, batched)


def _to_input(xy: Tensor, geometry: ImageGeometry) -> Tensor:
    """``[..., 2]`` photo pixels -> input-square pixels (SAM3's order of operations)."""
    out = xy.clone()
    out[..., 0] = xy[..., 0] / geometry.orig_w * geometry.valid_w
    out[..., 1] = xy[..., 1] / geometry.orig_h * geometry.valid_h
    return out


def _mask(mask_input: Any, size: int, count: int, device: torch.device | str) -> Tensor:
    mask = torch.as_tensor(
        np.asarray(mask_input.cpu() if isinstance(mask_input, Tensor) else mask_input),
        dtype=torch.float32,
        device=device,
    )
    if mask.shape[-2:] != (size, size) or mask.ndim not in (2, 3, 4):
        raise ValueError(
            f"mask_input must be low-resolution logits of {size}x{size} (one of a previous "
            f"call's low_res_logits), got shape {tuple(mask.shape)}"
        )
    mask = mask.reshape(-1, 1, size, size)
    if mask.shape[0] not in (1, count):
        raise ValueError(f"{mask.shape[0]} mask inputs for {count} prompt sets")
    return mask.expand(count, -1, -1, -1)


def fill_holes(logits: Tensor, max_area: float = MAX_HOLE_AREA) -> Tensor:
    """Set background components (``logit <= 0``, 8-connected) of at most ``max_area`` cells
    of every ``[..., h, w]`` map to :data:`HOLE_FILL_LOGIT` (a copy; ``max_area <= 0``: none)."""
    if max_area <= 0 or logits.numel() == 0:
        return logits
    flat = logits.reshape(-1, *logits.shape[-2:])
    background = (flat <= 0).cpu().numpy()
    holes = np.zeros_like(background)
    for i, bg in enumerate(background):
        labels, count = ndimage.label(bg, structure=_EIGHT_NEIGHBOURS)
        if count:
            small = np.bincount(labels.ravel()) <= max_area
            small[0] = False
            holes[i] = small[labels]
    if not holes.any():
        return logits
    mask = torch.from_numpy(holes).to(logits.device).view_as(logits)
    return logits.masked_fill(mask, HOLE_FILL_LOGIT)


def to_instance_masks(
    out: dict[str, Tensor], geometry: ImageGeometry, batched: bool, max_hole_area: float
) -> InstanceMasks:
    """The heads' outputs -> :class:`InstanceMasks` at the photo's size (float32 results)."""
    low = out["low_res_masks"].float()
    filled = fill_holes(low, max_hole_area)
    n, k = low.shape[:2]
    masks = geometry.masks_to_image(filled.flatten(0, 1), sigmoid=False)
    result = InstanceMasks(
        masks=masks.view(n, k, *masks.shape[-2:]),
        scores=out["iou"].float(),
        low_res_logits=low.clamp(-LOW_RES_CLAMP, LOW_RES_CLAMP),
        object_score_logits=out["object_score_logits"].float(),
        mask_index=out["mask_index"],
    )
    if not batched:
        for name in ("masks", "scores", "low_res_logits", "object_score_logits", "mask_index"):
            setattr(result, name, getattr(result, name)[0])
    return result
