"""Our segmentation head and dot-product scoring against Meta's on the same seeded weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sam3.model.heads_config import HeadsConfig
from sam3.model.scoring import DotProductScoring
from sam3.model.segmentation_head import SegmentationHead

from helpers.compare import assert_matches
from seeded_init import seeded_state

pytestmark = pytest.mark.oracle

SMALL = dict(
    kind="seghead",
    d_model=64,
    num_heads=8,
    scoring_hidden=128,
    grid=8,
    num_queries=10,
    layers=3,
    batch=2,
    prompt_lengths=[5, 3],  # the second prompt is padded
    seed=0,
    input_seed=1,
)
JOBS = {
    "small": SMALL,
    # one image shared by three prompts (expanded views); a width that is not a power of two
    "shared": {
        **SMALL,
        "d_model": 40,
        "scoring_hidden": 24,
        "batch": 3,
        "prompt_lengths": [2, 4, 1],
        "shared_image": True,
        "seed": 5,
    },
}
FULL = dict(
    kind="seghead",
    d_model=256,
    num_heads=8,
    scoring_hidden=2048,
    grid=72,
    num_queries=200,
    layers=6,
    batch=1,
    prompt_lengths=[33],
    seed=0,
    input_seed=1,
)


def _ours(job: dict) -> tuple[nn.Module, HeadsConfig]:
    """Our two heads in a container named like the image model's, seeded as Meta's."""
    cfg = HeadsConfig(
        d_model=job["d_model"], num_heads=job["num_heads"], scoring_hidden=job["scoring_hidden"]
    )
    model = nn.Module()
    model.segmentation_head = SegmentationHead(cfg)
    model.dot_prod_scoring = DotProductScoring(cfg)
    model.eval()
    seeded_state(model, job["seed"])
    return model, cfg


def _inputs(ref: dict, batch: int) -> tuple[list[torch.Tensor], dict]:
    """Meta's inputs; shared-image maps become batch-``batch`` expanded (stride-0) views."""
    fpn = [ref[f"fpn.{i}"].expand(batch, -1, -1, -1) for i in range(3)]
    return fpn, dict(
        encoder_hidden_states=ref["encoder_hidden_states"],
        prompt=ref["prompt"],
        prompt_mask=ref["prompt_mask"],
    )


def _check(name: str, job: dict, ref: dict) -> None:
    model, _ = _ours(job)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == ref["shapes"]
    fpn, kw = _inputs(ref, job["batch"])
    hs = ref["hs"]
    with torch.no_grad():
        logits = model.dot_prod_scoring(hs, kw["prompt"], kw["prompt_mask"])
        last = model.dot_prod_scoring(hs[-1:], kw["prompt"], kw["prompt_mask"])
        seg = model.segmentation_head(fpn, hs[-1], **kw)
    assert_matches(f"{name}: pred_logits", logits, ref["pred_logits"])
    assert_matches(f"{name}: pred_logits (last layer)", last, ref["pred_logits"][-1:])
    assert_matches(f"{name}: pred_masks", seg["pred_masks"], ref["pred_masks"])
    assert_matches(f"{name}: semantic_seg", seg["semantic_seg"], ref["semantic_seg"])


@pytest.mark.parametrize("name", sorted(JOBS))
def test_heads_match_meta(oracle, name):
    job = JOBS[name]
    _check(name, job, oracle(job, f"seghead_{name}"))


def test_query_subset_and_no_semantic(oracle):
    """Masks of picked queries (shared or per-batch indices) equal Meta's masks of those."""
    job = SMALL
    ref = oracle(job, "seghead_small")
    model, _ = _ours(job)
    fpn, kw = _inputs(ref, job["batch"])
    queries, masks = ref["hs"][-1], ref["pred_masks"]
    shared = torch.tensor([7, 0, 7])
    per_batch = torch.tensor([[3, 9], [1, 4]])
    head = model.segmentation_head
    with torch.no_grad():
        out = head(fpn, queries, **kw, query_index=shared, semantic=False)
        pixels = head.pixel_embed(fpn, **kw)
        picked = head.mask_logits(pixels, queries, per_batch)
        empty = head.mask_logits(pixels, queries, torch.zeros(0, dtype=torch.long))
    assert set(out) == {"pred_masks"}
    assert_matches("small: pred_masks[:, [7, 0, 7]]", out["pred_masks"], masks[:, shared])
    expected = torch.stack([masks[b, per_batch[b]] for b in range(job["batch"])])
    assert_matches("small: pred_masks per-batch picks", picked, expected)
    assert empty.shape == (job["batch"], 0, *masks.shape[-2:])


@pytest.mark.slow
def test_heads_match_meta_full_size(oracle):
    """SAM3's sizes: 72x72 grid (masks at 288x288), 200 queries, 6 layers; sam3.pt's keys."""
    ref = oracle(FULL, "seghead_full")
    model, cfg = _ours(FULL)
    assert cfg == HeadsConfig()
    seg_keys = [k for k in ref["shapes"] if k.startswith("segmentation_head.")]
    score_keys = [k for k in ref["shapes"] if k.startswith("dot_prod_scoring.")]
    numel = {
        p: sum(torch.Size(ref["shapes"][k]).numel() for k in ks)
        for p, ks in (("seg", seg_keys), ("score", score_keys))
    }
    # sam3.pt's detector.segmentation_head.* / detector.dot_prod_scoring.* (sam3_model.md, 4)
    assert (len(seg_keys), numel["seg"]) == (28, 2_298_881)
    assert (len(score_keys), numel["score"]) == (10, 1_182_976)
    _check("full", FULL, ref)
    assert ref["pred_masks"].shape == (1, 200, 288, 288)
