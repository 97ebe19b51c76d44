"""Phase 2: train a vision student (RepViT, TinyViT, EfficientViT) on stored trunk embeddings.

    python stage1/train_image_encoder_stage1.py --cfg stage1/configs/es_*.yaml [--data-path P]
        [--output O] [--batch-size N] [--print-config] [--debug] [--opts KEY VALUE ...]

Run it under torchrun for several processes (see stage1/scripts/train_image_student.sh).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stage1.cli import build_parser, config_from_args, print_config, run_cli  # noqa: E402

if TYPE_CHECKING:
    from stage1.engine import TrainResult


def main(argv: list[str] | None = None) -> TrainResult | None:
    """Parse the command line and train; None for ``--print-config``."""
    args = build_parser(__doc__.splitlines()[0]).parse_args(argv)
    cfg = config_from_args(args)
    if args.print_config:
        print_config(cfg)
        return None
    from stage1.engine import run_training  # torch and the student load only for a real run

    return run_training(cfg, "vision")


if __name__ == "__main__":
    run_cli(main)
