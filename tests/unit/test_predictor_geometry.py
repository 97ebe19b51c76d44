"""The predictor's geometry on a fake model whose outputs are known: the photo to the input
square (as the Stage-1 transform does it), boxes and masks back to the photo's pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sam3.predictor import Sam3Predictor
from sam3.preprocess import Preprocessing, preprocess
from stage1.data.transforms import ImageTransform

from helpers.predict import fake_model, prep_record, random_photo


@pytest.mark.parametrize("mode", ["squash", "pad"])
@pytest.mark.parametrize(("h", "w"), [(37, 91), (91, 37), (50, 50), (1, 60), (113, 57)])
def test_preprocessing_equals_the_stage1_transform(mode, h, w):
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    record = {"img_size": 56, "resize_mode": mode, "pixel_mean": mean, "pixel_std": std}
    photo = random_photo(h, w)
    ours, geometry = preprocess(photo, Preprocessing.from_record(record))
    ref, (vh, vw) = ImageTransform(56, mode, mean, std)(torch.from_numpy(photo).permute(2, 0, 1))
    assert torch.equal(ours, ref)
    assert (geometry.valid_h, geometry.valid_w, geometry.orig_h, geometry.orig_w) == (vh, vw, h, w)


def test_every_image_kind_gives_the_same_input():
    photo = random_photo(30, 47)
    prep = Preprocessing.from_record(prep_record("pad"))
    ref = preprocess(photo, prep)[0]
    chw = torch.from_numpy(photo).permute(2, 0, 1)
    for image in (
        Image.fromarray(photo),
        chw,
        chw.float() / 255,
        Image.fromarray(photo).convert("RGBA"),
    ):
        assert torch.equal(preprocess(image, prep)[0], ref)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((8, 8, 3), np.float32),
        np.zeros((8, 8, 4), np.uint8),
        np.zeros((8, 8), np.uint8),
        torch.zeros(4, 8, 8, dtype=torch.uint8),
        torch.zeros(8, 8, 3, dtype=torch.uint8),
        torch.zeros(3, 8, 8, dtype=torch.int32),
        torch.full((3, 8, 8), 1.5),
        [[0, 0, 0]],
    ],
)
def test_bad_images_are_a_clear_value_error(image):
    predictor = Sam3Predictor(fake_model())
    with pytest.raises(ValueError, match="image|numpy|expected"):
        predictor.set_image(image)


@pytest.mark.parametrize(
    ("mode", "expected"), [("squash", [40, 10, 60, 15]), ("pad", [40, 20, 60, 30])]
)
def test_pixel_boxes_on_a_non_squarerandom_photo(mode, expected):
    # 50 x 100 photo, 56 input: pad resizes it to 28 x 56, so one normalised unit is 100 px on
    # both axes; squash stretches y, one unit is 100 px in x and 50 px in y.
    model = fake_model(mode, logits=[3.0], boxes=[[0.5, 0.25, 0.2, 0.1]])
    predictor = Sam3Predictor(model)
    state = predictor.set_image(random_photo(50, 100))
    det = predictor.set_text_prompt(state, "a dog")
    assert det.boxes.dtype == torch.float32
    torch.testing.assert_close(det.boxes, torch.tensor([expected], dtype=torch.float32))
    assert det.masks.shape == (1, 50, 100) and det.masks.dtype == torch.bool


def _half_masks(size: int = 112) -> torch.Tensor:
    """Mask logits over the square: +5 everywhere except the right half of the top half."""
    h = size // 14 * 4
    m = torch.full((1, h, h), 5.0)
    m[:, : h // 2, h // 2 :] = -5.0
    return m


def test_pad_masks_are_cropped_to_therandom_photo():
    # 56 x 112 photo in a 112 square: pad puts it in the top half (16 of 32 mask rows), so its
    # mask is the left half, all rows.
    model = fake_model("pad", size=112, masks=_half_masks())
    predictor = Sam3Predictor(model)
    det = predictor.set_text_prompt(predictor.set_image(random_photo(56, 112)), "x")
    expected = torch.zeros(56, 112, dtype=torch.bool)
    expected[:, :56] = True
    assert torch.equal(det.masks[0], expected)


def test_squash_masks_cover_the_whole_square():
    # Squash maps all 32 mask rows onto the 56 rows: the +5/-5 edge between mask rows 15 and 16
    # lands between photo rows 27 and 28, the column edge between columns 55 and 56.
    model = fake_model("squash", size=112, masks=_half_masks())
    predictor = Sam3Predictor(model)
    det = predictor.set_text_prompt(predictor.set_image(random_photo(56, 112)), "x")
    expected = torch.ones(56, 112, dtype=torch.bool)
    expected[:28, 56:] = False
    assert torch.equal(det.masks[0], expected)


@pytest.mark.parametrize("transpose", [False, True])
def test_pad_masks_with_a_fractional_extent_map_proportionally(transpose):
    # A 30 x 100 photo in a 56 square: resized to 17 x 56, i.e. 17 * 16 / 56 = 4.857 of the 16
    # mask rows. Logits rise linearly, (row centre) - 2.4 cells, which bilinear interpolation
    # keeps exactly: photo row i (centre i + 0.5) sits at (i + 0.5) * 4.857 / 30 cells, so it is
    # positive from i + 0.5 > 2.4 * 30 / 4.857 = 14.82, i.e. from row 15 on.
    ramp = (torch.arange(16, dtype=torch.float32) + 0.5 - 2.4).view(16, 1).expand(16, 16)
    masks = (ramp.T if transpose else ramp).reshape(1, 16, 16)
    model = fake_model("pad", masks=masks)
    predictor = Sam3Predictor(model)
    photo = random_photo(100, 30) if transpose else random_photo(30, 100)
    mask = predictor.set_text_prompt(predictor.set_image(photo), "x").masks[0]
    mask = mask.T if transpose else mask
    assert mask.shape == (30, 100)
    assert not mask[:15].any() and mask[15:].all()
