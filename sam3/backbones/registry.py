"""The registry of student encoders: names, model-zoo names, builders and published sizes.

Canonical names are the spec's ``MODEL.BACKBONE`` values (``repvit_m0_9`` ... ``MobileCLIP2-L``).
Lookups also accept, case-insensitively and with ``-``/``.``/``_`` interchangeable, the model-zoo
names (``ES-EV-S``), the merge command's spellings (``mobileclip_s0``) and the timm / open_clip
names (``tiny_vit_5m_224``, ``MobileCLIP2-L-14``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import nn

from .text import TextStudent
from .vision import VISION_BACKBONES, VisionStudent

KINDS = ("vision", "text")  # what a student replaces: SAM3's vision trunk or its text encoder


@dataclass(frozen=True)
class StudentInfo:
    """One registered student and the spec's figures for it."""

    name: str  # canonical name (MODEL.BACKBONE)
    kind: str  # "vision" or "text"
    zoo_name: str  # model-zoo name, e.g. "ES-EV-S"
    label: str  # the spec's backbone column, e.g. "EfficientViT-B0"
    builder: Callable[..., nn.Module]  # keyword arguments -> the student module
    published_params_m: float  # the spec's "Params" (millions)
    published_smaller_pct: float  # the spec's "% smaller" than the teacher part it replaces
    # how the spec's figure was counted (a rule name that stage1/compare_models.py evaluates):
    # "backbone" = the timm backbone without the head; "whole_ctx77_with_projection_layer" = the
    # whole student with a 77-row position table and MobileCLIP's unused width x width projection;
    # "tower_ctx16_with_projection_no_projector" = the tower alone with a 16-row table
    published_rule: str
    extra_names: tuple[str, ...] = ()  # further accepted spellings (timm / open_clip names)


def _vision(name: str, zoo: str, params: float, pct: float) -> StudentInfo:
    spec = VISION_BACKBONES[name]
    return StudentInfo(
        name=name,
        kind="vision",
        zoo_name=zoo,
        label=spec.label,
        builder=partial(VisionStudent, name),
        published_params_m=params,
        published_smaller_pct=pct,
        published_rule="backbone",
        extra_names=(spec.timm_name,),
    )


def _text(name: str, zoo: str, params: float, pct: float, rule: str, *extra: str) -> StudentInfo:
    return StudentInfo(
        name=name,
        kind="text",
        zoo_name=zoo,
        label=name,
        builder=partial(TextStudent, name),
        published_params_m=params,
        published_smaller_pct=pct,
        published_rule=rule,
        extra_names=extra,
    )


_CTX77 = "whole_ctx77_with_projection_layer"
_L_RULE = "tower_ctx16_with_projection_no_projector"

# In the order of the spec's model-zoo table.
STUDENTS: dict[str, StudentInfo] = {
    info.name: info
    for info in (
        _vision("repvit_m0_9", "ES-RV-S", 4.72, 98.98),
        _vision("repvit_m1_1", "ES-RV-M", 7.77, 98.32),
        _vision("repvit_m2_3", "ES-RV-L", 22.40, 95.15),
        _vision("tiny_vit_5m", "ES-TV-S", 5.07, 98.90),
        _vision("tiny_vit_11m", "ES-TV-M", 10.55, 97.72),
        _vision("tiny_vit_21m", "ES-TV-L", 20.62, 95.53),
        _vision("efficientvit_b0", "ES-EV-S", 0.68, 99.85),
        _vision("efficientvit_b1", "ES-EV-M", 4.64, 99.00),
        _vision("efficientvit_b2", "ES-EV-L", 14.98, 96.76),
        _text("MobileCLIP-S0", "ES-MC-S", 42.57, 87.96, _CTX77),
        _text("MobileCLIP-S1", "ES-MC-M", 63.56, 82.03, _CTX77, "MobileCLIP2-S0"),
        _text("MobileCLIP2-L", "ES-MC-L", 123.6, 65.06, _L_RULE, "MobileCLIP2-L-14"),
    )
}


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(".", "_")


def _build_aliases() -> dict[str, str]:
    aliases: dict[str, str] = {}
    for info in STUDENTS.values():
        for spelling in (info.name, info.zoo_name, *info.extra_names):
            key = _normalise(spelling)
            if aliases.setdefault(key, info.name) != info.name:
                raise RuntimeError(f"student alias {spelling!r} names two students")
    return aliases


_ALIASES = _build_aliases()


class UnknownStudentError(KeyError, ValueError):
    """A student name that is not registered (catchable as ``KeyError`` or ``ValueError``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def resolve_student(name: str) -> str:
    """The canonical name for ``name`` (any accepted spelling).

    Raises:
        UnknownStudentError: listing the registered names and the closest matches.
    """
    canonical = _ALIASES.get(_normalise(name)) if isinstance(name, str) else None
    if canonical is not None:
        return canonical
    close = difflib.get_close_matches(_normalise(str(name)), list(_ALIASES), n=3, cutoff=0.6)
    suggestions = list(dict.fromkeys(_ALIASES[c] for c in close))
    hint = f" Did you mean {' or '.join(map(repr, suggestions))}?" if suggestions else ""
    raise UnknownStudentError(
        f"unknown student {name!r}.{hint} Known students: vision "
        f"{list_students('vision')}, text {list_students('text')} (model-zoo names such as "
        "'ES-EV-S' work too)"
    )


def get_student(name: str) -> StudentInfo:
    """The :class:`StudentInfo` for ``name`` (any accepted spelling)."""
    return STUDENTS[resolve_student(name)]


def student_kind(name: str) -> str:
    """``"vision"`` or ``"text"``: which teacher part the student replaces."""
    return get_student(name).kind


def list_students(kind: str | None = None) -> list[str]:
    """Canonical names in the spec's order, optionally only those of one ``kind``."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    return [n for n, info in STUDENTS.items() if kind is None or info.kind == kind]


def build_student(name: str, **kwargs) -> nn.Module:
    """Build a randomly initialised student (``pretrained=False``; nothing is downloaded).

    Keyword arguments go to :class:`VisionStudent` (``embed_dim``, ``embed_size``, ``img_size``,
    ``pretrained_path``) or :class:`TextStudent` (``context_length``, ``d_model``,
    ``mask_padding``, ``pretrained_path``).
    """
    return get_student(name).builder(**kwargs)
