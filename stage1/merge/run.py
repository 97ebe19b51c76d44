"""Phase 3: splice trained students into a SAM3 checkpoint (``{"model", "meta"}``).

The vision student goes under ``detector.backbone.vision_backbone.trunk.model.``, the text
student under ``detector.backbone.language_backbone.``; the teacher keys they replace (everything
under ``...vision_backbone.trunk.`` / ``...language_backbone.``, and under any further prefix
asked for) are removed and every other key of the SAM3 checkpoint is carried over untouched
(the same tensors, byte for byte).
Optimizer state is never carried. ``meta`` (:class:`sam3.schema.MergedMeta`, built by
:mod:`stage1.merge.meta`) records the students, their geometry, the context length, the
preprocessing they were distilled with and their provenance (teacher and store); merging into
an already merged file keeps the records of the student that is not replaced.

Before anything is written: the output location, the SAM3 checkpoint's parts, each student's
name and provenance (a random teacher is refused unless allowed), each student's output shape
against what the checkpoint's neck or heads take (:mod:`stage1.merge.checks`), and a strict load
of each student into a freshly built student of its architecture. The output is written to a
temporary file and renamed (:mod:`stage1.merge.io`), so a failure never leaves a partial file
behind.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from sam3.checkpoint import CheckpointError, read_checkpoint
from sam3.schema import BACKBONE_PREFIX, GEOMETRY_FROM_CONFIG, is_merged
from stage1.merge.checks import (
    REPLACE_PREFIX,
    TARGET_PREFIX,
    MergeError,
    check_fits,
    check_parts,
)
from stage1.merge.io import check_output, default_output, save_merged, with_format
from stage1.merge.meta import build_meta
from stage1.merge.provenance import check_teachers, compare_teachers, describe_teacher
from stage1.merge.students import StudentWeights, check_architecture, read_student
from stage1.store import format_bytes

__all__ = ["MergeError", "MergeSummary", "merge_state", "run_merge"]

log = logging.getLogger("stage1.merge")


@dataclass
class MergeSummary:
    """What a merge did."""

    output: Path
    replaced: int = 0  # keys removed: the replaced parts (teacher or earlier student) + prefixes
    added: int = 0  # student keys added
    kept: int = 0  # SAM3 keys carried over unchanged
    meta: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Human-readable summary."""
        provenance = self.meta.get("provenance") or {}
        teachers = ", ".join(f"{k}: {describe_teacher(p)}" for k, p in sorted(provenance.items()))
        lines = [
            f"wrote {self.output}",
            f"  removed {self.replaced} keys of the replaced parts, added {self.added} student "
            f"keys, kept {self.kept} SAM3 keys unchanged",
            f"  students: {json.dumps(self.meta.get('students', {}), sort_keys=True)}",
            f"  teachers: {teachers or 'none recorded'}",
        ]
        for kind in self.meta.get("random_teacher") or []:
            lines.append(f"  !!! {kind} student learned from a RANDOM teacher (smoke tests only)")
        return lines


def check_prefixes(sam3_state: dict[str, Tensor], prefixes: Sequence[str], source: str) -> None:
    """Fail unless each further prefix to remove lies inside ``detector.backbone.`` and
    matches a key of ``sam3_state``."""
    for prefix in prefixes:
        if not prefix.startswith(BACKBONE_PREFIX) or prefix == BACKBONE_PREFIX:
            raise MergeError(
                f"--replace-prefix {prefix!r} lies outside '{BACKBONE_PREFIX}' — only keys inside "
                f"it may be removed (e.g. '{BACKBONE_PREFIX}vision_backbone.sam2_convs.'); the "
                "student parts themselves are always replaced"
            )
        if not any(k.startswith(prefix) for k in sam3_state):
            raise MergeError(
                f"--replace-prefix {prefix!r} matches no key of {source} — check its spelling "
                "against the checkpoint's keys, or drop it"
            )


def merge_state(
    sam3_state: dict[str, Tensor],
    students: Sequence[StudentWeights],
    extra_prefixes: Sequence[str] = (),
    source: str = "the SAM3 checkpoint",
) -> tuple[dict[str, Tensor], dict[str, int]]:
    """``sam3_state`` with each student's keys put in place of the teacher part it replaces.

    Everything under the part a student replaces (:data:`REPLACE_PREFIX`: the whole trunk, or
    the whole language backbone, including an earlier student there) is removed, and also
    every key under ``extra_prefixes`` (each must lie in ``detector.backbone.`` and match a
    key). Returns the merged state dict and the counts ``replaced``, ``added``, ``kept``.

    Raises:
        MergeError: not a SAM3 checkpoint, a part to replace is missing, or a bad extra prefix.
    """
    check_parts(sam3_state, [s.kind for s in students], source)
    check_prefixes(sam3_state, extra_prefixes, source)
    prefixes = [REPLACE_PREFIX[s.kind] for s in students] + list(extra_prefixes)
    merged = {k: v for k, v in sam3_state.items() if not k.startswith(tuple(prefixes))}
    kept = len(merged)
    added = 0
    for student in students:
        target = TARGET_PREFIX[student.kind]
        for key, tensor in student.state.items():
            merged[target + key] = tensor
            added += 1
    return merged, {"replaced": len(sam3_state) - kept, "added": added, "kept": kept}


