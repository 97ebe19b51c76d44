"""Quickstart: every Stage-1 phase end to end on a tiny dataset, in a few minutes on a CPU.

    python stage1/quickstart.py [--output output/quickstart] [--sam3-ckpt sam3_checkpoints/sam3.pt]
        [--image-epochs N] [--text-epochs N] [--device cpu|cuda]

It builds a small SA-1B-style folder from the photographs in data/samples/ (crops and flips for
training; astronaut.jpg held out) and a Recap-DataComp-style captions parquet, then: exports the
teacher's image and text embeddings, trains ES-EV-S (EfficientViT-B0) and ES-MC-S (MobileCLIP-S0)
briefly, merges both into a SAM3 checkpoint, segments the held-out photo from a caption and from
a box (detector heads) and from the same box with the interactive SAM heads, with the teacher and
with the merged model, prints the parameter report, and draws the segmentations, the teacher's
and students' feature maps (PCA colours) and the training curves. With
sam3_checkpoints/sam3.pt it uses SAM3 itself (1008 px: slow on a CPU); without it, a reduced,
randomly initialised teacher (small backbone and detector heads, SAM3-sized SAM heads), and
says so.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from sam3.model_builder import build_efficientsam3_backbone  # noqa: E402
from stage1 import compare_models  # noqa: E402
from stage1 import convert_both_encoders_weights_stage1 as convert_both  # noqa: E402
from stage1 import save_embedding_image_stage1 as export_image  # noqa: E402
from stage1 import save_embedding_text_stage1 as export_text  # noqa: E402
from stage1 import train_image_encoder_stage1 as train_image  # noqa: E402
from stage1 import train_text_encoder_stage1 as train_text  # noqa: E402
from stage1.checkpointing import load_checkpoint  # noqa: E402
from stage1.config import load_config  # noqa: E402
from stage1.data.transforms import build_valid_mask  # noqa: E402
from stage1.embedding_store import EmbeddingStore  # noqa: E402
from stage1.engine import build_model  # noqa: E402
from stage1.export import image_transform  # noqa: E402
from stage1.pictures import cosine_map_mean, feature_comparison, training_curves  # noqa: E402
from stage1.quickstart_data import HELD_OUT, held_out_photo, make_captions, make_images  # noqa: E402
from stage1.quickstart_segment import run_segmentation  # noqa: E402
from stage1.teachers import save_random_image_teacher, teacher_image_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "stage1" / "configs"
MARKER = ".quickstart"  # marks a folder this script made (and may clear on the next run)
IMAGE_STUDENT, TEXT_STUDENT = "efficientvit_b0", "MobileCLIP-S0"


@dataclass(frozen=True)
class Setup:
    """Where the teacher comes from and the geometry that follows from it."""

    teacher_ckpt: Path
    arch: str  # MODEL.TEACHER_ARCH
    img_size: int
    embed_dim: int
    embed_size: int
    real: bool  # SAM3's own weights


def say(step: str, text: str = "") -> None:
    """A progress header on the console."""
    print(f"\n=== {step} {text}".rstrip(), flush=True)


def banner(lines: list[str]) -> None:
    """A framed message that cannot be missed."""
    width = max(len(line) for line in lines) + 4
    print("\n" + "#" * width)
    for line in lines:
        print(f"# {line.ljust(width - 4)} #")
    print("#" * width, flush=True)


def prepare_output(out: Path) -> None:
    """Start from an empty folder; clear it only if an earlier quickstart made it."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise SystemExit(
                f"{out} exists and was not made by the quickstart; pass another --output "
                "(nothing was deleted)"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by stage1/quickstart.py; cleared on its next run\n")


def choose_teacher(sam3_ckpt: Path, out: Path, img_size: int) -> Setup:
    """SAM3 itself when ``sam3_ckpt`` exists; otherwise a saved, reduced random teacher."""
    if sam3_ckpt.is_file():
        banner(
            [
                f"Teacher: SAM3 from {sam3_ckpt} (1008 px, 1024 x 72 x 72 embeddings).",
                "On a CPU each teacher image takes about 90 s; a GPU is advised.",
            ]
        )
        return Setup(sam3_ckpt, "sam3", 1008, 1024, 72, True)
    banner(
        [
            f"NO SAM3 CHECKPOINT at {sam3_ckpt}.",
            "Using a REDUCED, RANDOMLY INITIALISED teacher instead (2-block, 64-wide trunk,",
            "one-layer detector heads, SAM3-sized SAM heads). Every phase runs for real, but",
            "the features, masks and pictures are not SAM3's.",
            "Put sam3.pt in sam3_checkpoints/ (see sam3_checkpoints/README.md) for the real one.",
        ]
    )
    path = out / "sam3_tiny_random.pt"
    count = save_random_image_teacher(path, "sam3_tiny", img_size, seed=0)
    print(
        f"  saved the random teacher (backbone, detector heads, interactive heads) as {path} "
        f"({count} tensors, sam3.pt's key layout)"
    )
    vit = teacher_image_config("sam3_tiny", img_size).backbone.vit
    return Setup(path, "sam3_tiny", img_size, vit.embed_dim, vit.grid_size, False)


