"""Oracle job ``text``: Meta's text encoder in a ``SAM3VLBackbone`` (keys
``language_backbone.*``), seeded, on captions.

Job parameters: ``width, heads, layers, context_length, d_model, captions, seed`` (and the
optional ``bpe_path``). Returns ``tokens``, ``language_features``, ``language_mask``,
``language_embeds``.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from meta_oracle import fail, log_phase, require, resolve_bpe_path
from seeded_init import seeded_state

PARAMS = ("width", "heads", "layers", "context_length", "d_model", "captions", "seed")


def run(meta: SimpleNamespace, job: dict[str, Any]) -> dict[str, Any]:
    """Build a SAM3 text encoder (keys ``language_backbone.*``), seed it, and encode captions."""
    require(job, PARAMS)
    captions = [str(c) for c in job["captions"]]
    if not captions:
        fail("text job needs at least one caption")
    seed = int(job["seed"])
    context_length = int(job["context_length"])
    clock = time.perf_counter()
    torch.manual_seed(seed)
    tokenizer = meta.SimpleTokenizer(bpe_path=resolve_bpe_path(job))
    encoder = meta.VETextEncoder(
        d_model=int(job["d_model"]),
        tokenizer=tokenizer,
        width=int(job["width"]),
        heads=int(job["heads"]),
        layers=int(job["layers"]),
        context_length=context_length,
    )
    backbone = meta.SAM3VLBackbone(visual=None, text=encoder, scalp=1)
    backbone.eval()
    clock = log_phase("build", clock)
    seeded_state(backbone, seed)
    clock = log_phase("seed", clock)
    result = text_result(backbone, captions)
    log_phase("forward_text", clock)
    return result


def text_result(backbone: nn.Module, captions: list[str]) -> dict[str, Any]:
    """The ``text`` job's result: ``backbone``'s tokens and ``forward_text`` of ``captions``."""
    encoder = backbone.language_backbone
    tokens = encoder.tokenizer(captions, context_length=encoder.context_length)
    with torch.no_grad():
        out = backbone.forward_text(captions, device="cpu")
    return {
        "tokens": tokens,
        "language_features": out["language_features"],
        "language_mask": out["language_mask"],
        "language_embeds": out["language_embeds"],
    }
