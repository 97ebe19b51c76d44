"""The predictor's prompts and scores on a fake model whose outputs are known: boxes to the
model's coordinates, clipping, SAM3's scores and threshold, the caption cache, autocast."""

from __future__ import annotations

import math

import pytest
import torch

from sam3 import preprocess as preprocess_module
from sam3.predictor import Sam3Predictor

from helpers.predict import fake_model, random_photo


@pytest.mark.parametrize(("mode", "box"), [("squash", [40, 10, 60, 15]), ("pad", [40, 20, 60, 30])])
def test_prompt_boxes_go_to_normalised_cxcywh_of_the_input(mode, box):
    model = fake_model(mode)
    predictor = Sam3Predictor(model)
    state = predictor.set_image(random_photo(50, 100))
    predictor.add_box_prompt(state, box)
    prompt = model.grounding[-1][1]
    torch.testing.assert_close(prompt.boxes, torch.tensor([[[0.5, 0.25, 0.2, 0.1]]]))
    assert prompt.box_labels.tolist() == [[1]]


def test_a_box_reaching_outside_is_clipped_and_bad_boxes_are_refused():
    model = fake_model("pad")
    predictor = Sam3Predictor(model)
    state = predictor.set_image(random_photo(50, 100))
    predictor.add_box_prompt(state, [-10, -10, 60, 30])  # clipped to [0, 0, 60, 30]
    torch.testing.assert_close(
        model.grounding[-1][1].boxes, torch.tensor([[[0.3, 0.15, 0.6, 0.3]]])
    )
    for bad in ([10, 10, 10, 20], [10, 20, 30, 5], [120, 0, 130, 10], [0, 0, math.nan, 5], [1, 2]):
        with pytest.raises(ValueError, match="box"):
            predictor.add_box_prompt(state, bad)


def test_scores_use_presence_strict_threshold_and_query_order():
    logits = [2.0, 0.0, -1.0, 3.0]
    boxes = [[0.5, 0.5, 0.1, 0.1]] * 4
    model = fake_model(logits=logits, boxes=boxes)  # presence logit 100: sigmoid is exactly 1
    predictor = Sam3Predictor(model)
    state = predictor.set_image(random_photo(20, 30))
    det = predictor.set_text_prompt(state, "cat")
    # sigmoid: 0.881, 0.5 (not > 0.5), 0.269, 0.953; kept in query order, not by score
    torch.testing.assert_close(det.scores, torch.tensor([0.880797, 0.952574]))
    assert det.masks.shape[0] == det.boxes.shape[0] == 2

    model.outputs["presence_logit_dec"] = torch.tensor([[math.log(3.0)]])  # sigmoid 0.75
    det = predictor.set_text_prompt(state, "cat")
    torch.testing.assert_close(det.scores, torch.tensor([0.660598, 0.714431]))

    runs = len(model.grounding)
    det = predictor.set_confidence_threshold(0.7, state)
    torch.testing.assert_close(det.scores, torch.tensor([0.714431]))
    assert len(model.grounding) == runs  # re-filtered, not re-run

    model.outputs["presence_logit_dec"] = torch.tensor([[0.0]])  # halves every score
    assert len(predictor.set_text_prompt(state, "cat")) == 0


def test_only_the_kept_masks_are_upsampled(monkeypatch):
    logits = [-5.0] * 200
    logits[17] = logits[150] = 5.0
    model = fake_model(logits=logits, boxes=[[0.5, 0.5, 0.1, 0.1]] * 200)
    sizes = []
    real = preprocess_module.F.interpolate

    def spy(x, *args, **kwargs):
        sizes.append(x.shape[0])
        return real(x, *args, **kwargs)

    monkeypatch.setattr(preprocess_module.F, "interpolate", spy)
    predictor = Sam3Predictor(model)
    det = predictor.set_text_prompt(predictor.set_image(random_photo(40, 60)), "x")
    assert len(det) == 2 and sum(sizes) == 2


def test_negative_boxes_accumulate_with_their_labels():
    model = fake_model()
    predictor = Sam3Predictor(model)
    state = predictor.set_image(random_photo(40, 40))
    predictor.add_box_prompt(state, [1, 1, 10, 10], positive=False)
    predictor.add_box_prompt(state, [5, 5, 30, 30])
    prompt = model.grounding[-1][1]
    assert prompt.box_labels.tolist() == [[0], [1]]
    assert prompt.box_mask.shape == (1, 2) and not prompt.box_mask.any()
    assert [p for _, p in state.boxes] == [False, True]


def test_boxes_without_text_use_the_caption_visual_and_text_replaces_it():
    model = fake_model()
    predictor = Sam3Predictor(model)
    state = predictor.set_image(random_photo(40, 40))
    predictor.add_box_prompt(state, [5, 5, 30, 30])
    assert model.captions == [["visual"]]
    assert model.grounding[-1][0]["language_features"].flatten()[0] == len("visual")
    predictor.set_text_prompt(state, "a dog")
    backbone_out, prompt, _ = model.grounding[-1]
    assert backbone_out["language_features"].flatten()[0] == len("a dog")
    assert prompt.boxes.shape == (1, 1, 4)  # the box stays
    predictor.reset_prompts(state)
    predictor.add_box_prompt(state, [5, 5, 30, 30])
    assert model.grounding[-1][0]["language_features"].flatten()[0] == len("visual")
    assert model.grounding[-1][1].boxes.shape == (1, 1, 4)


def test_the_backbone_runs_once_per_photo_and_captions_are_cached():
    model = fake_model()
    predictor = Sam3Predictor(model)
    state = predictor.set_image(random_photo(40, 40))
    predictor.set_text_prompt(state, "a dog")
    predictor.set_text_prompt(state, "a cat")
    predictor.add_box_prompt(state, [5, 5, 30, 30])
    predictor.set_text_prompt(state, "a dog")
    assert len(model.images) == 1 and len(model.grounding) == 4
    assert model.captions == [["a dog"], ["a cat"]]
    assert sorted(state.image) == ["backbone_fpn"]  # the text is not merged into it in place
    with pytest.raises(ValueError, match="text"):
        predictor.set_text_prompt(state, "  ")


def test_predict_runs_the_heads_once_for_text_and_boxes():
    model = fake_model()
    predictor = Sam3Predictor(model)
    state = predictor.set_image(random_photo(40, 40))
    predictor.predict(state, "a dog", [[1, 1, 10, 10], [5, 5, 30, 30]], [True, False])
    assert len(model.grounding) == 1 and model.captions == [["a dog"]]
    assert model.grounding[0][1].box_labels.tolist() == [[1], [0]]
    with pytest.raises(ValueError, match="prompt"):
        predictor.predict(state)


def test_autocast_runs_the_model_in_bf16_and_returns_float32():
    model = fake_model()
    model.out_dtype = torch.bfloat16
    predictor = Sam3Predictor(model, autocast_dtype=torch.bfloat16)
    det = predictor.set_text_prompt(predictor.set_image(random_photo(40, 40)), "a dog")
    assert model.grounding[-1][2]  # autocast was on inside the model
    assert det.boxes.dtype == det.scores.dtype == torch.float32
    assert det.raw["pred_masks"].dtype == torch.float32
    assert not det.scores.requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_everything_stays_on_the_device():
    model = fake_model("pad")
    predictor = Sam3Predictor(model, device="cuda")
    det = predictor.set_text_prompt(predictor.set_image(random_photo(50, 100)), "a dog")
    assert det.masks.device.type == det.boxes.device.type == "cuda"
    torch.testing.assert_close(det.boxes.cpu(), torch.tensor([[40.0, 30.0, 60.0, 70.0]]))
