"""Comparing our grounding (text and box prompts) with the oracle's ``grounding`` results, every
stage from the prompt to the masks; shared by the reduced and the full-size tests."""

from __future__ import annotations

import torch

from sam3.model.box_ops import box_cxcywh_to_xyxy
from sam3.model.prompt import GeometricPrompt
from sam3.model.sam3_image import Sam3ImageModel

from helpers.compare import assert_matches

OUTPUTS = ("pred_logits", "pred_boxes", "pred_boxes_xyxy", "pred_masks", "presence_logit_dec")


def case_prompt(case: dict) -> GeometricPrompt:
    """A grounding case's boxes (``cx, cy, w, h`` in [0, 1]) and labels as our prompt."""
    prompt = GeometricPrompt.empty(1)
    if case.get("boxes"):
        boxes = torch.tensor(case["boxes"]).view(-1, 1, 4)
        prompt = prompt.with_boxes(boxes, torch.tensor(case["labels"]).view(-1, 1))
    return prompt


def image_features(model: Sam3ImageModel, ref: dict, cases: list[dict]) -> dict[int, dict]:
    """Our ``forward_image`` of each case's image, from Meta's preprocessed input."""
    with torch.inference_mode():
        return {
            i: model.forward_image(ref[f"image.{i}.input"])
            for i in sorted({c["image"] for c in cases})
        }


def _memory_pos(image: dict) -> torch.Tensor:
    return image["vision_pos_enc"][-1].flatten(2).permute(2, 0, 1)


def compare(
    tag: str, model: Sam3ImageModel, ref: dict, cases: list[dict], images: dict[int, dict]
) -> None:
    """Our grounding of every case on ``images`` (our image features, by image index) against
    Meta's: the image maps, text features, prompt, encoder memory, decoder outputs, queries,
    boxes, masks and semantic segmentation."""
    for k, case in enumerate(cases):
        r = lambda name, k=k: ref[f"case.{k}.{name}"]  # noqa: E731
        name = f"{tag} case {k}"
        i = case["image"]
        image = images[i]
        with torch.inference_mode():
            text = dict(image)
            text.update(model.forward_text([case["text"] or "visual"]))
            out = model.forward_grounding(text, case_prompt(case))
        for level in range(3):
            assert_matches(
                f"{name}: fpn {level}", image["backbone_fpn"][level], ref[f"image.{i}.fpn.{level}"]
            )
        assert_matches(
            f"{name}: language_features", text["language_features"], r("language_features")
        )
        assert torch.equal(out["prompt_mask"], r("prompt_mask"))
        assert_matches(f"{name}: prompt", out["prompt"], r("prompt"))
        assert_matches(f"{name}: encoder memory", out["encoder_hidden_states"], r("memory"))
        with torch.inference_mode():
            hs, ref_boxes, presence = model.transformer.decoder(
                out["encoder_hidden_states"],
                _memory_pos(image),
                out["prompt"],
                out["prompt_mask"],
                tuple(image["backbone_fpn"][-1].shape[-2:]),
            )[:3]
        assert_matches(f"{name}: decoder states", hs, r("hs"))
        assert_matches(f"{name}: decoder reference boxes", ref_boxes, r("reference_boxes"))
        assert_matches(f"{name}: decoder presence", presence, r("presence"))
        assert_matches(f"{name}: queries", out["queries"], r("queries"))
        for key in OUTPUTS:
            assert_matches(f"{name}: {key}", out[key], r(key))
        assert_matches(f"{name}: semantic_seg", out["semantic_seg"], r("semantic_seg"))
        assert torch.allclose(
            out["pred_boxes_xyxy"], box_cxcywh_to_xyxy(r("pred_boxes")), atol=1e-5
        )
