"""A checkpoint's architecture is read back from its tensor shapes."""

from __future__ import annotations

import pytest
import torch

from sam3.arch import ImageModelConfig, has_heads, infer_image_config
from sam3.checkpoint import CheckpointError
from sam3.model_builder import build_sam3_image_model
from stage1.export.teachers import teacher_image_config


def _state(cfg: ImageModelConfig) -> dict[str, torch.Tensor]:
    model = build_sam3_image_model(device="meta", cfg=cfg)
    return {"detector." + k: v for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "cfg",
    [
        ImageModelConfig(),
        teacher_image_config("sam3_tiny", 112),
        teacher_image_config("sam3", 1008),
    ],
    ids=["sam3", "sam3_tiny@112", "teacher sam3"],
)
def test_the_architecture_reads_back_from_the_shapes(cfg):
    state = _state(cfg)
    assert has_heads(state)
    assert infer_image_config(state) == cfg


def test_a_file_without_the_heads_or_a_trunk_table_says_what_is_missing():
    state = _state(teacher_image_config("sam3_tiny", 112))
    backbone = {k: v for k, v in state.items() if k.startswith("detector.backbone.")}
    assert not has_heads(backbone)
    del state["detector.backbone.vision_backbone.trunk.blocks.1.attn.freqs_cis"]
    with pytest.raises(CheckpointError, match="blocks.1.attn.freqs_cis"):
        infer_image_config(state)
