"""The command line of both training entry points (``train_{image,text}_encoder_stage1.py``).

Importing this module loads neither torch nor a student: ``--print-config`` and argument errors
stay fast, and :mod:`stage1.train.loop` is imported only for a real run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stage1.common.cli import build_parser, config_from_args, print_config

if TYPE_CHECKING:
    from stage1.train.loop import TrainResult


def train_main(kind: str, description: str, argv: list[str] | None = None) -> TrainResult | None:
    """Parse ``argv`` (``None``: ``sys.argv``) and train the ``kind`` (``"image"`` or ``"text"``)
    student the config names; None for ``--print-config``."""
    args = build_parser(description).parse_args(argv)
    cfg = config_from_args(args)
    if args.print_config:
        print_config(cfg)
        return None
    from stage1.train.loop import run_training  # torch and the student load only for a real run

    return run_training(cfg, kind)
