"""A merged EfficientSAM3 checkpoint runs SAM3's detector heads and its interactive SAM heads on
its students' features."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from sam3 import predict
from sam3.arch import ImageModelConfig
from sam3.backbones.trunk import StudentTrunk
from sam3.checkpoint import read_checkpoint
from sam3.model.heads_config import HeadsConfig, SamHeadsConfig
from sam3.model.neck import DualViTDetNeck
from sam3.model.prompt import GeometricPrompt
from sam3.model.sam3_image import Sam3ImageModel
from sam3.model.vl_backbone import SAM3VLBackbone
from sam3.model_builder import (
    build_efficientsam3_image_model,
    build_sam3_image_model,
    load_image_model,
)
from sam3.predictor import Sam3Predictor
from stage1.common.students import build_configured_student
from stage1.export.teachers import TEACHER_ARCHS
from stage1.merge.run import run_merge

from helpers.students import ROOT, student_ckpt, student_config

PHOTO = ROOT / "data" / "samples" / "chelsea.jpg"
HEADS = HeadsConfig(
    geometry_layers=1,
    encoder_layers=1,
    decoder_layers=1,
    num_queries=16,
    dim_feedforward=256,
    scoring_hidden=256,
)
CONFIG = ImageModelConfig(backbone=TEACHER_ARCHS["sam3_tiny"](112), heads=HEADS)


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """A tiny SAM3 image model saved in sam3.pt's layout, ES-EV-S and ES-MC-S merged into it."""
    base = tmp_path_factory.mktemp("merged_image")
    torch.manual_seed(0)
    teacher = build_sam3_image_model(cfg=CONFIG, enable_inst_interactivity=True)
    sam3 = base / "sam3_tiny.pt"
    torch.save({"model": sam3_layout(teacher.state_dict())}, sam3)
    image = student_ckpt(base / "image", "es_ev_s.yaml", "image", seed=1)
    text = student_ckpt(base / "text", "es_mc_s.yaml", "text", seed=2)
    out = run_merge(sam3, base / "merged.pth", image, text).output
    return {"sam3": sam3, "image": image, "text": text, "merged": Path(out), "base": base}


def sam3_layout(state: dict) -> dict:
    """Our image model's state dict under sam3.pt's names (``tracker.*`` keep theirs)."""
    return {(k if k.startswith("tracker.") else "detector." + k): v for k, v in state.items()}


def _by_hand(files: dict) -> Sam3ImageModel:
    """The students' own modules under SAM3's neck, text slot and heads, loaded key by key."""
    parts = {}
    for kind, ckpt, cfg_file in (
        ("image", files["image"], "es_ev_s.yaml"),
        ("text", files["text"], "es_mc_s.yaml"),
    ):
        student = build_configured_student(student_config(cfg_file), kind, pretrained=False)
        student.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
        parts[kind] = student
    neck = DualViTDetNeck(StudentTrunk(parts["image"]), CONFIG.backbone.d_model, add_sam2_neck=True)
    model = Sam3ImageModel(
        SAM3VLBackbone(neck, parts["text"]),
        HEADS,
        sam_heads=SamHeadsConfig(),
        interactive_size=(8, 112),  # the student's embedding grid and input size
    )
    teacher = torch.load(files["sam3"], weights_only=True)["model"]
    rest = {
        k.removeprefix("detector."): v
        for k, v in teacher.items()
        if not k.startswith(
            ("detector.backbone.vision_backbone.trunk.", "detector.backbone.language")
        )
    }
    missing, unexpected = model.load_state_dict(rest, strict=False)
    assert not unexpected
    assert all(
        k.startswith(("backbone.vision_backbone.trunk.", "backbone.language")) for k in missing
    )
    return model.eval()


def _ground(model: Sam3ImageModel) -> dict:
    x = torch.rand(1, 3, 112, 112, generator=torch.Generator().manual_seed(3)) * 2 - 1
    prompt = GeometricPrompt.empty(1).with_boxes(
        torch.tensor([[[0.4, 0.5, 0.3, 0.4]], [[0.8, 0.2, 0.1, 0.1]]]), torch.tensor([[1], [0]])
    )
    with torch.inference_mode():
        state = model.forward_image(x)
        state.update(model.forward_text(["a cat on a sofa"]))
        return model.forward_grounding(state, prompt)


def test_merged_file_gives_the_outputs_of_the_parts_assembled_by_hand(merged):
    model = build_efficientsam3_image_model(merged["merged"])
    ours, theirs = _ground(model), _ground(_by_hand(merged))
    for key in ("pred_logits", "pred_boxes", "pred_masks", "presence_logit_dec", "semantic_seg"):
        assert torch.equal(ours[key], theirs[key]), key
    _, meta = read_checkpoint(merged["merged"])
    assert model.preprocessing == meta["preprocessing"]
    assert type(load_image_model(merged["merged"]).backbone.vision_backbone.trunk) is StudentTrunk


def _clicks(model: Sam3ImageModel) -> list[dict]:
    """A box, a point, and the box + two clicks refined with the first call's logits."""
    x = torch.rand(1, 3, 112, 112, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.inference_mode():
        features = model.interactive_features(model.forward_image(x))
        box = model.tracker(features, boxes=torch.tensor([[20.0, 15.0, 90.0, 100.0]]))
        point = model.tracker(features, torch.tensor([[[50.0, 60.0]]]), torch.tensor([[1]]))
        refined = model.tracker(
            features,
            torch.tensor([[[40.0, 30.0], [70.0, 80.0]]]),
            torch.tensor([[1, 0]]),
            boxes=torch.tensor([[20.0, 15.0, 90.0, 100.0]]),
            mask_input=box["low_res_masks"][:, :1],
            multimask_output=False,
        )
    return [box, point, refined]


def test_merged_file_with_interactivity_matches_the_parts_assembled_by_hand(merged):
    """The vision student feeds both necks; SAM3's SAM heads run on the second one."""
    model = build_efficientsam3_image_model(merged["merged"], enable_inst_interactivity=True)
    assert model.tracker.sam_prompt_encoder.embedding_size == 8
    assert model.tracker.input_size == 112
    ours, theirs = _clicks(model), _clicks(_by_hand(merged))
    for a, b in zip(ours, theirs):
        for key in ("all_masks", "all_iou", "object_score_logits", "mask_index"):
            assert torch.equal(a[key], b[key]), key
    assert ours[0]["all_masks"].shape == (1, 4, 32, 32)
    report = model.load_report
    assert not any(group.startswith("tracker.sam") for group in report.unused)
    plain = load_image_model(merged["merged"])
    assert not plain.has_interactivity
    assert plain.load_report.unused["detector.backbone.vision_backbone.sam2_convs"] == 22


def test_predictor_and_cli_run_on_the_merged_file(merged, capsys):
    model = load_image_model(merged["merged"])
    predictor = Sam3Predictor(model, confidence_threshold=0.0)
    with Image.open(PHOTO) as photo:
        state = predictor.set_image(photo.convert("RGB"))
        size = photo.size
    found = predictor.set_text_prompt(state, "a cat")
    assert found.masks.shape[1:] == (size[1], size[0]) and len(found.scores) == HEADS.num_queries
    out = merged["base"] / "predictions"
    code = predict.main(
        [
            "--checkpoint", str(merged["merged"]), "--image", str(PHOTO), "--text", "a cat",
            "--box", "100", "60", "300", "280", "--threshold", "0", "--output", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    result = json.loads((out / "chelsea.json").read_text())
    assert len(result["detections"]) == HEADS.num_queries
    assert (out / "chelsea_overlay.png").is_file()
