"""SA-1B tar files for ``data/reorg_sa1b.py``: which tars to process (a folder, or the names of
a ``file_name<TAB>cdn_link`` list), and the extraction of their safe ``.jpg``/``.json`` members.

Each member is checked with ``tarfile.data_filter`` where Python has it (path traversal,
absolute paths, links and devices are refused and reported; without it, absolute and ``..``
paths and every non-regular member are refused) and written under its base name only.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

SUFFIXES = (".jpg", ".json")  # the members extracted; others are ignored (and reported)
_HAS_DATA_FILTER = hasattr(tarfile, "data_filter")  # Python 3.12, 3.11.4+, 3.10.12+


@dataclass
class Extracted:
    """What one tar yielded: stem -> {suffix: scratch path}, plus refused members."""

    tar: Path
    scratch: Path
    files: dict[str, dict[str, Path]] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)  # unsafe members (traversal, links, ...)
    ignored: list[str] = field(default_factory=list)  # members that are not .jpg/.json files
    error: str | None = None


def read_tar_list(path: str | Path) -> list[str]:
    """The tar names of a ``file_name<TAB>cdn_link`` list such as ``data/sa-1b-1p.txt``.

    Blank lines, ``#`` comments and the ``file_name`` header are skipped; links are ignored.
    """
    names: list[str] = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        name = text.split("\t")[0].split()[0]
        if name == "file_name":
            continue
        if not name.endswith(".tar") or "/" in name:
            raise ValueError(f"{path}:{number}: expected a tar file name, got {name!r}")
        names.append(name)
    if not names:
        raise ValueError(f"{path} lists no tar file")
    return names


def _refusal(member: tarfile.TarInfo, scratch: Path) -> str | None:
    """Why ``member`` may not be extracted, or None when it is a safe regular file."""
    if _HAS_DATA_FILTER:
        try:
            tarfile.data_filter(member, str(scratch))
        except tarfile.FilterError as exc:
            return f"{type(exc).__name__}: {exc}"
    else:
        parts = PurePosixPath(member.name).parts
        if member.name.startswith("/") or ".." in parts:
            return "path outside the extraction folder"
    if not member.isfile():
        return "not a regular file (links, devices and fifos are not extracted)"
    return None


def extract_tar(tar_path: Path, scratch: Path) -> Extracted:
    """Extract the safe ``.jpg``/``.json`` members of ``tar_path`` into ``scratch`` (by base
    name). The scratch folder is this script's own and is emptied first."""
    result = Extracted(tar=tar_path, scratch=scratch)
    if scratch.exists():
        shutil.rmtree(scratch)  # only ever holds copies re-creatable from the tar
    scratch.mkdir(parents=True)
    try:
        with tarfile.open(tar_path, mode="r:*") as tar:
            for member in tar:
                if member.isdir():
                    continue
                label = f"{tar_path.name}:{member.name}"
                base = PurePosixPath(member.name).name
                stem, suffix = os.path.splitext(base)
                if suffix.lower() not in SUFFIXES:
                    result.ignored.append(label)
                    continue
                reason = _refusal(member, scratch)
                if reason is not None:
                    result.refused.append(f"{label} ({reason})")
                    continue
                suffix = suffix.lower()
                if suffix in result.files.get(stem, {}):
                    result.refused.append(f"{label} (second member named {base})")
                    continue
                dest = scratch / f"{stem}{suffix}"
                source = tar.extractfile(member)
                if source is None:
                    result.refused.append(f"{label} (no data)")
                    continue
                with source, dest.open("wb") as out:
                    shutil.copyfileobj(source, out, length=1 << 20)
                result.files.setdefault(stem, {})[suffix] = dest
    except (tarfile.TarError, OSError) as exc:
        result.error = f"{tar_path}: {type(exc).__name__}: {exc}"
    return result


def find_tars(tars_dir: Path, tar_list: Path | None) -> list[Path]:
    """The tars to process: those named by ``tar_list`` (all must exist) or every ``*.tar``."""
    if not tars_dir.is_dir():
        raise FileNotFoundError(f"--tars-dir {tars_dir} is not a folder")
    if tar_list is not None:
        names = read_tar_list(tar_list)
        missing = [n for n in names if not (tars_dir / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} tar file(s) listed in {tar_list} are not in {tars_dir}: "
                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; download them "
                "from the SA-1B page (https://ai.meta.com/datasets/segment-anything-downloads/)"
            )
        return [tars_dir / n for n in sorted(set(names))]
    tars = sorted(p for p in tars_dir.glob("*.tar") if p.is_file())
    if not tars:
        raise FileNotFoundError(f"no *.tar file in {tars_dir}")
    return tars
