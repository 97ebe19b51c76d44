"""Our trunk, necks and position encodings against Meta's on the same seeded weights, at reduced
sizes (SAM3's: ``test_oracle_full_size.py``)."""

from __future__ import annotations

import pytest
import torch

from sam3.model.vit import ViTConfig
from sam3.model_builder import BackboneConfig, build_sam3_backbone

from helpers.backbone import capturing, compare_rope, compare_vision
from seeded_init import seeded_input, seeded_state

pytestmark = pytest.mark.oracle

SMALL = dict(
    img_size=112,
    patch_size=14,
    embed_dim=64,
    depth=4,
    num_heads=4,
    mlp_ratio=4.625,
    window_size=4,
    global_att_blocks=[1, 3],
    pretrain_img_size=56,
    d_model=32,
    add_sam2_neck=True,
    batch=2,
    seed=0,
    input_seed=1,
)
GEOMETRIES = {
    "small": SMALL,
    # the token grid (12) is not a multiple of the pretrain grid (5): tiling must crop
    "odd-grid": {
        **SMALL,
        "img_size": 168,
        "window_size": 6,
        "pretrain_img_size": 70,
        "global_att_blocks": [3],
        "add_sam2_neck": False,
        "batch": 1,
        "seed": 7,
    },
}


def _ours(job: dict):
    vit = ViTConfig(
        img_size=job["img_size"],
        patch_size=job["patch_size"],
        embed_dim=job["embed_dim"],
        depth=job["depth"],
        num_heads=job["num_heads"],
        mlp_ratio=job["mlp_ratio"],
        window_size=job["window_size"],
        global_blocks=tuple(job["global_att_blocks"]),
        pretrain_img_size=job["pretrain_img_size"],
    )
    model = build_sam3_backbone(
        cfg=BackboneConfig(vit=vit, d_model=job["d_model"]),
        enable_text=False,
        enable_sam2_neck=job["add_sam2_neck"],
    )
    seeded_state(model, job["seed"])
    x = seeded_input([job["batch"], 3, job["img_size"], job["img_size"]], job["input_seed"])
    return model, x


def _compare(tag: str, job: dict, ref: dict, packed: bool = False) -> None:
    model, x = _ours(job)
    assert torch.equal(x, ref["input"])
    trunk = model.vision_backbone.trunk
    if packed:  # the CPU inference path: oneDNN-packed weights in every block linear
        assert trunk.pack_for_cpu() == 4 * job["depth"]
        tag += " packed"
    compare_rope(trunk, ref)  # bit-identical
    with capturing(model) as captured, torch.no_grad():
        out = model.forward_image(x)
    compare_vision(tag, captured, out, ref, job["add_sam2_neck"])


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("tag", sorted(GEOMETRIES))
def test_vision_matches_meta(oracle, tag, packed):
    job = {"kind": "vision", **GEOMETRIES[tag]}
    _compare(tag, job, oracle(job, f"vision-{tag}"), packed)
