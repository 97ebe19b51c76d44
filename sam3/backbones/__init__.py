"""Student encoders that replace SAM3's vision trunk (timm) and text encoder (MobileCLIP)."""

from .registry import (
    KINDS,
    STUDENTS,
    StudentInfo,
    UnknownStudentError,
    build_student,
    get_student,
    list_students,
    resolve_student,
    student_kind,
)
from .text import TEXT_TOWERS, TextStudent
from .vision import VISION_BACKBONES, VisionStudent
from .weights import WeightFileError, read_weight_file

__all__ = [
    "KINDS",
    "STUDENTS",
    "TEXT_TOWERS",
    "VISION_BACKBONES",
    "StudentInfo",
    "TextStudent",
    "UnknownStudentError",
    "VisionStudent",
    "WeightFileError",
    "build_student",
    "get_student",
    "list_students",
    "read_weight_file",
    "resolve_student",
    "student_kind",
]
