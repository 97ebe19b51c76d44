"""Phase 3: inputs that cannot be merged, and outputs that cannot be written, are refused
before anything is written, with what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sam3.model.neck import SCALE_FACTORS, _pyramid_level
from sam3.schema import BACKBONE_PREFIX, TEXT_PREFIX, VISION_TRUNK_PREFIX
from stage1 import convert_image_encoder_weights_stage1
from stage1.merge.checks import MergeError
from stage1.merge.run import run_merge

from helpers.students import (
    ROOT,
    files_fixture,  # noqa: F401  (a fixture)
    load,
    student_ckpt,
    with_tensors,
)


def _no_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if ".tmp" in p.name]


def test_bad_student_checkpoints_are_refused(files, tmp_path):
    out = tmp_path / "out.pth"
    with pytest.raises(
        MergeError, match="holds the student efficientvit_b0, but the model name given"
    ):
        run_merge(files["sam3"], out, files["image"], image_model_name="repvit_m0_9")
    with pytest.raises(MergeError, match="text student; the image converter"):
        convert_image_encoder_weights_stage1.main(
            ["--student-ckpt", str(files["text"]), "--sam3-ckpt", str(files["sam3"]), "--output",
             str(out)]
        )  # fmt: skip
    other = student_ckpt(tmp_path / "b1", "es_ev_m.yaml", "image", seed=3)
    bare = tmp_path / "bare.pth"
    torch.save(load(other)["model"], bare)  # a bare state dict of EfficientViT-B1
    with pytest.raises(MergeError, match="does not fit efficientvit_b0"):
        run_merge(files["sam3"], out, bare, image_model_name="efficientvit_b0")
    with pytest.raises(MergeError, match="does not say which student"):
        run_merge(files["sam3"], out, bare)
    with pytest.raises(MergeError, match="is not a file — phase 2 writes"):
        run_merge(files["sam3"], out, tmp_path / "nope.pth")
    assert not out.exists()


def test_sam3_checkpoint_without_the_trunk_is_refused(files, tmp_path):
    state = {k: v for k, v in files["state"].items() if not k.startswith(VISION_TRUNK_PREFIX)}
    no_trunk = tmp_path / "no_trunk.pt"
    torch.save({"model": state}, no_trunk)
    out = tmp_path / "out.pth"
    with pytest.raises(MergeError, match="the image teacher part is missing"):
        run_merge(no_trunk, out, files["image"])
    state = {k: v for k, v in files["state"].items() if not k.startswith(TEXT_PREFIX)}
    torch.save({"model": state}, tmp_path / "no_text.pt")
    with pytest.raises(MergeError, match="the text teacher part is missing"):
        run_merge(tmp_path / "no_text.pt", out, files["image"], files["text"])
    not_sam3 = tmp_path / "not_sam3.pt"
    torch.save({"model": {"encoder.weight": torch.zeros(2)}}, not_sam3)
    with pytest.raises(MergeError, match="not a SAM3 checkpoint"):
        run_merge(not_sam3, out, files["image"])
    assert not out.exists()


def test_unwritable_output_and_failed_writes_leave_nothing(files, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(MergeError, match="cannot create the output folder"):
        run_merge(files["sam3"], blocker / "sub" / "out.pth", files["image"])
    with pytest.raises(MergeError, match="is a folder"):
        run_merge(files["sam3"], tmp_path, files["image"])
    with pytest.raises(MergeError, match="is one of the inputs"):
        run_merge(files["sam3"], files["sam3"], files["image"])
    with pytest.raises(MergeError, match="is not writable"):
        run_merge(files["sam3"], Path("/proc/efficientsam3_merge_test.pth"), files["image"])
    existing = tmp_path / "out.pth"
    existing.write_bytes(b"an earlier merge")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("stage1.merge.io.torch.save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run_merge(files["sam3"], existing, files["image"], overwrite=True)
    assert existing.read_bytes() == b"an earlier merge"  # untouched
    _no_leftovers(tmp_path)
    monkeypatch.setattr("safetensors.torch.save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run_merge(files["sam3"], tmp_path / "new.pth", files["image"], safetensors=True)
    assert not (tmp_path / "new.safetensors").exists()
    _no_leftovers(tmp_path)


def test_an_existing_output_is_kept_unless_overwrite_is_asked_for(files, tmp_path):
    existing = tmp_path / "merged.pth"
    existing.write_bytes(b"an earlier merge")
    with pytest.raises(MergeError, match=r"already exists — .*--overwrite"):
        run_merge(files["sam3"], existing, files["image"])
    with pytest.raises(MergeError, match="already exists"):
        convert_image_encoder_weights_stage1.main(
            ["--student-ckpt", str(files["image"]), "--sam3-ckpt", str(files["sam3"]),
             "--output", str(existing)]
        )  # fmt: skip
    assert existing.read_bytes() == b"an earlier merge"
    convert_image_encoder_weights_stage1.main(
        ["--student-ckpt", str(files["image"]), "--sam3-ckpt", str(files["sam3"]),
         "--output", str(existing), "--overwrite"]
    )  # fmt: skip
    assert existing.read_bytes() != b"an earlier merge"


def test_command_line_errors_are_one_line(files, tmp_path):
    import subprocess
    import sys

    script = ROOT / "stage1" / "convert_text_encoder_weights_stage1.py"
    run = subprocess.run(
        [sys.executable, str(script), "--student-ckpt", str(files["image"]),
         "--sam3-ckpt", str(files["sam3"]), "--output", str(tmp_path / "x.pth")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1
    assert "error: " in run.stderr and "the text converter merges text students" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "x.pth").exists()


def _neck_for(channels: int, state: dict, which=("convs", "sam2_convs")) -> dict:
    """Neck tensors of ``state`` reshaped for a trunk of ``channels`` (zeros)."""
    replace = {}
    for name in which:
        prefix = f"{BACKBONE_PREFIX}vision_backbone.{name}."
        for i, scale in enumerate(SCALE_FACTORS):
            for k, v in _pyramid_level(channels, 256, scale).state_dict().items():
                replace[f"{prefix}{i}.{k}"] = torch.zeros_like(v)
        assert all(k in state for k in replace)
    return replace


def test_a_vision_student_that_does_not_fit_the_neck_is_refused_before_writing(files, tmp_path):
    out = tmp_path / "out.pth"
    wide = with_tensors(tmp_path / "neck1024.pt", files["state"], **_neck_for(1024, files["state"]))
    with pytest.raises(MergeError, match="takes 1024 channels") as err:
        run_merge(wide, out, files["image"])
    message = str(err.value)
    assert "[64, 8, 8]" in message and "DISTILL.EMBED_DIM 64" in message  # the student's side
    assert "takes 1024 channels" in message and "[1024, 512, 2, 2]" in message  # the neck's
    assert " — " in message and "DISTILL.EMBED_DIM 1024" in message  # what to do
    # only the second neck differs: still refused, naming it
    sam2 = _neck_for(1024, files["state"], which=("sam2_convs",))
    with pytest.raises(MergeError, match="sam2_convs"):
        run_merge(with_tensors(tmp_path / "sam2.pt", files["state"], **sam2), out, files["image"])
    # a trunk that makes 4 x 4 maps (56 px) where the student makes 8 x 8
    key = VISION_TRUNK_PREFIX + "blocks.1.attn.freqs_cis"
    table = files["state"][key]
    small = with_tensors(tmp_path / "grid4.pt", files["state"], **{key: table[:16].clone()})
    with pytest.raises(MergeError, match=r"makes 4 x 4 maps \(56 px\).*EMBED_SIZE 4"):
        run_merge(small, out, files["image"])
    assert not out.exists()
    _no_leftovers(tmp_path)


def test_a_text_student_that_does_not_fit_the_heads_is_refused_before_writing(files, tmp_path):
    out = tmp_path / "out.pth"
    resizer = TEXT_PREFIX + "resizer.weight"
    narrow = {resizer: torch.zeros(128, files["state"][resizer].shape[1])}
    narrow_file = with_tensors(tmp_path / "w128.pt", files["state"], **narrow)
    with pytest.raises(MergeError, match="256-wide") as err:
        run_merge(narrow_file, out, text_ckpt=files["text"])
    message = str(err.value)
    assert "256-wide" in message and "DISTILL.TEXT_DIM 256" in message
    assert (
        "take 128-wide" in message and "[128, 64]" in message and "DISTILL.TEXT_DIM 128" in message
    )
    positions = TEXT_PREFIX + "encoder.positional_embedding"
    short = {positions: files["state"][positions][:16].clone()}
    with pytest.raises(MergeError, match=r"32 tokens.*16 positions.*\[16, 64\].*CONTEXT_LENGTH"):
        run_merge(
            with_tensors(tmp_path / "ctx16.pt", files["state"], **short), out, None, files["text"]
        )
    assert not out.exists()
    _no_leftovers(tmp_path)
