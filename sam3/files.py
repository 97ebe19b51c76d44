"""Files that matter: written through a temporary name and a rename, read weights-only, hashed.

Every file the project writes for a user (checkpoints, manifests, configs, pictures, JSON
reports) goes through :func:`atomic_path` or one of its wrappers, so that a crash or a full
disk leaves either the old file or the new one, never half of one. Every PyTorch file is read
with :func:`load_weights_only` (``torch.load(weights_only=True)``: no pickled code runs), and
checkpoints are identified by :func:`file_sha256`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch
from tqdm import tqdm

__all__ = [
    "UnreadableFileError",
    "atomic_open",
    "atomic_path",
    "file_sha256",
    "load_weights_only",
    "torch_save_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


class UnreadableFileError(ValueError):
    """A file ``torch.load(weights_only=True)`` cannot read; the message names the file."""


def _tmp_name(target: Path) -> Path:
    """A hidden name beside ``target``, unique to this process (ranks may share a folder)."""
    return target.with_name(f".{target.name}.{os.getpid()}.tmp{target.suffix}")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; when the block ends without an error the file
    written there is flushed to disk (``fsync``) and renamed over ``target``. On an error the
    temporary file is removed and ``target`` is left as it was."""
    target = Path(target)
    tmp = _tmp_name(target)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(target: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """:func:`atomic_path` as an open file (``mode`` ``"wb"`` or ``"w"``)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes a new file: mode must be 'wb' or 'w', not {mode!r}")
    with atomic_path(target, fsync=False) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``target`` atomically."""
    with atomic_open(target, "w") as f:
        f.write(text)


def write_json_atomic(target: str | os.PathLike, data: Any, **dump: Any) -> None:
    """Write ``data`` as JSON (``indent=2`` unless ``dump`` says otherwise, then a newline)."""
    dump.setdefault("indent", 2)
    write_text_atomic(target, json.dumps(data, **dump) + "\n")


def torch_save_atomic(obj: Any, target: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``target`` atomically."""
    with atomic_open(target, "wb") as f:
        torch.save(obj, f)


def load_weights_only(path: str | os.PathLike, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; ``mmap=True`` memory-maps the file
    when its format allows (a legacy, non-zip file is then read normally).

    Raises:
        UnreadableFileError: the file cannot be read that way (message: the file and why).
    """
    path = Path(path)
    try:
        if mmap:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
                pass
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UnreadableFileError(
            f"{path} could not be read with torch.load(weights_only=True): "
            f"{type(err).__name__}: {err}"
        ) from err


def file_sha256(path: str | Path, chunk: int = 1 << 24, progress: bool = False) -> str:
    """SHA-256 of a file, read in 16 MiB chunks; ``progress`` shows a bar in bytes."""
    digest = hashlib.sha256()
    path = Path(path)
    with (
        open(path, "rb") as f,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"sha256 {path.name}",
            disable=not progress,
            dynamic_ncols=True,
        ) as bar,
    ):
        while block := f.read(chunk):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()
