"""Our geometry (prompt) encoder and fusion encoder against Meta's on the same seeded weights;
their attention against ``nn.MultiheadAttention``, and their oneDNN and autograd paths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sam3.model.encoder_layer as encoder_layer
import sam3.model.packed_linear as packed_linear
from sam3.model.fusion_encoder import FusionEncoder
from sam3.model.geometry_encoder import GeometryEncoder
from sam3.model.heads_config import HeadsConfig
from sam3.model.prompt import GeometricPrompt

from helpers.compare import assert_matches
from seeded_init import seeded_input, seeded_state

SIZES = ("d_model", "num_heads", "dim_feedforward", "geometry_layers", "encoder_layers", "roi_size")
CASES = [
    {"name": "empty", "batch": 1, "text_len": 4, "input_seed": 10},
    {"name": "pos_neg_box", "batch": 1, "box_labels": [[1], [0]], "text_len": 4, "input_seed": 20},
    {
        "name": "points_boxes",
        "batch": 2,
        "point_labels": [[1, 0], [0, 1]],
        "point_valid": [2, 1],
        "box_labels": [[1, 1], [0, 0]],
        "box_valid": [1, 2],
        "text_len": 5,
        "text_valid": [5, 3],
        "input_seed": 30,
    },
    {
        "name": "ragged_boxes",
        "batch": 2,
        "box_labels": [[1, 1], [0, 0], [1, 0]],
        "box_valid": [3, 1],
        "text_len": 5,
        "text_valid": [2, 5],
        "input_seed": 40,
    },
]
# H != W so that a transposed grid would show
SMALL = dict(
    d_model=64,
    num_heads=4,
    dim_feedforward=96,
    geometry_layers=2,
    encoder_layers=2,
    roi_size=5,
    grid=[10, 14],
    seed=3,
)
FULL_CASE = {
    "name": "full",
    "batch": 1,
    "point_labels": [[1]],
    "box_labels": [[1], [0]],
    "text_len": 32,
    "text_valid": [7],
    "input_seed": 50,
}


def _models(job: dict) -> tuple[GeometryEncoder, FusionEncoder]:
    cfg = HeadsConfig(**{k: job[k] for k in SIZES})
    geo, fusion = GeometryEncoder(cfg).eval(), FusionEncoder(cfg).eval()
    seeded_state(geo, job["seed"])
    seeded_state(fusion, job["seed"])
    return geo, fusion


def _shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def _compare(job: dict, ref: dict) -> None:
    geo, fusion = _models(job)
    assert _shapes(geo) == ref["geometry_shapes"]
    assert _shapes(fusion) == ref["fusion_shapes"]
    grid = tuple(job["grid"])
    for case in job["cases"]:
        name = case["name"]
        x = {k.split(".", 1)[1]: v for k, v in ref.items() if k.startswith(f"{name}.")}
        prompt = GeometricPrompt(
            boxes=x["boxes"],
            box_labels=x["box_labels"],
            box_mask=x["box_mask"],
            points=x["points"],
            point_labels=x["point_labels"],
            point_mask=x["point_mask"],
        )
        with torch.no_grad():
            tokens, mask = geo(prompt, x["feats"], x["pos"], grid)
            # fusion on Meta's own prompt (isolates this module) and on ours (the chain)
            memory, pos = fusion(x["feats"], x["pos"], x["prompt"], x["prompt_mask"], grid)
            chained = fusion(
                x["feats"],
                x["pos"],
                torch.cat([x["text"], tokens]),
                torch.cat([x["text_mask"], mask], dim=1),
                grid,
            )[0]
        n = x["boxes"].shape[0] + x["points"].shape[0] + 1
        assert tokens.shape[0] == n
        assert torch.equal(mask, x["geo_mask"]), name
        assert_matches(f"encoders {name}: geometry tokens", tokens, x["geo"])
        assert_matches(f"encoders {name}: fusion memory", memory, x["memory"])
        assert_matches(f"encoders {name}: geometry -> fusion", chained, x["memory"])
        assert torch.equal(pos, x["pos_embed"])


@pytest.mark.oracle
def test_encoders_match_meta(oracle):
    job = {"kind": "encoders", **SMALL, "cases": CASES}
    _compare(job, oracle(job, "encoders-small"))


@pytest.mark.oracle
def test_default_keys_match_sam3(oracle):
    """At HeadsConfig() our names and shapes are those of SAM3's real builders."""
    job = {"kind": "encoders", **SMALL, "cases": CASES}
    ref = oracle(job, "encoders-small")
    cfg = HeadsConfig()
    geo, fusion = _shapes(GeometryEncoder(cfg)), _shapes(FusionEncoder(cfg))
    assert geo == ref["sam3_geometry_shapes"]
    assert fusion == ref["sam3_fusion_shapes"]
    assert (len(geo), sum(torch.Size(s).numel() for s in geo.values())) == (76, 8_215_808)
    assert (len(fusion), sum(torch.Size(s).numel() for s in fusion.values())) == (108, 9_472_512)


