"""The whole image model against Meta's grounding on the same seeded weights: text only, text
with a positive and a negative box, boxes only; every stage from the prompt to the masks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sam3.arch import BackboneConfig, ImageModelConfig
from sam3.model.box_ops import box_cxcywh_to_xyxy
from sam3.model.heads_config import HeadsConfig
from sam3.model.prompt import GeometricPrompt
from sam3.model.text_encoder import TextConfig
from sam3.model.vit import ViTConfig
from sam3.model_builder import build_sam3_image_model

from conftest import assert_matches
from seeded_init import seeded_state

pytestmark = pytest.mark.oracle

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
VISION = dict(
    img_size=112,
    patch_size=14,
    embed_dim=64,
    depth=2,
    num_heads=4,
    mlp_ratio=4.625,
    window_size=4,
    global_att_blocks=[1],
    pretrain_img_size=56,
)
TEXT = dict(width=64, heads=4, layers=2)
HEADS = dict(
    d_model=64,
    num_heads=4,
    dim_feedforward=128,
    geometry_layers=2,
    encoder_layers=2,
    decoder_layers=2,
    num_queries=12,
    scoring_hidden=96,
)
CASES = [
    {"image": 0, "text": "a cat"},
    {
        "image": 0,
        "text": "the cat's left ear",
        "boxes": [[0.45, 0.5, 0.4, 0.5], [0.2, 0.3, 0.1, 0.2]],
        "labels": [1, 0],
    },
    {"image": 1, "text": None, "boxes": [[0.5, 0.4, 0.3, 0.6]], "labels": [1]},
]
OUTPUTS = ("pred_logits", "pred_boxes", "pred_boxes_xyxy", "pred_masks", "presence_logit_dec")


def reduced_job() -> dict:
    return {
        "kind": "grounding",
        "size": "reduced",
        "seed": 0,
        "vision": VISION,
        "text": TEXT,
        "heads": HEADS,
        "images": [str(SAMPLES / "chelsea.jpg"), str(SAMPLES / "rocket.jpg")],
        "cases": CASES,
    }


def reduced_config() -> ImageModelConfig:
    v = VISION
    vit = ViTConfig(
        img_size=v["img_size"],
        patch_size=v["patch_size"],
        embed_dim=v["embed_dim"],
        depth=v["depth"],
        num_heads=v["num_heads"],
        mlp_ratio=v["mlp_ratio"],
        window_size=v["window_size"],
        global_blocks=tuple(v["global_att_blocks"]),
        pretrain_img_size=v["pretrain_img_size"],
    )
    backbone = BackboneConfig(vit=vit, text=TextConfig(**TEXT), d_model=HEADS["d_model"])
    return ImageModelConfig(backbone=backbone, heads=HeadsConfig(**HEADS))


def case_prompt(case: dict) -> GeometricPrompt:
    prompt = GeometricPrompt.empty(1)
    if case.get("boxes"):
        boxes = torch.tensor(case["boxes"]).view(-1, 1, 4)
        prompt = prompt.with_boxes(boxes, torch.tensor(case["labels"]).view(-1, 1))
    return prompt


def run_ours(model, ref: dict, cases: list[dict]) -> list[dict]:
    """Our grounding for every case, from the same preprocessed inputs as Meta's."""
    results = []
    with torch.inference_mode():
        images = {}
        for case in cases:
            i = case["image"]
            if i not in images:
                images[i] = model.forward_image(ref[f"image.{i}.input"])
            state = dict(images[i])
            state.update(model.forward_text([case["text"] or "visual"]))
            results.append((images[i], state, model.forward_grounding(state, case_prompt(case))))
    return results


def compare(tag: str, model, ref: dict, cases: list[dict]) -> None:
    for k, (image, text, out) in enumerate(run_ours(model, ref, cases)):
        r = lambda name, k=k: ref[f"case.{k}.{name}"]  # noqa: E731
        name = f"{tag} case {k}"
        i = cases[k]["image"]
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


def _memory_pos(image: dict) -> torch.Tensor:
    return image["vision_pos_enc"][-1].flatten(2).permute(2, 0, 1)


@pytest.fixture(scope="module")
def reduced(oracle):
    job = reduced_job()
    ref = oracle(job, "grounding-reduced")
    model = build_sam3_image_model(cfg=reduced_config())
    seeded_state(model, job["seed"])
    return model, ref


def test_reduced_model_has_metas_keys(reduced):
    model, ref = reduced
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == ref["state_keys"]


def test_reduced_grounding_matches_meta(reduced):
    model, ref = reduced
    compare("reduced", model, ref, CASES)


@pytest.mark.slow
def test_full_size_grounding_matches_meta(oracle):
    """SAM3's real sizes (1008², 200 queries, 6+6 layers) on a photo and real captions."""
    cases = [
        {"image": 0, "text": "a cat"},
        {
            "image": 0,
            "text": "the cat's left ear",
            "boxes": [[0.45, 0.5, 0.4, 0.5], [0.2, 0.3, 0.1, 0.2]],
            "labels": [1, 0],
        },
        {"image": 0, "text": None, "boxes": [[0.5, 0.4, 0.3, 0.6]], "labels": [1]},
    ]
    job = {
        "kind": "grounding",
        "size": "full",
        "seed": 0,
        "images": [str(SAMPLES / "chelsea.jpg")],
        "cases": cases,
    }
    ref = oracle(job, "grounding-full")
    model = build_sam3_image_model()
    seeded_state(model, 0)
    compare("full", model, ref, cases)
