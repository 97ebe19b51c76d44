"""Our detector decoder against Meta's ``TransformerDecoder`` on the same seeded weights."""

from __future__ import annotations

import pytest
import torch

from sam3.model.box_ops import box_cxcywh_to_xyxy
from sam3.model.decoder import TransformerDecoder
from sam3.model.heads_config import HeadsConfig

from helpers.compare import assert_matches
from meta_job_decoder import rescale_to_fan_in
from seeded_init import seeded_input, seeded_state

pytestmark = pytest.mark.oracle

SMALL = dict(
    d_model=64,
    num_heads=4,
    dim_feedforward=128,
    layers=3,
    num_queries=10,
    height=6,  # not square: rows and columns must not be swapped
    width=5,
    batch=2,
    prompt_len=7,
    prompt_pad=[0, 3],
    seed=0,
    input_seed=1,
    fan_in_init=True,
)
DEFAULT_SIZES = dict(
    d_model=256, num_heads=8, dim_feedforward=2048, layers=6, num_queries=200, fan_in_init=True
)
# SAM3's sizes on a tiny grid (a quick check of the full-width key layout and numerics)
DEFAULT_TINY = dict(
    **DEFAULT_SIZES,
    height=3,
    width=4,
    batch=1,
    prompt_len=9,
    prompt_pad=[2],
    seed=3,
    input_seed=5,
)
FULL = {**DEFAULT_TINY, "height": 72, "width": 72, "prompt_len": 33, "prompt_pad": [4]}

# sam3.pt's transformer.decoder.* at SAM3's sizes (reference doc, section 4)
SAM3_DECODER_KEYS = 175
SAM3_DECODER_NUMEL = 11_575_093


def _config(job: dict) -> HeadsConfig:
    return HeadsConfig(
        d_model=job["d_model"],
        num_heads=job["num_heads"],
        dim_feedforward=job["dim_feedforward"],
        decoder_layers=job["layers"],
        num_queries=job["num_queries"],
    )


def _compare(tag: str, job: dict, ref: dict, autograd: bool = False) -> None:
    """Run our decoder on the job's seeded weights and inputs; compare every output with Meta's.

    ``autograd``: run with gradients recorded, i.e. the portable path (``F.linear`` and one
    masked SDPA per attention) instead of the fp32 CPU inference path (oneDNN, box bias added
    head by head)."""
    decoder = TransformerDecoder(_config(job)).eval()
    shapes = {k: list(v.shape) for k, v in decoder.state_dict().items()}
    assert shapes == ref["shapes"]
    seeded_state(decoder, job["seed"])
    if job["fan_in_init"]:
        rescale_to_fan_in(decoder)

    tokens, batch, dim = job["height"] * job["width"], job["batch"], job["d_model"]
    memory = seeded_input([tokens, batch, dim], job["input_seed"])
    memory_pos = seeded_input([tokens, batch, dim], job["input_seed"] + 1)
    prompt = seeded_input([job["prompt_len"], batch, dim], job["input_seed"] + 2)
    assert torch.equal(memory, ref["memory"]) and torch.equal(prompt, ref["prompt"])
    prompt_mask = ref["prompt_mask"]
    assert prompt_mask.shape == (batch, job["prompt_len"])
    assert prompt_mask.sum().item() == sum(job["prompt_pad"])

    with torch.set_grad_enabled(autograd):
        hs, boxes, presence, presence_feats = decoder(
            memory, memory_pos, prompt, prompt_mask, (job["height"], job["width"])
        )
        pred = decoder.predict_boxes(hs.transpose(1, 2), boxes.transpose(1, 2))
    assert_matches(f"{tag}: hs", hs, ref["hs"])
    assert_matches(f"{tag}: reference_boxes", boxes, ref["reference_boxes"])
    assert_matches(f"{tag}: presence_logits", presence, ref["presence_logits"])
    assert_matches(f"{tag}: presence_feats", presence_feats, ref["presence_feats"])
    assert_matches(f"{tag}: pred_boxes", pred, ref["pred_boxes"])
    assert_matches(f"{tag}: pred_boxes_xyxy", box_cxcywh_to_xyxy(pred), ref["pred_boxes_xyxy"])


@pytest.mark.parametrize("autograd", [False, True], ids=["inference", "autograd"])
def test_small_decoder_matches_meta(oracle, autograd):
    """Reduced sizes, batch 2 with one padded prompt, a non-square grid."""
    job = {"kind": "decoder", **SMALL}
    tag = "decoder small" + (" autograd" if autograd else "")
    _compare(tag, job, oracle(job, "decoder-small"), autograd)


def test_default_decoder_keys_and_outputs_match_meta(oracle):
    """SAM3's sizes on a 3x4 grid: the same keys and shapes as Meta's, and the same outputs."""
    job = {"kind": "decoder", **DEFAULT_TINY}
    ref = oracle(job, "decoder-default-tiny")
    assert len(ref["shapes"]) == SAM3_DECODER_KEYS
    assert sum(torch.Size(s).numel() for s in ref["shapes"].values()) == SAM3_DECODER_NUMEL
    decoder = TransformerDecoder(HeadsConfig())
    assert len(decoder.state_dict()) == SAM3_DECODER_KEYS
    assert sum(p.numel() for p in decoder.parameters()) == SAM3_DECODER_NUMEL
    _compare("decoder default 3x4", job, ref)


@pytest.mark.slow
def test_full_size_decoder_matches_meta(oracle):
    """SAM3's sizes on the 72x72 memory grid of a 1008 px image (5184 tokens)."""
    job = {"kind": "decoder", **FULL}
    _compare("decoder full 72x72", job, oracle(job, "decoder-full"))


def test_feat_size_must_match_memory():
    decoder = TransformerDecoder(HeadsConfig(d_model=16, num_heads=2, num_queries=3))
    memory = torch.zeros(12, 1, 16)
    with pytest.raises(ValueError, match="feat_size"):
        decoder(memory, memory, torch.zeros(2, 1, 16), torch.zeros(1, 2, dtype=torch.bool), (3, 5))
