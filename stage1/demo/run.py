"""Quickstart: every Stage-1 phase end to end on a tiny dataset, in a few minutes on a CPU.

The command line and the order of the steps of ``stage1/quickstart.py`` (its docstring says
what it builds and draws): :mod:`stage1.demo.setup`, :mod:`stage1.demo.phases`,
:mod:`stage1.demo.segment`, :mod:`stage1.demo.summary`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from stage1.demo.data import held_out_photo, make_captions, make_images
from stage1.demo.phases import export_embeddings, merge_students, train_students
from stage1.demo.segment import run_segmentation
from stage1.demo.setup import REPO, choose_teacher, common_opts, prepare_output, say
from stage1.demo.summary import draw_curves, draw_features, list_outputs, print_figures
from stage1.export.teachers import teacher_image_config
from stage1.report import compare as compare_models


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
        raise SystemExit(
            "error: --image-epochs and --text-epochs must be >= 2 — one is warm-up: pass 2 or more"
        )
    start = time.perf_counter()
    out = Path(args.output)
    prepare_output(out)
    say("[1/8] teacher")
    setup = choose_teacher(Path(args.sam3_ckpt), out, args.img_size)
    say("[2/8] data")
    data = [make_images(out / "data" / "sa1b"), make_captions(out / "data" / "recap")]
    opts = common_opts(setup, args.device)

    teachers = export_embeddings(out, *data, opts)
    epochs = [args.image_epochs, args.text_epochs]
    trained = train_students(out, data, teachers, opts, epochs, args.device)

    say("[7/8] phase 3: merge both students into the SAM3 checkpoint; segment with it")
    merged = merge_students(out, setup, trained)
    teacher_kind = "SAM3" if setup.real else "reduced RANDOM teacher"
    segmentation = run_segmentation(
        setup.teacher_ckpt,
        teacher_image_config(setup.arch, setup.img_size),
        merged,
        held_out_photo(data[0]),
        out / "pictures" / "segmentation.png",
        teacher_kind,
        args.device,
    )

    say("[8/8] parameter report and pictures")
    compare_models.main(["--student", "ES-EV-S,ES-MC-S"])
    image_ckpt = Path(trained.image.checkpoints[-1])
    features = draw_features(out, setup, trained.image_config(), image_ckpt, merged)
    curves = draw_curves(out, trained)
    print_figures(features, segmentation, curves, trained)
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
        "image_result": trained.image,
        "text_result": trained.text,
        "real_teacher": setup.real,
        "minutes": minutes,
    }