def common_opts(setup: Setup, device: str) -> list[str]:
    """Config overrides shared by every phase."""
    opts = [
        "MODEL.RESUME", str(setup.teacher_ckpt),
        "MODEL.TEACHER_ARCH", setup.arch,
        "DATA.IMG_SIZE", str(setup.img_size),
        "DISTILL.EMBED_DIM", str(setup.embed_dim),
        "DISTILL.EMBED_SIZE", str(setup.embed_size),
        "DATA.NUM_WORKERS", "0",
        "LOG_EVERY", "5",
    ]  # fmt: skip
    return opts + (["DEVICE", device] if device else [])


def train_opts(epochs: int, lr: float, device: str) -> list[str]:
    """A short schedule: one warm-up epoch, no batch-size lr scaling, fp32 on a CPU."""
    cpu = device == "cpu" or (not device and not torch.cuda.is_available())
    return [
        "TRAIN.EPOCHS", str(epochs),
        "TRAIN.WARMUP_EPOCHS", "1",
        "TRAIN.BASE_LR", str(lr),
        "TRAIN.LR_SCALE_BATCH", "0",
        "TRAIN.ACCUMULATION_STEPS", "1",
        "TRAIN.AMP", "off" if cpu else "auto",
        "TRAIN.SAVE_FREQ", str(epochs),  # keep only the last checkpoint (MobileCLIP-S0: 0.5 GB)
    ]  # fmt: skip


def draw_features(out: Path, setup: Setup, image_cfg, image_ckpt: Path, merged: Path) -> dict:
    """Teacher vs student (before and after training) on the held-out photo; returns figures."""
    transform = image_transform(image_cfg)
    photo = Image.open(held_out_photo(out / "data" / "sa1b"))
    x, (h, w) = transform(photo.convert("RGB"))
    store = EmbeddingStore(image_cfg.DISTILL.TEACHER_EMBED_PATH)
    teacher = store.get_torch(f"sa_{HELD_OUT}").float()
    valid = build_valid_mask(h, w, setup.img_size, setup.embed_size)

    torch.manual_seed(image_cfg.SEED)  # the training run's initial weights
    before = build_model(image_cfg, "vision").eval()
    trained = build_model(image_cfg, "vision").eval()
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


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="output/quickstart", help="folder for everything")
    p.add_argument(
        "--sam3-ckpt",
        default=str(REPO / "sam3_checkpoints" / "sam3.pt"),
        help="SAM3 checkpoint; when it does not exist, a reduced random teacher is used",
    )
    p.add_argument("--image-epochs", type=int, default=25, help="ES-EV-S training epochs")
    p.add_argument("--text-epochs", type=int, default=6, help="ES-MC-S training epochs")
    p.add_argument(
        "--img-size",
        type=int,
        default=448,
        help="image side for the reduced teacher (a multiple of 28); SAM3 itself uses 1008",
    )
    p.add_argument("--device", default="", help="cpu, cuda or cuda:N (default: cuda if available)")
    return p


