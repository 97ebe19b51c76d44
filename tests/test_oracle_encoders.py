"""Our geometry (prompt) encoder and fusion encoder against Meta's on the same seeded weights."""

from __future__ import annotations

import pytest
import torch

from sam3.model.fusion_encoder import FusionEncoder
from sam3.model.geometry_encoder import GeometryEncoder
from sam3.model.heads_config import HeadsConfig
from sam3.model.prompt import GeometricPrompt

from conftest import assert_matches
from seeded_init import seeded_state

pytestmark = pytest.mark.oracle

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


def test_encoders_match_meta(oracle):
    job = {"kind": "encoders", **SMALL, "cases": CASES}
    _compare(job, oracle(job, "encoders-small"))


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


@pytest.mark.slow
def test_full_size_encoders_match_meta(oracle):
    """SAM3's sizes (HeadsConfig defaults) on the 72x72 grid: 5184 image tokens."""
    cfg = HeadsConfig()
    sizes = {k: getattr(cfg, k) for k in SIZES}
    job = {"kind": "encoders", **sizes, "grid": [72, 72], "seed": 1, "cases": [FULL_CASE]}
    _compare(job, oracle(job, "encoders-full"))