def _read_sam3(path: Path) -> tuple[dict[str, Tensor], dict]:
    """``read_checkpoint`` with its size and time in the log, errors as :class:`MergeError`."""
    if path.is_file():
        log.info("reading %s (%s)", path, format_bytes(path.stat().st_size))
    start = time.perf_counter()
    try:
        state, meta = read_checkpoint(path)
    except CheckpointError as err:
        raise MergeError(str(err)) from err
    log.info("%d tensors in %s, read in %.1f s", len(state), path.name, time.perf_counter() - start)
    return state, meta


def run_merge(
    sam3_ckpt: str | Path,
    output: str | Path | None,
    image_ckpt: str | Path | None = None,
    text_ckpt: str | Path | None = None,
    image_model_name: str | None = None,
    text_model_name: str | None = None,
    replace_prefix: Sequence[str] | None = None,
    safetensors: bool = False,
    allow_random_teacher: bool = False,
    overwrite: bool = False,
) -> MergeSummary:
    """Check the inputs, merge the students into ``sam3_ckpt`` and write ``output`` atomically.

    Order, cheapest first: the output location; the SAM3 checkpoint's parts (memory-mapped);
    each student's name, kind and provenance (a student distilled from a random teacher is
    refused unless ``allow_random_teacher``); each student's shape against the checkpoint's
    neck or heads; each student against its architecture; then the SAM3 checkpoint's SHA-256
    against the students' teachers (warnings), and only then is anything written.
    ``output=None`` gives :func:`default_output`. ``replace_prefix`` lists further teacher key
    prefixes to remove (see :func:`merge_state`). ``safetensors`` (or an output ending in
    ``.safetensors``) writes safetensors. An existing ``output`` is replaced only with
    ``overwrite``.

    Raises:
        MergeError: any input that cannot be merged, with what to do.
    """
    if image_ckpt is None and text_ckpt is None:
        raise MergeError("nothing to merge — give an image and/or a text student checkpoint")
    sam3_path = Path(sam3_ckpt)
    inputs = [sam3_path, *(Path(p) for p in (image_ckpt, text_ckpt) if p)]
    if output is not None:
        output, safetensors = with_format(Path(output), safetensors)
        check_output(output, inputs, overwrite)
    else:
        check_output(Path("output") / "probe.pth", inputs)
    sam3_state, previous = _read_sam3(sam3_path)
    kinds = [k for k, p in (("image", image_ckpt), ("text", text_ckpt)) if p]
    check_parts(sam3_state, kinds, str(sam3_path))
    check_prefixes(sam3_state, replace_prefix or (), str(sam3_path))
    students = []
    if image_ckpt:
        students.append(read_student(image_ckpt, "image", image_model_name))
    if text_ckpt:
        students.append(read_student(text_ckpt, "text", text_model_name))
    check_teachers(students, allow_random_teacher, str(sam3_path))
    earlier = (previous.get("students") or {}) if is_merged(previous) else {}
    # shapes first where the training config states them; an assumed geometry is proved by the
    # architecture check before it is compared with the checkpoint
    assumed = [s.record["geometry_from"] != GEOMETRY_FROM_CONFIG for s in students]
    for s, later in zip(students, assumed):
        if not later:
            check_fits(sam3_state, s.kind, s.record, str(sam3_path), earlier)
    for s, later in zip(students, assumed):
        start = time.perf_counter()
        check_architecture(s)
        if later:
            check_fits(sam3_state, s.kind, s.record, str(sam3_path), earlier)
        log.info(
            "%s student %s checked against its architecture and %s (%.1f s)",
            s.kind,
            s.name,
            sam3_path.name,
            time.perf_counter() - start,
        )
    if output is None:
        output, safetensors = with_format(default_output(students), safetensors)
        check_output(output, inputs, overwrite)
    sam3_sha256 = compare_teachers(students, sam3_path, previous)
    merged, counts = merge_state(sam3_state, students, replace_prefix or (), str(sam3_path))
    meta = build_meta(previous, students, sam3_path, sam3_sha256)
    save_merged(output, merged, meta, safetensors)
    return MergeSummary(output, meta=meta, **counts)
