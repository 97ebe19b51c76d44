"""Phase 1: export SAM3 vision-trunk embeddings of SA-1B images.

    python stage1/save_embedding_image_stage1.py --cfg CFG [--data-path P] [--output O]
        [--batch-size N] [--check-saved-embed] [--print-config] [--debug] [--opts KEY VALUE ...]

Run it under torchrun for several processes (see stage1/scripts/save_image_embeddings.sh).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stage1.cli import build_parser, config_from_args, print_config, run_cli  # noqa: E402

if TYPE_CHECKING:
    from stage1.export import ExportSummary


def main(argv: list[str] | None = None) -> ExportSummary | None:
    """Parse the command line and run (or verify) the export; None for ``--print-config``."""
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--check-saved-embed",
        action="store_true",
        help="verify the store instead of exporting (recomputes DISTILL.VERIFY_SAMPLES records)",
    )
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    if args.print_config:
        print_config(cfg)
        return None
    from stage1.export import run_export  # torch and the teacher load only for a real run

    return run_export(cfg, "image", check_only=args.check_saved_embed)


if __name__ == "__main__":
    run_cli(main)
