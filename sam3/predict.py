"""``python -m sam3.predict``: one photo and a prompt in; an overlay PNG and a JSON file (boxes,
scores, masks as COCO RLE) out.

With ``--text`` the detector finds every instance of it (``--box`` / ``--negative-box`` add
example boxes). Without ``--text``, ``--point`` and ``--box`` segment the object they mark
through the interactive heads; each mask's score is then its predicted IoU.

Every input is checked before the model is loaded. A mistake (a missing or unreadable photo or
checkpoint, a checkpoint that is not SAM3's or lacks the heads it needs, no prompt, a bad box or
point, an unwritable output folder) ends as one ``error: <what is wrong> — <what to do>`` line
on stderr and exit status 1, without a traceback (``--debug`` shows it). A box reaching outside
the photo is clipped to it (with a warning); one entirely outside is an error. The work is done
by :mod:`sam3.cli`.
"""

from __future__ import annotations

import argparse
import sys

from .cli.inputs import EXIT_USER_ERROR
from .cli.run import run

__all__ = ["EXIT_USER_ERROR", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m sam3.predict``."""
    p = argparse.ArgumentParser(
        prog="python -m sam3.predict",
        description="Detect and segment what a text and/or boxes name on one photo, or (no "
        "text) segment the object that clicks and/or a box mark.",
    )
    p.add_argument("--checkpoint", required=True, help="sam3.pt or a merged EfficientSAM3 file")
    p.add_argument("--image", required=True, help="the photo (any format Pillow reads)")
    p.add_argument("--text", help='what to find, e.g. "a dog"')
    box = {"nargs": 4, "type": float, "metavar": ("X0", "Y0", "X1", "Y1"), "action": "append"}
    p.add_argument(
        "--box",
        default=[],
        help="an example box (with --text) or the object's box "
        "(without; one prompt set each), pixels (repeatable)",
        **box,
    )
    p.add_argument("--negative-box", default=[], help="a negative example box (with --text)", **box)
    p.add_argument(
        "--point",
        nargs=3,
        type=float,
        action="append",
        default=[],
        metavar=("X", "Y", "LABEL"),
        help="a click on the object (LABEL 1) or its background (0), pixels; no --text "
        "(repeatable)",
    )
    many = "three candidate masks per prompt set (default for a single --point)"
    p.add_argument("--multimask", action="store_true", help=many)
    one = "one mask per prompt set (default for boxes and several points)"
    p.add_argument("--single-mask", action="store_true", help=one)
    p.add_argument("--threshold", type=float, help="keep detection scores above it (0.5; --text)")
    p.add_argument("--output", default="predictions", help="output folder (./predictions)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--bf16", action="store_true", help="run the model under bfloat16 autocast")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; a user's mistake is one ``error:`` line and exit status 1."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
