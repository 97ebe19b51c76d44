"""Comparing our point, box and mask prompts with the oracle's ``interactive`` results (Meta's
``predict_inst``): the second neck, the SAM heads' image features, every mask token's logits,
IoUs and object score, the selected masks and the masks at the photo's size; shared by the
reduced and the full-size tests."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from sam3.instance import prepare_prompt
from sam3.model.sam3_image import Sam3ImageModel
from sam3.predictor import ImageState, Sam3Predictor
from sam3.preprocess import preprocess

from helpers.compare import assert_matches
from seeded_init import WEIGHT_STD, seeded_state

MAX_MASK_MISMATCH = 1e-4  # fraction of photo pixels on which a thresholded mask may differ


def case(
    image: int,
    points: list | None = None,
    labels: list | None = None,
    box: list | None = None,
    multimask: bool = True,
    refine: tuple[int, int] | None = None,
) -> dict:
    """One ``interactive`` job case (pixel coordinates of photo ``image``); ``refine=(k, j)``
    passes entry ``j`` of case ``k``'s low-res logits as the mask input."""
    return {
        "image": image,
        "point_coords": points,
        "point_labels": labels,
        "box": box,
        "multimask_output": multimask,
        "mask_input_from": None if refine is None else refine[0],
        "mask_input_index": 0 if refine is None else refine[1],
    }


def seed_interactive_model(model: Sam3ImageModel, seed: int) -> None:
    """``seeded_state`` on the whole model (under the names Meta's side uses), then every linear
    and conv weight of the SAM heads rescaled to std 1/sqrt(fan-in) as the job's ``fan_in_init``
    does (at std 0.02 the mask logits are ~1e-3 and scale bugs hide)."""
    seeded_state(model, seed)
    heads = [model.tracker.sam_prompt_encoder, model.tracker.sam_mask_decoder]
    with torch.no_grad():
        for module in (m for part in heads for m in part.modules()):
            w = getattr(module, "weight", None)
            if isinstance(module, torch.nn.Linear):
                fan_in = module.in_features
            elif isinstance(module, torch.nn.ConvTranspose2d):  # each output sees k/s inputs
                kh, kw = module.kernel_size
                sh, sw = module.stride
                fan_in = module.in_channels // module.groups * (kh / sh) * (kw / sw)
            elif isinstance(module, torch.nn.Conv2d):
                fan_in = module.in_channels // module.groups * w[0, 0].numel()
            else:
                continue
            w.mul_(1.0 / (WEIGHT_STD * fan_in**0.5))


def read_photo(path: Path) -> Image.Image:
    """A photo as RGB."""
    with Image.open(path) as photo:
        return photo.convert("RGB")


def compare_images(
    tag: str, model: Sam3ImageModel, predictor: Sam3Predictor, photos: list, states: list, ref: dict
) -> None:
    """Per photo: our preprocessed input, the second neck's maps and the SAM heads' image
    features (``predictor.set_image``'s ``states``) against Meta's."""
    for i, (rgb, state) in enumerate(zip(photos, states)):
        name = f"{tag} image {i}"
        assert_matches(
            f"{name}: input", preprocess(rgb, predictor.prep)[0], ref[f"image.{i}.input"][0]
        )
        sam2 = state.image["sam2_backbone_out"]["backbone_fpn"]
        for level in range(3):
            want = ref[f"image.{i}.sam2_fpn.{level}"]
            assert_matches(f"{name}: sam2 neck {level}", sam2[level], want)
        with torch.inference_mode():
            features = model.interactive_features(state.image)
        assert_matches(
            f"{name}: image embedding", features["image_embed"], ref[f"image.{i}.image_embed"]
        )
        for level in range(2):
            got = features["high_res"][level]
            assert_matches(f"{name}: conv_s{level}", got, ref[f"image.{i}.high_res.{level}"])


def compare_cases(
    tag: str,
    model: Sam3ImageModel,
    predictor: Sam3Predictor,
    states: list[ImageState],
    ref: dict,
    cases: list,
) -> None:
    """Every case through our SAM heads and ``predict_inst`` against Meta's."""
    outputs: list = []
    for k, spec in enumerate(cases):
        name = f"{tag} case {k}"
        r = lambda key, k=k: ref[f"case.{k}.{key}"]  # noqa: E731
        state = states[spec["image"]]
        mask_input = None
        if spec["mask_input_from"] is not None:
            earlier = outputs[spec["mask_input_from"]]
            low = earlier.low_res_logits
            mask_input = low.reshape(-1, *low.shape[-2:])[spec["mask_input_index"]]
        prompt = prepare_prompt(
            state.geometry,
            model.tracker.mask_input_size,
            spec["point_coords"],
            spec["point_labels"],
            spec["box"],
            mask_input,
        )
        with torch.inference_mode():
            heads = model.tracker(
                model.interactive_features(state.image),
                prompt.point_coords,
                prompt.point_labels,
                prompt.boxes,
                prompt.mask_input,
                spec["multimask_output"],
            )
        assert_matches(f"{name}: all mask logits", heads["all_masks"], r("all_masks"))
        assert_matches(f"{name}: all IoUs", heads["all_iou"], r("all_iou"))
        assert_matches(
            f"{name}: object score", heads["object_score_logits"], r("object_score_logits")
        )
        assert torch.equal(heads["mask_index"], r("selected")), name
        out = predictor.predict_inst(
            state,
            spec["point_coords"],
            spec["point_labels"],
            spec["box"],
            mask_input,
            spec["multimask_output"],
        )
        outputs.append(out)
        low, scores = r("low_res_logits"), r("scores")
        assert_matches(
            f"{name}: low-res logits", out.low_res_logits, low.view(out.low_res_logits.shape)
        )
        assert_matches(f"{name}: scores", out.scores, scores.view(out.scores.shape))
        masks = r("masks").bool().view(out.masks.shape)
        mismatch = (masks != out.masks).float().mean().item()
        assert mismatch <= MAX_MASK_MISMATCH, f"{name}: masks differ on {mismatch:.2e} of pixels"
