"""Point, box and mask prompts (``Sam3Predictor.predict_inst``): coordinates, validation, mask
selection, hole filling and output shapes, with expectations worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sam3.arch import BackboneConfig, ImageModelConfig
from sam3.instance import HOLE_FILL_LOGIT, fill_holes, prepare_prompt
from sam3.model.heads_config import HeadsConfig, SamHeadsConfig
from sam3.model.mask_decoder import MaskDecoder
from sam3.model.text_encoder import TextConfig
from sam3.model_builder import build_sam3_image_model
from sam3.predictor import Sam3Predictor
from sam3.preprocess import ImageGeometry

from helpers.models import grounding_config

VIT = grounding_config().backbone.vit  # 112 px, 8x8 grid
CONFIG = ImageModelConfig(
    backbone=BackboneConfig(vit=VIT, text=TextConfig(width=64, heads=1, layers=1)),
    heads=HeadsConfig(num_queries=8, geometry_layers=1, encoder_layers=1, decoder_layers=1),
)
SQUASH = ImageGeometry(orig_h=300, orig_w=400, valid_h=112, valid_w=112, img_size=112)
PAD = ImageGeometry(orig_h=300, orig_w=400, valid_h=84, valid_w=112, img_size=112)


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    model = build_sam3_image_model(cfg=CONFIG, enable_inst_interactivity=True)
    return Sam3Predictor(model)


@pytest.fixture(scope="module")
def state(predictor):
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    return predictor.set_image(photo)


@pytest.mark.parametrize(
    ("geometry", "sx", "sy"), [(SQUASH, 112 / 400, 112 / 300), (PAD, 0.28, 0.28)]
)
def test_photo_pixels_map_to_the_input_square(geometry, sx, sy):
    prompt = prepare_prompt(
        geometry, 32, point_coords=[[100.0, 150.0], [400.0, 0.0]], point_labels=[1, 0],
        box=[40.0, 30.0, 200.0, 240.0],
    )  # fmt: skip
    want = torch.tensor([[[100 * sx, 150 * sy], [400 * sx, 0.0]]])
    assert torch.allclose(prompt.point_coords, want, atol=1e-5)
    assert prompt.point_labels.tolist() == [[1, 0]]
    assert torch.allclose(prompt.boxes, torch.tensor([[40 * sx, 30 * sy, 200 * sx, 240 * sy]]))
    assert not prompt.batched


def test_many_boxes_are_one_prompt_set_each_and_a_box_reaching_out_is_clipped():
    prompt = prepare_prompt(SQUASH, 32, box=[[0, 0, 10, 10], [390, 290, 450, 350]])
    assert prompt.batched and prompt.boxes.shape == (2, 4)
    assert torch.allclose(prompt.boxes[1], torch.tensor([390 * 0.28, 290 * 112 / 300, 112, 112]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"point_coords": [[401, 10]], "point_labels": [1]}, "outside the 400x300 image"),
        ({"point_coords": [[10, -0.5]], "point_labels": [1]}, "outside the 400x300 image"),
        ({"point_coords": [[10, 10]], "point_labels": [2]}, r"1 \(positive\) or 0"),
        ({"point_coords": [[10, 10]], "point_labels": [1, 0]}, "point_labels need shape"),
        ({"point_coords": [[10, 10]]}, "give both or neither"),
        ({"point_coords": [10, 10], "point_labels": [1]}, r"\[P, 2\] or \[N, P, 2\]"),
        ({"box": [50, 10, 40, 60]}, "x1 > x0"),
        ({"box": [500, 400, 600, 500]}, "outside"),
        ({"box": [1, 2, 3]}, r"\[x0, y0, x1, y1\]"),
        ({"box": [1, 2, 3, float("nan")]}, "finite"),
        ({}, "no prompt"),
        ({"mask_input": np.zeros((16, 16))}, "32x32"),
        (
            {"point_coords": [[[1, 1]], [[2, 2]]], "point_labels": [[1], [1]], "box": [0, 0, 9, 9]},
            "disagree in number",
        ),
    ],
)
def test_bad_prompts_are_a_clear_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        prepare_prompt(SQUASH, 32, **kwargs)


def test_predict_inst_needs_a_state_and_an_interactive_model(predictor):
    with pytest.raises(ValueError, match="call set_image"):
        predictor.predict_inst(None, box=[0, 0, 5, 5])
    plain = Sam3Predictor(build_sam3_image_model(cfg=CONFIG))
    state = plain.set_image(np.zeros((20, 30, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="enable_inst_interactivity=True"):
        plain.predict_inst(state, box=[0, 0, 5, 5])


def _decoder() -> MaskDecoder:
    return MaskDecoder(SamHeadsConfig(embed_dim=64, num_heads=2, mlp_dim=64, iou_head_hidden=32))


def test_single_mask_keeps_token_0_when_stable_else_the_best_multimask_token():
    decoder = _decoder()
    masks = torch.full((3, 4, 8, 8), -1.0)
    masks[0, 0, :4] = 1.0  # stable: 32 cells above +0.05, 32 above -0.05
    masks[1, 0, :4] = 1.0
    masks[1, 0, 4, :] = 0.0  # 8 cells between the thresholds: 32 / 40 = 0.8 < 0.98
    iou = torch.tensor([[0.1, 0.2, 0.9, 0.3], [0.9, 0.2, 0.3, 0.8], [0.5, 0.1, 0.2, 0.3]])
    # prompt set 2: token 0 is all below -0.05, so both areas are 0 and stability is 1
    out, scores, index = decoder.select(masks, iou, multimask_output=False)
    assert index.tolist() == [[0], [3], [0]]
    assert torch.allclose(scores, torch.tensor([[0.1], [0.8], [0.5]]))
    assert torch.equal(out[1, 0], masks[1, 3])
    out, scores, index = decoder.select(masks, iou, multimask_output=True)
    assert index.tolist() == [[1, 2, 3]] * 3 and out.shape == (3, 3, 8, 8)
    assert torch.equal(scores, iou[:, 1:])


def test_small_background_holes_are_filled_8_connected_and_large_ones_kept():
    logits = torch.ones(1, 1, 40, 40)
    logits[..., 5:7, 5:7] = -1.0  # a 4-cell hole
    logits[..., 7, 7] = -2.0  # touches the hole diagonally: the same component (5 cells)
    logits[..., 20:40, 20:40] = -1.0  # 400 cells touching the border: kept
    logits[..., 0, 39] = 0.0  # logit 0 counts as background: a 1-cell hole
    filled = fill_holes(logits, max_area=256)
    want = logits.clone()
    want[..., 5:7, 5:7] = HOLE_FILL_LOGIT
    want[..., 7, 7] = HOLE_FILL_LOGIT
    want[..., 0, 39] = HOLE_FILL_LOGIT
    assert torch.equal(filled, want)
    assert torch.equal(fill_holes(logits, max_area=4), logits.masked_fill(logits == 0, 10.0))
    assert torch.equal(fill_holes(logits, max_area=0), logits)


def test_outputs_have_the_photo_size_and_a_leading_n_only_when_batched(predictor, state):
    one = predictor.predict_inst(state, point_coords=[[200, 150]], point_labels=[1])
    assert one.masks.shape == (3, 300, 400) and one.masks.dtype == torch.bool
    assert one.scores.shape == (3,) and one.low_res_logits.shape == (3, 32, 32)
    assert one.mask_index.tolist() == [1, 2, 3] and one.object_score_logits.shape == (1,)
    many = predictor.predict_inst(
        state, box=[[10, 10, 200, 200], [100, 50, 390, 280]], multimask_output=False
    )
    assert many.masks.shape == (2, 1, 300, 400) and many.scores.shape == (2, 1)
    # each box alone gives its row of the batch
    alone = predictor.predict_inst(state, box=[100, 50, 390, 280], multimask_output=False)
    assert torch.allclose(alone.low_res_logits, many.low_res_logits[1], atol=1e-5)
    refined = predictor.predict_inst(
        state, point_coords=[[200, 150]], point_labels=[1], mask_input=one.low_res_logits[0]
    )
    assert not torch.allclose(refined.low_res_logits, one.low_res_logits)
    assert one.low_res_logits.abs().max() <= 32


def test_masks_are_the_upsampled_filled_logits_above_zero(predictor, state):
    out = predictor.predict_inst(state, box=[10, 10, 200, 200], multimask_output=False)
    filled = fill_holes(out.low_res_logits[None], 256)[0]
    up = torch.nn.functional.interpolate(
        filled[None], size=(300, 400), mode="bilinear", align_corners=False
    )[0]
    assert torch.equal(out.masks, up > 0)


def test_bf16_autocast_returns_float32(predictor, state):
    fast = Sam3Predictor(predictor.model, autocast_dtype=torch.bfloat16)
    bf16_state = fast.set_image(np.zeros((30, 40, 3), dtype=np.uint8))
    out = fast.predict_inst(bf16_state, box=[2, 2, 30, 20])
    assert out.scores.dtype == out.low_res_logits.dtype == torch.float32
