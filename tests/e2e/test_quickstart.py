"""The quickstart end to end (reduced), and the pictures it draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam3.arch import HEAD_ROOTS, infer_heads_config, infer_sam_heads_config
from sam3.checkpoint import read_checkpoint
from sam3.instance import InstanceMasks
from sam3.model.heads_config import SamHeadsConfig
from sam3.model_builder import (
    build_efficientsam3_backbone,
    build_efficientsam3_image_model,
    build_sam3_image_model,
)
from sam3.predictor import Detections, Sam3Predictor
from stage1.demo import run as quickstart
from stage1.demo import segment as quickstart_segment
from stage1.demo import setup as quickstart_setup
from stage1.demo.data import SAMPLES
from stage1.demo.segment import (
    BOX_PROMPT,
    best_detection,
    compare_segmentations,
    instance_detection,
    mask_iou,
)
from stage1.export.teachers import TEACHER_HEADS, save_random_image_teacher, teacher_image_config
from stage1.report.pictures import (
    cosine_map_mean,
    feature_comparison,
    pca_basis,
    pca_rgb,
    training_curves,
)

TINY_SIZE = 112  # the reduced teacher's input side in the segmentation tests


def test_pca_colours_are_shared_between_teacher_and_student():
    torch.manual_seed(0)
    teacher = torch.randn(16, 6, 7)
    valid = torch.ones(6, 7, dtype=torch.bool)
    valid[:, -2:] = False
    mean, comps = pca_basis(teacher, valid)
    rgb, limits = pca_rgb(teacher, mean, comps, valid=valid)
    same, _ = pca_rgb(teacher.clone(), mean, comps, limits, valid)
    other, _ = pca_rgb(torch.randn(16, 6, 7), mean, comps, limits, valid)
    assert rgb.shape == (6, 7, 3) and 0 <= rgb.min() and rgb.max() <= 1
    assert np.array_equal(rgb, same)
    assert not np.allclose(rgb, other)
    assert (rgb[:, -2:] == 0).all()  # padding is black
    assert cosine_map_mean(teacher, teacher, valid) == pytest.approx(1.0)
    assert cosine_map_mean(teacher, -teacher) == pytest.approx(-1.0)


def test_picture_files(tmp_path):
    teacher = torch.randn(8, 5, 5)
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    path = feature_comparison(tmp_path / "f.png", image, teacher, {"a": teacher, "b": -teacher})
    with Image.open(path) as picture:
        assert picture.width > 3 * picture.height  # four panels side by side
    with pytest.raises(ValueError, match="map"):
        feature_comparison(tmp_path / "g.png", image, teacher, {"a": torch.randn(8, 4, 4)})
    curves = training_curves(tmp_path / "c.png", {"run": {"train loss": [3.0, 2.0, 1.0]}})
    with Image.open(curves) as picture:
        assert picture.width > 100 and picture.height > 100
    assert not list(tmp_path.glob(".*tmp*"))


def test_best_detection_and_mask_iou():
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :2] = True  # rows 0-1
    masks[1, 1:3] = True  # rows 1-2
    boxes = torch.arange(12, dtype=torch.float32).view(3, 4)
    found = Detections(masks, boxes, torch.tensor([0.31, 0.35, 0.2]), raw={"q": 1})
    best = best_detection(found)
    assert len(best) == 1 and best.raw == {"q": 1}
    assert best.scores.tolist() == [pytest.approx(0.35)]
    assert torch.equal(best.masks[0], masks[1]) and best.boxes.tolist() == [[4.0, 5.0, 6.0, 7.0]]
    empty = Detections(masks[:0], boxes[:0], torch.zeros(0), raw={})
    assert len(best_detection(empty)) == 0
    assert mask_iou(masks[0], masks[1]) == pytest.approx(4 / 12)
    assert mask_iou(masks[0], masks[0]) == 1.0
    assert mask_iou(masks[0], masks[2]) == 0.0  # one empty
    assert mask_iou(masks[2], masks[2]) == 1.0  # both empty: they agree
    assert mask_iou(masks[0].to(torch.uint8), masks[1]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="shapes"):
        mask_iou(masks[0], masks[0, :3])


def test_instance_detection_is_the_one_mask_its_extent_and_predicted_iou():
    masks = torch.zeros(1, 6, 8, dtype=torch.bool)
    masks[0, 2:4, 3:7] = True  # rows 2-3, columns 3-6
    extra = (torch.zeros(1), torch.zeros(1, dtype=torch.long))
    found = InstanceMasks(masks, torch.tensor([0.7]), torch.zeros(1, 4, 4), *extra)
    det = instance_detection(found, (0.0, 0.0, 5.0, 5.0))
    assert len(det) == 1 and torch.equal(det.masks, masks)
    assert det.boxes.tolist() == [[3.0, 2.0, 7.0, 4.0]]
    assert det.scores.tolist() == [pytest.approx(0.7)]
    empty = InstanceMasks(
        torch.zeros_like(masks), torch.tensor([0.2]), torch.zeros(1, 4, 4), *extra
    )
    det = instance_detection(empty, (1.0, 2.0, 3.0, 4.0))
    assert len(det) == 1 and not det.masks.any()  # still one answer, scored
    assert det.boxes.tolist() == [[1.0, 2.0, 3.0, 4.0]]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Two reduced random teachers (seeds 0 and 1) saved in sam3.pt's layout and loaded back
    with their interactive heads: (states as saved, models)."""
    base = tmp_path_factory.mktemp("tiny_teachers")
    cfg = teacher_image_config("sam3_tiny", TINY_SIZE)
    states, models = [], []
    for seed in (0, 1):
        path = base / f"teacher_{seed}.pt"
        count = save_random_image_teacher(path, "sam3_tiny", TINY_SIZE, seed=seed)
        state, _ = read_checkpoint(path)
        assert len(state) == count
        states.append(state)
        models.append(build_sam3_image_model(path, cfg=cfg, enable_inst_interactivity=True))
    return states, models