@pytest.mark.oracle
@pytest.mark.slow
def test_full_size_encoders_match_meta(oracle):
    """SAM3's sizes (HeadsConfig defaults) on the 72x72 grid: 5184 image tokens."""
    cfg = HeadsConfig()
    sizes = {k: getattr(cfg, k) for k in SIZES}
    job = {"kind": "encoders", **sizes, "grid": [72, 72], "seed": 1, "cases": [FULL_CASE]}
    _compare(job, oracle(job, "encoders-full"))


# attention(): (name, L, M, batch, inputs shared, padded keys per batch entry, formulation)
ATTENTION_CASES = [
    ("self", 50, 50, 2, "qk", [0, 9], "project_attend"),
    ("self_shared", 40, 40, 1, "qkv", None, "project_attend"),
    ("few_queries", 3, 140, 2, "", [4, 0], "_attend_few_queries"),
    ("few_keys", 140, 7, 2, "kv", [0, 3], "_attend_few_keys"),
    ("few_keys_unpadded", 140, 7, 1, "", [0], "_attend_few_keys"),
]


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
@pytest.mark.parametrize("case", ATTENTION_CASES, ids=[c[0] for c in ATTENTION_CASES])
def test_attention_matches_multihead_attention(case, grad, monkeypatch):
    """Each formulation equals ``nn.MultiheadAttention``'s forward, biases and masks included."""
    _, length, m, batch, shared, padded, chosen = case
    d, heads = 64, 4
    mha = nn.MultiheadAttention(d, heads).eval()
    seeded_state(mha, 7)
    with torch.no_grad():  # logits of order one, biases large enough that a lost one shows
        mha.in_proj_weight.mul_(1 / (0.02 * d**0.5))
        mha.in_proj_bias.mul_(25)
    query = seeded_input([length, batch, d], 1)
    key = query if "qk" in shared else seeded_input([m, batch, d], 2)
    value = key if ("kv" in shared or shared == "qkv") else seeded_input([m, batch, d], 3)
    mask = None if padded is None else torch.arange(m)[None] >= m - torch.tensor(padded)[:, None]
    with torch.no_grad():
        want = mha(query, key, value, key_padding_mask=mask, need_weights=False)[0]
    used = []
    for name in ("project_attend", "_attend_few_queries", "_attend_few_keys"):
        real = getattr(encoder_layer, name)
        spy = lambda *a, real=real, name=name: used.append(name) or real(*a)  # noqa: E731
        monkeypatch.setattr(encoder_layer, name, spy)
    if grad:
        query = query.clone().requires_grad_()
        got = encoder_layer.attention(mha, query, key, value, mask)
        got.square().sum().backward()
        assert query.grad is not None and bool(query.grad.isfinite().all())
    else:
        with torch.inference_mode():
            got = encoder_layer.attention(mha, query, key, value, mask)
    assert used == [chosen]
    assert_matches(f"attention {case[0]}", got, want)


def test_onednn_and_plain_paths_agree(monkeypatch):
    """The encoders through oneDNN (inference) and through F.linear (autograd) agree to fp32
    rounding, so the path the oracle tests do not take stays checked too."""
    if not packed_linear.onednn_linear_available():
        pytest.skip("this PyTorch build has no oneDNN")
    calls = {"n": 0}
    real = packed_linear.onednn_linear

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(packed_linear, "onednn_linear", counting)
    geo, fusion = _models({**SMALL, "seed": 5})
    h, w = SMALL["grid"]
    feats, pos = seeded_input([h * w, 2, 64], 1), seeded_input([h * w, 2, 64], 2)
    text = seeded_input([5, 2, 64], 3)
    text_mask = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    prompt = GeometricPrompt(
        boxes=0.3 + 0.4 * (seeded_input([2, 2, 4], 4) + 1) / 2,
        box_labels=torch.tensor([[1, 0], [0, 1]]),
        box_mask=torch.tensor([[False, False], [False, True]]),
        points=(seeded_input([1, 2, 2], 5) + 1) / 2,
        point_labels=torch.tensor([[1, 1]]),
        point_mask=torch.tensor([[False], [True]]),
    )

    def run(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, mask = geo(prompt, feats, pos, (h, w))
        memory = fusion(
            feats, pos, torch.cat([text, tokens]), torch.cat([text_mask, mask], 1), (h, w)
        )[0]
        return tokens, memory

    with torch.inference_mode():
        fast = run(feats)
    assert calls["n"] > 0
    calls["n"] = 0
    feats = feats.clone().requires_grad_()
    plain = run(feats)
    assert calls["n"] == 0
    plain[1].sum().backward()
    assert feats.grad is not None and bool(feats.grad.isfinite().all())
    for a, b in zip(fast, plain):
        rel = ((a - b.detach()).norm() / b.norm()).item()
        assert rel <= 1e-6, rel
