"""Phase 2: train a vision student (RepViT, TinyViT, EfficientViT) on stored trunk embeddings.

    python stage1/train_image_encoder_stage1.py --cfg stage1/configs/es_*.yaml [--data-path P]
        [--output O] [--batch-size N] [--opts KEY VALUE ...]

Run it under torchrun for several processes (see stage1/scripts/train_image_student.sh).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stage1.cli import build_parser, config_from_args  # noqa: E402
from stage1.engine import TrainResult, run_training  # noqa: E402


def main(argv: list[str] | None = None) -> TrainResult:
    """Parse the command line and train."""
    args = build_parser(__doc__.splitlines()[0]).parse_args(argv)
    return run_training(config_from_args(args), "vision")


if __name__ == "__main__":
    main()
