"""The ``meta`` entry a merge writes (its fields: :class:`sam3.schema.MergedMeta`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from sam3.schema import (
    MERGED_FORMAT,
    MERGED_VERSION,
    SAM3_CONTEXT_LENGTH,
    MergedMeta,
    is_merged,
    meta_preprocessing,
)
from stage1.merge.provenance import is_random


class Recorded(Protocol):
    """A student as read (see ``stage1.merge.students.StudentWeights``)."""

    kind: str
    record: dict[str, Any]
    provenance: dict[str, Any] | None


def build_meta(
    previous: dict[str, Any],
    students: Sequence[Recorded],
    sam3: Path,
    sam3_sha256: str | None = None,
) -> MergedMeta:
    """The ``meta`` entry: earlier students (when merging into a merged file) updated with ours.

    ``previous`` is the meta of the checkpoint merged into (``{}`` for a plain one).
    ``provenance`` holds each side's teacher and store (``None``: unknown), ``random_teacher``
    the sides that learned from a random teacher, ``sam3_sha256`` the SAM3 checkpoint's hash
    when it was computed (kept from an earlier merge). A side without a student records SAM3's
    own context length and preprocessing.
    """
    merged_before = is_merged(previous)
    records = dict(previous.get("students") or {}) if merged_before else {}
    earlier = dict(previous.get("provenance") or {}) if merged_before else {}
    provenance = {kind: earlier.get(kind) for kind in records}
    for student in students:
        records[student.kind] = student.record
        provenance[student.kind] = student.provenance
    image, text = records.get("image"), records.get("text")
    return MergedMeta(
        format=MERGED_FORMAT,
        version=MERGED_VERSION,
        image_student=image["name"] if image else None,
        text_student=text["name"] if text else None,
        context_length=text.get("context_length") if text else SAM3_CONTEXT_LENGTH,
        preprocessing=meta_preprocessing(image),
        students=records,
        provenance=provenance,
        random_teacher=sorted(k for k, p in provenance.items() if is_random(p)),
        sam3_checkpoint=str(previous.get("sam3_checkpoint") or sam3.resolve()),
        sam3_sha256=previous.get("sam3_sha256") if merged_before else sam3_sha256,
    )
