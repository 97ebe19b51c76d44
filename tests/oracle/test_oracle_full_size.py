"""SAM3 at its real sizes against Meta's on the same seeded weights and a photo: the 32-block
trunk at 1008² and both necks (plain and oneDNN-packed), the 24-layer text encoder, grounding
(200 queries, 6+6 layers) and the point/box path (72² embedding, 288² low-res masks).

One model on each side, built and seeded once, and one forward of the photo, shared by every
comparison here (Meta's side: the ``full`` oracle job)."""

from __future__ import annotations

import pytest
import torch

from sam3.predictor import Sam3Predictor
from sam3.preprocess import preprocess

from helpers import grounding, interactive
from helpers.backbone import (
    CAPTIONS,
    capturing,
    compare_rope,
    compare_text,
    compare_vision,
    prefixed,
)
from helpers.interactive import case
from helpers.models import SAMPLES, uninitialised_sam3

pytestmark = pytest.mark.oracle

PHOTO = SAMPLES / "chelsea.jpg"  # 451 x 300 (W x H)
SEED = 0
GROUNDING_CASES = [
    {"image": 0, "text": "a cat"},
    {
        "image": 0,
        "text": "the cat's left ear",
        "boxes": [[0.45, 0.5, 0.4, 0.5], [0.2, 0.3, 0.1, 0.2]],
        "labels": [1, 0],
    },
    {"image": 0, "text": None, "boxes": [[0.5, 0.4, 0.3, 0.6]], "labels": [1]},
]
INTERACTIVE_CASES = [
    case(0, box=[60, 20, 330, 290], multimask=False),
    case(0, points=[[225, 140]], labels=[1]),
    case(0, [[120, 90], [300, 150], [40, 260]], [1, 1, 0], [60, 20, 330, 290], multimask=False),
    case(0, points=[[225, 140]], labels=[1], refine=(1, 0)),
]
JOB = {
    "kind": "full",
    "seed": SEED,
    "fan_in_init": True,
    "images": [str(PHOTO)],
    "captions": CAPTIONS,
    "grounding_cases": GROUNDING_CASES,
    "interactive_cases": INTERACTIVE_CASES,
}


@pytest.fixture(scope="module")
def ref(oracle) -> dict:
    return oracle(JOB, "full")


@pytest.fixture(scope="module")
def sam3(ref):
    """Our model (seeded as Meta's), its predictor, the photo, its state and what the trunk and
    the neck returned while the photo was set."""
    model = uninitialised_sam3()
    interactive.seed_interactive_model(model, SEED)
    predictor = Sam3Predictor(model)
    photo = interactive.read_photo(PHOTO)
    with capturing(model.backbone) as captured:
        state = predictor.set_image(photo)
    return model, predictor, photo, state, captured


def _same_input(sam3, want: torch.Tensor) -> None:
    """Our preprocessed photo is Meta's, bit for bit (so the features compare like for like)."""
    predictor, photo = sam3[1], sam3[2]
    assert torch.equal(preprocess(photo, predictor.prep)[0][None], want)


def test_full_size_vision_matches_meta(sam3, ref):
    """The 32-block trunk at 1008² and both necks, on the photo."""
    model, _, _, state, captured = sam3
    vision = prefixed(ref, "vision.")
    _same_input(sam3, vision["input"])
    compare_rope(model.backbone.vision_backbone.trunk, vision)
    compare_vision("full", captured, state.image, vision, sam2=True)


def test_full_size_packed_vision_matches_meta(sam3, ref):
    """The same with the trunk packed for CPU inference (what the export teacher runs on CPU)."""
    model = sam3[0]
    vision = prefixed(ref, "vision.")
    trunk = model.backbone.vision_backbone.trunk
    assert trunk.pack_for_cpu() == 4 * len(trunk.blocks)
    try:
        with capturing(model.backbone) as captured, torch.no_grad():
            out = model.forward_image(vision["input"])
    finally:
        trunk.unpack()
    compare_vision("full packed", captured, out, vision, sam2=True)


def test_full_size_text_encoder_matches_meta(sam3, ref):
    """SAM3's real text encoder: 24 layers, width 1024, context 32."""
    compare_text("text full", sam3[0].backbone, CAPTIONS, prefixed(ref, "text."))


def test_full_size_grounding_matches_meta(sam3, ref):
    """1008², 200 queries, 6+6 layers, on the photo's features and real captions."""
    model, state = sam3[0], sam3[3]
    found = prefixed(ref, "grounding.")
    _same_input(sam3, found["image.0.input"])
    grounding.compare("full", model, found, GROUNDING_CASES, {0: state.image})


def test_full_size_interactive_path_matches_meta(sam3, ref):
    """1008² input, 72² embedding, 288² low-res masks, on the photo."""
    model, predictor, photo, state, _ = sam3
    found = prefixed(ref, "interactive.")
    assert int(found["hole_filling"]) == 1, "Meta's hole filling did not run: scikit-image missing"
    interactive.compare_images("full", model, predictor, [photo], [state], found)
    interactive.compare_cases("full", model, predictor, [state], found, INTERACTIVE_CASES)
