"""Unit tests of the tokenizer and the text encoder."""

import pytest
import torch

from sam3.model.text_encoder import TextConfig, VETextEncoder
from sam3.model.tokenizer import EOT_TOKEN, SOT_TOKEN, Sam3Tokenizer

SMALL = TextConfig(width=64, heads=4, layers=2)


def test_tokenizer_framing_padding_and_truncation():
    tok = Sam3Tokenizer(8)
    ids = tok(["a cat", "", " ".join(["word"] * 20)])
    assert ids.shape == (3, 8) and ids.dtype == torch.long
    assert ids[0, 0] == SOT_TOKEN and ids[0, 3] == EOT_TOKEN and ids[0, 4:].eq(0).all()
    assert ids[1, :2].tolist() == [SOT_TOKEN, EOT_TOKEN] and ids[1, 2:].eq(0).all()
    assert ids[2, -1] == EOT_TOKEN and ids[2].ne(0).all()
    assert tok("A CAT").tolist() == tok("a cat").tolist()
    assert tok.vocab_size == 49408


def test_tokenizer_rejects_non_strings():
    with pytest.raises(TypeError, match="item 1"):
        Sam3Tokenizer()(["ok", None])


def test_text_encoder_shapes_and_mask():
    enc = VETextEncoder(SMALL, d_model=32).eval()
    with torch.no_grad():
        mask, feats, embeds = enc(["a photo of a dog", "x"])
    assert mask.shape == (2, 32) and mask.dtype == torch.bool
    assert feats.shape == (32, 2, 32) and embeds.shape == (32, 2, 64)
    assert mask[1].tolist() == [False] * 3 + [True] * 29


def test_text_encoder_is_causal():
    enc = VETextEncoder(SMALL, d_model=32).eval()
    tokens = enc.tokenizer(["one two three four five"])
    changed = tokens.clone()
    changed[0, 4] = 1234
    with torch.no_grad():
        a, b = enc.encoder(tokens), enc.encoder(changed)
    assert torch.allclose(a[0, :4], b[0, :4], atol=1e-6)
    assert not torch.allclose(a[0, 4:], b[0, 4:])


def test_explicit_attention_mask_matches_causal_default():
    enc = VETextEncoder(SMALL, d_model=32).eval()
    x = torch.randn(2, 32, 64)
    causal = torch.ones(32, 32, dtype=torch.bool).tril()
    with torch.no_grad():
        assert torch.allclose(
            enc.encoder.transformer(x), enc.encoder.transformer(x, causal), atol=1e-5
        )


def test_full_size_parameter_counts():
    with torch.device("meta"):
        enc = VETextEncoder()
    assert sum(p.numel() for p in enc.encoder.parameters()) == 353_462_272
    assert sum(p.numel() for p in enc.resizer.parameters()) == 262_400


def test_shorter_context_equals_the_prefix_of_the_full_one():
    """Causal attention: encoding at 16 tokens gives the first 16 positions of encoding at 32."""
    enc = VETextEncoder(SMALL, d_model=32).eval()
    captions = ["a short one", "a caption that is long enough to be cut at sixteen tokens " * 2]
    with torch.no_grad():
        m32, f32, _ = enc(captions)
        m16, f16, _ = enc(captions, context_length=16)
    assert f16.shape == (16, 2, 32)
    assert torch.allclose(f16[:, 0], f32[:16, 0], atol=1e-5)
    assert torch.equal(m16[0], m32[0, :16])
    # the long caption is truncated: its 16th token is end-of-text, not a word
    assert not torch.allclose(f16[15, 1], f32[15, 1], atol=1e-3)
