"""Image preprocessing for the teacher export and student training, and the valid-cell mask.

Two modes, both on a uint8 RGB image, bilinear with antialiasing (torchvision v2 functional):

* ``"squash"`` — SAM3's own inference transform (``Sam3Processor``): resize both sides to
  ``img_size`` on the uint8 image, scale to [0, 1], normalise. Every cell of the embedding is
  valid; ``valid_hw == (img_size, img_size)``.
* ``"pad"`` — the published Stage-1 recipe's geometry: resize the longest side to ``img_size``
  (each side becomes ``int(side * img_size / max(h, w) + 0.5)``, at least 1), scale to [0, 1],
  normalise, then zero-pad bottom/right. Padding happens *after* normalisation, so padded
  pixels are exactly 0 in normalised space (the mean colour). ``valid_hw`` is the resized size.

Both modes resize the uint8 image (as SAM3 does at inference), so they differ only in
geometry. EXIF orientation is not applied (SAM3's processor does not apply it either, and
SA-1B annotations refer to the stored pixel layout). Whatever was used is described by
:func:`preprocessing_record`, which the stores write into their manifests and
:func:`check_preprocessing` compares.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

RESIZE_MODES = ("pad", "squash")
PREPROCESSING_VERSION = 1  # bump when the meaning of a preprocessing record changes


class ImageTransform:
    """Turn a PIL image or a uint8 ``[C, H, W]`` tensor into the network input.

    ``__call__`` returns ``(x, (h, w))``: ``x`` is float32 ``[3, img_size, img_size]`` and
    ``(h, w)`` the valid (unpadded) size in pixels. Grayscale, RGBA, CMYK, palette and other
    PIL modes are converted to RGB; a 1-channel tensor is repeated to 3 channels and a
    4-channel tensor loses its alpha channel.
    """

    def __init__(
        self,
        img_size: int = 1008,
        mode: str = "pad",
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
    ) -> None:
        if int(img_size) != img_size or img_size < 1:
            raise ValueError(f"img_size must be a positive integer, got {img_size!r}")
        if mode not in RESIZE_MODES:
            raise ValueError(f"mode must be one of {RESIZE_MODES}, got {mode!r}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {list(mean)} / {list(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be > 0, got {list(std)}")
        self.img_size = int(img_size)
        self.mode = mode
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __repr__(self) -> str:
        return (
            f"ImageTransform(img_size={self.img_size}, mode={self.mode!r}, "
            f"mean={self.mean}, std={self.std})"
        )

    def resized_size(self, h: int, w: int) -> tuple[int, int]:
        """The size ``(h, w)`` an ``h x w`` image is resized to (before any padding)."""
        if h < 1 or w < 1:
            raise ValueError(f"image size must be at least 1x1, got {h}x{w}")
        size = self.img_size
        if self.mode == "squash":
            return size, size
        scale = size / max(h, w)
        new_h = min(size, max(1, int(h * scale + 0.5)))
        new_w = min(size, max(1, int(w * scale + 0.5)))
        return new_h, new_w

    def __call__(self, image: Image.Image | torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Preprocess one image; see the class docstring."""
        x = to_uint8_rgb(image)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        new_h, new_w = self.resized_size(h, w)
        if (new_h, new_w) != (h, w):
            x = TF.resize(
                x, [new_h, new_w], interpolation=InterpolationMode.BILINEAR, antialias=True
            )
        x = TF.to_dtype(x, torch.float32, scale=True)
        x = TF.normalize(x, mean=list(self.mean), std=list(self.std))
        pad_h, pad_w = self.img_size - new_h, self.img_size - new_w
        if pad_h or pad_w:
            # [left, top, right, bottom]; after normalisation, so the padding is exactly 0.
            x = TF.pad(x, [0, 0, pad_w, pad_h], fill=0.0)
        return x.contiguous(), (new_h, new_w)


def to_uint8_rgb(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """A plain uint8 ``[3, H, W]`` tensor from a PIL image (any mode) or a uint8 tensor.

    Tensors may be ``[H, W]``, ``[1, H, W]``, ``[3, H, W]`` or ``[4, H, W]`` (alpha dropped).
    """
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        return TF.pil_to_tensor(image)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"expected a PIL image or a uint8 tensor, got {type(image).__name__}")
    if image.dtype != torch.uint8:
        raise TypeError(
            f"image tensors must be uint8 [C, H, W] (0..255), got {image.dtype}; "
            "convert float images with (x * 255).round().to(torch.uint8) first"
        )
    x = image.as_subclass(torch.Tensor)
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.ndim != 3 or x.shape[0] not in (1, 3, 4):
        raise ValueError(f"image tensors must be [C, H, W] with C in (1, 3, 4), got {x.shape}")
    if x.shape[-2] < 1 or x.shape[-1] < 1:
        raise ValueError(f"image must be at least 1x1, got {tuple(x.shape)}")
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    elif x.shape[0] == 4:
        x = x[:3]
    return x.contiguous()


