"""Phase 3: merged checkpoints load into the builders, and damaged ones are refused clearly."""

from __future__ import annotations

import pytest
import torch

from sam3.checkpoint import CheckpointError, read_checkpoint
from sam3.model_builder import (
    build_efficientsam3_backbone,
    build_efficientsam3_image_model,
    build_sam3_backbone,
)
from sam3.predictor import Sam3Predictor
from sam3.schema import BACKBONE_PREFIX, VISION_STUDENT_PREFIX, VISION_TRUNK_PREFIX
from stage1.common.students import build_configured_student
from stage1.export.teachers import save_random_image_teacher
from stage1.merge.run import run_merge

from helpers.students import (
    TINY,
    files_fixture,  # noqa: F401  (a fixture)
    load,
    student_config,
)


def test_a_merged_whole_image_model_builds_with_interactivity(files, tmp_path):
    sam3 = tmp_path / "sam3_tiny_image.pt"  # a whole image model with the interactive heads
    save_random_image_teacher(sam3, "sam3_tiny", 112, seed=3)
    merged = run_merge(sam3, tmp_path / "merged.pth", files["image"], files["text"])
    teacher, _ = read_checkpoint(sam3)
    state, _ = read_checkpoint(merged.output)
    sam2 = BACKBONE_PREFIX + "vision_backbone.sam2_convs."
    carried = [k for k in teacher if k.startswith(("tracker.", sam2))]
    assert len(carried) > 50 and all(torch.equal(state[k], teacher[k]) for k in carried)
    model = build_efficientsam3_image_model(merged.output, enable_inst_interactivity=True)
    own = model.tracker.state_dict()
    assert own and all(torch.equal(own[k], teacher["tracker." + k]) for k in own)
    necks = model.backbone.vision_backbone.sam2_convs.state_dict()
    assert all(torch.equal(v, teacher[sam2 + k]) for k, v in necks.items())
    predictor = Sam3Predictor(model)
    photo = (torch.rand(3, 90, 120) * 255).to(torch.uint8)
    found = predictor.predict_inst(
        predictor.set_image(photo), box=[10, 10, 60, 50], multimask_output=False
    )
    assert found.masks.shape == (1, 90, 120) and 0.0 < float(found.scores[0]) < 1.0


def test_merged_backbone_gives_the_students_features_and_sam3_shapes(files):
    merged = run_merge(files["sam3"], files["base"] / "run.pth", files["image"], files["text"])
    model = build_efficientsam3_backbone(merged.output, enable_sam2_neck=True)
    image_cfg = student_config("es_ev_s.yaml")
    text_cfg = student_config("es_mc_s.yaml")
    image_student = build_configured_student(image_cfg, "image").eval()
    image_student.load_state_dict(load(files["image"])["model"])
    text_student = build_configured_student(text_cfg, "text").eval()
    text_student.load_state_dict(load(files["text"])["model"])
    teacher = build_sam3_backbone(files["sam3"], cfg=TINY, enable_sam2_neck=True)

    x = torch.randn(2, 3, 112, 112)
    captions = ["a red car", "two dogs on a beach, at night"]
    with torch.inference_mode():
        out = model.forward_image(x)
        alone = image_student(x)
        trunk = model.vision_backbone.trunk(x)[-1]
        reference = teacher.forward_image(x)
        text = model.forward_text(captions)
        mask, features, _ = text_student(captions)
    assert torch.equal(trunk, alone)
    assert [m.shape for m in out["backbone_fpn"]] == [m.shape for m in reference["backbone_fpn"]]
    assert [p.shape for p in out["vision_pos_enc"]] == [
        p.shape for p in reference["vision_pos_enc"]
    ]
    assert out["sam2_backbone_out"]["vision_features"].shape == out["vision_features"].shape
    # the neck convs are SAM3's own (kept), so a neck run on the student's map is the output
    with torch.inference_mode():
        neck_maps = [conv(alone) for conv in teacher.vision_backbone.convs]
    assert torch.equal(out["vision_features"], neck_maps[-2])
    assert torch.equal(text["language_features"], features)
    assert torch.equal(text["language_mask"], mask)
    assert text["language_features"].shape == (32, 2, 256)
    assert model.meta["image_student"] == "efficientvit_b0"


def test_loading_a_damaged_merged_checkpoint_fails_clearly(files, tmp_path):
    merged = run_merge(files["sam3"], tmp_path / "ok.pth", files["image"], files["text"]).output
    obj = load(merged)
    leftover = dict(obj["model"])
    trunk_key = next(k for k in files["state"] if k.startswith(VISION_TRUNK_PREFIX + "blocks"))
    leftover[trunk_key] = files["state"][trunk_key]
    torch.save({"model": leftover, "meta": obj["meta"]}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="Leftover teacher keys"):
        build_efficientsam3_backbone(tmp_path / "foreign.pth")

    missing = dict(obj["model"])
    gone = next(k for k in missing if k.startswith(VISION_STUDENT_PREFIX))
    del missing[gone]
    torch.save({"model": missing, "meta": obj["meta"]}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="1 missing"):
        build_efficientsam3_backbone(tmp_path / "missing.pth")

    with pytest.raises(CheckpointError, match="names no student"):
        build_efficientsam3_backbone(files["sam3"])
    # without meta, names can be given; a wrong one is a clear error
    torch.save({"model": obj["model"]}, tmp_path / "no_meta.pth")
    model = build_efficientsam3_backbone(
        tmp_path / "no_meta.pth", image_student="ES-EV-S", text_student="ES-MC-S", cfg=TINY
    )
    assert model.vision_backbone.trunk.model.name == "efficientvit_b0"
    with pytest.raises(CheckpointError, match="is a text student"):
        build_efficientsam3_backbone(tmp_path / "no_meta.pth", image_student="MobileCLIP-S0")
