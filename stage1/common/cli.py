"""The command line every Stage-1 entry point shares, and how it reports a user's mistake.

:func:`run_cli` runs an entry point's ``main``: a :class:`~stage1.common.errors.UserError` or an
``OSError`` ends as one ``error: ...`` line on stderr and exit status :data:`EXIT_USER_ERROR`,
without a traceback (``--debug`` or ``STAGE1_DEBUG=1`` re-raises it). Under a launcher that sets
``STAGE1_ERROR_DIR`` the line goes to ``$STAGE1_ERROR_DIR/rank{RANK}.txt`` instead, and the
launcher prints each distinct line once, after torchrun's own report. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from yacs.config import CfgNode

from stage1.common.config import load_config, to_dict
from stage1.common.errors import UserError

EXIT_USER_ERROR = 1  # exit status after a user error (argparse's usage errors exit 2)

_OS_HINTS = {
    errno.ENOSPC: "free space on that disk or write somewhere else",
    errno.EDQUOT: "free space within your quota or write somewhere else",
    errno.EACCES: "fix the permissions or choose another path",
    errno.EPERM: "fix the permissions or choose another path",
    errno.EROFS: "that filesystem is read-only: choose another path",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "check the path: a part of it is a file",
    errno.EISDIR: "check the path: it is a folder, a file is needed",
}


def build_parser(description: str) -> argparse.ArgumentParser:
    """Parser with the common flags; entry points add their own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--cfg", required=True, help="experiment YAML (its BASE files merge first)")
    p.add_argument("--data-path", help="dataset root; overrides DATA.DATA_PATH")
    p.add_argument("--output", help="run folder; overrides OUTPUT")
    p.add_argument("--batch-size", type=int, help="per-process batch; overrides DATA.BATCH_SIZE")
    p.add_argument("--device", help="cuda, cuda:N or cpu; overrides DEVICE (default: auto)")
    p.add_argument(
        "--opts",
        nargs="+",
        default=[],
        metavar="KEY VALUE",
        help="config overrides as KEY VALUE pairs, e.g. --opts DATA.DATASET recap_datacomp",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as JSON and stop (loads no data or model, writes nothing)",
    )
    p.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of a user error (or set STAGE1_DEBUG=1)",
    )
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK instead (used).
    p.add_argument("--local-rank", "--local_rank", type=int, help=argparse.SUPPRESS)
    return p


def config_from_args(args: argparse.Namespace) -> CfgNode:
    """Resolve the config: YAML <- named flags <- ``--opts``."""
    overrides = {
        "DATA.DATA_PATH": args.data_path,
        "OUTPUT": args.output,
        "DATA.BATCH_SIZE": args.batch_size,
        "DEVICE": args.device,
    }
    return load_config(args.cfg, args.opts, overrides)


def print_config(cfg: CfgNode) -> None:
    """Print the resolved config as JSON (the form of ``OUTPUT/config.json``)."""
    print(json.dumps(to_dict(cfg), indent=2, sort_keys=True), flush=True)


def error_line(err: BaseException) -> str:
    """The one-line report of a user error or an ``OSError``: ``error: <what> — <what to do>``."""
    if isinstance(err, OSError) and err.strerror:
        where = f"{err.filename}: " if err.filename is not None else ""
        hint = _OS_HINTS.get(err.errno, "check the path and the disk")
        message = f"{where}{err.strerror} — {hint}"
    else:
        message = str(err) or type(err).__name__
    return "error: " + re.sub(r"\s*\n\s*", " ", message.strip())


def _report(line: str) -> None:
    """Hand the line to the launcher's error folder when there is one, else print it."""
    folder = os.environ.get("STAGE1_ERROR_DIR")
    if folder:
        from sam3.files import write_text_atomic  # imports torch: only under a launcher

        try:  # whole or not at all: the launcher may read it as soon as this process ends
            write_text_atomic(Path(folder) / f"rank{os.environ.get('RANK', '0')}.txt", line + "\n")
            return
        except OSError:
            pass
    print(line, file=sys.stderr, flush=True)


def _debugging() -> bool:
    return "--debug" in sys.argv[1:] or os.environ.get("STAGE1_DEBUG", "") not in ("", "0")


def run_cli(main: Callable[[list[str] | None], object]) -> None:
    """Run ``main(None)`` (it parses ``sys.argv``); a user error or ``OSError`` exits with
    :data:`EXIT_USER_ERROR` after one ``error:`` line, unless debugging is asked for."""
    try:
        main(None)
    except (UserError, OSError) as err:
        if _debugging():
            raise
        _report(error_line(err))
        sys.exit(EXIT_USER_ERROR)