def _valid_lines(length: torch.Tensor, img_size: int, grid: int) -> torch.Tensor:
    """``[..., grid]`` bools: line ``i`` is valid iff its centre ``(i + 0.5) * img_size / grid``
    is ``< length``, computed exactly in integers as ``(2i + 1) * img_size < 2 * length * grid``.
    """
    idx = torch.arange(grid, dtype=torch.int64, device=length.device)
    return (2 * idx + 1) * img_size < 2 * length.to(torch.int64).unsqueeze(-1) * grid


def _check_grid(img_size: int, grid: int) -> None:
    if img_size < 1 or grid < 1:
        raise ValueError(f"img_size and grid must be >= 1, got {img_size} and {grid}")


def build_valid_mask(h: int, w: int, img_size: int, grid: int) -> torch.Tensor:
    """Bool ``[grid, grid]``: which embedding cells cover real (unpadded) pixels.

    With ``stride = img_size / grid``, cell ``(i, j)`` is valid iff its centre pixel
    ``(i * stride + stride / 2, j * stride + stride / 2)`` lies inside ``[0, h) x [0, w)``.
    For an integer stride (1008 / 72 = 14) this is exactly the published rule "ones on
    ``[:h, :w]`` of ``img_size**2``, bilinear (``align_corners=False``) to ``grid**2``,
    ``> 0.5``": that interpolation averages pixels ``14i + 6`` and ``14i + 7``, so it exceeds 0.5
    iff pixel ``14i + 7`` is valid. E.g. ``h = 756`` gives 54 valid rows.
    """
    _check_grid(img_size, grid)
    if not (0 <= h <= img_size and 0 <= w <= img_size):
        raise ValueError(f"valid size {h}x{w} must lie within 0..{img_size}")
    rows = _valid_lines(torch.tensor(h), img_size, grid)
    cols = _valid_lines(torch.tensor(w), img_size, grid)
    return rows[:, None] & cols[None, :]


def build_valid_masks(h: torch.Tensor, w: torch.Tensor, img_size: int, grid: int) -> torch.Tensor:
    """Batched :func:`build_valid_mask`: ``h``, ``w`` integer tensors ``[N]`` -> bool
    ``[N, grid, grid]`` (on the device of ``h``). ``valid_hw[:, 0], valid_hw[:, 1]`` of a batch
    from :func:`stage1.data.sa1b.collate_images` fit directly."""
    _check_grid(img_size, grid)
    if h.shape != w.shape or h.ndim != 1:
        raise ValueError(f"h and w must be 1-D tensors of one shape, got {h.shape} and {w.shape}")
    if h.numel() and (
        int(h.min()) < 0 or int(w.min()) < 0 or int(h.max()) > img_size or int(w.max()) > img_size
    ):
        raise ValueError(f"valid sizes must lie within 0..{img_size}")
    rows = _valid_lines(h, img_size, grid)
    cols = _valid_lines(w.to(h.device), img_size, grid)
    return rows[:, :, None] & cols[:, None, :]


def image_transform(cfg: Any) -> ImageTransform:
    """The preprocessing a resolved config's ``DATA.*`` keys ask for (export and training)."""
    return ImageTransform(
        cfg.DATA.IMG_SIZE,
        cfg.DATA.RESIZE_MODE,
        tuple(cfg.DATA.PIXEL_MEAN),
        tuple(cfg.DATA.PIXEL_STD),
    )


def preprocessing_record(transform: ImageTransform) -> dict[str, Any]:
    """A JSON-ready description of ``transform``, written into store manifests and merged
    checkpoints so that readers can check it with :func:`check_preprocessing`."""
    pad = transform.mode == "pad"
    return {
        "version": PREPROCESSING_VERSION,
        "img_size": transform.img_size,
        "mode": transform.mode,
        "mean": list(transform.mean),
        "std": list(transform.std),
        "pixel_scale": "uint8 / 255",
        "color": "RGB",
        "resize_dtype": "uint8",
        "resize_rounding": (
            "int(side * img_size / max(h, w) + 0.5), at least 1" if pad else "both sides = img_size"
        ),
        "interpolation": "bilinear",
        "antialias": True,
        "padding": "zeros bottom/right after normalisation" if pad else "none",
        "exif_transpose": False,
    }


def _canonical(value: Any) -> Any:
    return json.loads(json.dumps(value))


def check_preprocessing(
    found: Mapping[str, Any], expected: Mapping[str, Any] | ImageTransform, where: str = "store"
) -> None:
    """Raise ``ValueError`` listing every field where ``found`` (e.g. a manifest's record)
    differs from ``expected`` (a record or a transform)."""
    if isinstance(expected, ImageTransform):
        expected = preprocessing_record(expected)
    found_c, expected_c = _canonical(dict(found)), _canonical(dict(expected))
    diffs = [
        f"{name}: {where} has {found_c.get(name, '<missing>')!r}, expected {expected_c[name]!r}"
        for name in sorted(expected_c)
        if found_c.get(name, "<missing>") != expected_c[name]
    ]
    if diffs:
        raise ValueError(
            f"the {where}'s image preprocessing differs from the configured one:\n  "
            + "\n  ".join(diffs)
            + "\nSet DATA.IMG_SIZE / DATA.RESIZE_MODE / DATA.PIXEL_MEAN / DATA.PIXEL_STD to match"
            f" the {where}, or re-export it with the current settings."
        )
