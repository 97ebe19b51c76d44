"""Reading the student checkpoints a merge puts into SAM3, and proving each is the student it
names: its name (any spelling, compared canonically), its geometry (from the training config it
records, else Stage 1's defaults, said to be assumed) and a strict load into that architecture.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from sam3.backbones import UnknownStudentError, build_student, get_student, resolve_student
from sam3.backbones.weights import state_problems

from .merge_checks import KINDS, MergeError
from .merge_provenance import read_provenance

log = logging.getLogger("stage1.merge")

PHASE2_HINT = (
    "phase 2 writes OUTPUT/ckpt_epoch_{N}.pth, e.g. output/stage1/es_ev_s/ckpt_epoch_49.pth"
)
# what a checkpoint without a training config is assumed to have been trained with (Stage 1's
# config defaults), by kind
ASSUMED = {
    "image": "1008 px (pad, mean/std 0.5), 1024 x 72 x 72 maps",
    "text": "context 32, 256-wide features, padding masked",
}


# the record entries that are the student's build arguments, by kind
GEOMETRY_KEYS = {
    "image": ("embed_dim", "embed_size", "img_size"),
    "text": ("context_length", "d_model", "mask_padding"),
}


@dataclass
class StudentWeights:
    """A student checkpoint as read (:func:`check_architecture` proves it is its student)."""

    kind: str  # "image" or "text"
    name: str  # canonical student name
    state: dict[str, Tensor]  # the student's state dict, as stored in the checkpoint
    record: dict[str, Any]  # what meta records about it
    provenance: dict[str, Any] | None = None  # its teacher and store; None when not recorded


def _read_student_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MergeError(f"student checkpoint {path} is not a file — {PHASE2_HINT}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise MergeError(
            f"{path} could not be read with torch.load(weights_only=True): {err} — pass a "
            f"phase-2 checkpoint ({PHASE2_HINT})"
        ) from err
    if not isinstance(obj, dict):
        raise MergeError(
            f"{path} holds a {type(obj).__name__}, not a checkpoint — pass a phase-2 checkpoint"
        )
    return obj


def _student_settings(obj: dict[str, Any]) -> dict[str, Any]:
    """The config the student was trained with (phase-2 checkpoints); ``{}`` otherwise."""
    text = obj.get("config")
    if not isinstance(text, str):
        return {}
    cfg = yaml.safe_load(text) or {}
    return cfg if isinstance(cfg, dict) else {}


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


def _record(kind: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Geometry and preprocessing from the training config (its defaults where absent)."""
    data, distill = cfg.get("DATA", {}), cfg.get("DISTILL", {})
    if kind == "image":
        return {
            "embed_dim": int(distill.get("EMBED_DIM", 1024)),
            "embed_size": int(distill.get("EMBED_SIZE", 72)),
            "img_size": int(data.get("IMG_SIZE", 1008)),
            "resize_mode": data.get("RESIZE_MODE", "pad"),
            "pixel_mean": list(data.get("PIXEL_MEAN", [0.5, 0.5, 0.5])),
            "pixel_std": list(data.get("PIXEL_STD", [0.5, 0.5, 0.5])),
        }
    return {
        "context_length": int(distill.get("CONTEXT_LENGTH", 32)),
        "d_model": int(distill.get("TEXT_DIM", 256)),
        "mask_padding": bool(distill.get("MASK_PAD_TOKENS", True)),
    }


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
    if info.kind != KINDS[kind]:
        other = "text" if kind == "image" else "image"
        raise MergeError(
            f"{path} holds {name}, a {info.kind} student; the {kind} converter merges "
            f"{KINDS[kind]} students — use convert_{other}_encoder_weights_stage1.py"
        )
    cfg = _student_settings(obj)
    if not cfg:
        log.warning(
            "%s holds no training config: assuming Stage 1's defaults for %s (%s); meta records "
            "them as assumed — pass the phase-2 checkpoint to record the real ones",
            path,
            name,
            ASSUMED[kind],
        )
    record = {
        "name": name,
        "zoo_name": info.zoo_name,
        **_record(kind, cfg),
        "geometry_from": "training config" if cfg else "assumed (Stage 1 defaults)",
        "checkpoint": str(path.resolve()),
        "epoch": obj.get("epoch"),
    }
    return StudentWeights(kind, name, state, record, read_provenance(obj, path))


def check_architecture(student: StudentWeights) -> None:
    """Strictly load the student's state into a freshly built student of its name and
    geometry.

    Raises:
        MergeError: naming the missing, unexpected and mismatched keys and what to do.
    """
    geometry = {k: student.record[k] for k in GEOMETRY_KEYS[student.kind]}
    model = build_student(student.name, **geometry)
    problems = state_problems(model.state_dict(), student.state)
    if problems:
        path, assumed = student.record["checkpoint"], student.record["geometry_from"]
        raise MergeError(
            f"{path} does not fit {student.name} at {geometry} ({assumed}): {problems} — pass "
            f"the phase-2 checkpoint of a {student.name} student, or name the student it holds"
        )
    model.load_state_dict(student.state, strict=True)  # dtype / value problems surface here


def load_student(path: str | Path, kind: str, model_name: str | None = None) -> StudentWeights:
    """:func:`read_student` followed by :func:`check_architecture`."""
    student = read_student(path, kind, model_name)
    check_architecture(student)
    return student
