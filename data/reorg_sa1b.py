"""Extract SA-1B tar files into the ``images/{train,val}`` + ``annotations/{train,val}`` layout.

Each tar holds ``sa_N.jpg`` + ``sa_N.json`` pairs. For every tar (in sorted name order; several
are extracted in parallel with ``--workers``):

1. its regular ``.jpg``/``.json`` members are extracted into a scratch folder inside the output
   (``OUTPUT/.reorg_tmp/<tar name>/``, so moves are renames on one file system). Each member is
   checked with ``tarfile.data_filter`` (path traversal, absolute paths, links and devices are
   refused and reported) and written under its base name only;
2. each complete pair goes to the split given by a stable hash of ``"<seed>:<stem>"``: ``val``
   when ``sha256(...)[:8] / 2**64 < --val-fraction``. The split of an image depends only on its
   stem and the seed, never on extraction order or on which other tars exist, so adding tars
   later never moves an image. The val share is ``--val-fraction`` in expectation;
3. a pair is moved into place only if neither destination holds a *different* file; an
   identical destination counts as already present. Nothing in the output is ever
   overwritten or deleted: a conflicting file, a pair already stored in the other split, and a
   ``.jpg`` without ``.json`` (or the reverse) are reported and left in the scratch folder.

A tar whose pairs are all in place gets a marker in ``OUTPUT/.reorg_state/``; a re-run skips it
when the marker matches (tar size and mtime, seed, val fraction) and its files still exist.
Re-running is therefore idempotent and cheap. A JSON report is written to
``OUTPUT/reorg_report.json``. Exit status 1 when something needs attention (conflicts, refused
members, unreadable tars).

    python data/reorg_sa1b.py --tars-dir downloads/sa-1b --output data/sa-1b
    python data/reorg_sa1b.py --tars-dir downloads/sa-1b --tar-list data/sa-1b-1p.txt
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository and this folder importable
    for folder in (Path(__file__).resolve().parents[1], Path(__file__).resolve().parent):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))

from _sa1b_tars import Extracted, extract_tar, find_tars, read_tar_list  # noqa: E402
from tqdm import tqdm  # noqa: E402

from sam3.files import write_json_atomic  # noqa: E402

__all__ = ["ReorgReport", "main", "read_tar_list", "reorganize", "split_of"]

SPLITS = ("train", "val")
SCRATCH = ".reorg_tmp"  # OUTPUT/<this>/<tar name>/: the extraction's scratch folders
STATE = ".reorg_state"  # OUTPUT/<this>/<tar name>.json: the markers of fully placed tars
REPORT = "reorg_report.json"  # OUTPUT/<this>: the run's report


@dataclass
class ReorgReport:
    """Counts and problem lists of a run (written to ``reorg_report.json``)."""

    tars: int = 0
    tars_skipped_done: int = 0  # tars whose marker says they were fully placed earlier
    placed: int = 0  # pairs moved into place by this run
    already_present: int = 0  # pairs whose identical files were already in place
    split_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    conflicts: list[str] = field(default_factory=list)  # destination holds a different file
    in_other_split: list[str] = field(default_factory=list)  # stem already stored elsewhere
    unpaired_images: list[str] = field(default_factory=list)  # .jpg without .json
    unpaired_annotations: list[str] = field(default_factory=list)  # .json without .jpg
    refused_members: list[str] = field(default_factory=list)  # unsafe members, not extracted
    ignored_members: list[str] = field(default_factory=list)  # not .jpg/.json, not extracted
    failed_tars: list[str] = field(default_factory=list)  # unreadable tar files

    def needs_attention(self) -> bool:
        """Whether the run left something the user must look at."""
        return bool(self.conflicts or self.refused_members or self.failed_tars)


def split_of(stem: str, seed: int, val_fraction: float) -> str:
    """``"val"`` or ``"train"`` for ``stem``: ``sha256("<seed>:<stem>")[:8] / 2**64`` below
    ``val_fraction`` means val. Stable across runs, machines and extraction orders."""
    digest = hashlib.sha256(f"{seed}:{stem}".encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") < val_fraction * 2**64 else "train"


def _same(a: Path, b: Path) -> bool:
    return filecmp.cmp(a, b, shallow=False)


def _destinations(output: Path, split: str, stem: str) -> dict[str, Path]:
    return {
        ".json": output / "annotations" / split / f"{stem}.json",
        ".jpg": output / "images" / split / f"{stem}.jpg",
    }


def place_pairs(
    extracted: Extracted, output: Path, seed: int, val_fraction: float, report: ReorgReport
) -> list[tuple[str, str]]:
    """Move the complete pairs of one extracted tar into place (annotation first, then image).

    Returns ``(stem, split)`` for every pair now in place (moved or already there). Files that
    could not be placed stay in the scratch folder and are added to ``report``.
    """
    in_place: list[tuple[str, str]] = []
    for stem in sorted(extracted.files):
        files = extracted.files[stem]
        if ".json" not in files:
            report.unpaired_images.append(f"{extracted.tar.name}:{stem}.jpg")
            continue
        if ".jpg" not in files:
            report.unpaired_annotations.append(f"{extracted.tar.name}:{stem}.json")
            continue
        split = split_of(stem, seed, val_fraction)
        others = [s for s in SPLITS if s != split]
        if any(p.exists() for s in others for p in _destinations(output, s, stem).values()):
            report.in_other_split.append(f"{stem} (hashes to {split}, already in {others[0]})")
            continue
        dests = _destinations(output, split, stem)
        different = [d for suffix, d in dests.items() if d.exists() and not _same(files[suffix], d)]
        if different:
            report.conflicts.extend(
                f"{d} differs from {extracted.tar.name}:{d.name} (kept; the tar's copy is in "
                f"{files[d.suffix]})"
                for d in different
            )
            continue
        moved = False
        for suffix, dest in dests.items():  # .json first: an image in place has its JSON
            if dest.exists():
                files[suffix].unlink()  # identical copy of what is in place
            else:
                os.replace(files[suffix], dest)
                moved = True
        if moved:
            report.placed += 1
        else:
            report.already_present += 1
        report.split_counts[split] += 1
        in_place.append((stem, split))
    return in_place


def _tar_signature(tar_path: Path, seed: int, val_fraction: float) -> dict:
    st = tar_path.stat()
    return {
        "tar": tar_path.name,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "seed": seed,
        "val_fraction": val_fraction,
    }


def _done_earlier(tar_path: Path, output: Path, seed: int, val_fraction: float) -> list | None:
    """The marker's pairs if ``tar_path`` was fully placed by an earlier run with the same
    settings and all its files still exist; otherwise None."""
    marker = output / STATE / f"{tar_path.name}.json"
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if data.get("signature") != _tar_signature(tar_path, seed, val_fraction):
        return None
    pairs = data.get("pairs", [])
    for stem, split in pairs:
        if not all(p.exists() for p in _destinations(output, split, stem).values()):
            return None
    return pairs


def _cleanup(folder: Path) -> None:
    """Remove ``folder`` if it is empty (never anything with files in it)."""
    with contextlib.suppress(OSError):
        folder.rmdir()


def reorganize(
    tars: list[Path], output: Path, val_fraction: float, seed: int, workers: int
) -> ReorgReport:
    """Extract ``tars`` and place their pairs under ``output``; see the module docstring."""
    report = ReorgReport(tars=len(tars))
    for kind in ("images", "annotations"):
        for split in SPLITS:
            (output / kind / split).mkdir(parents=True, exist_ok=True)
    todo = []
    for tar_path in tars:
        pairs = _done_earlier(tar_path, output, seed, val_fraction)
        if pairs is None:
            todo.append(tar_path)
            continue
        report.tars_skipped_done += 1
        report.already_present += len(pairs)
        for _, split in pairs:
            report.split_counts[split] += 1
    scratch_root = output / SCRATCH
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = pool.map(lambda t: extract_tar(t, scratch_root / t.name), todo)
        for extracted in tqdm(jobs, total=len(todo), desc="tars", unit="tar"):
            if extracted.error is not None:
                report.failed_tars.append(extracted.error)
            report.refused_members.extend(extracted.refused)
            report.ignored_members.extend(extracted.ignored)
            in_place = place_pairs(extracted, output, seed, val_fraction, report)
            complete = len(in_place) == len(extracted.files)
            if extracted.error is None and not extracted.refused and complete:
                (output / STATE).mkdir(exist_ok=True)
                write_json_atomic(
                    output / STATE / f"{extracted.tar.name}.json",
                    {
                        "signature": _tar_signature(extracted.tar, seed, val_fraction),
                        "pairs": in_place,
                    },
                )
            _cleanup(extracted.scratch)
    _cleanup(scratch_root)
    return report


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tars-dir", type=Path, required=True, help="folder of SA-1B .tar files")
    parser.add_argument("--output", type=Path, default=Path("data/sa-1b"), help="SA-1B root")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of pairs in val")
    parser.add_argument("--seed", type=int, default=42, help="seed of the train/val hash")
    parser.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="tars extracted at once"
    )
    parser.add_argument(
        "--tar-list",
        type=Path,
        default=None,
        help="only the tars named in this file_name<TAB>cdn_link list (e.g. data/sa-1b-1p.txt)",
    )
    return parser


def _summary(report: ReorgReport, output: Path) -> str:
    lines = [
        f"{report.tars} tar(s) ({report.tars_skipped_done} done earlier): "
        f"{report.placed} pairs placed, {report.already_present} already in place "
        f"(train {report.split_counts['train']}, val {report.split_counts['val']}) in {output}"
    ]
    for name in (
        "conflicts",
        "in_other_split",
        "unpaired_images",
        "unpaired_annotations",
        "refused_members",
        "ignored_members",
        "failed_tars",
    ):
        values = getattr(report, name)
        if values:
            shown = "; ".join(values[:3]) + (" ..." if len(values) > 3 else "")
            lines.append(f"  {name.replace('_', ' ')}: {len(values)}: {shown}")
    if any(
        getattr(report, n)
        for n in ("conflicts", "in_other_split", "unpaired_images", "unpaired_annotations")
    ):
        lines.append(f"  files not placed are kept in {output / SCRATCH}")
    lines.append(f"  full report: {output / REPORT}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the reorganisation; returns the exit status (0 ok, 1 needs attention, 2 bad input)."""
    args = build_parser().parse_args(argv)
    if not 0.0 <= args.val_fraction <= 1.0:
        print(f"error: --val-fraction must be in [0, 1], got {args.val_fraction}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print(f"error: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    try:
        tars = find_tars(args.tars_dir, args.tar_list)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = reorganize(tars, args.output, args.val_fraction, args.seed, args.workers)
    write_json_atomic(args.output / REPORT, asdict(report))
    print(_summary(report, args.output))
    return 1 if report.needs_attention() else 0


if __name__ == "__main__":
    sys.exit(main())
