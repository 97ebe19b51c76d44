"""What each student learned from, and what a merge says about it.

A phase-2 checkpoint records ``provenance = {"teacher": <the store manifest's teacher record, or
None for a store without a manifest>, "store": {"path", "spec"}}``; older checkpoints record
none. A student distilled from a random teacher (``checkpoint_sha256 == "random"``) is refused
unless the user allows it; an unknown teacher is warned about; a known teacher is compared, by
SHA-256, with the SAM3 checkpoint the student is merged into.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from sam3.files import file_sha256
from sam3.schema import is_merged
from stage1.merge.checks import MergeError
from stage1.store import format_bytes

log = logging.getLogger("stage1.merge")

RANDOM = "random"  # checkpoint_sha256 of a randomly initialised teacher


class HasProvenance(Protocol):
    """A loaded student (see ``stage1.merge.students.StudentWeights``)."""

    kind: str
    name: str
    record: dict[str, Any]
    provenance: dict[str, Any] | None


def read_provenance(obj: dict[str, Any], path: Path) -> dict[str, Any] | None:
    """The checkpoint's ``provenance`` entry as JSON-ready data; ``None`` when it has none."""
    provenance = obj.get("provenance")
    if provenance is None:
        return None
    if not isinstance(provenance, dict):
        log.warning(
            "%s: its 'provenance' entry is a %s, not a mapping — its teacher is treated as unknown",
            path,
            type(provenance).__name__,
        )
        return None
    return json.loads(json.dumps(provenance, default=str))  # what meta (and safetensors) holds


def teacher_of(provenance: dict[str, Any] | None) -> dict[str, Any] | None:
    """The teacher record of ``provenance``; ``None`` when unknown."""
    teacher = (provenance or {}).get("teacher")
    return teacher if isinstance(teacher, dict) else None


def is_random(provenance: dict[str, Any] | None) -> bool:
    """Whether the student learned from a randomly initialised teacher."""
    teacher = teacher_of(provenance)
    return teacher is not None and teacher.get("checkpoint_sha256") == RANDOM


def describe_teacher(provenance: dict[str, Any] | None) -> str:
    """One phrase for the summary: the teacher file and its hash, RANDOM, or unknown."""
    teacher = teacher_of(provenance)
    if teacher is None:
        return "unknown"
    if is_random(provenance):
        return "RANDOM (smoke tests only)"
    sha = str(teacher.get("checkpoint_sha256") or "unknown")
    return f"{teacher.get('checkpoint')} (sha256 {sha[:16]})"


def _unknown_reason(provenance: dict[str, Any] | None) -> str:
    if provenance is None:
        return "its checkpoint records no provenance (written before provenance was recorded)"
    return "it was trained on a store without a manifest (e.g. a public EfficientSAM3 store)"


def check_teachers(students: Sequence[HasProvenance], allow_random: bool, source: str) -> None:
    """Refuse students distilled from a random teacher unless ``allow_random``; warn loudly
    when allowed, and warn about each student whose teacher is unknown.

    Raises:
        MergeError: a random teacher without ``allow_random``.
    """
    random = [s for s in students if is_random(s.provenance)]
    if random and not allow_random:
        which = "; ".join(
            f"the {s.kind} student {s.name} ({s.record['checkpoint']})" for s in random
        )
        raise MergeError(
            f"{which} learned from a RANDOM teacher (its store records checkpoint_sha256 "
            "'random'), so the merged model would be meaningless — distil from sam3.pt, or, for "
            "a smoke test, pass --allow-random-teacher (allow_random_teacher=True)"
        )
    for s in random:
        log.warning(
            "!!! RANDOM TEACHER: the %s student %s (%s) learned from randomly initialised "
            "weights; the merged file is for smoke tests only (its meta['random_teacher'] says "
            "so) !!!",
            s.kind,
            s.name,
            s.record["checkpoint"],
        )
    for s in students:
        if teacher_of(s.provenance) is None:
            log.warning(
                "the %s student %s's teacher is unknown: %s — make sure it was distilled from %s",
                s.kind,
                s.name,
                _unknown_reason(s.provenance),
                source,
            )


def _known_sha(provenance: dict[str, Any] | None) -> str | None:
    sha = (teacher_of(provenance) or {}).get("checkpoint_sha256")
    return sha if isinstance(sha, str) and sha and sha != RANDOM else None


def compare_teachers(
    students: Sequence[HasProvenance], sam3_path: Path, previous_meta: dict[str, Any]
) -> str | None:
    """SHA-256 of the SAM3 checkpoint merged into (``None`` when not known), after warning about
    each student whose teacher is another file.

    A plain checkpoint is hashed (with a progress bar) only when some student's teacher hash is
    known; a merged file answers with the hash its ``meta`` records, if any.
    """
    known = [(s, sha) for s in students if (sha := _known_sha(s.provenance))]
    merged_before = is_merged(previous_meta)
    target = previous_meta.get("sam3_sha256") if merged_before else None
    if known and target is None:
        if merged_before:
            log.info(
                "teachers not compared: %s is a merged file that does not record the SHA-256 of "
                "its SAM3 checkpoint",
                sam3_path,
            )
            return None
        size = format_bytes(sam3_path.stat().st_size)
        log.info("hashing %s (%s) to compare it with the students' teachers", sam3_path, size)
        start = time.perf_counter()
        target = file_sha256(sam3_path, progress=True)
        log.info("sha256 of %s in %.1f s", sam3_path.name, time.perf_counter() - start)
    for s, sha in known:
        if sha == target:
            log.info("the %s student %s was distilled from %s", s.kind, s.name, sam3_path)
            continue
        teacher = teacher_of(s.provenance) or {}
        log.warning(
            "the %s student %s was distilled from another checkpoint (%s, sha256 %s) than %s "
            "(sha256 %s) — its features may not suit these heads: merge into its teacher's "
            "checkpoint, or distil from this one",
            s.kind,
            s.name,
            teacher.get("checkpoint"),
            sha[:16],
            sam3_path,
            target[:16],
        )
    return target
