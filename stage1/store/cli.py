"""``python -m stage1.store info|verify PATH`` (or ``python -m stage1.embedding_store``, its
earlier name): inspect an embedding store.

``info`` prints the spec, shards and record counts; ``verify`` checks every shard and record
(a progress bar while stderr is a terminal, or with ``--progress``), prints its report and
exits 1 when it found problems. A mistake in the command (a missing folder, a folder without
manifest, a bad ``--legacy-shape`` or argument) raises a :class:`~stage1.common.errors.UserError`,
which :func:`cli` reports as one ``error: <what is wrong> — <what to do>`` line and exit
status :data:`stage1.common.cli.EXIT_USER_ERROR`, without a traceback (``--debug`` or
``STAGE1_DEBUG=1`` shows it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from stage1.common.cli import run_cli
from stage1.common.errors import UserError
from stage1.store import (
    EmbeddingStore,
    StoreSpec,
    format_bytes,
    load_manifest,
    open_spec,
    verify,
)

PROG = "python -m stage1.embedding_store"  # the name the README documents


class CommandLineError(UserError):
    """A mistake in the command line of the store tool."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes become one ``error:`` line."""

    def error(self, message: str) -> NoReturn:
        raise CommandLineError(f"{message} — see `{self.prog} --help`")


def _legacy_shape(text: str | None) -> tuple[int, ...] | None:
    """``--legacy-shape`` "1024,72,72" (or "1024x72x72") -> (1024, 72, 72)."""
    if text is None:
        return None
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
        if len(shape) not in (2, 3):
            raise ValueError
        StoreSpec(shape)  # positive sizes
    except ValueError:
        raise CommandLineError(
            f"--legacy-shape {text!r} is not a record shape — give C,H,W for image stores "
            "(e.g. 1024,72,72) or SEQ,DIM for text stores (e.g. 32,256)"
        ) from None
    return shape


def _info(root: Path, legacy_shape: Sequence[int] | None) -> str:
    store = EmbeddingStore(root, legacy_shape=legacy_shape)
    spec = store.spec
    lines = [
        repr(store),
        f"  record: {spec.shape} {spec.encoding}, {spec.header_bytes} header bytes, "
        f"{spec.record_bytes} bytes",
        f"  values on disk: {format_bytes(len(store) * spec.record_bytes)}",
    ]
    lines += [f"  rank{r}: {n} records" for r, n in store.shard_counts.items()]
    if store.duplicates_ignored:
        lines.append(f"  duplicate keys ignored (legacy store): {store.duplicates_ignored}")
    if store.has_source_digests:
        lines.append("  record headers: source digests (first 8 bytes of SHA-256 of the text)")
    if not store.legacy:
        manifest = load_manifest(root)
        lines.append(
            f"  created {manifest.get('created_at')}, world size "
            f"{manifest.get('world_size')}, finalized {manifest.get('finalized_at')}"
        )
        lines.append("  meta: " + json.dumps(spec.meta, sort_keys=True))
    return "\n".join(lines)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The ``info`` / ``verify`` command line; ``prog``: the command it is run as."""
    parser = _Parser(prog=prog, description="Inspect a teacher embedding store.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("verify", help="check every shard and record; exit 1 on problems")
    show = sub.add_parser("info", help="print the spec, shards and record counts")
    for p in (parser, check, show):  # read by run_cli from sys.argv
        p.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show the traceback of a mistake (or set STAGE1_DEBUG=1)",
        )
    for p in (check, show):
        p.add_argument("path", type=Path, help="the store folder")
        p.add_argument(
            "--legacy-shape",
            default=None,
            help="read a public EfficientSAM3 store (no manifest) of this record shape, "
            "e.g. 1024,72,72 or 32,256",
        )
    check.add_argument(
        "--sample",
        type=int,
        default=0,
        help="decode and check only N random records (0: all; file structure is always "
        "checked in full). Recomputing records needs the teacher: use the export's "
        "--check-saved-embed",
    )
    check.add_argument("--seed", type=int, default=0, help="seed of the --sample draw")
    check.add_argument(
        "--progress", action="store_true", help="show the progress bar even off a terminal"
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run ``info`` or ``verify`` (``argv``: the arguments, default ``sys.argv[1:]``); returns
    the exit status, 0 or 1 (``verify`` found problems). A mistake in the command raises a
    :class:`~stage1.common.errors.UserError` (``OSError`` for an unreadable file)."""
    args = build_parser(prog).parse_args(argv)
    legacy_shape = _legacy_shape(args.legacy_shape)
    open_spec(args.path, legacy_shape)  # a missing folder or manifest is an error, not a report
    if args.command == "info":
        print(_info(args.path, legacy_shape))
        return 0
    if args.sample < 0:
        raise CommandLineError(f"--sample {args.sample} is negative — give 0 (all) or more")
    report = verify(
        args.path,
        decode_sample=args.sample or None,
        seed=args.seed,
        legacy_shape=legacy_shape,
        progress=True if args.progress else None,
    )
    print(report.summary())
    return 0 if report.ok else 1


def cli(prog: str = PROG) -> None:
    """The shell entry point (run as ``prog``): :func:`main`'s exit status, a mistake as one
    ``error:`` line."""
    run_cli(lambda argv: sys.exit(main(argv, prog)))


if __name__ == "__main__":
    cli()
