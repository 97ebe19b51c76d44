"""The quickstart's set-up: its output folder, the teacher it uses and the config overrides that
follow from that teacher, shared by every phase."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from sam3.files import write_text_atomic
from stage1.export.teachers import save_random_image_teacher, teacher_image_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "stage1" / "configs"
MARKER = ".quickstart"  # marks a folder the quickstart made (and may clear on its next run)


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
                f"error: {out} exists and was not made by the quickstart (nothing was deleted) "
                "— pass another --output"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / MARKER, "made by stage1/quickstart.py; cleared on its next run\n")


def choose_teacher(sam3_ckpt: Path, out: Path, img_size: int) -> Setup:
    """SAM3 itself when ``sam3_ckpt`` exists; otherwise a saved, reduced random teacher."""
    if sam3_ckpt.is_file():
        banner(
            [
                f"Teacher: SAM3 from {sam3_ckpt} (1008 px, 1024 x 72 x 72 embeddings).",
                "On a CPU each teacher image takes over a minute; a GPU is advised.",
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
