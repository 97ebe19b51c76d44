"""A photo -> the image model's input square, and the input square's coordinates -> the photo's.

Two resize modes, both on the uint8 image, bilinear with antialiasing:

* ``"squash"`` (SAM3's own): both sides to ``img_size``, then scale to [0, 1] and normalise.
* ``"pad"`` (a merged EfficientSAM3 checkpoint may record it): the longest side to ``img_size``,
  each side ``int(side * img_size / max(h, w) + 0.5)`` (at least 1); normalise, then zero-pad
  bottom/right, so the padding is exactly 0 in normalised space.

:class:`ImageGeometry` records where the photo lies in the square and maps boxes and mask logits
between the two, exactly for both modes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .schema import PREPROCESSING_FIELDS

RESIZE_MODES = ("squash", "pad")
MASK_CHUNK = 16  # masks upsampled at a time (bounds the float memory for large photos)


@dataclass(frozen=True)
class Preprocessing:
    """The model's input transform, as ``model.preprocessing`` records it."""

    img_size: int
    resize_mode: str
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Preprocessing:
        """Validate a ``{"img_size", "resize_mode", "pixel_mean", "pixel_std"}`` mapping."""
        missing = [k for k in PREPROCESSING_FIELDS if k not in record]
        if missing:
            raise ValueError(
                f"the model's preprocessing record lacks {missing}: got {dict(record)}"
            )
        size, mode = record["img_size"], record["resize_mode"]
        mean, std = (
            tuple(float(v) for v in record["pixel_mean"]),
            tuple(float(v) for v in record["pixel_std"]),
        )
        if isinstance(size, bool) or int(size) != size or size < 1:
            raise ValueError(f"preprocessing img_size must be a positive integer, got {size!r}")
        if mode not in RESIZE_MODES:
            raise ValueError(
                f"preprocessing resize_mode must be one of {RESIZE_MODES}, got {mode!r}"
            )
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"preprocessing needs 3 means and 3 positive stds, got {mean} / {std}")
        return cls(int(size), mode, mean, std)  # type: ignore[arg-type]

    def resized_size(self, h: int, w: int) -> tuple[int, int]:
        """The size an ``h x w`` photo is resized to inside the square (before padding)."""
        size = self.img_size
        if self.resize_mode == "squash":
            return size, size
        scale = size / max(h, w)
        return min(size, max(1, int(h * scale + 0.5))), min(size, max(1, int(w * scale + 0.5)))


@dataclass(frozen=True)
class ImageGeometry:
    """Where an ``orig_h x orig_w`` photo lies in the ``img_size`` input square: its resized
    copy covers ``[0, valid_h) x [0, valid_w)`` (the whole square when squashed)."""

    orig_h: int
    orig_w: int
    valid_h: int
    valid_w: int
    img_size: int

    def _scale(self) -> tuple[float, float]:
        """Original pixels per unit of normalised input coordinate, along x and y."""
        s = self.img_size
        return s * self.orig_w / self.valid_w, s * self.orig_h / self.valid_h

    def boxes_to_pixels(self, boxes_xyxy: Tensor) -> Tensor:
        """``[..., 4]`` xyxy normalised to the input square -> xyxy pixels of the photo."""
        sx, sy = self._scale()
        return boxes_xyxy * boxes_xyxy.new_tensor([sx, sy, sx, sy])

    def box_to_input(self, box_xyxy: Sequence[float]) -> list[float]:
        """One xyxy box in photo pixels -> cxcywh normalised to the input square."""
        sx, sy = self._scale()
        x0, y0, x1, y1 = (float(v) for v in box_xyxy)
        return [(x0 + x1) / 2 / sx, (y0 + y1) / 2 / sy, (x1 - x0) / sx, (y1 - y0) / sy]

    def masks_to_image(self, mask_logits: Tensor, sigmoid: bool = True) -> Tensor:
        """Mask logits ``[N, h, w]`` over the input square -> bool ``[N, orig_h, orig_w]``.

        Bilinear (``align_corners=False``), then ``sigmoid > 0.5`` as SAM3's detector does
        (``sigmoid=False``: ``logits > 0``, as its interactive predictor does). In pad mode only
        the rows/columns that cover the photo are upsampled, with the photo's true extent in
        mask cells (fractional when ``valid * h / img_size`` is not whole; the last, partly
        padded cell is then extended as the image border is).
        """
        n, h, w = mask_logits.shape
        out = torch.empty(n, self.orig_h, self.orig_w, dtype=torch.bool, device=mask_logits.device)
        size = (self.orig_h, self.orig_w)
        num_h, num_w = self.valid_h * h, self.valid_w * w  # extent in cells = num / img_size
        whole = num_h % self.img_size == 0 and num_w % self.img_size == 0
        crop_h, crop_w = -(-num_h // self.img_size), -(-num_w // self.img_size)
        logits = mask_logits[:, :crop_h, :crop_w]
        for start in range(0, n, MASK_CHUNK):
            chunk = logits[start : start + MASK_CHUNK].unsqueeze(1).float()
            if whole:
                up = F.interpolate(chunk, size=size, mode="bilinear", align_corners=False)
            else:
                # One replicated row/column keeps the border clamp while the output overshoots.
                chunk = F.pad(chunk, (0, 1, 0, 1), mode="replicate")
                factor = (
                    self.orig_h * self.img_size / num_h,
                    self.orig_w * self.img_size / num_w,
                )
                up = F.interpolate(
                    chunk,
                    scale_factor=factor,
                    mode="bilinear",
                    align_corners=False,
                    recompute_scale_factor=False,
                )[..., : self.orig_h, : self.orig_w]
            out[start : start + MASK_CHUNK] = (
                (up[:, 0].sigmoid() > 0.5) if sigmoid else up[:, 0] > 0
            )
        return out


def clip_box(box: Sequence[float], width: int, height: int) -> list[float]:
    """An xyxy pixel box clipped to a ``width x height`` photo; ``ValueError`` unless it is 4
    finite numbers with ``x1 > x0``, ``y1 > y0`` and some overlap with the photo."""
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        raise ValueError(f"a box is 4 numbers x0 y0 x1 y1, got {box!r}") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"a box is 4 finite numbers x0 y0 x1 y1, got {box!r}")
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {values} needs x1 > x0 and y1 > y0 (xyxy pixels)")
    cx = lambda v: min(max(v, 0.0), float(width))  # noqa: E731
    cy = lambda v: min(max(v, 0.0), float(height))  # noqa: E731
    clipped = [cx(x0), cy(y0), cx(x1), cy(y1)]
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise ValueError(f"box {values} lies outside the {width}x{height} image")
    return clipped


