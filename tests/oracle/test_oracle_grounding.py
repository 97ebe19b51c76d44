"""The whole image model against Meta's grounding on the same seeded weights, at reduced sizes:
text only, text with a positive and a negative box, boxes only; every stage from the prompt to
the masks (SAM3's sizes: ``test_oracle_full_size.py``)."""

from __future__ import annotations

import pytest

from sam3.model_builder import build_sam3_image_model

from helpers import grounding
from helpers.models import GROUNDING_CASES, grounding_config, grounding_job
from seeded_init import seeded_state

pytestmark = pytest.mark.oracle


@pytest.fixture(scope="module")
def reduced(oracle):
    job = grounding_job()
    ref = oracle(job, "grounding-reduced")
    model = build_sam3_image_model(cfg=grounding_config())
    seeded_state(model, job["seed"])
    return model, ref


def test_reduced_model_has_metas_keys(reduced):
    model, ref = reduced
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == ref["state_keys"]


def test_reduced_grounding_matches_meta(reduced):
    model, ref = reduced
    images = grounding.image_features(model, ref, GROUNDING_CASES)
    grounding.compare("reduced", model, ref, GROUNDING_CASES, images)
