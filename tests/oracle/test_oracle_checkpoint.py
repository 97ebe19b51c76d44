"""A file with every key of ``sam3.pt`` (names and shapes from Meta's full build) loads into
``build_sam3_backbone`` with nothing missing and every unused key reported by prefix."""

from __future__ import annotations

import pytest
import torch

from sam3.model_builder import build_sam3_backbone
from sam3.schema import BACKBONE_PREFIX, DETECTOR_PREFIX

pytestmark = pytest.mark.oracle

HEADS = {  # what the detector and tracker keep outside the backbone, as SAM3 names them
    "detector.geometry_encoder",
    "detector.transformer",
    "detector.segmentation_head",
    "detector.dot_prod_scoring",
}


@pytest.fixture(scope="module")
def sam3_keys(oracle):
    return oracle({"kind": "keys"}, "keys")


@pytest.fixture(scope="module")
def sam3_file(sam3_keys, tmp_path_factory):
    """All 1465 keys; each tensor holds one distinct value (index / 1e4) broadcast to its shape
    (stride 0, so the file stays small), except the RoPE tables, which hold Meta's values."""
    shapes = sam3_keys["shapes"]
    state = {}
    for i, key in enumerate(sorted(shapes)):
        if key.endswith("attn.freqs_cis"):
            block = int(key.split("blocks.")[1].split(".")[0])
            kind = "global" if block in (7, 15, 23, 31) else "window"
            state[key] = sam3_keys[f"freqs_cis.{kind}"].clone()
        else:
            state[key] = torch.full((1,), i / 1e4).expand(shapes[key])
    path = tmp_path_factory.mktemp("ckpt") / "sam3.pt"
    torch.save({"model": state}, path)
    return path, state


def test_key_inventory_is_sam3_pt(sam3_keys):
    keys = sam3_keys["shapes"]
    assert len(keys) == 1465
    assert sum(k.startswith("detector.") for k in keys) == 1156
    assert sum(k.startswith("tracker.") for k in keys) == 309


def test_our_backbone_has_exactly_sam3s_backbone_keys(sam3_keys):
    with torch.device("meta"):
        from sam3.model_builder import build_vl_backbone

        model = build_vl_backbone(enable_sam2_neck=True)
    ours = {BACKBONE_PREFIX + k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: v for k, v in sam3_keys["shapes"].items() if k.startswith(BACKBONE_PREFIX)}
    assert ours == theirs


def test_full_file_loads_every_backbone_key(sam3_file):
    path, state = sam3_file
    model = build_sam3_backbone(path, enable_sam2_neck=True)
    report = model.load_report
    backbone_keys = [k for k in state if k.startswith(BACKBONE_PREFIX)]
    assert report.loaded == len(backbone_keys) == 759
    groups = set(report.unused)
    assert groups >= HEADS and all(g in HEADS or g.startswith("tracker.") for g in groups)
    assert report.unused_total == 1465 - 759
    # every tensor came from its own key
    own = model.state_dict()
    for key in (
        "vision_backbone.trunk.blocks.31.mlp.fc2.weight",
        "vision_backbone.sam2_convs.0.dconv_2x2_0.weight",
        "language_backbone.encoder.text_projection",
        "language_backbone.resizer.bias",
    ):
        assert torch.equal(own[key], state[BACKBONE_PREFIX + key].expand_as(own[key])), key


def test_default_build_reports_sam2_neck_and_text_only_build_reports_vision(sam3_file):
    path, _ = sam3_file
    report = build_sam3_backbone(path).load_report
    assert report.unused["detector.backbone.vision_backbone.sam2_convs"] == 22
    text_only = build_sam3_backbone(path, enable_vision=False).load_report
    assert text_only.unused["detector.backbone.vision_backbone"] == 420 + 44
    assert text_only.loaded == 295


