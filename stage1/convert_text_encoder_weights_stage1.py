"""Phase 3: merge a trained text student into a SAM3 checkpoint.

    python stage1/convert_text_encoder_weights_stage1.py --student-ckpt CKPT
        [--sam3-ckpt sam3_checkpoints/sam3.pt] [--output OUT.pth] [--model-name NAME]
        [--replace-prefix PREFIX ...] [--safetensors] [--overwrite] [--allow-random-teacher]

See stage1/merge/run.py for what is written and checked.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stage1.common.cli import run_cli  # noqa: E402
from stage1.merge.cli import MergeSummary, main_single  # noqa: E402


def main(argv: list[str] | None = None) -> MergeSummary:
    """Parse the command line and merge."""
    return main_single("text", argv)


if __name__ == "__main__":
    run_cli(main)