def to_uint8_chw(image: Any) -> Tensor:
    """A uint8 ``[3, H, W]`` tensor from a PIL image (any mode, converted to RGB), an
    ``H x W x 3`` uint8 numpy array, or a ``[3, H, W]`` tensor (uint8, or float in [0, 1])."""
    if isinstance(image, Image.Image):
        return TF.pil_to_tensor(image if image.mode == "RGB" else image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"numpy images must be H x W x 3 uint8 (RGB), got shape {image.shape} of "
                f"{image.dtype}; convert with PIL or np.asarray(img.convert('RGB'))"
            )
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    elif isinstance(image, Tensor):
        x = image.as_subclass(Tensor)
        if x.ndim != 3 or x.shape[0] != 3:
            raise ValueError(
                f"image tensors must be [3, H, W] (RGB, channels first), got {tuple(x.shape)}"
            )
        if x.is_floating_point():
            if x.numel() and (bool(x.isnan().any()) or x.min() < 0 or x.max() > 1):
                raise ValueError("float image tensors must hold values in [0, 1]")
            x = TF.to_dtype(x, torch.uint8, scale=True)  # as SAM3's processor converts them
        elif x.dtype != torch.uint8:
            raise ValueError(
                f"image tensors must be uint8 (0..255) or float in [0, 1], got {x.dtype}"
            )
    else:
        raise ValueError(
            f"expected a PIL image, an H x W x 3 uint8 numpy array or a [3, H, W] tensor, "
            f"got {type(image).__name__}"
        )
    if x.shape[1] < 1 or x.shape[2] < 1:
        raise ValueError(f"the image is empty: {tuple(x.shape[1:])} pixels")
    return x.contiguous()


def preprocess(
    image: Any, prep: Preprocessing, device: torch.device | str = "cpu"
) -> tuple[Tensor, ImageGeometry]:
    """One photo -> (float32 ``[3, S, S]`` on ``device``, its :class:`ImageGeometry`)."""
    x = to_uint8_chw(image).to(device)
    h, w = int(x.shape[1]), int(x.shape[2])
    new_h, new_w = prep.resized_size(h, w)
    if (new_h, new_w) != (h, w):
        x = TF.resize(x, [new_h, new_w], interpolation=InterpolationMode.BILINEAR, antialias=True)
    x = TF.normalize(
        TF.to_dtype(x, torch.float32, scale=True),
        mean=list(prep.pixel_mean),
        std=list(prep.pixel_std),
    )
    pad_h, pad_w = prep.img_size - new_h, prep.img_size - new_w
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))  # after normalisation: the padding is exactly 0
    return x.contiguous(), ImageGeometry(h, w, new_h, new_w, prep.img_size)