def main(argv: list[str] | None = None) -> dict:
    """Run the whole pipeline; returns the paths and figures (also printed)."""
    args = build_parser().parse_args(argv)
    if args.image_epochs < 2 or args.text_epochs < 2:
        raise SystemExit("--image-epochs and --text-epochs must be >= 2 (one is warm-up)")
    start = time.perf_counter()
    out = Path(args.output)
    prepare_output(out)
    say("[1/8] teacher")
    setup = choose_teacher(Path(args.sam3_ckpt), out, args.img_size)
    say("[2/8] data")
    images = make_images(out / "data" / "sa1b")
    captions = make_captions(out / "data" / "recap")
    opts = common_opts(setup, args.device)

    say("[3/8] phase 1: export the teacher's image embeddings")
    teacher_image = out / "stage1_teacher"
    export_image.main(
        [
            "--cfg", str(CONFIGS / "teacher" / "sam_vit_huge_sa1b.yaml"),
            "--data-path", str(images), "--output", str(teacher_image), "--batch-size", "4",
            "--opts", *opts,
        ]
    )  # fmt: skip
    say("[4/8] phase 1: export the teacher's text embeddings")
    teacher_text = out / "stage1_text_teacher"
    export_text.main(
        [
            "--cfg", str(CONFIGS / "teacher" / "sam_text_teacher.yaml"),
            "--data-path", str(captions), "--output", str(teacher_text), "--batch-size", "32",
            "--opts", *opts, "DATA.DATASET", "recap_datacomp",
        ]
    )  # fmt: skip

    say("[5/8] phase 2: train ES-EV-S (EfficientViT-B0) on the image embeddings")
    image_args = [
        "--cfg", str(CONFIGS / "es_ev_s.yaml"),
        "--data-path", str(images), "--output", str(out / "stage1" / "es_ev_s"),
        "--batch-size", "4",
        "--opts", *opts, *train_opts(args.image_epochs, 2e-3, args.device),
        "DISTILL.TEACHER_EMBED_PATH", str(teacher_image / "embeddings"),
    ]  # fmt: skip
    image_result = train_image.main(image_args)
    say("[6/8] phase 2: train ES-MC-S (MobileCLIP-S0) on the text embeddings")
    text_args = [
        "--cfg", str(CONFIGS / "es_mc_s.yaml"),
        "--data-path", str(captions), "--output", str(out / "stage1_text" / "es_mc_s"),
        "--batch-size", "32",
        "--opts", *opts, *train_opts(args.text_epochs, 5e-4, args.device),
        "DISTILL.TEACHER_EMBED_PATH", str(teacher_text / "embeddings"),
        "DATA.VAL_FRACTION", "0.1",
    ]  # fmt: skip
    text_result = train_text.main(text_args)

    say("[7/8] phase 3: merge both students into the SAM3 checkpoint; segment with it")
    merged = out / f"efficient_sam3_{IMAGE_STUDENT}_mobileclip_s0.pth"
    convert_both.main(
        [
            "--image-student-ckpt", image_result.checkpoints[-1],
            "--text-student-ckpt", text_result.checkpoints[-1],
            "--sam3-ckpt", str(setup.teacher_ckpt),
            "--image-model-name", IMAGE_STUDENT, "--text-model-name", "mobileclip_s0",
            "--output", str(merged),
        ]
    )  # fmt: skip
    segmentation = run_segmentation(
        setup.teacher_ckpt,
        teacher_image_config(setup.arch, setup.img_size),
        merged,
        held_out_photo(images),
        out / "pictures" / "segmentation.png",
        "SAM3" if setup.real else "reduced RANDOM teacher",
        args.device,
    )

    say("[8/8] parameter report and pictures")
    compare_models.main(["--student", "ES-EV-S,ES-MC-S"])
    image_cfg = load_config(CONFIGS / "es_ev_s.yaml", image_args[image_args.index("--opts") + 1 :])
    image_cfg.defrost()
    image_cfg.DATA.DATA_PATH, image_cfg.OUTPUT = str(images), str(out / "stage1" / "es_ev_s")
    image_cfg.freeze()
    features = draw_features(out, setup, image_cfg, Path(image_result.checkpoints[-1]), merged)
    curves = training_curves(
        out / "pictures" / "training_curves.png",
        {
            "ES-EV-S (EfficientViT-B0) vs trunk embeddings": {
                "train loss": image_result.train_loss,
                "val loss": image_result.val_loss,
            },
            "ES-MC-S (MobileCLIP-S0) vs text embeddings": {
                "train loss": text_result.train_loss,
                "val loss": text_result.val_loss,
            },
        },
    )
    print(f"  {features['path']}: cosine to the teacher on {HELD_OUT} (held out): ")
    for name, value in features["cos"].items():
        print(f"    {name:20} {value:.4f}")
    print(f"  merged model vs trained student, max |diff|: {features['merged_vs_student_max_abs']}")
    ious = ", ".join(f"{p} {v:.3f}" for p, v in segmentation["iou"].items())
    print(f"  {segmentation['path']}: teacher vs merged, mask IoU per prompt: {ious}")
    print(f"  {curves}")
    for name, result in (("ES-EV-S", image_result), ("ES-MC-S", text_result)):
        print(
            f"  {name}: train loss {result.train_loss[0]:.4g} -> {result.train_loss[-1]:.4g} "
            f"over {len(result.train_loss)} epochs"
        )
    list_outputs(out)
    minutes = (time.perf_counter() - start) / 60
    print(f"\nquickstart finished in {minutes:.1f} min")
    if not setup.real:
        print("(reduced random teacher: rerun with sam3_checkpoints/sam3.pt for SAM3's features)")
    return {
        "output": out,
        "merged": merged,
        "features_png": features["path"],
        "curves_png": curves,
        "segmentation_png": segmentation["path"],
        "segmentation_iou": segmentation["iou"],
        "segmentation_scores": segmentation["scores"],
        "cos": features["cos"],
        "merged_vs_student_max_abs": features["merged_vs_student_max_abs"],
        "image_result": image_result,
        "text_result": text_result,
        "real_teacher": setup.real,
        "minutes": minutes,
    }


if __name__ == "__main__":
    main()