def test_our_image_model_has_exactly_sam3s_detector_keys(sam3_keys):
    from sam3.model_builder import build_sam3_image_model

    model = build_sam3_image_model(device="meta")
    ours = {DETECTOR_PREFIX + k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = {
        k: v
        for k, v in sam3_keys["shapes"].items()
        if k.startswith(DETECTOR_PREFIX) and ".sam2_convs." not in k
    }
    assert ours == theirs
    assert len(ours) == 1156 - 22
    assert sum(p.numel() for p in model.parameters()) == 840_509_750


def test_full_file_loads_into_the_image_model(sam3_file):
    from sam3.model_builder import build_sam3_image_model

    path, state = sam3_file
    model = build_sam3_image_model(path)
    report = model.load_report
    assert report.loaded == 1134
    unused = dict(report.unused)
    assert unused.pop("detector.backbone.vision_backbone.sam2_convs") == 22
    assert all(group.startswith("tracker.") for group in unused)  # reported, never dropped
    assert sum(unused.values()) == 309
    own = model.state_dict()
    for key in (
        "geometry_encoder.boxes_pool_project.weight",
        "transformer.decoder.boxRPB_embed_y.layers.1.bias",
        "segmentation_head.pixel_decoder.conv_layers.2.weight",
        "dot_prod_scoring.prompt_mlp.out_norm.weight",
    ):
        assert torch.equal(own[key], state["detector." + key].expand_as(own[key])), key


def test_backbone_only_file_is_refused_with_a_clear_error(sam3_file, tmp_path):
    from sam3.checkpoint import CheckpointError
    from sam3.model_builder import build_sam3_image_model

    _, state = sam3_file
    path = tmp_path / "backbone_only.pt"
    torch.save({k: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}, path)
    with pytest.raises(CheckpointError, match="not its detector heads"):
        build_sam3_image_model(path)


VIDEO_ONLY = {  # the tracker's video-only parts, as sam3.pt names them, and their key counts
    "tracker.transformer": 106,
    "tracker.maskmem_backbone": 40,
    "tracker.obj_ptr_proj": 6,
    "tracker.obj_ptr_tpos_proj": 2,
    "tracker.mask_downsample": 2,
    "tracker.maskmem_tpos_enc": 1,
    "tracker.no_mem_pos_enc": 1,
    "tracker.no_obj_ptr": 1,
    "tracker.no_obj_embed_spatial": 1,
}


def test_interactive_model_has_exactly_sam3s_keys(sam3_keys):
    """With interactivity our image model is sam3.pt minus the tracker's video-only parts."""
    from sam3.model_builder import build_sam3_image_model

    model = build_sam3_image_model(device="meta", enable_inst_interactivity=True)
    ours = {
        (k if k.startswith("tracker.") else DETECTOR_PREFIX + k): list(v.shape)
        for k, v in model.state_dict().items()
    }
    video = tuple(p + "." for p in VIDEO_ONLY)
    theirs = {
        k: v
        for k, v in sam3_keys["shapes"].items()
        if k not in VIDEO_ONLY and not k.startswith(video)
    }
    assert ours == theirs
    assert len(ours) == 1156 + 149
    tracker = sum(p.numel() for p in model.tracker.parameters())
    assert tracker == 4_221_585
    assert sum(p.numel() for p in model.parameters()) == 840_509_750 + 7_802_112 + tracker


def test_full_file_loads_into_the_interactive_model(sam3_file):
    """0 missing keys; exactly the video-only tracker parts reported, by prefix."""
    from sam3.model_builder import build_sam3_image_model

    path, state = sam3_file
    model = build_sam3_image_model(path, enable_inst_interactivity=True)
    report = model.load_report
    assert report.loaded == 1156 + 149
    assert report.unused == VIDEO_ONLY
    own = model.state_dict()
    for key in (
        "tracker.sam_mask_decoder.transformer.layers.1.cross_attn_image_to_token.v_proj.weight",
        "tracker.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        "tracker.sam_mask_decoder.conv_s0.bias",
        "tracker.no_mem_embed",
    ):
        assert torch.equal(own[key], state[key].expand_as(own[key])), key
    key = "backbone.vision_backbone.sam2_convs.2.conv_3x3.weight"
    assert torch.equal(own[key], state["detector." + key].expand_as(own[key]))


def test_file_without_tracker_keys_is_refused_for_interactivity(sam3_file, tmp_path):
    from sam3.checkpoint import CheckpointError
    from sam3.model_builder import build_sam3_image_model

    _, state = sam3_file
    path = tmp_path / "detector_only.pt"
    torch.save({k: v for k, v in state.items() if k.startswith("detector.")}, path)
    assert build_sam3_image_model(path).load_report.loaded == 1134  # text path still fine
    with pytest.raises(CheckpointError, match="has no interactive heads"):
        build_sam3_image_model(path, enable_inst_interactivity=True)
