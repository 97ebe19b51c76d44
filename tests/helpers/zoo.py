"""Small students shared by the student tests: one random instance per (name, options)."""

from __future__ import annotations

from functools import cache

import torch

from sam3.backbones import build_student, student_kind

FAST_1008 = ("efficientvit_b0", "repvit_m0_9", "tiny_vit_5m")  # vision students quick at 1008 px
CAPTIONS = ["a photo of a cat", "dog", "the red car parked next to a tall building at night"]


@cache
def tiny_student(name: str, **kwargs) -> torch.nn.Module:
    """One randomly initialised student per (name, options); vision ones at 112 px, 8x8 maps."""
    torch.manual_seed(0)
    if student_kind(name) == "image":
        kwargs = {"embed_size": 8, "img_size": 112, **kwargs}
    return build_student(name, **kwargs)
