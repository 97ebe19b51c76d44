"""Phase 1: export SAM3 text-encoder embeddings of Recap-DataComp captions.

    python stage1/save_embedding_text_stage1.py --cfg CFG [--data-path P] [--output O]
        [--batch-size N] [--check-saved-embed] [--opts KEY VALUE ...]

Run it under torchrun for several processes (see stage1/scripts/save_text_embeddings.sh).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stage1.cli import build_parser, config_from_args  # noqa: E402
from stage1.export import ExportSummary, run_export  # noqa: E402


def main(argv: list[str] | None = None) -> ExportSummary:
    """Parse the command line and run (or verify) the export."""
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--check-saved-embed",
        action="store_true",
        help="verify the store instead of exporting (recomputes DISTILL.VERIFY_SAMPLES records)",
    )
    args = parser.parse_args(argv)
    return run_export(config_from_args(args), "text", check_only=args.check_saved_embed)


if __name__ == "__main__":
    main()
