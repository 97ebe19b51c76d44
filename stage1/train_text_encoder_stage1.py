"""Phase 2: train a text student (MobileCLIP S0, S1, MobileCLIP2-L) on stored text embeddings.

    python stage1/train_text_encoder_stage1.py --cfg stage1/configs/es_*.yaml [--data-path P]
        [--output O] [--batch-size N] [--print-config] [--debug] [--opts KEY VALUE ...]

Run it under torchrun for several processes (see stage1/scripts/train_text_student.sh).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stage1.common.cli import run_cli  # noqa: E402
from stage1.train.cli import train_main  # noqa: E402

if TYPE_CHECKING:
    from stage1.train.loop import TrainResult


def main(argv: list[str] | None = None) -> TrainResult | None:
    """Parse the command line and train; None for ``--print-config``."""
    return train_main("text", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    run_cli(main)