def test_the_reduced_teacher_file_has_sam3s_interactive_layout(tiny_models):
    (state, _), (model, _) = tiny_models
    tracker = [k for k in state if k.startswith("tracker.")]
    assert tracker and all(k.startswith(("detector.", "tracker.")) for k in state)
    assert not any(k.startswith("detector.tracker.") for k in state)
    assert any(k.startswith("detector.backbone.vision_backbone.sam2_convs.") for k in state)
    assert infer_sam_heads_config(state) == SamHeadsConfig()  # SAM3's sizes
    assert infer_heads_config(state) == TEACHER_HEADS["sam3_tiny"]
    own = model.tracker.state_dict()
    assert len(own) == len(tracker)
    assert all(torch.equal(own[k], state["tracker." + k]) for k in own)


def test_segmentation_rows_and_their_iou(tiny_models, tmp_path, monkeypatch):
    _, (teacher, other) = tiny_models
    titles = []
    save = quickstart_segment.save_figure

    def capture(fig, path):
        titles.append([ax.get_title() for ax in fig.axes])  # row by row
        return save(fig, path)

    monkeypatch.setattr(quickstart_segment, "save_figure", capture)
    photo = Image.open(SAMPLES / "astronaut.jpg").convert("RGB")
    same = compare_segmentations(
        {"teacher": teacher, "again": teacher}, photo, tmp_path / "a.png", ""
    )
    assert same["iou"] == {"text": 1.0, "box": 1.0, "interactive": 1.0}
    result = compare_segmentations(
        {"teacher": teacher, "other": other}, photo, tmp_path / "b.png", ""
    )
    assert set(result["iou"]) == {"text", "box", "interactive"}
    assert all(0.0 <= v <= 1.0 for v in result["iou"].values())
    # the interactive row is predict_inst's one mask for the box, and its IoU is the masks'
    masks = []
    for model in (teacher, other):
        predictor = Sam3Predictor(model)
        state = predictor.set_image(photo)
        masks.append(predictor.predict_inst(state, box=list(BOX_PROMPT), multimask_output=False))
    shown = [result["found"][n]["interactive"] for n in ("teacher", "other")]
    for direct, det in zip(masks, shown):
        assert torch.equal(det.masks, direct.masks.cpu()) and det.masks.shape == (1, 512, 512)
        assert det.scores.tolist() == direct.scores.tolist()
    a, b = masks[0].masks[0], masks[1].masks[0]
    union = int((a | b).sum())
    expected = int((a & b).sum()) / union if union else 1.0
    assert result["iou"]["interactive"] == pytest.approx(expected)
    assert result["scores"]["interactive"]["teacher"] == pytest.approx(float(masks[0].scores[0]))
    # the picture has the third row, titled with the prompt, the predicted IoU and the mask IoU
    last = titles[-1]
    assert len(last) == 6  # three rows of two panels
    assert "SAM heads" in last[4] and "predicted IoU" in last[4] and "SAM heads" not in last[2]
    assert f"mask IoU vs teacher {result['iou']['interactive']:.3f}" in last[5]
    with Image.open(result["path"]) as picture:
        assert picture.height > 1.3 * picture.width  # three rows of two square photos


