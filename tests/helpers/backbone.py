"""Comparing our backbone's outputs with the oracle's ``vision`` and ``text`` results (the keys
of ``meta_oracle.run_vision`` / ``run_text``), shared by the reduced and the full-size tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from helpers.compare import assert_matches

# Texts on which a tokenizer may go wrong: empty, case, punctuation and contractions, accents,
# other scripts, emoji, HTML entities, whitespace, the special tokens' names, mojibake, numbers,
# far over a context of 32 tokens.
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
    " ".join(f"word{i}" for i in range(60)),
    "supercalifragilisticexpialidocious " * 5,
]
CAPTIONS = [TRICKY[i] for i in (2, 3, 4, 6, 9, 0, 14, 8)]  # the text encoders' batch


@contextmanager
def capturing(backbone: torch.nn.Module) -> Iterator[dict[str, Any]]:
    """Record the trunk's last map (``"trunk"``) and the neck's own output (``"neck"``) of the
    forward passes run inside the block; the hooks are removed on leaving it."""
    captured: dict[str, Any] = {}
    neck = backbone.vision_backbone
    hooks = [
        neck.trunk.register_forward_hook(lambda _m, _i, o: captured.__setitem__("trunk", o[-1])),
        neck.register_forward_hook(lambda _m, _i, o: captured.__setitem__("neck", o)),
    ]
    try:
        yield captured
    finally:
        for hook in hooks:
            hook.remove()


def compare_rope(trunk: torch.nn.Module, ref: dict) -> None:
    """The window and global blocks' RoPE tables are bit-identical to Meta's."""
    window = next(b for b in trunk.blocks if b.window_size)
    glob = next(b for b in trunk.blocks if not b.window_size)
    assert torch.equal(window.attn.freqs_cis, ref["freqs_cis.window"])
    assert torch.equal(glob.attn.freqs_cis, ref["freqs_cis.global"])


def compare_vision(tag: str, captured: dict, out: dict, ref: dict, sam2: bool) -> None:
    """The trunk's map, every neck level (the one ``scalp`` drops too), the backbone's maps and
    position encodings and, with ``sam2``, the second neck's, against a ``vision`` result."""
    assert_matches(f"{tag}: trunk", captured["trunk"], ref["trunk_out"])
    maps = captured["neck"][0]
    for i in range(4):
        assert_matches(f"{tag}: neck level {i}", maps[i], ref[f"all_neck.{i}"])
    for i in range(3):
        assert_matches(f"{tag}: backbone_fpn {i}", out["backbone_fpn"][i], ref[f"fpn.{i}"])
        assert_matches(
            f"{tag}: vision_pos_enc {i}",
            out["vision_pos_enc"][i],
            ref[f"pos.{i}"],
            rel_l2=1e-6,
            max_abs=1e-5,
        )
    assert_matches(f"{tag}: vision_features", out["vision_features"], ref["vision_features"])
    if not sam2:
        assert out["sam2_backbone_out"] is None
        return
    second = out["sam2_backbone_out"]
    for i in range(3):
        assert_matches(f"{tag}: sam2 fpn {i}", second["backbone_fpn"][i], ref[f"sam2_fpn.{i}"])
        assert_matches(
            f"{tag}: sam2 pos {i}",
            second["vision_pos_enc"][i],
            ref[f"sam2_pos.{i}"],
            rel_l2=1e-6,
            max_abs=1e-5,
        )


def compare_text(tag: str, backbone: torch.nn.Module, captions: list[str], ref: dict) -> None:
    """Our tokens, padding mask, language features and embeddings of ``captions`` against a
    ``text`` result."""
    with torch.no_grad():
        out = backbone.forward_text(captions, device="cpu")
    tokens = backbone.language_backbone.tokenizer(captions)
    assert torch.equal(tokens, ref["tokens"])
    assert torch.equal(out["language_mask"], ref["language_mask"])
    assert_matches(f"{tag}: language_features", out["language_features"], ref["language_features"])
    assert_matches(f"{tag}: language_embeds", out["language_embeds"], ref["language_embeds"])


def prefixed(ref: dict, prefix: str) -> dict:
    """The entries of ``ref`` whose key starts with ``prefix``, without it."""
    return {k[len(prefix) :]: v for k, v in ref.items() if k.startswith(prefix)}
