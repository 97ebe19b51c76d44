"""Training checkpoints: ``OUTPUT/ckpt_epoch_{N}.pth``, written atomically, read strictly (both
through :mod:`sam3.files`).

A checkpoint holds only tensors and plain containers, so it loads with ``weights_only=True``:
model, optimizer, lr_scheduler, scaler, epoch, num_updates, student (canonical name), kind,
config (YAML text), world_size and provenance (``{"teacher": the store manifest's teacher
record, or None for a public EfficientSAM3 store, "store": {"path", "spec"}}``); checkpoints
written before world_size and provenance existed lack them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sam3.files import UnreadableFileError, load_weights_only, torch_save_atomic
from stage1.common.errors import UserError

CKPT_RE = re.compile(r"^ckpt_epoch_(\d+)\.pth$")
REQUIRED = ("model", "optimizer", "lr_scheduler", "epoch", "student", "config")


class TrainCheckpointError(UserError, RuntimeError):
    """A checkpoint in the run folder that cannot be used."""


def checkpoint_path(out_dir: str | Path, epoch: int) -> Path:
    """Where epoch ``epoch``'s checkpoint lives."""
    return Path(out_dir) / f"ckpt_epoch_{epoch}.pth"


def save_checkpoint(out_dir: str | Path, epoch: int, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``ckpt_epoch_{epoch}.pth`` atomically (a crash leaves no torn file
    under that name)."""
    path = checkpoint_path(out_dir, epoch)
    torch_save_atomic(state, path)
    return path


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every ``ckpt_epoch_N.pth`` in ``out_dir``, oldest first."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := CKPT_RE.match(p.name))]
    return sorted(found)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint (``weights_only=True``); raise with the file name if it is
    unreadable or lacks an entry."""
    path = Path(path)
    try:
        state = load_weights_only(path)
    except UnreadableFileError as err:
        cause = err.__cause__ or err
        raise TrainCheckpointError(
            f"{path} is not a readable checkpoint ({type(cause).__name__}: {cause}); this code's "
            "atomic save never leaves one — move it out of the run folder (or delete it) and "
            "run again, or point OUTPUT at another folder"
        ) from err
    missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
    if missing:
        raise TrainCheckpointError(
            f"{path} lacks {missing}, so it is not a Stage-1 training checkpoint — move it out "
            "of the run folder, or point OUTPUT at another folder"
        )
    return state