def test_an_existing_sam3_checkpoint_is_the_teacher(tmp_path, capsys):
    sam3 = tmp_path / "sam3.pt"
    sam3.write_bytes(b"stand-in")  # only its existence is looked at here
    setup = quickstart_setup.choose_teacher(sam3, tmp_path, 448)
    assert (setup.teacher_ckpt, setup.arch, setup.img_size, setup.real) == (
        sam3,
        "sam3",
        1008,
        True,
    )
    assert (setup.embed_dim, setup.embed_size) == (1024, 72)
    assert "Teacher: SAM3 from" in capsys.readouterr().out
    assert not list(tmp_path.glob("sam3_tiny*"))


def test_quickstart_runs_every_phase(tmp_path, capsys):
    out = tmp_path / "qs"
    result = quickstart.main(
        [
            "--output", str(out), "--sam3-ckpt", str(tmp_path / "absent.pt"),
            "--image-epochs", "4", "--text-epochs", "2", "--img-size", "224", "--device", "cpu",
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "RANDOMLY INITIALISED teacher" in printed
    assert "what was written" in printed
    assert not result["real_teacher"]
    for stage in ("stage1_teacher", "stage1_text_teacher"):
        assert (out / stage / "embeddings" / "manifest.json").is_file()
    merged = Path(result["merged"])
    assert merged.name == "efficient_sam3_efficientvit_b0_mobileclip_s0.pth"
    model = build_efficientsam3_backbone(merged)
    assert model.meta["image_student"] == "efficientvit_b0"
    assert model.meta["text_student"] == "MobileCLIP-S0"
    assert result["merged_vs_student_max_abs"] == 0.0
    # the random teacher is a whole image model; the merge carries its neck and heads unchanged
    teacher, _ = read_checkpoint(out / "sam3_tiny_random.pt")
    assert infer_heads_config(teacher) == TEACHER_HEADS["sam3_tiny"]
    merged_state, _ = read_checkpoint(merged)
    assert infer_sam_heads_config(teacher) == SamHeadsConfig()
    kept = [k for k in teacher if k.startswith(tuple("detector." + r for r in HEAD_ROOTS))]
    kept += [k for k in teacher if k.startswith("detector.backbone.vision_backbone.convs.")]
    assert len(kept) > 100
    interactive = [k for k in teacher if k.startswith("tracker.")]
    interactive += [k for k in teacher if "vision_backbone.sam2_convs." in k]
    assert len(interactive) > 50
    assert all(torch.equal(merged_state[k], teacher[k]) for k in kept + interactive)
    assert len(build_efficientsam3_image_model(merged).transformer.decoder.layers) == 1
    ious = result["segmentation_iou"]
    assert set(ious) == {"text", "box", "interactive"}
    assert all(0.0 <= v <= 1.0 for v in ious.values())
    for scores in result["segmentation_scores"].values():
        assert all(0.0 < v < 1.0 for v in scores.values())
    assert "top-1 by score" in printed and "SAM heads" in printed
    assert f"interactive {ious['interactive']:.3f}" in printed
    for key in ("features_png", "curves_png", "segmentation_png"):
        with Image.open(result[key]) as picture:
            assert np.asarray(picture.convert("L")).std() > 10  # drawn, not blank
    cos = result["cos"]
    assert cos["student, trained"] > cos["student, untrained"] + 0.1
    text = result["text_result"].train_loss
    assert text[-1] < text[0]
    # a second run clears the folder it made; a foreign folder is refused
    quickstart_setup.prepare_output(out)
    assert [p.name for p in out.iterdir()] == [quickstart_setup.MARKER]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(SystemExit, match="not made by the quickstart"):
        quickstart_setup.prepare_output(foreign)
    assert (foreign / "keep.txt").exists()
