"""The registry of student encoders: names, model-zoo names and builders.

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

KINDS = ("image", "text")  # what a student replaces: SAM3's vision trunk or its text encoder


@dataclass(frozen=True)
class StudentInfo:
    """One registered student: its names and how to build it."""

    name: str  # canonical name (MODEL.BACKBONE)
    kind: str  # "image" or "text"
    zoo_name: str  # model-zoo name, e.g. "ES-EV-S"
    label: str  # the spec's backbone column, e.g. "EfficientViT-B0"
    builder: Callable[..., nn.Module]  # keyword arguments -> the student module
    extra_names: tuple[str, ...] = ()  # further accepted spellings (timm / open_clip names)


def _vision(name: str, zoo: str) -> StudentInfo:
    spec = VISION_BACKBONES[name]
    return StudentInfo(
        name=name,
        kind="image",
        zoo_name=zoo,
        label=spec.label,
        builder=partial(VisionStudent, name),
        extra_names=(spec.timm_name,),
    )


def _text(name: str, zoo: str, *extra: str) -> StudentInfo:
    return StudentInfo(
        name=name,
        kind="text",
        zoo_name=zoo,
        label=name,
        builder=partial(TextStudent, name),
        extra_names=extra,
    )


# In the order of the spec's model-zoo table.
STUDENTS: dict[str, StudentInfo] = {
    info.name: info
    for info in (
        _vision("repvit_m0_9", "ES-RV-S"),
        _vision("repvit_m1_1", "ES-RV-M"),
        _vision("repvit_m2_3", "ES-RV-L"),
        _vision("tiny_vit_5m", "ES-TV-S"),
        _vision("tiny_vit_11m", "ES-TV-M"),
        _vision("tiny_vit_21m", "ES-TV-L"),
        _vision("efficientvit_b0", "ES-EV-S"),
        _vision("efficientvit_b1", "ES-EV-M"),
        _vision("efficientvit_b2", "ES-EV-L"),
        _text("MobileCLIP-S0", "ES-MC-S"),
        _text("MobileCLIP-S1", "ES-MC-M", "MobileCLIP2-S0"),
        _text("MobileCLIP2-L", "ES-MC-L", "MobileCLIP2-L-14"),
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
        f"unknown student {name!r}.{hint} Known students: image "
        f"{list_students('image')}, text {list_students('text')} (model-zoo names such as "
        "'ES-EV-S' work too)"
    )


def get_student(name: str) -> StudentInfo:
    """The :class:`StudentInfo` for ``name`` (any accepted spelling)."""
    return STUDENTS[resolve_student(name)]


def student_kind(name: str) -> str:
    """``"image"`` or ``"text"``: which teacher part the student replaces."""
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
