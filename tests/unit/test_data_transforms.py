"""Image preprocessing and the valid-cell mask, checked numerically."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from stage1.data.transforms import (
    ImageTransform,
    build_valid_mask,
    build_valid_masks,
    check_preprocessing,
    preprocessing_record,
)


def _noise(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)


def _bilinear_rule(h: int, w: int, img_size: int, grid: int) -> torch.Tensor:
    """The published rule: ones on [:h, :w], bilinear (no antialias) to grid**2, > 0.5."""
    ones = torch.zeros(1, 1, img_size, img_size)
    ones[..., :h, :w] = 1.0
    small = F.interpolate(ones, size=(grid, grid), mode="bilinear", align_corners=False)
    return small[0, 0] > 0.5


@pytest.mark.parametrize(
    ("h", "w"), [(30, 40), (40, 30), (56, 56), (1, 300), (300, 1), (113, 57), (112, 112)]
)
def test_pad_size_rounding_and_zero_padding(h: int, w: int) -> None:
    size = 112
    x, (vh, vw) = ImageTransform(size, "pad")(_noise(h, w))
    scale = size / max(h, w)
    assert (vh, vw) == (max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5)))
    assert max(vh, vw) == size
    assert x.shape == (3, size, size) and x.dtype == torch.float32
    assert torch.count_nonzero(x[:, vh:, :]) == 0
    assert torch.count_nonzero(x[:, :, vw:]) == 0


def test_pad_matches_float_antialiased_resize_within_quantisation() -> None:
    img = _noise(90, 60, seed=1)
    x, (vh, vw) = ImageTransform(48, "pad", mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))(img)
    ref = F.interpolate(
        img[None].float(), size=(vh, vw), mode="bilinear", align_corners=False, antialias=True
    )[0]
    mean = torch.tensor([0.4, 0.5, 0.6])[:, None, None]
    std = torch.tensor([0.2, 0.3, 0.4])[:, None, None]
    ref = (ref.round().clamp(0, 255) / 255 - mean) / std
    # uint8 resizing may round differently by one grey level: at most 1/255/std apart.
    assert (x[:, :vh, :vw] - ref).abs().max() <= 1.0 / 255 / 0.2 + 1e-5


def test_solid_colour_normalises_exactly() -> None:
    img = Image.new("RGB", (50, 20), (255, 0, 128))
    x, (vh, vw) = ImageTransform(64, "pad")(img)
    assert (vh, vw) == (26, 64)
    expected = torch.tensor([1.0, -1.0, 128 / 255 / 0.5 - 1.0])
    assert torch.allclose(x[:, :vh, :vw], expected[:, None, None].expand(3, vh, vw), atol=1e-6)


@pytest.mark.parametrize(("h", "w"), [(30, 40), (77, 20), (64, 64)])
def test_squash_equals_sam3_inference_transform(h: int, w: int) -> None:
    img = _noise(h, w, seed=2)
    sam3 = v2.Compose(
        [
            v2.ToDtype(torch.uint8, scale=True),
            v2.Resize(size=(64, 64)),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
        ]
    )
    x, hw = ImageTransform(64, "squash")(img)
    assert hw == (64, 64)
    assert torch.equal(x, sam3(img))
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    assert torch.equal(ImageTransform(64, "squash")(pil)[0], sam3(v2.functional.to_image(pil)))


def test_pil_and_tensor_inputs_agree() -> None:
    img = _noise(33, 47, seed=3)
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    t = ImageTransform(40, "pad")
    a, hw_a = t(img)
    b, hw_b = t(pil)
    assert hw_a == hw_b and torch.equal(a, b)


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "LA", "I;16"])
def test_non_rgb_modes_become_rgb(mode: str) -> None:
    img = Image.new("RGB", (20, 10), (200, 100, 50)).convert(mode)
    x, hw = ImageTransform(32, "pad")(img)
    assert x.shape == (3, 32, 32) and hw == (16, 32)
    assert torch.isfinite(x).all()


def test_grayscale_is_replicated_over_channels() -> None:
    x, (vh, vw) = ImageTransform(32, "pad")(Image.new("L", (32, 32), 77))
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    gray = torch.full((1, 20, 30), 77, dtype=torch.uint8)
    y, _ = ImageTransform(32, "pad")(gray)
    assert torch.equal(y[0], y[2])
    rgba = torch.cat([_noise(20, 30), torch.zeros(1, 20, 30, dtype=torch.uint8)])
    assert torch.equal(ImageTransform(32)(rgba)[0], ImageTransform(32)(rgba[:3])[0])


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="mode"):
        ImageTransform(32, "crop")
    with pytest.raises(ValueError, match="3 values"):
        ImageTransform(32, mean=(0.5,))
    with pytest.raises(TypeError, match="uint8"):
        ImageTransform(32)(torch.rand(3, 10, 10))
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        ImageTransform(32)(torch.zeros(2, 10, 10, dtype=torch.uint8))


SIZES_1008 = [1, 6, 7, 8, 13, 14, 20, 21, 22, 500, 755, 756, 757, 1000, 1007, 1008]


def test_valid_mask_matches_bilinear_rule_at_sam3_size() -> None:
    for h in SIZES_1008:
        w = SIZES_1008[(SIZES_1008.index(h) * 7) % len(SIZES_1008)]
        assert torch.equal(build_valid_mask(h, w, 1008, 72), _bilinear_rule(h, w, 1008, 72)), (h, w)


@pytest.mark.parametrize(("img_size", "grid"), [(112, 8), (64, 16), (60, 20), (96, 32), (90, 10)])
def test_valid_mask_matches_bilinear_rule_for_integer_strides(img_size: int, grid: int) -> None:
    for h in range(0, img_size + 1, 3):
        w = img_size - h // 2
        assert torch.equal(
            build_valid_mask(h, w, img_size, grid), _bilinear_rule(h, w, img_size, grid)
        ), (h, w)


def test_valid_mask_known_values_and_batch() -> None:
    mask = build_valid_mask(756, 1008, 1008, 72)
    assert mask.dtype == torch.bool and mask.shape == (72, 72)
    assert mask.all(dim=1)[:54].all() and not mask[54:].any()
    assert build_valid_mask(1008, 1008, 1008, 72).all()
    hs = torch.tensor([756, 1, 1008, 300])
    ws = torch.tensor([1008, 1008, 7, 8])
    batch = build_valid_masks(hs, ws, 1008, 72)
    single = torch.stack([build_valid_mask(int(h), int(w), 1008, 72) for h, w in zip(hs, ws)])
    assert torch.equal(batch, single)
    assert build_valid_masks(hs[:0], ws[:0], 1008, 72).shape == (0, 72, 72)
    with pytest.raises(ValueError, match="within"):
        build_valid_mask(1009, 10, 1008, 72)


def test_valid_mask_covers_exactly_the_transformed_content() -> None:
    """Every valid cell's centre pixel is image content; every invalid one is padding."""
    t = ImageTransform(112, "pad")
    x, (vh, vw) = t(torch.full((3, 50, 90), 255, dtype=torch.uint8))
    mask = build_valid_mask(vh, vw, 112, 8)
    centres = x[0, 7::14, 7::14]  # stride 14: centre pixel 14i + 7
    assert torch.equal(mask, centres != 0)


def test_preprocessing_record_round_trips_and_is_checked() -> None:
    t = ImageTransform(1008, "pad")
    record = json.loads(json.dumps(preprocessing_record(t)))
    assert record["img_size"] == 1008 and record["mode"] == "pad"
    assert record["mean"] == [0.5, 0.5, 0.5] and record["interpolation"] == "bilinear"
    assert "int(side" in record["resize_rounding"]
    check_preprocessing(record, t)
    with pytest.raises(ValueError, match=r"mode: store has 'pad', expected 'squash'"):
        check_preprocessing(record, ImageTransform(1008, "squash"))
    with pytest.raises(ValueError, match="DATA.PIXEL_MEAN"):
        check_preprocessing(record, ImageTransform(1008, "pad", mean=(0.485, 0.456, 0.406)))
