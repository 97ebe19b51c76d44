"""Phase 1: export SAM3 text-encoder embeddings of Recap-DataComp captions.

    python stage1/save_embedding_text_stage1.py --cfg CFG [--data-path P] [--output O]
        [--batch-size N] [--check-saved-embed] [--print-config] [--debug] [--opts KEY VALUE ...]

Run it under torchrun for several processes (see stage1/scripts/save_text_embeddings.sh).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stage1.common.cli import run_cli  # noqa: E402
from stage1.export.cli import export_main  # noqa: E402

if TYPE_CHECKING:
    from stage1.export.loop import ExportSummary


def main(argv: list[str] | None = None) -> ExportSummary | None:
    """Parse the command line and run (or verify) the text export; None for ``--print-config``."""
    return export_main("text", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    run_cli(main)
