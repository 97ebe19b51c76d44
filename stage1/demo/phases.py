"""The quickstart's phases, each through its own entry point as a user would run it: export the
teacher's embeddings, train the two students, merge them into a SAM3 checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from yacs.config import CfgNode

from stage1 import convert_both_encoders_weights_stage1 as convert_both
from stage1 import save_embedding_image_stage1 as export_image
from stage1 import save_embedding_text_stage1 as export_text
from stage1 import train_image_encoder_stage1 as train_image
from stage1 import train_text_encoder_stage1 as train_text
from stage1.common.cli import build_parser, config_from_args
from stage1.demo.setup import CONFIGS, Setup, say, train_opts

if TYPE_CHECKING:
    from stage1.train.loop import TrainResult

IMAGE_STUDENT = "efficientvit_b0"  # ES-EV-S; the text student is ES-MC-S (MobileCLIP-S0)


@dataclass(frozen=True)
class Trained:
    """The two training runs: their results and the image run's command line."""

    image: TrainResult  # ES-EV-S: losses per epoch, checkpoints
    text: TrainResult  # ES-MC-S
    image_args: list[str]  # train_image_encoder_stage1.py's arguments

    def image_config(self) -> CfgNode:
        """The config the image student was trained with, resolved as its entry point did."""
        parser = build_parser("")
        return config_from_args(parser.parse_args(self.image_args))


def export_embeddings(out: Path, images: Path, captions: Path, opts: list[str]) -> list[Path]:
    """Phase 1 for the images, then the captions; returns the two run folders."""
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
    return [teacher_image, teacher_text]


def train_students(
    out: Path,
    data: list[Path],
    teachers: list[Path],
    opts: list[str],
    epochs: list[int],
    device: str,
) -> Trained:
    """Phase 2: ES-EV-S on the image embeddings, ES-MC-S on the text embeddings (``data``: the
    two datasets, ``teachers``: the two export run folders, ``epochs``: image, then text)."""
    say("[5/8] phase 2: train ES-EV-S (EfficientViT-B0) on the image embeddings")
    image_args = [
        "--cfg", str(CONFIGS / "es_ev_s.yaml"),
        "--data-path", str(data[0]), "--output", str(out / "stage1" / "es_ev_s"),
        "--batch-size", "4",
        "--opts", *opts, *train_opts(epochs[0], 2e-3, device),
        "DISTILL.TEACHER_EMBED_PATH", str(teachers[0] / "embeddings"),
    ]  # fmt: skip
    image_result = train_image.main(image_args)
    say("[6/8] phase 2: train ES-MC-S (MobileCLIP-S0) on the text embeddings")
    text_args = [
        "--cfg", str(CONFIGS / "es_mc_s.yaml"),
        "--data-path", str(data[1]), "--output", str(out / "stage1_text" / "es_mc_s"),
        "--batch-size", "32",
        "--opts", *opts, *train_opts(epochs[1], 5e-4, device),
        "DISTILL.TEACHER_EMBED_PATH", str(teachers[1] / "embeddings"),
        "DATA.VAL_FRACTION", "0.1",
    ]  # fmt: skip
    return Trained(image_result, train_text.main(text_args), image_args)


def merge_students(out: Path, setup: Setup, trained: Trained) -> Path:
    """Phase 3: both students' last checkpoints into the teacher's checkpoint; returns the
    merged file."""
    merged = out / f"efficient_sam3_{IMAGE_STUDENT}_mobileclip_s0.pth"
    convert_both.main(
        [
            "--image-student-ckpt", trained.image.checkpoints[-1],
            "--text-student-ckpt", trained.text.checkpoints[-1],
            "--sam3-ckpt", str(setup.teacher_ckpt),
            "--image-model-name", IMAGE_STUDENT, "--text-model-name", "mobileclip_s0",
            "--output", str(merged),
        ]
    )  # fmt: skip
    return merged
