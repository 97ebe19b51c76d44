"""Phase 3: splice trained students into a SAM3 checkpoint (``{"model", "meta"}``).

The vision student goes under ``detector.backbone.vision_backbone.trunk.model.``, the text
student under ``detector.backbone.language_backbone.``; the teacher keys they replace (by default
everything under ``...vision_backbone.trunk.`` / ``...language_backbone.``) are removed and every
other key of the SAM3 checkpoint is carried over untouched (the same tensors, byte for byte).
Optimizer state is never carried. ``meta`` records the students, their geometry, the context
length and the preprocessing they were distilled with; merging into an already merged file keeps
the record of the student that is not replaced.

Before anything is written, each student checkpoint is loaded strictly into a freshly built
student of the named architecture. The output is written to a temporary file and renamed, so a
failure never leaves a partial file behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from sam3.backbones import build_student, get_student, resolve_student
from sam3.backbones.weights import state_problems
from sam3.checkpoint import CheckpointError, read_checkpoint
from sam3.model_builder import (
    BACKBONE_PREFIX,
    MERGED_FORMAT,
    TEXT_PREFIX,
    VISION_STUDENT_PREFIX,
    VISION_TRUNK_PREFIX,
)

from .errors import UserError

log = logging.getLogger("stage1.merge")

KINDS = {"image": "vision", "text": "text"}  # converter kind -> registry kind
TARGET_PREFIX = {"image": VISION_STUDENT_PREFIX, "text": TEXT_PREFIX}  # where students go
REPLACE_PREFIX = {"image": VISION_TRUNK_PREFIX, "text": TEXT_PREFIX}  # teacher keys removed
MERGED_VERSION = 1  # meta["version"]; bumped when the layout changes
# what SAM3's own encoders use, recorded for the side a merge leaves to the teacher
SAM3_PREPROCESSING = {
    "img_size": 1008,
    "resize_mode": "squash",
    "pixel_mean": [0.5, 0.5, 0.5],
    "pixel_std": [0.5, 0.5, 0.5],
}
SAM3_CONTEXT_LENGTH = 32


class MergeError(UserError, ValueError):
    """Inputs that cannot be merged (wrong student, a checkpoint without the teacher part...)."""


@dataclass
class StudentWeights:
    """A student checkpoint, checked against its architecture."""

    kind: str  # "image" or "text"
    name: str  # canonical student name
    state: dict[str, Tensor]  # the student's state dict, as stored in the checkpoint
    record: dict[str, Any]  # what meta records about it


@dataclass
class MergeSummary:
    """What a merge did."""

    output: Path
    replaced: int = 0  # teacher keys removed
    added: int = 0  # student keys added
    kept: int = 0  # SAM3 keys carried over unchanged
    meta: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Human-readable summary."""
        return [
            f"wrote {self.output}",
            f"  replaced {self.replaced} teacher keys, added {self.added} student keys, "
            f"kept {self.kept} SAM3 keys unchanged",
            f"  students: {json.dumps(self.meta.get('students', {}), sort_keys=True)}",
        ]


def file_name(name: str) -> str:
    """A student name spelt for file names: ``MobileCLIP-S0`` -> ``mobileclip_s0``."""
    return name.strip().lower().replace("-", "_").replace(".", "_")


def _read_student_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"student checkpoint {path} does not exist; phase 2 writes "
            "OUTPUT/ckpt_epoch_{N}.pth (e.g. output/stage1/es_ev_s/ckpt_epoch_49.pth)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise MergeError(
            f"{path} could not be read with torch.load(weights_only=True): {err}"
        ) from err
    if not isinstance(obj, dict):
        raise MergeError(f"{path} holds a {type(obj).__name__}, not a checkpoint")
    return obj


def _student_settings(obj: dict[str, Any]) -> dict[str, Any]:
    """The config the student was trained with (phase-2 checkpoints); ``{}`` otherwise."""
    text = obj.get("config")
    if not isinstance(text, str):
        return {}
    cfg = yaml.safe_load(text) or {}
    return cfg if isinstance(cfg, dict) else {}


