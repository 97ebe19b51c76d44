"""Reading the student checkpoints a merge puts into SAM3, and proving each is the student it
names: its name (any spelling, compared canonically), its geometry and preprocessing (from the
training config it records, through the same functions training uses; else Stage 1's defaults,
said to be assumed) and a strict load into that architecture.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor
from yacs.config import CfgNode

from sam3.backbones import UnknownStudentError, build_student, get_student, resolve_student
from sam3.backbones.weights import state_problems
from sam3.files import UnreadableFileError, load_weights_only
from sam3.schema import GEOMETRY_ASSUMED, GEOMETRY_FROM_CONFIG, model_preprocessing
from stage1.common.config import ConfigError, get_default_config
from stage1.common.students import config_from_yaml, student_build_args
from stage1.data.transforms import image_transform
from stage1.merge.checks import MergeError
from stage1.merge.provenance import read_provenance

log = logging.getLogger("stage1.merge")

PHASE2_HINT = (
    "phase 2 writes OUTPUT/ckpt_epoch_{N}.pth, e.g. output/stage1/es_ev_s/ckpt_epoch_49.pth"
)


@dataclass
class StudentWeights:
    """A student checkpoint as read (:func:`check_architecture` proves it is its student)."""

    kind: str  # "image" or "text"
    name: str  # canonical student name
    state: dict[str, Tensor]  # the student's state dict, as stored in the checkpoint
    build_args: dict[str, Any]  # its geometry: the arguments build_student takes
    record: dict[str, Any]  # what meta records about it (sam3.schema.StudentRecord)
    provenance: dict[str, Any] | None = None  # its teacher and store; None when not recorded


def _read_student_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MergeError(f"student checkpoint {path} is not a file — {PHASE2_HINT}")
    try:
        obj = load_weights_only(path)
    except UnreadableFileError as err:
        raise MergeError(f"{err} — pass a phase-2 checkpoint ({PHASE2_HINT})") from err
    if not isinstance(obj, dict):
        raise MergeError(
            f"{path} holds a {type(obj).__name__}, not a checkpoint — pass a phase-2 checkpoint"
        )
    return obj


def _training_config(obj: dict[str, Any], path: Path) -> CfgNode | None:
    """The config the student was trained with (phase-2 checkpoints); ``None`` when the file
    records none."""
    text = obj.get("config")
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        return config_from_yaml(text)
    except ConfigError as err:
        raise MergeError(
            f"{path}: {err} — merge it with the version of Stage 1 that trained it"
        ) from err


def _resolve(name: str, path: Path, where: str) -> str:
    try:
        return resolve_student(name)
    except UnknownStudentError as err:
        raise MergeError(f"{path}: {where} {err} — give a registered student name") from err


def _student_name(path: Path, obj: dict[str, Any], model_name: str | None) -> str:
    """The canonical name of the student in ``obj``, checked against ``model_name``."""
    stored = obj.get("student") if isinstance(obj.get("student"), str) else None
    if stored is None and not model_name:
        raise MergeError(
            f"{path} does not say which student it holds (it is not a phase-2 checkpoint) — "
            "name it with --model-name / --image-model-name / --text-model-name"
        )
    given = _resolve(model_name, path, "the model name given:") if model_name else None
    name = _resolve(stored, path, "the checkpoint's student:") if stored else given
    if given and given != name:
        raise MergeError(
            f"{path} holds the student {name}, but the model name given ({model_name!r}) is "
            f"{given} — drop the name or pass the checkpoint of {given}"
        )
    return name


def _preprocessing(cfg: CfgNode) -> dict[str, Any]:
    """The record of the image transform training built from ``cfg`` (``DATA.*``)."""
    t = image_transform(cfg)
    return dict(model_preprocessing(t.img_size, t.mode, t.mean, t.std))


def _described(kind: str, record: dict[str, Any]) -> str:
    """The geometry of ``record`` in a few words, for the log."""
    r = record
    if kind == "image":
        return (
            f"{r['img_size']} px ({r['resize_mode']}, mean {r['pixel_mean']}, std "
            f"{r['pixel_std']}), {r['embed_dim']} x {r['embed_size']} x {r['embed_size']} maps"
        )
    padding = "masked" if r["mask_padding"] else "attended"
    return f"context {r['context_length']}, {r['d_model']}-wide features, padding {padding}"


def read_student(path: str | Path, kind: str, model_name: str | None = None) -> StudentWeights:
    """Read a student checkpoint of ``kind`` and what meta records about it (no model built).

    Accepted: a phase-2 checkpoint (``ckpt_epoch_N.pth``: the student's name, config and
    provenance come from it), or ``{"model": state dict}`` / a bare state dict when
    ``model_name`` names the student (Stage 1's default geometry is then assumed, and recorded
    as such). A ``module.`` prefix (DDP) is removed. ``model_name``, when given with a phase-2
    checkpoint, must name the same student (in any spelling).

    Raises:
        MergeError: the file is unreadable, of another kind, or names no (or another) student.
    """
    path = Path(path)
    obj = _read_student_file(path)
    state = obj.get("model", obj)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise MergeError(f"{path} holds no state dict — pass a phase-2 checkpoint ({PHASE2_HINT})")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    name = _student_name(path, obj, model_name)
    info = get_student(name)
    if info.kind != kind:
        other = "text" if kind == "image" else "image"
        raise MergeError(
            f"{path} holds {name}, a {info.kind} student; the {kind} converter merges "
            f"{kind} students — use convert_{other}_encoder_weights_stage1.py"
        )
    cfg = _training_config(obj, path)
    settings = cfg if cfg is not None else get_default_config()
    build_args = student_build_args(settings, kind)
    record = {
        "name": name,
        "zoo_name": info.zoo_name,
        **build_args,
        **(_preprocessing(settings) if kind == "image" else {}),
        "geometry_from": GEOMETRY_FROM_CONFIG if cfg is not None else GEOMETRY_ASSUMED,
        "checkpoint": str(path.resolve()),
        "epoch": obj.get("epoch"),
    }
    if cfg is None:
        log.warning(
            "%s holds no training config: assuming Stage 1's defaults for %s (%s); meta records "
            "them as assumed — pass the phase-2 checkpoint to record the real ones",
            path,
            name,
            _described(kind, record),
        )
    return StudentWeights(kind, name, state, build_args, record, read_provenance(obj, path))


def check_architecture(student: StudentWeights) -> None:
    """Strictly load the student's state into a freshly built student of its name and
    geometry.

    Raises:
        MergeError: naming the missing, unexpected and mismatched keys and what to do.
    """
    geometry = student.build_args
    model = build_student(student.name, **geometry)
    problems = state_problems(model.state_dict(), student.state)
    if problems:
        path, assumed = student.record["checkpoint"], student.record["geometry_from"]
        raise MergeError(
            f"{path} does not fit {student.name} at {geometry} ({assumed}): {problems} — pass "
            f"the phase-2 checkpoint of a {student.name} student, or name the student it holds"
        )
    model.load_state_dict(student.state, strict=True)  # dtype / value problems surface here
