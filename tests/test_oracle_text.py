"""Our tokenizer and text encoder against Meta's on the same seeded weights."""

from __future__ import annotations

import pytest
import torch

from sam3.model.text_encoder import TextConfig
from sam3.model.tokenizer import Sam3Tokenizer
from sam3.model_builder import BackboneConfig, build_sam3_backbone

from conftest import assert_matches
from seeded_init import seeded_state

pytestmark = pytest.mark.oracle

TRICKY = [
    "",
    "   ",
    "a photo of a cat",
    "A PHOTO Of A Cat",
    "Hello, world! What's up?? (yes) -- no... #1 @home $5.99 100%",
    "they're here, we've seen it, I'd go, you'll see, it's John's",
    "café naïve résumé Ångström Straße",
    "日本語のテキスト 中文 한국어 русский текст",
    "emoji 🐱🚗 and symbols ©®™ ½ ∞",
    "&amp; &lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot; &#39;x&#39; &amp;amp;",
    "tabs\tand\nnew   lines\r\n collapse",
    "<start_of_text> literal <end_of_text> markers",
    "mojibake: cafÃ© â€œquotesâ€\x9d",
    "numbers 1234567890 and 3.14159 and 1,000,000",
    " ".join(f"word{i}" for i in range(60)),  # far over 32 tokens
    "supercalifragilisticexpialidocious " * 5,
]
CAPTIONS = [TRICKY[i] for i in (2, 3, 4, 6, 9, 0, 14, 8)]


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
    with torch.no_grad():
        out = model.forward_text(job["captions"], device="cpu")
    tokens = model.language_backbone.tokenizer(job["captions"])
    assert torch.equal(tokens, ref["tokens"])
    assert torch.equal(out["language_mask"], ref["language_mask"])
    assert_matches(f"{tag}: language_features", out["language_features"], ref["language_features"])
    assert_matches(f"{tag}: language_embeds", out["language_embeds"], ref["language_embeds"])


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


def test_full_size_text_encoder_matches_meta(oracle):
    """SAM3's real text encoder: 24 layers, width 1024, context 32."""
    job = dict(
        kind="text",
        width=1024,
        heads=16,
        layers=24,
        context_length=32,
        d_model=256,
        captions=CAPTIONS,
        seed=0,
    )
    _compare("text full", job, oracle(job, "text-full"))
