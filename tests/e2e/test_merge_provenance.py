"""Phase 3: what the students learned from, how they are named, and what the merge reports."""

from __future__ import annotations

import logging
import re

import pytest
import torch

from stage1 import convert_image_encoder_weights_stage1
from stage1.merge.checks import MergeError
from stage1.merge.run import run_merge

from helpers.students import (
    copy_ckpt,
    files_fixture,  # noqa: F401  (a fixture)
    load,
    provenance,
)


def test_a_random_teacher_is_refused_unless_allowed(files, tmp_path, caplog):
    random = copy_ckpt(
        files["image"], tmp_path / "random.pth", provenance=provenance("image", "random", "random")
    )
    out = tmp_path / "out.pth"
    with pytest.raises(MergeError, match=r"RANDOM.*— .*--allow-random-teacher"):
        run_merge(files["sam3"], out, random)
    assert not out.exists()
    caplog.set_level(logging.WARNING, logger="stage1.merge")
    summary = convert_image_encoder_weights_stage1.main(
        ["--student-ckpt", str(random), "--sam3-ckpt", str(files["sam3"]), "--output", str(out),
         "--allow-random-teacher"]
    )  # fmt: skip
    meta = load(summary.output)["meta"]
    assert meta["random_teacher"] == ["image"]
    assert meta["provenance"]["image"]["teacher"]["checkpoint_sha256"] == "random"
    assert any("RANDOM" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert any("RANDOM" in line for line in summary.lines())


def test_the_teacher_is_compared_with_the_checkpoint_merged_into(files, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="stage1.merge")
    warnings = lambda: [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]  # noqa: E731
    run_merge(files["sam3"], tmp_path / "same.pth", files["image"])
    assert not warnings()  # its teacher is this very file
    other = copy_ckpt(
        files["image"], tmp_path / "other.pth", provenance=provenance("image", "0" * 64)
    )
    meta = load(run_merge(files["sam3"], tmp_path / "other_out.pth", other).output)["meta"]
    assert meta["sam3_sha256"] == files["sha256"]
    assert any("another checkpoint" in w and "000000000000" in w for w in warnings())
    caplog.clear()
    legacy = copy_ckpt(files["image"], tmp_path / "legacy.pth", provenance=None)
    meta = load(run_merge(files["sam3"], tmp_path / "legacy_out.pth", legacy).output)["meta"]
    assert meta["provenance"] == {"image": None}
    assert any("teacher is unknown" in w for w in warnings())
    caplog.clear()
    no_manifest = copy_ckpt(
        files["image"], tmp_path / "no_manifest.pth", provenance={"teacher": None}
    )
    run_merge(files["sam3"], tmp_path / "no_manifest_out.pth", no_manifest)
    assert any("teacher is unknown" in w and "manifest" in w for w in warnings())


def test_one_student_named_two_ways_is_one_student(files, tmp_path, caplog):
    zoo = copy_ckpt(files["image"], tmp_path / "zoo.pth", student="ES-EV-S")
    merged = run_merge(files["sam3"], tmp_path / "m.pth", zoo, image_model_name="efficientvit-b0")
    assert load(merged.output)["meta"]["image_student"] == "efficientvit_b0"
    with pytest.raises(MergeError, match=r"efficientvit_b9.* — "):
        run_merge(files["sam3"], tmp_path / "x.pth", zoo, image_model_name="efficientvit_b9")
    # a bare state dict: the geometry is assumed, and the messages say so
    bare = tmp_path / "bare.pth"
    torch.save(load(files["image"])["model"], bare)
    caplog.set_level(logging.WARNING, logger="stage1.merge")
    with pytest.raises(MergeError, match="does not fit efficientvit_b0") as err:
        run_merge(files["sam3"], tmp_path / "y.pth", bare, image_model_name="ES-EV-S")
    message = str(err.value)
    assert "is not a" not in message and "assumed" in message and " — " in message
    warning = next(r.getMessage() for r in caplog.records if "no training config" in r.getMessage())
    assert "1008 px (pad" in warning and "1024 x 72 x 72 maps" in warning  # Stage 1's defaults
    assert "context" not in warning and "SAM3's geometry" not in warning
    assert not (tmp_path / "y.pth").exists()


def test_the_merge_reports_progress_on_its_long_steps(files, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="stage1.merge")
    run_merge(files["sam3"], tmp_path / "m.pth", files["image"])
    lines = [r.getMessage() for r in caplog.records]
    size = r"\d+(\.\d+)? (B|KiB|MiB|GiB)"
    for step in (rf"reading {re.escape(str(files['sam3']))} \({size}", r"sha256 of .* in \d+\.\d s",
                 rf"wrote .*m\.pth \({size}\) in \d+\.\d s"):  # fmt: skip
        assert any(re.search(step, line) for line in lines), (step, lines)
