"""Run folders of phase 2: which config keys define a run, what a resumed run may change, and
starting afresh in a folder that still holds an earlier run's checkpoints.

A resumed run continues the run its checkpoints belong to. ``TRAIN.EPOCHS`` may grow: the
cosine schedule is then the one of the longer run, taken up at the current update (warm-up
unchanged; the rate rises to what the longer schedule has there, and the log says so). Every
key of :func:`run_keys` must stay as it was, and so must the number of processes and the
teacher of the store. Paths, workers, device, logging, checkpoint frequency and tag may change.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from yacs.config import CfgNode

from sam3.backbones import UnknownStudentError, get_student, resolve_student
from stage1.common.config import ConfigError
from stage1.store import teacher_identity
from stage1.train.checkpointing import TrainCheckpointError, list_checkpoints

_COMMON_KEYS = (
    "SEED",
    "MODEL.BACKBONE",
    "MODEL.PRETRAINED",
    "DATA.BATCH_SIZE",
    "DISTILL.STORE_DTYPE",
    "DISTILL.PIXEL_WISE",
    "DISTILL.COSINE",
    "DISTILL.MSE_REDUCTION",
    "TRAIN.WARMUP_EPOCHS",
    "TRAIN.BASE_LR",
    "TRAIN.LR_SCALE_BATCH",
    "TRAIN.WARMUP_LR",
    "TRAIN.MIN_LR",
    "TRAIN.WEIGHT_DECAY",
    "TRAIN.LAYER_DECAY",
    "TRAIN.CLIP_GRAD",
    "TRAIN.ACCUMULATION_STEPS",
    "TRAIN.AMP",
    "TRAIN.MAX_STEPS_PER_EPOCH",
)
_KIND_KEYS = {
    "image": (
        "DATA.IMG_SIZE",
        "DATA.RESIZE_MODE",
        "DATA.PIXEL_MEAN",
        "DATA.PIXEL_STD",
        "DATA.NUM_SAMPLES",
        "DATA.TRAIN_SPLIT",
        "DISTILL.EMBED_DIM",
        "DISTILL.EMBED_SIZE",
    ),
    "text": (
        "DATA.CAPTION_COLUMN",
        "DATA.KEY_COLUMN",
        "DATA.VAL_FRACTION",
        "DISTILL.CONTEXT_LENGTH",
        "DISTILL.TEXT_DIM",
        "DISTILL.MASK_PAD_TOKENS",
    ),
}
_ABSENT = object()
_START_AFRESH = (
    "another OUTPUT, or TRAIN.AUTO_RESUME False with TRAIN.FRESH_START move (keeps the earlier "
    "run in OUTPUT/previous_run_<time>/) or delete"
)


def run_keys(kind: str) -> tuple[str, ...]:
    """The config keys a resumed ``kind`` ("image" or "text") run must keep."""
    return _COMMON_KEYS + _KIND_KEYS[kind]


def _lookup(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _canonical(name: str) -> str:
    try:
        return resolve_student(name)
    except UnknownStudentError:
        return name


def _same_file(a: str, b: str) -> bool:
    try:
        return bool(a and b) and os.path.samefile(a, b)
    except OSError:
        return False


def _same(key: str, old: Any, new: Any) -> bool:
    if key == "MODEL.BACKBONE":
        return _canonical(old) == _canonical(new)
    if key == "MODEL.PRETRAINED":
        return old == new or _same_file(old, new)
    return old == new


def config_differences(old_yaml: str, cfg: CfgNode, kind: str) -> list[str]:
    """``"KEY: old → new"`` for each run-defining key that differs between a checkpoint's
    config (YAML text) and ``cfg``; keys the checkpoint's config lacks are not compared."""
    old, new = yaml.safe_load(old_yaml) or {}, yaml.safe_load(cfg.dump())
    diffs = []
    for key in run_keys(kind):
        before, now = _lookup(old, key), _lookup(new, key)
        if before is not _ABSENT and not _same(key, before, now):
            diffs.append(f"{key}: {before!r} → {now!r}")
    return diffs


def _label(name: str) -> str:
    try:
        return f"{name} ({get_student(name).zoo_name})"
    except UnknownStudentError:
        return name


