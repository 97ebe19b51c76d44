"""Strict checkpoint loading on a reduced architecture."""

import pytest
import torch

from sam3.checkpoint import CheckpointError, group_by_prefix, read_checkpoint, read_state_dict
from sam3.model.text_encoder import TextConfig
from sam3.model_builder import BackboneConfig, build_sam3_backbone

from helpers.models import TWO_BLOCK_VIT

CFG = BackboneConfig(
    TWO_BLOCK_VIT,
    TextConfig(width=64, heads=4, layers=2),
    d_model=32,
)
EXTRA = {
    "detector.transformer.encoder.layers.0.linear1.weight": torch.zeros(4, 4),
    "detector.transformer.decoder.norm.weight": torch.zeros(4),
    "detector.geometry_encoder.cls_embed.weight": torch.zeros(1, 4),
    "tracker.maskmem_backbone.x.weight": torch.zeros(2),
}


def _sam3_file(tmp_path, wrap=True, sam2=True, mutate=None):
    src = build_sam3_backbone(cfg=CFG, enable_sam2_neck=sam2)
    state = {f"detector.backbone.{k}": v for k, v in src.state_dict().items()}
    state.update(EXTRA)
    if mutate:
        mutate(state)
    path = tmp_path / "sam3.pt"
    torch.save({"model": state, "epoch": 3} if wrap else state, path)
    return src, path


@pytest.mark.parametrize("wrap", [True, False])
def test_round_trip_loads_every_tensor_and_reports_the_rest(tmp_path, wrap):
    src, path = _sam3_file(tmp_path, wrap=wrap)
    model = build_sam3_backbone(path, cfg=CFG, enable_sam2_neck=False)
    got = model.state_dict()
    for k, v in got.items():
        assert torch.equal(v, src.state_dict()[k]), k
    rep = model.load_report
    assert rep.loaded == len(got)
    assert rep.unused == {
        "detector.backbone.vision_backbone.sam2_convs": 22,
        "detector.transformer": 2,
        "detector.geometry_encoder": 1,
        "tracker.maskmem_backbone": 1,
    }
    assert "detector.transformer.*: 2" in rep.summary()
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(
            model.forward_image(x)["vision_features"],
            src.eval().forward_image(x)["vision_features"],
        )


def test_text_only_build_reports_the_vision_side(tmp_path):
    _, path = _sam3_file(tmp_path)
    model = build_sam3_backbone(path, cfg=CFG, enable_vision=False)
    assert model.vision_backbone is None
    # trunk stem (4), 2 blocks of 13, both necks of 22
    assert model.load_report.unused["detector.backbone.vision_backbone"] == 4 + 2 * 13 + 2 * 22


def test_missing_key_names_the_key_and_file(tmp_path):
    _, path = _sam3_file(
        tmp_path,
        mutate=lambda s: s.pop("detector.backbone.vision_backbone.trunk.blocks.1.mlp.fc2.bias"),
    )
    with pytest.raises(
        CheckpointError, match=r"1 missing.*trunk\.blocks\.1\.mlp\.fc2\.bias"
    ) as err:
        build_sam3_backbone(path, cfg=CFG)
    assert str(path) in str(err.value)


def test_shape_mismatch_is_reported(tmp_path):
    key = "detector.backbone.language_backbone.resizer.weight"
    _, path = _sam3_file(tmp_path, mutate=lambda s: s.__setitem__(key, torch.zeros(5, 64)))
    with pytest.raises(CheckpointError, match=r"resizer.weight: file \(5, 64\)"):
        build_sam3_backbone(path, cfg=CFG)


def test_foreign_rope_tables_are_rejected(tmp_path):
    key = "detector.backbone.vision_backbone.trunk.blocks.0.attn.freqs_cis"
    _, path = _sam3_file(tmp_path, mutate=lambda s: s.__setitem__(key, s[key] * 1j))
    with pytest.raises(CheckpointError, match="RoPE tables"):
        build_sam3_backbone(path, cfg=CFG)


def test_missing_file_says_where_to_get_sam3(tmp_path):
    with pytest.raises(FileNotFoundError, match="huggingface.co/facebook/sam3"):
        build_sam3_backbone(tmp_path / "nope.pt", cfg=CFG)


def test_corrupt_and_non_state_dict_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        read_state_dict(bad)
    odd = tmp_path / "odd.pt"
    torch.save({"model": {"a": 1}}, odd)
    with pytest.raises(CheckpointError, match="not named tensors"):
        read_state_dict(odd)


def test_group_by_prefix():
    used = ["a.b.c.w", "a.b.d.w"]
    unused = ["a.b.e.0.w", "a.b.e.1.w", "a.x.w", "t.m.n.w", "z"]
    assert group_by_prefix(unused, used) == {"a.b.e": 2, "a.x": 1, "t.m": 1, "z": 1}


def test_a_legacy_file_is_read_without_memory_mapping(tmp_path):
    _, path = _sam3_file(tmp_path)
    state, meta = read_checkpoint(path)
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": state, "meta": {"k": 1}}, legacy, _use_new_zipfile_serialization=False)
    again, meta = read_checkpoint(legacy)
    assert meta == {"k": 1} and again.keys() == state.keys()
    assert all(torch.equal(again[k], state[k]) for k in state)
