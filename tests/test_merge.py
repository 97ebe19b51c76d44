"""Phase 3: merging students into a SAM3 checkpoint, and loading merged checkpoints."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sam3.checkpoint import CheckpointError, read_checkpoint
from sam3.model.neck import SCALE_FACTORS, _pyramid_level
from sam3.model_builder import (
    BACKBONE_PREFIX,
    TEXT_PREFIX,
    VISION_STUDENT_PREFIX,
    VISION_TRUNK_PREFIX,
    build_efficientsam3_backbone,
    build_efficientsam3_image_model,
    build_sam3_backbone,
)
from sam3.predictor import Sam3Predictor
from stage1 import (
    convert_both_encoders_weights_stage1,
    convert_image_encoder_weights_stage1,
    convert_text_encoder_weights_stage1,
)
from stage1.config import load_config
from stage1.engine import build_model
from stage1.merge import MergeError, load_student, run_merge
from stage1.teachers import TEACHER_ARCHS, save_random_image_teacher

ROOT = Path(__file__).resolve().parents[1]
GEOMETRY = ["DATA.IMG_SIZE", "112", "DISTILL.EMBED_DIM", "64", "DISTILL.EMBED_SIZE", "8"]
TINY = TEACHER_ARCHS["sam3_tiny"](112)
# keys of the rest of SAM3 (heads, tracker) that a merge must carry over untouched
OTHER_KEYS = {
    "detector.transformer.decoder.layers.0.linear1.weight": torch.float32,
    "detector.segmentation_head.pixel_decoder.conv.bias": torch.bfloat16,
    "detector.dot_prod_scoring.prompt_mlp.weight": torch.float16,
    "tracker.sam_mask_decoder.iou_token.weight": torch.float32,
}


def _provenance(kind: str, sha: str, checkpoint: str = "sam3_checkpoints/sam3.pt") -> dict:
    """What a phase-2 checkpoint records about the store it was trained on."""
    shape = [64, 8, 8] if kind == "image" else [32, 256]
    return {
        "teacher": {
            "kind": kind,
            "arch": "sam3_tiny",
            "checkpoint": checkpoint,
            "checkpoint_sha256": sha,
            "precision": "fp32",
        },
        "store": {
            "path": f"/data/stage1_{kind}_teacher/embeddings",
            "spec": {"shape": shape, "encoding": "float16", "header_bytes": 0, "meta": {}},
        },
    }


def _copy(src: Path, dst: Path, **entries) -> Path:
    """``src`` saved as ``dst`` with ``entries`` set (``None`` removes an entry)."""
    obj = _load(src)
    obj.update(entries)
    torch.save({k: v for k, v in obj.items() if v is not None}, dst)
    return dst


def _target(path: Path, state: dict, **replace) -> Path:
    """A SAM3 checkpoint ``state`` with some tensors replaced (``None`` removes one)."""
    state = {**state, **replace}
    torch.save({"model": {k: v for k, v in state.items() if v is not None}}, path)
    return path


def _student_ckpt(path: Path, cfg_file: str, kind: str, seed: int, extra=(), **entries) -> Path:
    """A phase-2 checkpoint (the Trainer's layout) holding a randomly perturbed student."""
    cfg = load_config(ROOT / "stage1" / "configs" / cfg_file, [*GEOMETRY, *extra])
    torch.manual_seed(seed)
    model = build_model(cfg, kind)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # not the initialisation
    state = {
        "model": model.state_dict(),
        "optimizer": {"state": {}, "param_groups": []},
        "lr_scheduler": {},
        "scaler": {},
        "epoch": 3,
        "num_updates": 12,
        "student": cfg.MODEL.BACKBONE,
        "kind": kind,
        "config": cfg.dump(),
        **entries,
    }
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny SAM3 checkpoint (backbone with both necks + head/tracker stand-ins + optimizer
    state) and phase-2 checkpoints of ES-EV-S (distilled from that checkpoint, as its provenance
    says) and ES-MC-S (from before provenance was recorded) at its geometry."""
    base = tmp_path_factory.mktemp("merge")
    torch.manual_seed(0)
    backbone = build_sam3_backbone(None, cfg=TINY, enable_sam2_neck=True)
    state = {BACKBONE_PREFIX + k: v for k, v in backbone.state_dict().items()}
    for key, dtype in OTHER_KEYS.items():
        state[key] = torch.randn(3, 5).to(dtype)
    sam3 = base / "sam3_tiny.pt"
    torch.save({"model": state, "optimizer": {"step": torch.tensor(7)}}, sam3)
    sha = hashlib.sha256(sam3.read_bytes()).hexdigest()
    provenance = _provenance("image", sha, str(sam3))
    image = _student_ckpt(
        base / "image_ckpt.pth", "es_ev_s.yaml", "vision", seed=1, provenance=provenance
    )
    text = _student_ckpt(base / "text_ckpt.pth", "es_mc_s.yaml", "text", seed=2)
    return {
        "base": base,
        "sam3": sam3,
        "sha256": sha,
        "image": image,
        "text": text,
        "state": state,
        "provenance": provenance,
    }


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _teacher_part(key: str) -> bool:
    return key.startswith(VISION_TRUNK_PREFIX) or key.startswith(TEXT_PREFIX)


def _no_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if ".tmp" in p.name]


def test_both_merge_puts_students_in_place_and_keeps_the_rest(files):
    out = files["base"] / "both.pth"
    summary = convert_both_encoders_weights_stage1.main(
        [
            "--image-student-ckpt", str(files["image"]), "--text-student-ckpt", str(files["text"]),
            "--sam3-ckpt", str(files["sam3"]), "--output", str(out),
            "--image-model-name", "efficientvit_b0", "--text-model-name", "mobileclip_s0",
        ]
    )  # fmt: skip
    obj = _load(out)
    assert set(obj) == {"model", "meta"}  # optimizer state is not carried
    merged, sam3 = obj["model"], files["state"]
    image = _load(files["image"])["model"]
    text = _load(files["text"])["model"]

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
    image_only = _load(step.output)
    assert image_only["meta"]["text_student"] is None
    assert any(k.startswith(TEXT_PREFIX + "resizer") for k in image_only["model"])  # teacher text
    convert_text_encoder_weights_stage1.main(
        [
            "--student-ckpt", str(files["text"]), "--sam3-ckpt", str(step.output),
            "--output", str(base / "image_then_text.pth"),
        ]
    )  # fmt: skip
    both = run_merge(files["sam3"], base / "both_again.pth", files["image"], files["text"])
    a, b = _load(base / "image_then_text.pth"), _load(both.output)
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
    reference = _load(pth)
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
    image_cfg = load_config(ROOT / "stage1/configs/es_ev_s.yaml", GEOMETRY)
    text_cfg = load_config(ROOT / "stage1/configs/es_mc_s.yaml", GEOMETRY)
    image_student = build_model(image_cfg, "vision").eval()
    image_student.load_state_dict(_load(files["image"])["model"])
    text_student = build_model(text_cfg, "text").eval()
    text_student.load_state_dict(_load(files["text"])["model"])
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
    other = _student_ckpt(tmp_path / "b1.pth", "es_ev_m.yaml", "vision", seed=3)
    bare = tmp_path / "bare.pth"
    torch.save(_load(other)["model"], bare)  # a bare state dict of EfficientViT-B1
    with pytest.raises(MergeError, match="does not fit efficientvit_b0"):
        run_merge(files["sam3"], out, bare, image_model_name="efficientvit_b0")
    with pytest.raises(MergeError, match="does not say which student"):
        run_merge(files["sam3"], out, bare)
    with pytest.raises(MergeError, match="is not a file — phase 2 writes"):
        run_merge(files["sam3"], out, tmp_path / "nope.pth")
    assert not out.exists()


def test_ddp_prefixed_and_bf16_students_merge(files, tmp_path):
    obj = _load(files["image"])
    obj["model"] = {"module." + k: v.to(torch.bfloat16) if v.is_floating_point() else v
                    for k, v in obj["model"].items()}  # fmt: skip
    torch.save(obj, tmp_path / "ddp_bf16.pth")
    merged = run_merge(files["sam3"], tmp_path / "m.pth", tmp_path / "ddp_bf16.pth").output
    state = _load(merged)["model"]
    key = VISION_STUDENT_PREFIX + "head.0.weight"
    assert state[key].dtype == torch.bfloat16
    assert not any(".module." in k for k in state)
    model = build_efficientsam3_backbone(merged, cfg=TINY)
    assert model.vision_backbone.trunk.model.head[0].weight.dtype == torch.float32


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


def test_replace_prefix_removes_more_but_never_less(files, tmp_path):
    sam2 = BACKBONE_PREFIX + "vision_backbone.sam2_convs."
    summary = convert_image_encoder_weights_stage1.main(
        [
            "--student-ckpt", str(files["image"]), "--sam3-ckpt", str(files["sam3"]),
            "--output", str(tmp_path / "a.pth"),
            "--replace-prefix", VISION_TRUNK_PREFIX + "blocks.", "--replace-prefix", sam2,
        ]
    )  # fmt: skip
    state = _load(summary.output)["model"]
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
    first = _student_ckpt(tmp_path / "rv.pth", "es_rv_s.yaml", "vision", seed=5)
    step = run_merge(files["sam3"], tmp_path / "rv_merged.pth", first, files["text"]).output
    again = run_merge(step, tmp_path / "ev_merged.pth", files["image"]).output
    direct = run_merge(files["sam3"], tmp_path / "direct.pth", files["image"], files["text"])
    a, b = _load(again), _load(direct.output)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["meta"]["image_student"] == "efficientvit_b0"
    assert a["meta"]["text_student"] == "MobileCLIP-S0"  # kept from the earlier merge


def test_single_part_merges_record_sam3_values_and_load(files, tmp_path):
    text_only = run_merge(files["sam3"], tmp_path / "t.pth", text_ckpt=files["text"]).output
    meta = _load(text_only)["meta"]
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
    assert _load(image_only)["meta"]["context_length"] == 32


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

    monkeypatch.setattr("stage1.merge_io.torch.save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run_merge(files["sam3"], existing, files["image"], overwrite=True)
    assert existing.read_bytes() == b"an earlier merge"  # untouched
    _no_leftovers(tmp_path)
    monkeypatch.setattr("safetensors.torch.save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run_merge(files["sam3"], tmp_path / "new.pth", files["image"], safetensors=True)
    assert not (tmp_path / "new.safetensors").exists()
    _no_leftovers(tmp_path)


def test_loading_a_damaged_merged_checkpoint_fails_clearly(files, tmp_path):
    merged = run_merge(files["sam3"], tmp_path / "ok.pth", files["image"], files["text"]).output
    obj = _load(merged)
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
    wide = _target(tmp_path / "neck1024.pt", files["state"], **_neck_for(1024, files["state"]))
    with pytest.raises(MergeError) as err:
        run_merge(wide, out, files["image"])
    message = str(err.value)
    assert "[64, 8, 8]" in message and "DISTILL.EMBED_DIM 64" in message  # the student's side
    assert "takes 1024 channels" in message and "[1024, 512, 2, 2]" in message  # the neck's
    assert " — " in message and "DISTILL.EMBED_DIM 1024" in message  # what to do
    # only the second neck differs: still refused, naming it
    sam2 = _neck_for(1024, files["state"], which=("sam2_convs",))
    with pytest.raises(MergeError, match="sam2_convs"):
        run_merge(_target(tmp_path / "sam2.pt", files["state"], **sam2), out, files["image"])
    # a trunk that makes 4 x 4 maps (56 px) where the student makes 8 x 8
    key = VISION_TRUNK_PREFIX + "blocks.1.attn.freqs_cis"
    table = files["state"][key]
    small = _target(tmp_path / "grid4.pt", files["state"], **{key: table[:16].clone()})
    with pytest.raises(MergeError, match=r"makes 4 x 4 maps \(56 px\).*EMBED_SIZE 4"):
        run_merge(small, out, files["image"])
    assert not out.exists()
    _no_leftovers(tmp_path)


def test_a_text_student_that_does_not_fit_the_heads_is_refused_before_writing(files, tmp_path):
    out = tmp_path / "out.pth"
    resizer = TEXT_PREFIX + "resizer.weight"
    narrow = {resizer: torch.zeros(128, files["state"][resizer].shape[1])}
    with pytest.raises(MergeError) as err:
        run_merge(
            _target(tmp_path / "w128.pt", files["state"], **narrow), out, text_ckpt=files["text"]
        )
    message = str(err.value)
    assert "256-wide" in message and "DISTILL.TEXT_DIM 256" in message
    assert (
        "take 128-wide" in message and "[128, 64]" in message and "DISTILL.TEXT_DIM 128" in message
    )
    positions = TEXT_PREFIX + "encoder.positional_embedding"
    short = {positions: files["state"][positions][:16].clone()}
    with pytest.raises(MergeError, match=r"32 tokens.*16 positions.*\[16, 64\].*CONTEXT_LENGTH"):
        run_merge(
            _target(tmp_path / "ctx16.pt", files["state"], **short), out, text_ckpt=files["text"]
        )
    assert not out.exists()
    _no_leftovers(tmp_path)


def test_a_random_teacher_is_refused_unless_allowed(files, tmp_path, caplog):
    random = _copy(
        files["image"], tmp_path / "random.pth", provenance=_provenance("image", "random", "random")
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
    meta = _load(summary.output)["meta"]
    assert meta["random_teacher"] == ["image"]
    assert meta["provenance"]["image"]["teacher"]["checkpoint_sha256"] == "random"
    assert any("RANDOM" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert any("RANDOM" in line for line in summary.lines())


def test_the_teacher_is_compared_with_the_checkpoint_merged_into(files, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="stage1.merge")
    warnings = lambda: [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]  # noqa: E731
    run_merge(files["sam3"], tmp_path / "same.pth", files["image"])
    assert not warnings()  # its teacher is this very file
    other = _copy(files["image"], tmp_path / "other.pth", provenance=_provenance("image", "0" * 64))
    meta = _load(run_merge(files["sam3"], tmp_path / "other_out.pth", other).output)["meta"]
    assert meta["sam3_sha256"] == files["sha256"]
    assert any("another checkpoint" in w and "000000000000" in w for w in warnings())
    caplog.clear()
    legacy = _copy(files["image"], tmp_path / "legacy.pth", provenance=None)
    meta = _load(run_merge(files["sam3"], tmp_path / "legacy_out.pth", legacy).output)["meta"]
    assert meta["provenance"] == {"image": None}
    assert any("teacher is unknown" in w for w in warnings())
    caplog.clear()
    no_manifest = _copy(files["image"], tmp_path / "no_manifest.pth", provenance={"teacher": None})
    run_merge(files["sam3"], tmp_path / "no_manifest_out.pth", no_manifest)
    assert any("teacher is unknown" in w and "manifest" in w for w in warnings())


def test_one_student_named_two_ways_is_one_student(files, tmp_path, caplog):
    zoo = _copy(files["image"], tmp_path / "zoo.pth", student="ES-EV-S")
    merged = run_merge(files["sam3"], tmp_path / "m.pth", zoo, image_model_name="efficientvit-b0")
    assert _load(merged.output)["meta"]["image_student"] == "efficientvit_b0"
    with pytest.raises(MergeError, match=r"efficientvit_b9.* — "):
        run_merge(files["sam3"], tmp_path / "x.pth", zoo, image_model_name="efficientvit_b9")
    # a bare state dict: the geometry is assumed, and the messages say so
    bare = tmp_path / "bare.pth"
    torch.save(_load(files["image"])["model"], bare)
    caplog.set_level(logging.WARNING, logger="stage1.merge")
    with pytest.raises(MergeError) as err:
        load_student(bare, "image", "ES-EV-S")
    message = str(err.value)
    assert "is not a" not in message and "assumed" in message and " — " in message
    warning = next(r.getMessage() for r in caplog.records if "no training config" in r.getMessage())
    assert "context" not in warning and "SAM3's geometry" not in warning


def test_the_merge_reports_progress_on_its_long_steps(files, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="stage1.merge")
    run_merge(files["sam3"], tmp_path / "m.pth", files["image"])
    lines = [r.getMessage() for r in caplog.records]
    size = r"\d+(\.\d+)? (B|KiB|MiB|GiB)"
    for step in (rf"reading {re.escape(str(files['sam3']))} \({size}", r"sha256 of .* in \d+\.\d s",
                 rf"wrote .*m\.pth \({size}\) in \d+\.\d s"):  # fmt: skip
        assert any(re.search(step, line) for line in lines), (step, lines)


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
