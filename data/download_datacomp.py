"""Download the first fraction of Recap-DataComp-1B's training parquet files from the Hub.

The dataset repository's files are listed with ``HfApi().list_repo_files``; those whose file
name matches ``*train*.parquet`` are sorted by path and the first ``ceil(fraction * n)`` are
fetched with ``hf_hub_download(..., local_dir=OUTPUT)`` (keeping the repository's sub-folders;
the text export reads every ``*.parquet`` under ``DATA.DATA_PATH``). Re-running resumes: files
already complete on disk (parquet magic at both ends) are skipped without contacting the Hub
for them. Offline (``HF_HUB_OFFLINE=1`` or no network) it stops at once and says what to do.

    python data/download_datacomp.py --fraction 0.01 --output data/recap_subset
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import os
import sys
from fractions import Fraction
from pathlib import Path, PurePosixPath
from types import ModuleType

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from sam3.files import write_json_atomic  # noqa: E402

DEFAULT_REPO = "UCSC-VLAA/Recap-DataComp-1B"
FILE_PATTERN = "*train*.parquet"  # matched against the file name, not the folders
RECORD_NAME = "recap_download.json"  # what was fetched, written next to the files
_TRUE = {"1", "ON", "YES", "TRUE"}


class DownloadError(RuntimeError):
    """A failure the user can act on; ``main`` prints it and returns 1."""


def parse_fraction(text: str) -> Fraction:
    """Parse ``--fraction`` exactly (``"0.07"`` is 7/100, not 0.07000000000000001)."""
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError) as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"--fraction must be in (0, 1], got {text}")
    return value


def hub_offline() -> bool:
    """Whether Hugging Face offline mode is on (``HF_HUB_OFFLINE`` set to 1/ON/YES/TRUE)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE


def offline_hint(repo_id: str, output: Path) -> str:
    """What to do when the Hub cannot be used."""
    return (
        f"Run this script where huggingface.co is reachable (and HF_HUB_OFFLINE is unset), or "
        f"copy the {FILE_PATTERN} files of the dataset {repo_id} into {output} by other means: "
        f"the text export reads every *.parquet under DATA.DATA_PATH."
    )


def select_files(repo_files: list[str], fraction: Fraction) -> list[str]:
    """The first ``ceil(fraction * n)`` of the repository's ``*train*.parquet`` files, sorted."""
    train = sorted(f for f in repo_files if fnmatch.fnmatch(PurePosixPath(f).name, FILE_PATTERN))
    return train[: math.ceil(fraction * len(train))]


def is_complete_parquet(path: Path) -> bool:
    """Whether ``path`` is a whole parquet file: ``PAR1`` at the start and at the end."""
    try:
        size = path.stat().st_size
        if size < 12:
            return False
        with path.open("rb") as f:
            head = f.read(4)
            f.seek(size - 4)
            tail = f.read(4)
    except OSError:
        return False
    return head == b"PAR1" and tail == b"PAR1"


def _hub() -> ModuleType:
    try:
        import huggingface_hub
    except ImportError as exc:
        raise DownloadError(
            "huggingface_hub is not installed; run `pip install huggingface_hub`"
        ) from exc
    return huggingface_hub


def list_remote_files(repo_id: str, revision: str | None, output: Path) -> list[str]:
    """List the dataset repository's files; any failure becomes an actionable DownloadError."""
    hub = _hub()
    try:
        return list(hub.HfApi().list_repo_files(repo_id, repo_type="dataset", revision=revision))
    except Exception as exc:  # connection, HTTP, auth: all reported with the same advice
        raise DownloadError(
            f"could not list the files of the dataset {repo_id} on the Hugging Face Hub "
            f"({type(exc).__name__}: {exc}). Check the repository id and your network. "
            + offline_hint(repo_id, output)
        ) from exc


def download(
    repo_id: str, fraction: Fraction, output: Path, revision: str | None = None
) -> dict[str, int]:
    """Fetch the selected files into ``output``; returns counts (selected, downloaded, present)."""
    if hub_offline():
        raise DownloadError(
            "HF_HUB_OFFLINE is set, so the Hugging Face Hub cannot be used. "
            + offline_hint(repo_id, output)
        )
    output.mkdir(parents=True, exist_ok=True)
    files = list_remote_files(repo_id, revision, output)
    selected = select_files(files, fraction)
    if not selected:
        raise DownloadError(
            f"the dataset {repo_id} lists no {FILE_PATTERN} file ({len(files)} files in all); "
            "check --repo-id and --revision"
        )
    hub = _hub()
    counts = {"selected": len(selected), "downloaded": 0, "present": 0}
    for name in tqdm(selected, desc="parquet files", unit="file"):
        local = output / name
        if is_complete_parquet(local):
            counts["present"] += 1
            continue
        try:
            path = hub.hf_hub_download(
                repo_id, name, repo_type="dataset", revision=revision, local_dir=output
            )
        except Exception as exc:
            raise DownloadError(
                f"downloading {name} from {repo_id} failed ({type(exc).__name__}: {exc}); "
                f"run the same command again to resume ({counts['downloaded']} new files so far). "
                + offline_hint(repo_id, output)
            ) from exc
        if not is_complete_parquet(Path(path)):
            raise DownloadError(
                f"{path} is not a complete parquet file after download; delete it and run again"
            )
        counts["downloaded"] += 1
    write_json_atomic(
        output / RECORD_NAME,
        {
            "repo_id": repo_id,
            "revision": revision,
            "fraction": str(fraction),
            "pattern": FILE_PATTERN,
            "train_files_in_repo": len(select_files(files, Fraction(1))),
            "files": selected,
        },
    )
    return counts


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo-id", default=DEFAULT_REPO, help="Hugging Face dataset repository")
    parser.add_argument(
        "--fraction",
        type=parse_fraction,
        default=Fraction(1, 100),
        help="fraction of the *train*.parquet files to fetch, first in sorted order (0.01)",
    )
    parser.add_argument(
        "--output", type=Path, default=Path("data/recap_subset"), help="destination folder"
    )
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the download; returns the process exit status (0 ok, 1 error)."""
    args = build_parser().parse_args(argv)
    try:
        counts = download(args.repo_id, args.fraction, args.output, args.revision)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{counts['selected']} parquet files in {args.output}: {counts['downloaded']} downloaded, "
        f"{counts['present']} already complete"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
