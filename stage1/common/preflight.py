"""Cheap checks that run before any expensive work (hashing, loading a teacher or a student).

They create nothing: a run that fails them leaves no folder, log or store behind.
"""

from __future__ import annotations

import os
from pathlib import Path

from stage1.common.errors import UserError


class PreflightError(UserError, ValueError):
    """A path or setting that would make the run fail later."""


def _nearest_existing(path: Path) -> Path:
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def check_output_folder(path: str | os.PathLike, what: str = "OUTPUT") -> Path:
    """Raise :class:`PreflightError` unless ``path`` is, or can be created as, a writable
    folder; nothing is created. Returns the path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PreflightError(
            f"{what} {path} is a file, not a folder — point {what} at a folder (or move the file)"
        )
    base = _nearest_existing(path)
    if not base.is_dir():
        raise PreflightError(
            f"{what} {path} cannot be created: {base} is a file — choose another {what}"
        )
    if not os.access(base, os.W_OK | os.X_OK):
        where = "it" if base == path.absolute() else f"its parent {base}"
        raise PreflightError(
            f"{what} {path} is not writable ({where} is read-only for this user) — choose "
            f"another {what} or fix the permissions"
        )
    return path


def check_input_path(path: str | os.PathLike, what: str, hint: str) -> Path:
    """Raise :class:`PreflightError` when ``path`` does not exist (``hint``: what to do)."""
    path = Path(path)
    if not path.exists():
        raise PreflightError(f"{what} {path} does not exist — {hint}")
    return path
