"""The command line of both export entry points (``save_embedding_{image,text}_stage1.py``).

Importing this module loads neither torch nor a teacher: ``--print-config`` and argument errors
stay fast, and :mod:`stage1.export.loop` is imported only for a real run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stage1.common.cli import build_parser, config_from_args, print_config

if TYPE_CHECKING:
    from stage1.export.loop import ExportSummary


def export_main(kind: str, description: str, argv: list[str] | None = None) -> ExportSummary | None:
    """Parse ``argv`` (``None``: ``sys.argv``) and run, or with ``--check-saved-embed`` verify,
    the ``kind`` (``"image"`` or ``"text"``) export; None for ``--print-config``."""
    parser = build_parser(description)
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
    from stage1.export.loop import run_export  # torch and the teacher load only for a real run

    return run_export(cfg, kind, check_only=args.check_saved_embed)
