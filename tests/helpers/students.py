"""Phase-2 checkpoints written by the trainer's own checkpoint writer, and the tiny SAM3
checkpoint the merge tests merge them into."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from yacs.config import CfgNode

from sam3.backbone_builder import build_sam3_backbone
from sam3.schema import BACKBONE_PREFIX
from stage1.common.config import load_config
from stage1.common.students import build_configured_student, student_name
from stage1.export.teachers import TEACHER_ARCHS
from stage1.train.checkpointing import REQUIRED, save_checkpoint
from stage1.train.optim import build_optimizer, build_scheduler, effective_lr

from helpers.data import TINY_GEOMETRY

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "stage1" / "configs"
TINY = TEACHER_ARCHS["sam3_tiny"](112)  # the tiny teacher's backbone, at TINY_GEOMETRY
EPOCH = 3  # the epoch every student checkpoint here was written at
UPDATES_PER_EPOCH = 4
# keys of the rest of SAM3 (heads, tracker) that a merge must carry over untouched
OTHER_KEYS = {
    "detector.transformer.decoder.layers.0.linear1.weight": torch.float32,
    "detector.segmentation_head.pixel_decoder.conv.bias": torch.bfloat16,
    "detector.dot_prod_scoring.prompt_mlp.weight": torch.float16,
    "tracker.sam_mask_decoder.iou_token.weight": torch.float32,
}


def student_config(cfg_file: str, *extra: str) -> CfgNode:
    """A student's config (``stage1/configs/<cfg_file>``) at the tiny teacher's geometry."""
    return load_config(CONFIGS / cfg_file, [*TINY_GEOMETRY, *extra])


def provenance(kind: str, sha: str, checkpoint: str = "sam3_checkpoints/sam3.pt") -> dict:
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


def student_ckpt(
    folder: Path, cfg_file: str, kind: str, seed: int, extra: tuple[str, ...] = (), **entries
) -> Path:
    """``folder/ckpt_epoch_3.pth`` as the trainer writes it (its entries and its writer),
    holding a randomly perturbed student of ``cfg_file``. ``entries`` replace the trainer's;
    ``None`` leaves one out. Without a ``provenance`` entry the file is one written before
    provenance was recorded."""
    cfg = student_config(cfg_file, *extra)
    torch.manual_seed(seed)
    student = build_configured_student(cfg, kind, pretrained=False)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # not the initialisation
    optimizer = build_optimizer(student, cfg, cfg.TRAIN.BASE_LR)
    scheduler = build_scheduler(optimizer, cfg, UPDATES_PER_EPOCH, effective_lr(cfg, 1))
    state = {
        "model": student.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "scaler": torch.amp.GradScaler("cuda", enabled=False).state_dict(),
        "epoch": EPOCH,
        "num_updates": EPOCH * UPDATES_PER_EPOCH,
        "student": student_name(cfg, kind),
        "kind": kind,
        "config": cfg.dump(),
        "world_size": 1,
        "provenance": None,
        **entries,
    }
    state = {k: v for k, v in state.items() if v is not None}
    assert set(REQUIRED) <= set(state), "a phase-2 checkpoint needs the trainer's entries"
    folder.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(folder, EPOCH, state)


def load(path: Path) -> dict:
    """A checkpoint file's contents."""
    return torch.load(path, map_location="cpu", weights_only=True)


def copy_ckpt(src: Path, dst: Path, **entries) -> Path:
    """``src`` saved as ``dst`` with ``entries`` set (``None`` removes an entry)."""
    obj = load(src)
    obj.update(entries)
    torch.save({k: v for k, v in obj.items() if v is not None}, dst)
    return dst


def with_tensors(path: Path, state: dict, **replace) -> Path:
    """A SAM3 checkpoint ``state`` with some tensors replaced (``None`` removes one)."""
    state = {**state, **replace}
    torch.save({"model": {k: v for k, v in state.items() if v is not None}}, path)
    return path


def merge_inputs(base: Path) -> dict:
    """A tiny SAM3 checkpoint (backbone with both necks + head/tracker stand-ins + optimizer
    state) and phase-2 checkpoints of ES-EV-S (distilled from that checkpoint, as its provenance
    says) and ES-MC-S (from before provenance was recorded) at its geometry."""
    torch.manual_seed(0)
    backbone = build_sam3_backbone(None, cfg=TINY, enable_sam2_neck=True)
    state = {BACKBONE_PREFIX + k: v for k, v in backbone.state_dict().items()}
    for key, dtype in OTHER_KEYS.items():
        state[key] = torch.randn(3, 5).to(dtype)
    sam3 = base / "sam3_tiny.pt"
    torch.save({"model": state, "optimizer": {"step": torch.tensor(7)}}, sam3)
    sha = hashlib.sha256(sam3.read_bytes()).hexdigest()
    image_provenance = provenance("image", sha, str(sam3))
    image = student_ckpt(
        base / "es_ev_s", "es_ev_s.yaml", "image", seed=1, provenance=image_provenance
    )
    text = student_ckpt(base / "es_mc_s", "es_mc_s.yaml", "text", seed=2)
    return {
        "base": base,
        "sam3": sam3,
        "sha256": sha,
        "image": image,
        "text": text,
        "state": state,
        "provenance": image_provenance,
    }


@pytest.fixture(scope="module", name="files")
def files_fixture(tmp_path_factory) -> dict:
    """:func:`merge_inputs` once per test module (import it as ``files_fixture``)."""
    return merge_inputs(tmp_path_factory.mktemp("merge"))
