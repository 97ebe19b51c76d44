"""The layout of SAM3 and merged EfficientSAM3 checkpoints: key prefixes, the ``meta`` entry and
the preprocessing record. The Stage-1 merge writes merged files with these names and the
builders (:mod:`sam3.model_builder`, :mod:`sam3.backbone_builder`) read them with the same.

A SAM3 checkpoint (``sam3.pt``) is a state dict whose image model lives under ``detector.``
(its VL backbone under ``detector.backbone.``) and whose tracker, the interactive heads among
it, under ``tracker.``. A merged checkpoint is the same state dict with a vision student under
:data:`VISION_STUDENT_PREFIX` in place of the teacher trunk and/or a text student under
:data:`TEXT_PREFIX` in place of SAM3's text encoder, and a ``meta`` entry (:class:`MergedMeta`)
that names them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

DETECTOR_PREFIX = "detector."  # the image model's keys
TRACKER = "tracker."  # the tracker's keys, the interactive heads among them (not under detector.)
BACKBONE_PREFIX = DETECTOR_PREFIX + "backbone."  # the VL backbone's keys
VISION_TRUNK_PREFIX = BACKBONE_PREFIX + "vision_backbone.trunk."  # the teacher trunk's keys
VISION_STUDENT_PREFIX = VISION_TRUNK_PREFIX + "model."  # a merged vision student's keys
TEXT_PREFIX = BACKBONE_PREFIX + "language_backbone."  # the text encoder's (teacher or student)

MERGED_FORMAT = "efficientsam3-merged"  # meta["format"] of a merged checkpoint
MERGED_VERSION = 1  # meta["version"]; bumped when the layout changes
GEOMETRY_FROM_CONFIG = "training config"  # a student record's geometry_from: read from its ckpt
GEOMETRY_ASSUMED = "assumed (Stage 1 defaults)"  # ... its checkpoint recorded no config
SAM3_CONTEXT_LENGTH = 32  # tokens per caption SAM3's own text encoder reads


class PreprocessingRecord(TypedDict):
    """A model's input transform: ``meta["preprocessing"]`` and ``model.preprocessing``."""

    img_size: int  # side of the square input, pixels
    resize_mode: str  # "squash": both sides to img_size; "pad": the longest, then zero-padded
    pixel_mean: list[float]  # normalisation mean on [0, 1] RGB
    pixel_std: list[float]  # normalisation std on [0, 1] RGB


PREPROCESSING_FIELDS = tuple(PreprocessingRecord.__annotations__)


def model_preprocessing(
    img_size: int, resize_mode: str, pixel_mean: Sequence[float], pixel_std: Sequence[float]
) -> PreprocessingRecord:
    """The preprocessing record of a transform (JSON-ready: plain ints, strings, lists)."""
    return {
        "img_size": int(img_size),
        "resize_mode": str(resize_mode),
        "pixel_mean": [float(v) for v in pixel_mean],
        "pixel_std": [float(v) for v in pixel_std],
    }


# SAM3's own input transform (Meta's Sam3Processor)
SAM3_PREPROCESSING = model_preprocessing(1008, "squash", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class StudentRecord(TypedDict, total=False):
    """``meta["students"][kind]``: what a merge records about one student."""

    name: str  # canonical student name (sam3.backbones)
    zoo_name: str  # its EfficientSAM3 name (ES-EV-S, ...)
    embed_dim: int  # image: channels of its map (a build argument)
    embed_size: int  # image: side of its map (a build argument)
    img_size: int  # image: its input side (a build argument and the preprocessing's)
    resize_mode: str  # image: the preprocessing it was distilled with (PreprocessingRecord)
    pixel_mean: list[float]  # image: ditto
    pixel_std: list[float]  # image: ditto
    context_length: int  # text: tokens per caption (a build argument)
    d_model: int  # text: width of its features (a build argument)
    mask_padding: bool  # text: padding tokens masked (a build argument)
    geometry_from: str  # GEOMETRY_FROM_CONFIG or GEOMETRY_ASSUMED
    checkpoint: str  # the phase-2 checkpoint it was read from (resolved path)
    epoch: int | None  # that checkpoint's epoch; None when it records none


class MergedMeta(TypedDict):
    """The ``meta`` entry of a merged checkpoint."""

    format: str  # MERGED_FORMAT
    version: int  # MERGED_VERSION
    image_student: str | None  # the vision student's canonical name; None: SAM3's trunk stays
    text_student: str | None  # the text student's; None: SAM3's text encoder stays
    context_length: int  # tokens per caption of the text side (SAM3's where its encoder stays)
    preprocessing: PreprocessingRecord  # the image side's (SAM3's where its trunk stays)
    students: dict[str, StudentRecord]  # by kind, "image" / "text"
    provenance: dict[str, dict[str, Any] | None]  # by kind: teacher and store; None: unknown
    random_teacher: list[str]  # the kinds that learned from a random teacher
    sam3_checkpoint: str  # the SAM3 checkpoint merged into (the first, over repeated merges)
    sam3_sha256: str | None  # its SHA-256, when it was computed


def is_merged(meta: Mapping[str, Any]) -> bool:
    """Whether ``meta`` is a merged checkpoint's (written by the Stage-1 merge)."""
    return meta.get("format") == MERGED_FORMAT


def meta_preprocessing(image: Mapping[str, Any] | None) -> PreprocessingRecord:
    """``meta["preprocessing"]``: the image student's record's, else SAM3's own."""
    if not image:
        return dict(SAM3_PREPROCESSING)  # type: ignore[return-value]
    return {k: image[k] for k in PREPROCESSING_FIELDS if k in image}  # type: ignore[return-value]
