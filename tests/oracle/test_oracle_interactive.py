"""Point, box and mask prompts against Meta's ``predict_inst`` on the same seeded weights, at
reduced sizes: the second neck, the SAM heads' image features, every mask token's logits, IoUs
and object score, the selected masks and the masks at the photo's size, on real photos (SAM3's
sizes: ``test_oracle_full_size.py``)."""

from __future__ import annotations

import pytest

from sam3.arch import BackboneConfig, ImageModelConfig
from sam3.model.heads_config import HeadsConfig
from sam3.model.text_encoder import TextConfig
from sam3.model_builder import build_sam3_image_model
from sam3.predictor import Sam3Predictor

from helpers import interactive
from helpers.interactive import case
from helpers.models import GROUNDING_VISION, SAMPLES, grounding_config

pytestmark = pytest.mark.oracle

PHOTOS = [SAMPLES / "chelsea.jpg", SAMPLES / "rocket.jpg"]  # 451 x 300 and 512 x 342 (W x H)
CASES = [
    case(0, box=[60, 20, 330, 290]),  # one box (multimask: 3 masks)
    case(0, points=[[225, 140]], labels=[1]),  # one positive point
    case(0, [[120, 90], [300, 150], [40, 260]], [1, 1, 0], [60, 20, 330, 290], multimask=False),
    case(0, points=[[225, 140]], labels=[1], multimask=False),  # one point, single mask
    case(0, points=[[225, 140]], labels=[1], refine=(1, 2)),  # refine with case 1's 3rd mask
    case(1, box=[[200, 20, 300, 330], [10, 200, 180, 340], [330, 40, 500, 200]]),  # N = 3
    case(1, [[250, 150], [420, 60]], [1, 0], multimask=False, refine=(5, 0)),
]
JOB = {
    "kind": "interactive",
    "size": "reduced",
    "seed": 0,
    "fan_in_init": True,
    "vision": GROUNDING_VISION,
    "images": [str(p) for p in PHOTOS],
    "cases": CASES,
}


def reduced_config() -> ImageModelConfig:
    """The grounding oracle's reduced trunk; SAM3's neck width and small detector heads (the
    SAM heads keep SAM3's sizes, as Meta's tracker builds them)."""
    small = HeadsConfig(num_queries=8, geometry_layers=1, encoder_layers=1, decoder_layers=1)
    vit = grounding_config().backbone.vit
    text = TextConfig(width=64, heads=1, layers=1)
    return ImageModelConfig(backbone=BackboneConfig(vit=vit, text=text), heads=small)


@pytest.fixture(scope="module")
def reduced(oracle):
    ref = oracle(JOB, "interactive-reduced")
    model = build_sam3_image_model(cfg=reduced_config(), enable_inst_interactivity=True)
    interactive.seed_interactive_model(model, JOB["seed"])
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
    predictor = Sam3Predictor(model)
    photos = [interactive.read_photo(p) for p in PHOTOS]
    states = [predictor.set_image(photo) for photo in photos]
    interactive.compare_images("reduced", model, predictor, photos, states, ref)
    interactive.compare_cases("reduced", model, predictor, states, ref, CASES)
