"""The quickstart's pictures and summary: the teacher's and the student's feature maps on the
held-out photo, the training curves, what each phase reached and what the run wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image
from yacs.config import CfgNode

from sam3.model_builder import build_efficientsam3_backbone
from stage1.common.students import build_configured_student
from stage1.data.transforms import build_valid_mask, image_transform
from stage1.demo.data import HELD_OUT, held_out_photo
from stage1.demo.phases import Trained
from stage1.demo.setup import MARKER, Setup, say
from stage1.report.pictures import cosine_map_mean, feature_comparison, training_curves
from stage1.store import EmbeddingStore
from stage1.train.checkpointing import load_checkpoint


def draw_features(
    out: Path, setup: Setup, image_cfg: CfgNode, image_ckpt: Path, merged: Path
) -> dict:
    """Teacher vs student (before and after training) on the held-out photo: the picture's
    ``path``, each map's mean cosine to the teacher (``cos``) and the largest difference between
    the merged model's trunk and the trained student (``merged_vs_student_max_abs``)."""
    transform = image_transform(image_cfg)
    photo = Image.open(held_out_photo(out / "data" / "sa1b"))
    x, (h, w) = transform(photo.convert("RGB"))
    store = EmbeddingStore(image_cfg.DISTILL.TEACHER_EMBED_PATH)
    teacher = store.get_torch(f"sa_{HELD_OUT}").float()
    valid = build_valid_mask(h, w, setup.img_size, setup.embed_size)

    torch.manual_seed(image_cfg.SEED)  # the training run's initial weights
    before = build_configured_student(image_cfg, "image").eval()
    trained = build_configured_student(image_cfg, "image").eval()
    trained.load_state_dict(load_checkpoint(image_ckpt)["model"])
    model = build_efficientsam3_backbone(merged, enable_text=False)
    with torch.inference_mode():
        maps = {"student, untrained": before(x[None])[0], "student, trained": trained(x[None])[0]}
        from_merged = model.vision_backbone.trunk(x[None])[-1][0]
    gap = (from_merged - maps["student, trained"]).abs().max().item()
    picture = (x.permute(1, 2, 0) * torch.tensor(image_cfg.DATA.PIXEL_STD)) + torch.tensor(
        image_cfg.DATA.PIXEL_MEAN
    )
    picture = (picture.clamp(0, 1) * 255).to(torch.uint8).numpy()
    kind = "SAM3" if setup.real else "reduced RANDOM teacher"
    path = feature_comparison(
        out / "pictures" / "features_pca.png",
        picture,
        teacher,
        maps,
        valid,
        title=f"{HELD_OUT} (held out): trunk features in the teacher's PCA basis ({kind})",
    )
    cos = {k: cosine_map_mean(v, teacher, valid) for k, v in maps.items()}
    return {"path": path, "cos": cos, "merged_vs_student_max_abs": gap}


def draw_curves(out: Path, trained: Trained) -> Path:
    """Both students' training and validation losses per epoch."""
    return training_curves(
        out / "pictures" / "training_curves.png",
        {
            "ES-EV-S (EfficientViT-B0) vs trunk embeddings": {
                "train loss": trained.image.train_loss,
                "val loss": trained.image.val_loss,
            },
            "ES-MC-S (MobileCLIP-S0) vs text embeddings": {
                "train loss": trained.text.train_loss,
                "val loss": trained.text.val_loss,
            },
        },
    )


def print_figures(
    features: dict, segmentation: dict[str, Any], curves: Path, trained: Trained
) -> None:
    """The pictures' paths with what they show in numbers, and each student's loss."""
    print(f"  {features['path']}: cosine to the teacher on {HELD_OUT} (held out): ")
    for name, value in features["cos"].items():
        print(f"    {name:20} {value:.4f}")
    print(f"  merged model vs trained student, max |diff|: {features['merged_vs_student_max_abs']}")
    ious = ", ".join(f"{p} {v:.3f}" for p, v in segmentation["iou"].items())
    print(f"  {segmentation['path']}: teacher vs merged, mask IoU per prompt: {ious}")
    print(f"  {curves}")
    for name, result in (("ES-EV-S", trained.image), ("ES-MC-S", trained.text)):
        print(
            f"  {name}: train loss {result.train_loss[0]:.4g} -> {result.train_loss[-1]:.4g} "
            f"over {len(result.train_loss)} epochs"
        )


def list_outputs(out: Path) -> None:
    """What the run wrote, folder by folder, with sizes."""
    say("done:", f"what was written under {out}")
    entries = [e for e in sorted(out.iterdir()) if e.name != MARKER]
    width = max(len(e.name) + 1 for e in entries)
    for entry in entries:
        if entry.is_dir():
            files = [p for p in entry.rglob("*") if p.is_file()]
            size = sum(p.stat().st_size for p in files)
            print(f"  {entry.name + '/':{width}} {size / 2**20:9.1f} MiB in {len(files)} files")
            for p in sorted(entry.iterdir()):
                if p.is_file() and p.suffix in (".png", ".pth", ".json"):
                    print(f"    {p.name}")
        else:
            print(f"  {entry.name:{width}} {entry.stat().st_size / 2**20:9.1f} MiB")
