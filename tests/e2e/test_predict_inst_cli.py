"""The interactive path of ``python -m sam3.predict`` (points and boxes without text): the JSON
entries equal ``predict_inst`` on the same file, the multimask rules, and every bad input as one
error line before the model loads."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam3.cli.interactive import mask_box
from sam3.predict import EXIT_USER_ERROR, main

from helpers.predict import (  # noqa: F401  (the *_fixture names)
    PHOTO,
    cli_args,
    expect_error,
    no_model_load_fixture,
    run_cli,
    tiny_ckpt_fixture,
    tiny_config,
)


def write_tiny_interactive_checkpoint(path: Path, seed: int = 2) -> Path:
    """A random tiny model with the second neck and the SAM heads, in sam3.pt's layout:
    ``tracker.*`` keys keep their names, everything else goes under ``detector.``. A 112-pixel
    input gives 32x32 low-res masks, so hole filling can leave masks that do not cover the photo
    (seed 2 does, for the prompts below)."""
    from sam3.model.heads_config import SamHeadsConfig
    from sam3.model_builder import build_sam3_image_model

    cfg = tiny_config()
    vit = dataclasses.replace(cfg.backbone.vit, img_size=112, window_size=4)
    sam = SamHeadsConfig(embed_dim=32, num_heads=1, mlp_dim=64, iou_head_hidden=32, mask_in_chans=8)
    cfg = dataclasses.replace(
        cfg, backbone=dataclasses.replace(cfg.backbone, vit=vit), sam_heads=sam
    )
    torch.manual_seed(seed)
    model = build_sam3_image_model(cfg=cfg, enable_inst_interactivity=True)
    state = {
        k if k.startswith("tracker.") else "detector." + k: v for k, v in model.state_dict().items()
    }
    torch.save({"model": state}, path)
    return path


@pytest.fixture(scope="module")
def inst_ckpt(tmp_path_factory) -> Path:
    return write_tiny_interactive_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_inst.pt")


@pytest.fixture(scope="module")
def inst_reference(inst_ckpt):
    """``predict_inst`` called directly on the same file and photo: what the tool must report."""
    from sam3.model_builder import load_image_model
    from sam3.predictor import Sam3Predictor

    model = load_image_model(inst_ckpt, enable_inst_interactivity=True)
    predictor = Sam3Predictor(model)
    state = predictor.set_image(Image.open(PHOTO).convert("RGB"))
    return lambda **prompt: predictor.predict_inst(state, **prompt)


def _decoded(entry: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode(entry["mask"]).astype(bool)


def _check_entries(entries: list[dict], expected, sets: list[int]) -> None:
    """The JSON entries equal ``expected`` (an InstanceMasks), flattened in prompt-set order."""
    from pycocotools import mask as mask_utils

    masks = expected.masks.reshape(-1, 300, 451).numpy()
    scores = expected.scores.reshape(-1).tolist()
    index = expected.mask_index.reshape(-1).tolist()
    assert len(entries) == len(masks) == len(sets)
    assert [e["prompt"] for e in entries] == sets
    assert [e["mask_index"] for e in entries] == index
    for entry, mask, score in zip(entries, masks, scores):
        assert np.array_equal(_decoded(entry), mask)
        assert entry["score"] == pytest.approx(score, abs=1e-5)
        assert entry["area"] == int(mask.sum())
        x, y, w, h = mask_utils.toBbox(entry["mask"]).tolist()  # COCO's own box of the RLE
        assert entry["box_xyxy"] == ([x, y, x + w, y + h] if entry["area"] else None)


def _run_inst(tmp_path, ckpt, *prompt: str) -> dict:
    """Run the tool in-process on ``prompt``; return the JSON (the overlay is checked too)."""
    assert main(cli_args(ckpt, PHOTO, *prompt, "--device", "cpu", output=tmp_path)) == 0
    overlay = Image.open(tmp_path / "chelsea_overlay.png")
    assert overlay.size == (451, 300) and overlay.mode == "RGB"
    assert not np.array_equal(np.asarray(overlay), np.asarray(Image.open(PHOTO).convert("RGB")))
    return json.loads((tmp_path / "chelsea.json").read_text())


def test_a_single_point_gives_three_masks(tmp_path, capsys, inst_ckpt, inst_reference):
    report = _run_inst(tmp_path, inst_ckpt, "--point", "225", "140", "1")
    point = [225.0, 140.0, 1]
    assert report["prompt"] == {
        "points": [point],
        "boxes": [],
        "multimask": True,
        "sets": [{"points": [point], "box": None}],
    }
    assert "threshold" not in report
    expected = inst_reference(point_coords=[[225, 140]], point_labels=[1], multimask_output=True)
    _check_entries(report["detections"], expected, [0, 0, 0])
    assert [e["mask_index"] for e in report["detections"]] == [1, 2, 3]
    # the check of the boxes is not vacuous: some mask leaves part of the photo out
    assert any(e["box_xyxy"] not in (None, [0, 0, 451, 300]) for e in report["detections"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("3 mask(s) (score = predicted IoU)")


BOX = ["60", "20", "330", "290"]
BOX2 = ["250", "40", "440", "280"]


@pytest.mark.parametrize(
    ("prompt", "call", "sets"),
    [
        (["--box", *BOX], {"box": [60, 20, 330, 290], "multimask_output": False}, [0]),
        (
            ["--box", *BOX, "--box", *BOX2],
            {"box": [[60, 20, 330, 290], [250, 40, 440, 280]], "multimask_output": False},
            [0, 1],
        ),
        (  # all points and the one box form one set; several points: one mask
            ["--point", "225", "140", "1", "--point", "40", "260", "0", "--box", *BOX],
            {
                "point_coords": [[225, 140], [40, 260]],
                "point_labels": [1, 0],
                "box": [60, 20, 330, 290],
                "multimask_output": False,
            },
            [0],
        ),
        (
            ["--point", "225", "140", "1", "--single-mask"],
            {"point_coords": [[225, 140]], "point_labels": [1], "multimask_output": False},
            [0],
        ),
        (["--box", *BOX, "--multimask"], {"box": [60, 20, 330, 290]}, [0, 0, 0]),
        (
            ["--box", *BOX, "--box", *BOX2, "--multimask"],
            {"box": [[60, 20, 330, 290], [250, 40, 440, 280]]},
            [0, 0, 0, 1, 1, 1],
        ),
    ],
    ids=["box", "two-boxes", "points-and-box", "single-mask", "box-multimask", "boxes-multimask"],
)
def test_boxes_points_and_the_multimask_flags(
    tmp_path, inst_ckpt, inst_reference, prompt, call, sets
):
    report = _run_inst(tmp_path, inst_ckpt, *prompt)
    _check_entries(report["detections"], inst_reference(**call), sets)
    record = report["prompt"]
    assert record["multimask"] is call.get("multimask_output", True)
    boxes = call.get("box")
    boxes = [] if boxes is None else boxes if isinstance(boxes[0], list) else [boxes]
    assert record["boxes"] == boxes
    points = [
        [*xy, lab] for xy, lab in zip(call.get("point_coords", []), call.get("point_labels", []))
    ]
    assert record["points"] == points
    assert len(record["sets"]) == max(sets) + 1


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--point", "10", "10", "2"], "the label 2 is neither 1"),
        (["--point", "10", "10", "0.5"], "the label 0.5"),
        (["--point", "500", "10", "1"], "outside the 451x300 photo"),
        (["--point", "10", "-1", "1"], "outside the 451x300 photo"),
        (["--point", "nan", "10", "1"], "finite"),
        (["--box", "50", "10", "20", "90"], "x1 > x0"),
        (["--point", "10", "10", "1", "--multimask", "--single-mask"], "contradict"),
        (["--text", "a cat", "--point", "10", "10", "1"], "--point goes without --text"),
        (["--negative-box", "1", "1", "9", "9", "--box", *BOX], "--point X Y 0"),
        (["--point", "10", "10", "1", "--box", *BOX, "--box", *BOX2], "at most one box"),
        (["--point", "10", "10", "1", "--threshold", "0.3"], "drop --threshold"),
        (["--text", "a cat", "--single-mask"], "--single-mask applies to --point"),
    ],
)
def test_bad_interactive_prompts(capsys, tmp_path, inst_ckpt, no_model_load, extra, fragment):
    expect_error(capsys, cli_args(inst_ckpt, PHOTO, *extra, output=tmp_path / "out"), fragment)
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_without_the_interactive_heads(capsys, tmp_path, tiny_ckpt):
    argv = cli_args(tiny_ckpt, PHOTO, "--point", "225", "140", "1", output=tmp_path)
    expect_error(capsys, argv, "tiny_sam3.pt has no interactive heads", "enable_inst_interactivity")
    assert not (tmp_path / "chelsea.json").exists()


def test_an_interactive_run_from_the_shell(tmp_path, inst_ckpt):
    argv = [*cli_args(inst_ckpt, PHOTO, output=tmp_path), "--point", "200", "150", "1"]
    proc = run_cli(*argv, "--box", "-30", "20", "330", "290")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.strip() == (
        "warning: --box [-30.0, 20.0, 330.0, 290.0] reaches outside the photo; clipped to "
        "[0.0, 20.0, 330.0, 290.0]"
    )
    report = json.loads((tmp_path / "chelsea.json").read_text())
    assert report["prompt"]["sets"] == [
        {"points": [[200.0, 150.0, 1]], "box": [0.0, 20.0, 330.0, 290.0]}
    ]
    assert len(report["detections"]) == 1 and report["prompt"]["multimask"] is False
    proc = run_cli(*argv, "--text", "a cat")  # a mistake from the shell: one line, no traceback
    assert proc.returncode == EXIT_USER_ERROR and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: --point goes")


def test_the_tight_box_of_a_mask():
    mask = np.zeros((5, 7), dtype=bool)
    assert mask_box(mask) is None
    mask[2, 3] = True
    assert mask_box(mask) == [3.0, 2.0, 4.0, 3.0]  # one pixel spans [3, 4) x [2, 3)
    mask[4, 6] = True
    assert mask_box(mask) == [3.0, 2.0, 7.0, 5.0]
