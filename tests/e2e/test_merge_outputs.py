"""Phase 3: what a merge writes — the students in place, everything else carried over, and
the meta that records them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sam3.checkpoint import read_checkpoint
from sam3.model_builder import build_efficientsam3_backbone, build_sam3_backbone
from sam3.schema import BACKBONE_PREFIX, TEXT_PREFIX, VISION_STUDENT_PREFIX, VISION_TRUNK_PREFIX
from stage1 import (
    convert_both_encoders_weights_stage1,
    convert_image_encoder_weights_stage1,
    convert_text_encoder_weights_stage1,
)
from stage1.merge.checks import MergeError
from stage1.merge.run import run_merge

from helpers.students import (
    OTHER_KEYS,
    TINY,
    files_fixture,  # noqa: F401  (a fixture)
    load,
    student_ckpt,
)


def _teacher_part(key: str) -> bool:
    return key.startswith(VISION_TRUNK_PREFIX) or key.startswith(TEXT_PREFIX)


def test_both_merge_puts_students_in_place_and_keeps_the_rest(files):
    out = files["base"] / "both.pth"
    summary = convert_both_encoders_weights_stage1.main(
        [
            "--image-student-ckpt", str(files["image"]), "--text-student-ckpt", str(files["text"]),
            "--sam3-ckpt", str(files["sam3"]), "--output", str(out),
            "--image-model-name", "efficientvit_b0", "--text-model-name", "mobileclip_s0",
        ]
    )  # fmt: skip
    obj = load(out)
    assert set(obj) == {"model", "meta"}  # optimizer state is not carried
    merged, sam3 = obj["model"], files["state"]
    image = load(files["image"])["model"]
    text = load(files["text"])["model"]

    vision_keys = {k for k in merged if k.startswith(VISION_TRUNK_PREFIX)}
    assert vision_keys == {VISION_STUDENT_PREFIX + k for k in image}
    for k, v in image.items():
        assert torch.equal(merged[VISION_STUDENT_PREFIX + k], v), k
    text_keys = {k for k in merged if k.startswith(TEXT_PREFIX)}
    assert text_keys == {TEXT_PREFIX + k for k in text}  # no teacher text key left
    for k, v in text.items():
        assert torch.equal(merged[TEXT_PREFIX + k], v), k

    kept = [k for k in sam3 if not _teacher_part(k)]
    assert kept and set(OTHER_KEYS) <= set(kept)
    for k in kept:
        assert merged[k].dtype == sam3[k].dtype, k
        assert (
            merged[k].view(torch.uint8).flatten().tolist()
            == sam3[k].view(torch.uint8).flatten().tolist()
        ), k
    assert len(merged) == len(kept) + len(image) + len(text)
    replaced = sum(_teacher_part(k) for k in sam3)
    assert (summary.replaced, summary.added, summary.kept) == (
        replaced,
        len(image) + len(text),
        len(kept),
    )

    meta = obj["meta"]
    assert list(meta) == [
        "format", "version", "image_student", "text_student", "context_length", "preprocessing",
        "students", "provenance", "random_teacher", "sam3_checkpoint", "sam3_sha256",
    ]  # fmt: skip
    assert (meta["format"], meta["version"]) == ("efficientsam3-merged", 1)
    assert list(meta["students"]["image"]) == [
        "name", "zoo_name", "embed_dim", "embed_size", "img_size", "resize_mode", "pixel_mean",
        "pixel_std", "geometry_from", "checkpoint", "epoch",
    ]  # fmt: skip
    assert list(meta["students"]["text"]) == [
        "name", "zoo_name", "context_length", "d_model", "mask_padding", "geometry_from",
        "checkpoint", "epoch",
    ]  # fmt: skip
    assert meta["students"]["image"]["geometry_from"] == "training config"
    assert meta["students"]["image"]["zoo_name"] == "ES-EV-S"
    assert meta["image_student"] == "efficientvit_b0"
    assert meta["text_student"] == "MobileCLIP-S0"
    assert meta["context_length"] == 32
    assert meta["preprocessing"] == {
        "img_size": 112,
        "resize_mode": "pad",
        "pixel_mean": [0.5, 0.5, 0.5],
        "pixel_std": [0.5, 0.5, 0.5],
    }
    assert meta["students"]["image"]["embed_size"] == 8
    assert meta["students"]["text"]["epoch"] == 3


def test_default_output_names(files, monkeypatch):
    monkeypatch.chdir(files["base"])
    summary = convert_both_encoders_weights_stage1.main(
        [
            "--image-student-ckpt", str(files["image"]), "--text-student-ckpt", str(files["text"]),
            "--sam3-ckpt", str(files["sam3"]), "--image-model-name", "ES-EV-S",
        ]
    )  # fmt: skip
    assert summary.output == Path("output/efficient_sam3_efficientvit_b0_mobileclip_s0.pth")
    assert summary.output.is_file()
    single = convert_image_encoder_weights_stage1.main(
        ["--student-ckpt", str(files["image"]), "--sam3-ckpt", str(files["sam3"])]
    )
    assert single.output == Path("output/efficient_sam3_efficientvit_b0.pth")


def test_image_then_text_equals_both(files):
    base = files["base"]
    step = convert_image_encoder_weights_stage1.main(
        [
            "--student-ckpt", str(files["image"]), "--sam3-ckpt", str(files["sam3"]),
            "--output", str(base / "image_only.pth"),
        ]
    )  # fmt: skip
    image_only = load(step.output)
    assert image_only["meta"]["text_student"] is None
    assert any(k.startswith(TEXT_PREFIX + "resizer") for k in image_only["model"])  # teacher text
    convert_text_encoder_weights_stage1.main(
        [
            "--student-ckpt", str(files["text"]), "--sam3-ckpt", str(step.output),
            "--output", str(base / "image_then_text.pth"),
        ]
    )  # fmt: skip
    both = run_merge(files["sam3"], base / "both_again.pth", files["image"], files["text"])
    a, b = load(base / "image_then_text.pth"), load(both.output)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["meta"]["students"] == b["meta"]["students"]
    # the image student's provenance is kept by the text merge; the text student has none
    for meta in (a["meta"], b["meta"]):
        assert meta["provenance"] == {"image": files["provenance"], "text": None}
        assert meta["sam3_sha256"] == files["sha256"]
        assert meta["random_teacher"] == []


def test_safetensors_output_gives_the_same_model(files):
    base = files["base"]
    pth = run_merge(files["sam3"], base / "m.pth", files["image"], files["text"]).output
    st = convert_both_encoders_weights_stage1.main(
        [
            "--image-student-ckpt", str(files["image"]), "--text-student-ckpt", str(files["text"]),
            "--sam3-ckpt", str(files["sam3"]), "--output", str(base / "m.pth"), "--safetensors",
        ]
    )  # fmt: skip
    assert st.output == base / "m.safetensors"
    tensors = load_file(str(st.output))
    reference = load(pth)
    assert tensors.keys() == reference["model"].keys()
    assert all(torch.equal(tensors[k], reference["model"][k]) for k in tensors)
    _, meta = read_checkpoint(st.output)
    assert meta == json.loads(json.dumps(reference["meta"]))

    a = build_efficientsam3_backbone(pth)
    b = build_efficientsam3_backbone(st.output)
    x = torch.randn(1, 3, 112, 112)
    with torch.inference_mode():
        fa, fb = a.forward_image(x), b.forward_image(x)
        ta, tb = a.forward_text(["a cat"]), b.forward_text(["a cat"])
    assert torch.equal(fa["vision_features"], fb["vision_features"])
    assert torch.equal(ta["language_features"], tb["language_features"])


def test_ddp_prefixed_and_bf16_students_merge(files, tmp_path):
    obj = load(files["image"])
    obj["model"] = {"module." + k: v.to(torch.bfloat16) if v.is_floating_point() else v
                    for k, v in obj["model"].items()}  # fmt: skip
    torch.save(obj, tmp_path / "ddp_bf16.pth")
    merged = run_merge(files["sam3"], tmp_path / "m.pth", tmp_path / "ddp_bf16.pth").output
    state = load(merged)["model"]
    key = VISION_STUDENT_PREFIX + "head.0.weight"
    assert state[key].dtype == torch.bfloat16
    assert not any(".module." in k for k in state)
    model = build_efficientsam3_backbone(merged, cfg=TINY)
    assert model.vision_backbone.trunk.model.head[0].weight.dtype == torch.float32


def test_replace_prefix_removes_more_but_never_less(files, tmp_path):
    sam2 = BACKBONE_PREFIX + "vision_backbone.sam2_convs."
    summary = convert_image_encoder_weights_stage1.main(
        [
            "--student-ckpt", str(files["image"]), "--sam3-ckpt", str(files["sam3"]),
            "--output", str(tmp_path / "a.pth"),
            "--replace-prefix", VISION_TRUNK_PREFIX + "blocks.", "--replace-prefix", sam2,
        ]
    )  # fmt: skip
    state = load(summary.output)["model"]
    assert not any(k.startswith(sam2) for k in state)
    teacher_trunk = [k for k in state if k.startswith(VISION_TRUNK_PREFIX)]
    assert all(k.startswith(VISION_STUDENT_PREFIX) for k in teacher_trunk)  # the part, whole
    assert any(k.startswith(BACKBONE_PREFIX + "vision_backbone.convs.") for k in state)
    removed = sum(k.startswith((VISION_TRUNK_PREFIX, sam2)) for k in files["state"])
    assert summary.replaced == removed
    for bad, message in (
        ("detector.transformer.", "lies outside"),
        (BACKBONE_PREFIX + "nothing_here.", "matches no key"),
    ):
        with pytest.raises(MergeError, match=message):
            run_merge(files["sam3"], tmp_path / "b.pth", files["image"], replace_prefix=[bad])
    assert not (tmp_path / "b.pth").exists()


def test_a_new_student_replaces_an_earlier_one(files, tmp_path):
    first = student_ckpt(tmp_path / "rv", "es_rv_s.yaml", "image", seed=5)
    step = run_merge(files["sam3"], tmp_path / "rv_merged.pth", first, files["text"]).output
    again = run_merge(step, tmp_path / "ev_merged.pth", files["image"]).output
    direct = run_merge(files["sam3"], tmp_path / "direct.pth", files["image"], files["text"])
    a, b = load(again), load(direct.output)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["meta"]["image_student"] == "efficientvit_b0"
    assert a["meta"]["text_student"] == "MobileCLIP-S0"  # kept from the earlier merge


def test_single_part_merges_record_sam3_values_andload(files, tmp_path):
    text_only = run_merge(files["sam3"], tmp_path / "t.pth", text_ckpt=files["text"]).output
    meta = load(text_only)["meta"]
    assert meta["image_student"] is None
    assert meta["preprocessing"]["resize_mode"] == "squash"
    assert meta["preprocessing"]["img_size"] == 1008
    model = build_efficientsam3_backbone(text_only, cfg=TINY)  # SAM3's trunk, the text student
    teacher = build_sam3_backbone(files["sam3"], cfg=TINY)
    x = torch.randn(1, 3, 112, 112)
    with torch.inference_mode():
        assert torch.equal(
            model.forward_image(x)["vision_features"], teacher.forward_image(x)["vision_features"]
        )
    image_only = run_merge(files["sam3"], tmp_path / "i.pth", files["image"]).output
    assert load(image_only)["meta"]["context_length"] == 32