def load_student(path: str | Path, kind: str, model_name: str | None = None) -> StudentWeights:
    """Read a student checkpoint and prove it is the named student of ``kind``.

    Accepted: a phase-2 checkpoint (``ckpt_epoch_N.pth``: the student's name and config come
    from it), or ``{"model": state dict}`` / a bare state dict when ``model_name`` names the
    student (default geometry: 1008 px, 1024 x 72 x 72; context 32). A ``module.`` prefix (DDP) is
    removed. ``model_name``, when given with a phase-2 checkpoint, must agree with it.

    Raises:
        MergeError: the file is of another kind or architecture, or names no student.
    """
    path = Path(path)
    obj = _read_student_file(path)
    state = obj.get("model", obj)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise MergeError(f"{path} holds no state dict (expected a phase-2 ckpt_epoch_N.pth)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    stored = obj.get("student") if isinstance(obj.get("student"), str) else None
    if stored is None and not model_name:
        raise MergeError(
            f"{path} does not say which student it holds (not a phase-2 checkpoint); name it "
            "with --model-name / --image-model-name / --text-model-name"
        )
    name = resolve_student(stored or model_name)
    if model_name and stored and resolve_student(model_name) != name:
        raise MergeError(
            f"{path} holds a {name} student but the model name given is {model_name!r} "
            f"({resolve_student(model_name)}); drop the name or pass the matching checkpoint"
        )
    info = get_student(name)
    if info.kind != KINDS[kind]:
        other = "text" if kind == "image" else "image"
        raise MergeError(
            f"{path} holds {name}, a {info.kind} student; the {kind} converter merges "
            f"{KINDS[kind]} students (use convert_{other}_encoder_weights_stage1.py)"
        )
    cfg = _student_settings(obj)
    if not cfg:
        log.warning(
            "%s holds no training config: assuming SAM3's geometry (1008 px, 1024 x 72 x 72, "
            "context 32, pad/0.5/0.5) for %s; meta records it as assumed",
            path,
            name,
        )
    data, distill = cfg.get("DATA", {}), cfg.get("DISTILL", {})
    if kind == "image":
        geometry = {
            "embed_dim": int(distill.get("EMBED_DIM", 1024)),
            "embed_size": int(distill.get("EMBED_SIZE", 72)),
            "img_size": int(data.get("IMG_SIZE", 1008)),
        }
        record = {
            **geometry,
            "resize_mode": data.get("RESIZE_MODE", "pad"),
            "pixel_mean": list(data.get("PIXEL_MEAN", [0.5, 0.5, 0.5])),
            "pixel_std": list(data.get("PIXEL_STD", [0.5, 0.5, 0.5])),
        }
    else:
        geometry = {
            "context_length": int(distill.get("CONTEXT_LENGTH", 32)),
            "d_model": int(distill.get("TEXT_DIM", 256)),
            "mask_padding": bool(distill.get("MASK_PAD_TOKENS", True)),
        }
        record = dict(geometry)
    _check_architecture(path, name, geometry, state)
    record = {
        "name": name,
        "zoo_name": info.zoo_name,
        **record,
        "geometry_from": "training config" if cfg else "assumed (SAM3 defaults)",
        "checkpoint": str(path.resolve()),
        "epoch": obj.get("epoch"),
    }
    return StudentWeights(kind, name, state, record)


def _check_architecture(path: Path, name: str, geometry: dict, state: dict[str, Tensor]) -> None:
    """Strictly load ``state`` into a freshly built ``name`` student."""
    model = build_student(name, **geometry)
    problems = state_problems(model.state_dict(), state)
    if problems:
        raise MergeError(
            f"{path} is not a {name} student ({geometry}): {problems}. Pass the checkpoint of "
            "that student, or the model name of the student it holds"
        )
    model.load_state_dict(state, strict=True)  # dtype / value problems surface here


def check_parts(sam3_state: dict[str, Tensor], kinds: Sequence[str], source: str) -> None:
    """Fail unless ``sam3_state`` is a SAM3 checkpoint holding the part each student replaces."""
    if not any(k.startswith("detector.") for k in sam3_state):
        raise MergeError(f"{source} has no 'detector.*' keys: it is not a SAM3 checkpoint")
    for kind in kinds:
        part = REPLACE_PREFIX[kind]
        if not any(k.startswith(part) for k in sam3_state):
            raise MergeError(
                f"{source} has no keys under '{part}': the {kind} teacher part is missing, so "
                "the student would replace nothing. Pass the full sam3.pt (or a merged file)"
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
    prefixes = [REPLACE_PREFIX[s.kind] for s in students]
    for prefix in extra_prefixes:
        if not prefix.startswith(BACKBONE_PREFIX) or prefix == BACKBONE_PREFIX:
            raise MergeError(
                f"--replace-prefix {prefix!r}: only keys inside '{BACKBONE_PREFIX}' (e.g. "
                f"'{BACKBONE_PREFIX}vision_backbone.sam2_convs.') may be removed; the student "
                "parts themselves are always replaced"
            )
        if not any(k.startswith(prefix) for k in sam3_state):
            raise MergeError(f"--replace-prefix {prefix!r} matches no key of {source}")
        prefixes.append(prefix)
    merged = {k: v for k, v in sam3_state.items() if not k.startswith(tuple(prefixes))}
    kept = len(merged)
    added = 0
    for student in students:
        target = TARGET_PREFIX[student.kind]
        for key, tensor in student.state.items():
            merged[target + key] = tensor
            added += 1
    return merged, {"replaced": len(sam3_state) - kept, "added": added, "kept": kept}


def build_meta(previous: dict[str, Any], students: Sequence[StudentWeights], sam3: Path) -> dict:
    """The ``meta`` entry: earlier students (when merging into a merged file) updated with ours."""
    merged_before = previous.get("format") == MERGED_FORMAT
    records = dict(previous.get("students") or {}) if merged_before else {}
    for student in students:
        records[student.kind] = student.record
    image, text = records.get("image"), records.get("text")
    preprocessing = dict(SAM3_PREPROCESSING)
    if image:
        preprocessing = {k: image[k] for k in SAM3_PREPROCESSING if k in image}
    return {
        "format": MERGED_FORMAT,
        "version": MERGED_VERSION,
        "image_student": image["name"] if image else None,
        "text_student": text["name"] if text else None,
        # SAM3's own values where its encoder stays
        "context_length": text.get("context_length") if text else SAM3_CONTEXT_LENGTH,
        "preprocessing": preprocessing,
        "students": records,
        "sam3_checkpoint": str(previous.get("sam3_checkpoint") or sam3.resolve()),
    }


def check_output(output: Path, inputs: Sequence[Path]) -> None:
    """Fail early (before any heavy work) when ``output`` cannot be written: it is an input or
    a folder, or its folder cannot be created or written (tried with a probe file)."""
    if any(output.resolve() == p.resolve() for p in inputs if p.exists()):
        raise MergeError(f"--output {output} is one of the inputs; write to a new file")
    if output.is_dir():
        raise MergeError(f"--output {output} is a folder; give a file name")
    folder = output.parent
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise MergeError(
            f"cannot create the output folder {folder}: {existing} is a file; pass another --output"
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise MergeError(
            f"the output folder {folder} is not writable ({err.strerror or err}); pass another "
            "--output"
        ) from err


def _unshared(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous tensors, no two sharing memory (what safetensors requires)."""
    seen: set[int] = set()
    out = {}
    for key, tensor in state.items():
        tensor = tensor.contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add(ptr)
        out[key] = tensor
    return out


def save_merged(output: Path, state: dict[str, Tensor], meta: dict, safetensors: bool) -> None:
    """Write ``{"model", "meta"}`` (``.pth``) or a ``.safetensors`` file with ``meta`` in its
    metadata, through a temporary file in the same folder and a rename."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    try:
        if safetensors:
            from safetensors.torch import save_file

            save_file(_unshared(state), str(tmp), metadata={"meta": json.dumps(meta)})
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        else:
            with open(tmp, "wb") as f:
                torch.save({"model": state, "meta": meta}, f)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def default_output(students: Sequence[StudentWeights]) -> Path:
    """``output/efficient_sam3_{image}[_{text}].pth`` from the students' canonical names."""
    names = "_".join(file_name(s.name) for s in sorted(students, key=lambda s: s.kind))
    return Path("output") / f"efficient_sam3_{names}.pth"


def _with_format(output: Path, safetensors: bool) -> tuple[Path, bool]:
    if not safetensors:
        return output, output.suffix == ".safetensors"
    if output.suffix in (".pth", ".pt"):
        return output.with_suffix(".safetensors"), True
    return (output if output.suffix == ".safetensors" else Path(f"{output}.safetensors")), True


def run_merge(
    sam3_ckpt: str | Path,
    output: str | Path | None,
    image_ckpt: str | Path | None = None,
    text_ckpt: str | Path | None = None,
    image_model_name: str | None = None,
    text_model_name: str | None = None,
    replace_prefix: Sequence[str] | None = None,
    safetensors: bool = False,
) -> MergeSummary:
    """Check the inputs, merge the students into ``sam3_ckpt`` and write ``output`` atomically.

    Order: the output location, then the SAM3 checkpoint's parts (memory-mapped, cheap), then
    each student against its architecture; only then is anything written. ``output=None``
    gives :func:`default_output`. ``replace_prefix`` lists further teacher key prefixes to
    remove (see :func:`merge_state`). ``safetensors`` (or an output ending in
    ``.safetensors``) writes safetensors.
    """
    if image_ckpt is None and text_ckpt is None:
        raise MergeError("nothing to merge: give an image and/or a text student checkpoint")
    sam3_path = Path(sam3_ckpt)
    inputs = [sam3_path, *(Path(p) for p in (image_ckpt, text_ckpt) if p)]
    if output is not None:
        output, safetensors = _with_format(Path(output), safetensors)
        check_output(output, inputs)
    else:
        check_output(Path("output") / "probe.pth", inputs)
    try:
        sam3_state, previous = read_checkpoint(sam3_path)
    except CheckpointError as err:
        raise MergeError(str(err)) from err
    kinds = [k for k, p in (("image", image_ckpt), ("text", text_ckpt)) if p]
    check_parts(sam3_state, kinds, str(sam3_path))
    students = []
    if image_ckpt:
        students.append(load_student(image_ckpt, "image", image_model_name))
    if text_ckpt:
        students.append(load_student(text_ckpt, "text", text_model_name))
    for s in students:
        log.info("%s student %s checked against its architecture", s.kind, s.name)
    if output is None:
        output, safetensors = _with_format(default_output(students), safetensors)
        check_output(output, inputs)
    merged, counts = merge_state(sam3_state, students, replace_prefix or (), str(sam3_path))
    meta = build_meta(previous, students, sam3_path)
    log.info("writing %s (%d tensors)", output, len(merged))
    save_merged(output, merged, meta, safetensors)
    return MergeSummary(output, meta=meta, **counts)


# ----------------------------------------------------------------------------- command lines
def _parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--sam3-ckpt",
        default="sam3_checkpoints/sam3.pt",
        help="SAM3 checkpoint (or an already merged one) to merge into",
    )
    p.add_argument("--output", help="merged checkpoint to write (default: under output/)")
    p.add_argument(
        "--replace-prefix",
        action="append",
        help="further teacher key prefix to remove, inside detector.backbone. (repeatable); the "
        f"part a student replaces ({REPLACE_PREFIX['image']} / {REPLACE_PREFIX['text']}) is "
        "always removed",
    )
    p.add_argument(
        "--safetensors",
        action="store_true",
        help="write a .safetensors file (meta in its metadata) instead of a .pth",
    )
    return p


def _setup_console_logging() -> None:
    if not logging.getLogger("stage1").handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logging.getLogger("stage1").addHandler(handler)
        logging.getLogger("stage1").setLevel(logging.INFO)


def _finish(summary: MergeSummary) -> MergeSummary:
    for line in summary.lines():
        print(line)
    return summary


def main_single(kind: str, argv: list[str] | None = None) -> MergeSummary:
    """``convert_{image,text}_encoder_weights_stage1.py``: merge one student."""
    p = _parser(f"Phase 3: merge a {KINDS[kind]} student into a SAM3 checkpoint.")
    p.add_argument("--student-ckpt", required=True, help="phase-2 ckpt_epoch_N.pth of the student")
    p.add_argument(
        "--model-name",
        help="the student's name (checked against the checkpoint; needed for bare state dicts)",
    )
    args = p.parse_args(argv)
    _setup_console_logging()
    names = {"image_model_name" if kind == "image" else "text_model_name": args.model_name}
    return _finish(
        run_merge(
            args.sam3_ckpt,
            args.output,
            image_ckpt=args.student_ckpt if kind == "image" else None,
            text_ckpt=args.student_ckpt if kind == "text" else None,
            replace_prefix=args.replace_prefix,
            safetensors=args.safetensors,
            **names,
        )
    )


def main_both(argv: list[str] | None = None) -> MergeSummary:
    """``convert_both_encoders_weights_stage1.py``: merge a vision and a text student."""
    p = _parser("Phase 3: merge a vision and a text student into a SAM3 checkpoint.")
    p.add_argument("--image-student-ckpt", required=True, help="vision student ckpt_epoch_N.pth")
    p.add_argument("--text-student-ckpt", required=True, help="text student ckpt_epoch_N.pth")
    p.add_argument(
        "--image-model-name",
        help="vision student name (default: read from the checkpoint; checked against it)",
    )
    p.add_argument(
        "--text-model-name",
        help="text student name (default: read from the checkpoint; checked against it)",
    )
    args = p.parse_args(argv)
    _setup_console_logging()
    return _finish(
        run_merge(
            args.sam3_ckpt,
            args.output,
            image_ckpt=args.image_student_ckpt,
            text_ckpt=args.text_student_ckpt,
            image_model_name=args.image_model_name,
            text_model_name=args.text_model_name,
            replace_prefix=args.replace_prefix,
            safetensors=args.safetensors,
        )
    )


def run_cli(main: Callable[[list[str] | None], MergeSummary]) -> None:
    """Run a converter's ``main``; expected failures end with one clear line, not a traceback."""
    try:
        main(None)
    except (MergeError, CheckpointError, FileNotFoundError, KeyError, OSError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        sys.exit(f"error: {message}")
