"""Our tokenizer and a reduced text encoder against Meta's on the same seeded weights (SAM3's
real text encoder: ``test_oracle_full_size.py``)."""

from __future__ import annotations

import pytest
import torch

from sam3.model.text_encoder import TextConfig
from sam3.model.tokenizer import Sam3Tokenizer
from sam3.model_builder import BackboneConfig, build_sam3_backbone

from helpers.backbone import CAPTIONS, TRICKY, compare_text
from seeded_init import seeded_state

pytestmark = pytest.mark.oracle


def test_tokenizer_matches_meta(oracle):
    ctxs = [32, 77, 8]
    ref = oracle({"kind": "tokenizer", "texts": TRICKY, "context_lengths": ctxs}, "tokenizer")
    for ctx in ctxs:
        ours = Sam3Tokenizer(ctx)(TRICKY)
        assert torch.equal(ours, ref[f"tokens.{ctx}"]), f"context {ctx}"


def _compare(tag: str, job: dict, ref: dict) -> None:
    cfg = BackboneConfig(
        text=TextConfig(
            width=job["width"],
            heads=job["heads"],
            layers=job["layers"],
            context_length=job["context_length"],
        ),
        d_model=job["d_model"],
    )
    model = build_sam3_backbone(cfg=cfg, enable_vision=False)
    seeded_state(model, job["seed"])
    compare_text(tag, model, job["captions"], ref)


def test_small_text_encoder_matches_meta(oracle):
    job = dict(
        kind="text",
        width=64,
        heads=4,
        layers=3,
        context_length=32,
        d_model=32,
        captions=CAPTIONS,
        seed=3,
    )
    _compare("text small", job, oracle(job, "text-small"))
