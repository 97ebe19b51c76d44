"""``python -m sam3.predict``: every user mistake is one ``error:`` line and exit 1, checked before
the model loads; runs on real tiny models (text/box detection, and the interactive path's points
and boxes) write the overlay and the JSON they promise."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sam3.predict import EXIT_USER_ERROR

from helpers.predict import (  # noqa: F401  (the *_fixture names)
    PHOTO,
    cli_args,
    expect_error,
    no_model_load_fixture,
    run_cli,
    tiny_ckpt_fixture,
)


def test_a_missing_or_unreadable_image(capsys, tmp_path, tiny_ckpt, no_model_load):
    expect_error(
        capsys, cli_args(tiny_ckpt, tmp_path / "nope.jpg", "--text", "a"), "nope.jpg", "exist"
    )
    expect_error(capsys, cli_args(tiny_ckpt, tmp_path, "--text", "a"), "not a file")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    expect_error(capsys, cli_args(tiny_ckpt, bad, "--text", "a"), "bad.jpg", "could not be read")


def test_a_missing_checkpoint(capsys, tmp_path, no_model_load):
    line = expect_error(
        capsys, cli_args(tmp_path / "sam3.pt", PHOTO, "--text", "a"), "does not exist"
    )
    assert "sam3.pt" in line


def test_files_that_are_not_sam3_image_models(capsys, tmp_path, tiny_ckpt):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    expect_error(capsys, cli_args(text, PHOTO, "--text", "a", output=tmp_path / "o"), "notes.pt")
    other = tmp_path / "other.pt"
    torch.save({"model": {"encoder.weight": torch.zeros(2)}}, other)
    expect_error(capsys, cli_args(other, PHOTO, "--text", "a", output=tmp_path / "o"), "not a SAM3")
    state = torch.load(tiny_ckpt, weights_only=True)["model"]
    backbone_only = tmp_path / "backbone.pt"
    torch.save({"model": {k: v for k, v in state.items() if ".backbone." in k}}, backbone_only)
    expect_error(
        capsys, cli_args(backbone_only, PHOTO, "--text", "a", output=tmp_path / "o"), "heads"
    )


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ([], "no prompt"),
        (["--text", "  "], "empty"),
        (["--negative-box", "1", "1", "9", "9"], "--point X Y 0"),
        (["--text", "a", "--box", "50", "10", "20", "90"], "x1 > x0"),
        (["--text", "a", "--box", "10", "10", "20", "nan"], "finite"),
        (["--box", "500", "10", "600", "90"], "outside the 451x300"),
        (["--text", "a", "--threshold", "1.5"], "--threshold"),
        (["--text", "a", "--device", "tpu"], "--device"),
    ],
)
def test_bad_prompts_and_options(capsys, tmp_path, tiny_ckpt, no_model_load, extra, fragment):
    expect_error(capsys, cli_args(tiny_ckpt, PHOTO, *extra, output=tmp_path / "out"), fragment)
    assert not (tmp_path / "out").exists()  # nothing created before the checks pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda(capsys, tmp_path, tiny_ckpt, no_model_load):
    expect_error(capsys, cli_args(tiny_ckpt, PHOTO, "--text", "a", "--device", "cuda"), "CUDA")


def test_an_unwritable_output_folder(capsys, tmp_path, tiny_ckpt, no_model_load):
    blocker = tmp_path / "file"
    blocker.write_text("")
    expect_error(
        capsys, cli_args(tiny_ckpt, PHOTO, "--text", "a", output=blocker / "sub"), "--output"
    )


def test_existing_results_are_not_overwritten(capsys, tmp_path, tiny_ckpt, no_model_load):
    (tmp_path / "chelsea.json").write_text("{}")
    expect_error(capsys, cli_args(tiny_ckpt, PHOTO, "--text", "a", output=tmp_path), "--overwrite")
    assert (tmp_path / "chelsea.json").read_text() == "{}"


def test_a_bad_box_from_the_shell_is_one_line_without_traceback(tmp_path, tiny_ckpt):
    proc = run_cli(*cli_args(tiny_ckpt, PHOTO, "--box", "9", "9", "1", "1", output=tmp_path))
    assert proc.returncode == EXIT_USER_ERROR and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: --box 9 9 1 1")


def test_a_run_on_a_tiny_model_writes_the_overlay_and_the_json(tmp_path, tiny_ckpt):
    from pycocotools import mask as mask_utils

    out = tmp_path / "preds"
    argv = [
        *cli_args(tiny_ckpt, PHOTO, output=out),
        *("--text", "a cat", "--box", "-20", "40", "200", "250"),
        *("--negative-box", "300", "20", "400", "120", "--threshold", "0"),
    ]
    proc = run_cli(*argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "clipped to [0.0, 40.0, 200.0, 250.0]" in proc.stderr
    report = json.loads((out / "chelsea.json").read_text())
    assert report["image_size"] == {"width": 451, "height": 300}
    assert report["prompt"] == {
        "text": "a cat",
        "boxes": [[0.0, 40.0, 200.0, 250.0]],
        "negative_boxes": [[300.0, 20.0, 400.0, 120.0]],
    }
    dets = report["detections"]
    assert len(dets) == 8  # threshold 0 keeps every query of the tiny model
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 9 and lines[-1].startswith("8 detection(s) above 0")
    for d in dets:
        mask = mask_utils.decode({"size": d["mask"]["size"], "counts": d["mask"]["counts"]})
        assert mask.shape == (300, 451) and int(mask.sum()) == d["area"]
        assert 0.0 < d["score"] < 1.0 and len(d["box_xyxy"]) == 4
    overlay = Image.open(out / "chelsea_overlay.png")
    assert overlay.size == (451, 300) and overlay.mode == "RGB"
    assert not np.array_equal(np.asarray(overlay), np.asarray(Image.open(PHOTO).convert("RGB")))

    again = run_cli(*argv)
    assert again.returncode == EXIT_USER_ERROR and "--overwrite" in again.stderr
    assert run_cli(*argv, "--overwrite").returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["chelsea.json", "chelsea_overlay.png"]
