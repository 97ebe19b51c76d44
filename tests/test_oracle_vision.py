"""Our trunk, necks and position encodings against Meta's on the same seeded weights."""

from __future__ import annotations

import pytest
import torch

from sam3.model.vit import ViTConfig
from sam3.model_builder import BackboneConfig, build_sam3_backbone

from conftest import assert_matches
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
FULL = dict(
    img_size=1008,
    patch_size=14,
    embed_dim=1024,
    depth=32,
    num_heads=16,
    mlp_ratio=4.625,
    window_size=24,
    global_att_blocks=[7, 15, 23, 31],
    pretrain_img_size=336,
    d_model=256,
    add_sam2_neck=True,
    batch=1,
    seed=0,
    input_seed=1,
)


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
    neck = model.vision_backbone
    trunk = neck.trunk
    if packed:  # the CPU inference path: oneDNN-packed weights in every block linear
        assert trunk.pack_for_cpu() == 4 * job["depth"]
        tag += " packed"
    window = next(b for b in trunk.blocks if b.window_size)
    glob = next(b for b in trunk.blocks if not b.window_size)
    # RoPE tables: bit-identical
    assert torch.equal(window.attn.freqs_cis, ref["freqs_cis.window"])
    assert torch.equal(glob.attn.freqs_cis, ref["freqs_cis.global"])
    captured = {}  # one forward pass; the trunk's and the neck's own outputs via hooks
    trunk.register_forward_hook(lambda _m, _i, o: captured.__setitem__("trunk", o[-1]))
    neck.register_forward_hook(lambda _m, _i, o: captured.__setitem__("neck", o))
    with torch.no_grad():
        out = model.forward_image(x)
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
    if job["add_sam2_neck"]:
        sam2 = out["sam2_backbone_out"]
        for i in range(3):
            assert_matches(f"{tag}: sam2 fpn {i}", sam2["backbone_fpn"][i], ref[f"sam2_fpn.{i}"])
            assert_matches(
                f"{tag}: sam2 pos {i}",
                sam2["vision_pos_enc"][i],
                ref[f"sam2_pos.{i}"],
                rel_l2=1e-6,
                max_abs=1e-5,
            )
    else:
        assert out["sam2_backbone_out"] is None


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("tag", sorted(GEOMETRIES))
def test_vision_matches_meta(oracle, tag, packed):
    job = {"kind": "vision", **GEOMETRIES[tag]}
    _compare(tag, job, oracle(job, f"vision-{tag}"), packed)


def test_full_size_vision_matches_meta(oracle):
    """SAM3's real geometry: 32 blocks at 1008², both necks."""
    job = {"kind": "vision", **FULL}
    _compare("full", job, oracle(job, "vision-full"))


def test_full_size_packed_vision_matches_meta(oracle):
    """The same with the trunk packed for CPU inference (what the export teacher runs on CPU)."""
    job = {"kind": "vision", **FULL}
    _compare("full", job, oracle(job, "vision-full"), packed=True)
