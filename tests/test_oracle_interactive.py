"""Point, box and mask prompts against Meta's ``predict_inst`` on the same seeded weights: the
second neck, the SAM heads' image features, every mask token's logits, IoUs and object score,
the selected masks and the masks at the photo's size, on real photos."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from sam3.arch import BackboneConfig, ImageModelConfig
from sam3.instance import prepare_prompt
from sam3.model.heads_config import HeadsConfig
from sam3.model.text_encoder import TextConfig
from sam3.model_builder import build_sam3_image_model
from sam3.predictor import Sam3Predictor
from sam3.preprocess import preprocess

from conftest import assert_matches
from seeded_init import WEIGHT_STD, seeded_state
from test_oracle_grounding import VISION
from test_oracle_grounding import reduced_config as grounding_config

pytestmark = pytest.mark.oracle

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
PHOTOS = [SAMPLES / "chelsea.jpg", SAMPLES / "rocket.jpg"]
SEEDED = ("backbone.vision_backbone.", "tracker.")  # the parts on the interactive path
MAX_MASK_MISMATCH = 1e-4  # fraction of photo pixels on which a thresholded mask may differ


def _case(image, points=None, labels=None, box=None, multimask=True, refine=None):
    return {
        "image": image,
        "point_coords": points,
        "point_labels": labels,
        "box": box,
        "multimask_output": multimask,
        "mask_input_from": None if refine is None else refine[0],
        "mask_input_index": 0 if refine is None else refine[1],
    }


# chelsea.jpg is 451 x 300, rocket.jpg 512 x 342 (W x H)
REDUCED_CASES = [
    _case(0, box=[60, 20, 330, 290]),  # one box (multimask: 3 masks)
    _case(0, points=[[225, 140]], labels=[1]),  # one positive point
    _case(0, [[120, 90], [300, 150], [40, 260]], [1, 1, 0], [60, 20, 330, 290], multimask=False),
    _case(0, points=[[225, 140]], labels=[1], multimask=False),  # one point, single mask
    _case(0, points=[[225, 140]], labels=[1], refine=(1, 2)),  # refine with case 1's 3rd mask
    _case(1, box=[[200, 20, 300, 330], [10, 200, 180, 340], [330, 40, 500, 200]]),  # N = 3
    _case(1, [[250, 150], [420, 60]], [1, 0], multimask=False, refine=(5, 0)),
]
FULL_CASES = [
    _case(0, box=[60, 20, 330, 290], multimask=False),
    _case(0, points=[[225, 140]], labels=[1]),
    _case(0, [[120, 90], [300, 150], [40, 260]], [1, 1, 0], [60, 20, 330, 290], multimask=False),
    _case(0, points=[[225, 140]], labels=[1], refine=(1, 0)),
]


def reduced_config() -> ImageModelConfig:
    """The grounding oracle's reduced trunk; SAM3's neck width and small detector heads (the
    SAM heads keep SAM3's sizes, as Meta's tracker builds them)."""
    small = HeadsConfig(num_queries=8, geometry_layers=1, encoder_layers=1, decoder_layers=1)
    vit = grounding_config().backbone.vit
    text = TextConfig(width=64, heads=1, layers=1)
    return ImageModelConfig(backbone=BackboneConfig(vit=vit, text=text), heads=small)


def job(size: str, cases: list[dict], photos: list[Path]) -> dict:
    spec = {
        "kind": "interactive",
        "size": size,
        "seed": 0,
        "fan_in_init": True,
        "images": [str(p) for p in photos],
        "cases": cases,
    }
    if size == "reduced":
        spec["vision"] = VISION
    return spec


def seed_interactive_path(model: torch.nn.Module, seed: int) -> None:
    """``seeded_state`` on the trunk, both necks and the SAM heads, under the names Meta's side
    uses (ours; the detector heads and the text encoder are not on this path), then every
    linear and conv weight of the SAM heads rescaled to std 1/sqrt(fan-in) as the job's
    ``fan_in_init`` does (at std 0.02 the mask logits are ~1e-3 and scale bugs hide)."""
    state = model.state_dict(keep_vars=True)
    seeded_state({k: v for k, v in state.items() if k.startswith(SEEDED)}, seed)
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


def compare(tag: str, model, ref: dict, cases: list[dict], photos: list[Path]) -> None:
    predictor = Sam3Predictor(model)
    states = []
    for i, path in enumerate(photos):
        with Image.open(path) as photo:
            rgb = photo.convert("RGB")
        states.append(predictor.set_image(rgb))
        name = f"{tag} image {i}"
        assert_matches(
            f"{name}: input", preprocess(rgb, predictor.prep)[0], ref[f"image.{i}.input"][0]
        )
        sam2 = states[i].image["sam2_backbone_out"]["backbone_fpn"]
        for level in range(3):
            want = ref[f"image.{i}.sam2_fpn.{level}"]
            assert_matches(f"{name}: sam2 neck {level}", sam2[level], want)
        with torch.inference_mode():
            features = model.interactive_features(states[i].image)
        assert_matches(
            f"{name}: image embedding", features["image_embed"], ref[f"image.{i}.image_embed"]
        )
        for level in range(2):
            got = features["high_res"][level]
            assert_matches(f"{name}: conv_s{level}", got, ref[f"image.{i}.high_res.{level}"])
    outputs: list = []
    for k, case in enumerate(cases):
        name = f"{tag} case {k}"
        r = lambda key, k=k: ref[f"case.{k}.{key}"]  # noqa: E731
        state = states[case["image"]]
        mask_input = None
        if case["mask_input_from"] is not None:
            earlier = outputs[case["mask_input_from"]]
            low = earlier.low_res_logits
            mask_input = low.reshape(-1, *low.shape[-2:])[case["mask_input_index"]]
        prompt = prepare_prompt(
            state.geometry,
            model.tracker.mask_input_size,
            case["point_coords"],
            case["point_labels"],
            case["box"],
            mask_input,
        )
        with torch.inference_mode():
            heads = model.tracker(
                model.interactive_features(state.image),
                prompt.point_coords,
                prompt.point_labels,
                prompt.boxes,
                prompt.mask_input,
                case["multimask_output"],
            )
        assert_matches(f"{name}: all mask logits", heads["all_masks"], r("all_masks"))
        assert_matches(f"{name}: all IoUs", heads["all_iou"], r("all_iou"))
        assert_matches(
            f"{name}: object score", heads["object_score_logits"], r("object_score_logits")
        )
        assert torch.equal(heads["mask_index"], r("selected")), name
        out = predictor.predict_inst(
            state,
            case["point_coords"],
            case["point_labels"],
            case["box"],
            mask_input,
            case["multimask_output"],
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


@pytest.fixture(scope="module")
def reduced(oracle):
    ref = oracle(job("reduced", REDUCED_CASES, PHOTOS), "interactive-reduced")
    torch.manual_seed(0)
    model = build_sam3_image_model(cfg=reduced_config(), enable_inst_interactivity=True)
    seed_interactive_path(model, 0)
    return model, ref


def test_reduced_interactive_keys_are_metas(reduced):
    """Ours are Meta's tracker and second-neck keys, less the 160 video-only tracker keys."""
    model, ref = reduced
    ours = {
        k: list(v.shape)
        for k, v in model.state_dict().items()
        if k.startswith(("tracker.", "backbone.vision_backbone.sam2_convs."))
    }
    theirs = ref["state_keys"]
    assert {k: theirs[k] for k in ours if k in theirs} == ours
    video = [k for k in theirs if k not in ours]
    assert len(video) == 160
    assert not any(
        k.startswith(("tracker.sam_", "tracker.no_mem_embed", "backbone")) for k in video
    )


def test_reduced_interactive_path_matches_meta(reduced):
    model, ref = reduced
    assert int(ref["hole_filling"]) == 1, "Meta's hole filling did not run: scikit-image missing"
    compare("reduced", model, ref, REDUCED_CASES, PHOTOS)


def test_full_size_interactive_path_matches_meta(oracle):
    """SAM3's real sizes: 1008² input, 72² embedding, 288² low-res masks, on a photo."""
    ref = oracle(job("full", FULL_CASES, PHOTOS[:1]), "interactive-full")
    model = build_sam3_image_model(enable_inst_interactivity=True)
    seed_interactive_path(model, 0)
    compare("full", model, ref, FULL_CASES, PHOTOS[:1])