def check_resume(
    path: Path,
    state: dict,
    cfg: CfgNode,
    kind: str,
    world_size: int,
    updates_per_epoch: int,
    provenance: dict,
) -> int:
    """Raise :class:`TrainCheckpointError` unless the run of checkpoint ``path`` (``state``)
    can continue under ``cfg``; return how many epochs it has done."""
    old, new = _canonical(state["student"]), _canonical(cfg.MODEL.BACKBONE)
    if old != new:
        raise TrainCheckpointError(
            f"{path} holds a {_label(old)} student but MODEL.BACKBONE is {_label(new)} — each "
            f"student needs its own OUTPUT folder: choose another OUTPUT, or set MODEL.BACKBONE "
            f"{old} to resume that run"
        )
    done = int(state["epoch"]) + 1
    diffs = config_differences(state["config"], cfg, kind)
    if "world_size" in state and int(state["world_size"]) != world_size:
        diffs.append(f"number of processes: {state['world_size']} → {world_size}")
    if "provenance" in state:
        before = teacher_identity(state["provenance"]["teacher"])
        now = teacher_identity(provenance["teacher"])
        if before != now:
            diffs.append(f"teacher of the store: {before} → {now}")
    steps = state.get("num_updates")
    if not diffs and steps is not None and int(steps) != done * updates_per_epoch:
        more = "" if "world_size" in state else ", or another number of processes"
        diffs.append(
            f"optimizer steps per epoch: {int(steps) // done} → {updates_per_epoch} (another "
            f"training set: other files under DATA.DATA_PATH or other keys in the store{more})"
        )
    if diffs:
        raise TrainCheckpointError(
            f"{path} belongs to a run with other settings; resuming it would continue on new "
            f"values ({'; '.join(diffs)}) — restore these values to resume that run, or start "
            f"a new one: {_START_AFRESH}"
        )
    if cfg.TRAIN.EPOCHS < done:
        raise TrainCheckpointError(
            f"{path} holds {done} epochs done, more than TRAIN.EPOCHS {cfg.TRAIN.EPOCHS} — set "
            f"TRAIN.EPOCHS {done} or more to continue that run ({done}: nothing is left to "
            f"train), or start a new one: {_START_AFRESH}"
        )
    return done


@dataclass(frozen=True)
class FolderPlan:
    """What a run does with its OUTPUT folder before training."""

    resume: Path | None  # the newest checkpoint, to continue from
    clear: str  # "move" or "delete" the earlier run first, or "" (nothing to clear)


def _names(paths: list[Path]) -> str:
    names = [p.name for p in paths]
    if len(names) <= 4:
        return ", ".join(names)
    return f"{names[0]}, {names[1]}, ..., {names[-1]}: {len(names)} in all"


def plan_folder(out: Path, cfg: CfgNode) -> FolderPlan:
    """Decide, creating and changing nothing, how a run treats the checkpoints already in
    ``out``: resume the newest (``TRAIN.AUTO_RESUME``), clear them (``TRAIN.FRESH_START``), or
    refuse with :class:`TrainCheckpointError` when neither was asked for."""
    found = [p for _, p in list_checkpoints(out)]
    mode = cfg.TRAIN.FRESH_START
    if not found:
        return FolderPlan(None, "")
    if cfg.TRAIN.AUTO_RESUME:
        if mode:
            raise ConfigError(
                f"TRAIN.FRESH_START {mode} starts afresh, but TRAIN.AUTO_RESUME True resumes the "
                f"run in {out} — set TRAIN.AUTO_RESUME False to start afresh, or "
                'TRAIN.FRESH_START "" to resume'
            )
        return FolderPlan(found[-1], "")
    if not mode:
        raise TrainCheckpointError(
            f"{out} holds the checkpoints of an earlier run ({_names(found)}) and "
            "TRAIN.AUTO_RESUME is False, so this run would mix with them — set TRAIN.AUTO_RESUME "
            "True to continue that run; or start afresh with TRAIN.FRESH_START move (moves "
            f"them, its tensorboard/ and config.json into {out}/previous_run_<UTC time>/) or "
            "TRAIN.FRESH_START delete; or choose another OUTPUT"
        )
    return FolderPlan(None, mode)


def previous_run_files(out: Path) -> list[Path]:
    """What an earlier run left in ``out`` that a new run would mix with or overwrite: its
    checkpoints (and torn temporary ones), ``tensorboard/`` and ``config.json``. The logs stay:
    they are appended to, and the new run's log says what was moved or deleted."""
    files = [p for _, p in list_checkpoints(out)]
    files += sorted(out.glob(".ckpt_epoch_*.pth.*tmp*"))  # a save a crash cut short
    return files + [out / n for n in ("tensorboard", "config.json") if (out / n).exists()]


def clear_previous_run(out: Path, mode: str) -> str:
    """Move (``mode`` "move", into a new ``out/previous_run_<UTC time>/``) or delete
    (``"delete"``) :func:`previous_run_files`; return what was done, for the log."""
    files = previous_run_files(out)
    if mode == "delete":
        for path in files:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        return f"TRAIN.FRESH_START delete: deleted the earlier run's {_names(files)} from {out}"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    dest, n = out / f"previous_run_{stamp}", 1
    while True:
        try:
            dest.mkdir()
            break
        except FileExistsError:
            n += 1
            dest = out / f"previous_run_{stamp}-{n}"
    for path in files:
        os.replace(path, dest / path.name)
    return f"TRAIN.FRESH_START move: moved the earlier run's {_names(files)} into {dest}"
