"""The predictor on a real tiny image model (its file's own preprocessing record, both resize
modes, bf16 autocast) and against Meta's ``Sam3Processor`` on the same seeded weights."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from sam3.model.box_ops import box_cxcywh_to_xyxy
from sam3.model.prompt import GeometricPrompt
from sam3.predictor import Sam3Predictor
from sam3.preprocess import preprocess

from helpers.compare import assert_matches
from helpers.models import GROUNDING_CASES, grounding_config, grounding_job
from helpers.predict import SAMPLES, prep_record, random_photo, write_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from sam3.model_builder import load_image_model

    return load_image_model(write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.pt"))


def test_a_tiny_model_file_records_its_own_input_size(tiny_model):
    assert tiny_model.preprocessing["img_size"] == 56


def test_a_real_tiny_model_end_to_end(tiny_model, monkeypatch):
    monkeypatch.setattr(tiny_model, "preprocessing", prep_record("squash", 56))
    photo = Image.open(SAMPLES / "chelsea.jpg").convert("RGB")  # 451 x 300
    predictor = Sam3Predictor(tiny_model, confidence_threshold=0.0)
    state = predictor.set_image(photo)
    det = predictor.set_text_prompt(state, "a cat")
    assert len(det) == 8 and det.masks.shape == (8, 300, 451) and det.masks.dtype == torch.bool
    x = preprocess(photo, predictor.prep)[0]
    with torch.inference_mode():
        out = {**tiny_model.forward_image(x[None]), **tiny_model.forward_text(["a cat"])}
        raw = tiny_model.forward_grounding(out, GeometricPrompt.empty(1))
    torch.testing.assert_close(det.raw["pred_logits"], raw["pred_logits"])
    scale = torch.tensor([451.0, 300.0, 451.0, 300.0])
    torch.testing.assert_close(det.boxes, box_cxcywh_to_xyxy(raw["pred_boxes"][0]) * scale)
    det = predictor.add_box_prompt(state, [100, 50, 300, 250], positive=False)
    assert det.raw["prompt_mask"].shape[1] == 32 + 2  # 32 text tokens, the box and the CLS token
    fp32 = predictor.set_text_prompt(state, "a dog")

    bf16 = Sam3Predictor(tiny_model, confidence_threshold=0.0, autocast_dtype=torch.bfloat16)
    half = bf16.predict(bf16.set_image(photo), "a dog", [[100, 50, 300, 250]], False)
    assert half.scores.dtype == half.boxes.dtype == torch.float32 and len(half) == 8
    torch.testing.assert_close(half.scores, fp32.scores, atol=0.05, rtol=0)


def test_a_real_tiny_model_in_pad_mode(tiny_model, monkeypatch):
    monkeypatch.setattr(tiny_model, "preprocessing", prep_record("pad", 56))
    predictor = Sam3Predictor(tiny_model, confidence_threshold=0.0)
    det = predictor.predict(predictor.set_image(random_photo(30, 100)), "a cat")
    # 30 x 100 -> 17 x 56 in the square: x scales by 100 / 56, y by 30 / 17
    scale = torch.tensor([100 / 56, 30 / 17, 100 / 56, 30 / 17]) * 56
    expected = box_cxcywh_to_xyxy(det.raw["pred_boxes"][0]) * scale
    torch.testing.assert_close(det.boxes, expected)
    assert det.masks.shape == (8, 30, 100)


@pytest.mark.oracle
def test_the_predictor_equals_metas_processor(oracle):
    """Meta's Sam3Processor and ours on the same seeded model and photo: text + a positive and a
    negative box, every query kept."""
    from sam3.model_builder import build_sam3_image_model

    from seeded_init import seeded_state

    job = {**grounding_job(), "processor": {"image": 0, "case": 1, "threshold": 0.0}}
    ref = oracle(job, "grounding-reduced-processor")
    model = build_sam3_image_model(cfg=grounding_config())
    seeded_state(model, job["seed"])
    model.preprocessing = prep_record("squash", 112)
    photo = Image.open(SAMPLES / "chelsea.jpg").convert("RGB")
    w, h = photo.size
    predictor = Sam3Predictor(model, confidence_threshold=0.0)
    state = predictor.set_image(photo)
    case = GROUNDING_CASES[1]
    det = predictor.set_text_prompt(state, case["text"])
    for (cx, cy, bw, bh), label in zip(case["boxes"], case["labels"]):
        box = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
        det = predictor.add_box_prompt(state, box, positive=bool(label))
    assert_matches("predictor scores", det.scores, ref["processor.scores"])
    assert_matches("predictor boxes", det.boxes, ref["processor.boxes"])
    masks = ref["processor.masks"][:, 0]
    assert det.masks.shape == masks.shape
    assert int((det.masks != masks).sum()) <= 16  # of 1.6M; a pixel at a logit of ~0 may flip
