"""Vision students: a timm backbone's last feature map -> a 1024-d head -> SAM3's 72x72 grid.

``VisionStudent`` = ``backbone`` (``timm.create_model(name, features_only=True,
out_indices=(-1,))``: the stride-32 map, 32x32 at 1008 px) -> ``head`` (Conv1x1 C->1024 without
bias, BatchNorm, GELU, Conv3x3 1024->1024) -> bilinear resize to ``embed_size``. The backbone's
parameter count is the spec's published one; the head (9.6-10.1 M) comes on top of it.

Weights: random by default (``pretrained=False``; nothing is downloaded). ``pretrained_path``
initialises the backbone from a local timm/ImageNet file, strictly (see
:meth:`VisionStudent.load_pretrained`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .weights import MAX_LISTED, WeightFileError, key_problems, read_weight_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VisionBackboneSpec:
    """A timm backbone: its registered name and the constructor arguments we use."""

    timm_name: str  # name in timm's registry
    label: str  # the spec's name for it (model-zoo table)
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm constructor arguments


VISION_BACKBONES: dict[str, VisionBackboneSpec] = {
    "repvit_m0_9": VisionBackboneSpec("repvit_m0_9", "RepViT-M0.9"),
    "repvit_m1_1": VisionBackboneSpec("repvit_m1_1", "RepViT-M1.1"),
    "repvit_m2_3": VisionBackboneSpec("repvit_m2_3", "RepViT-M2.3"),
    # TinyViT trains with stochastic depth 0 / 0.1 / 0.2 (timm's and EfficientSAM3's settings)
    "tiny_vit_5m": VisionBackboneSpec("tiny_vit_5m_224", "TinyViT-5M", {"drop_path_rate": 0.0}),
    "tiny_vit_11m": VisionBackboneSpec("tiny_vit_11m_224", "TinyViT-11M", {"drop_path_rate": 0.1}),
    "tiny_vit_21m": VisionBackboneSpec("tiny_vit_21m_224", "TinyViT-21M", {"drop_path_rate": 0.2}),
    # MIT-Han-lab EfficientViT (multi-scale linear attention), not MSRA's efficientvit_m*
    "efficientvit_b0": VisionBackboneSpec("efficientvit_b0", "EfficientViT-B0"),
    "efficientvit_b1": VisionBackboneSpec("efficientvit_b1", "EfficientViT-B1"),
    "efficientvit_b2": VisionBackboneSpec("efficientvit_b2", "EfficientViT-B2"),
}


def _name_key(key: str) -> str:
    """Key of a tensor that is the same in a timm model and in its ``features_only`` wrapper
    (which drops a ``model.`` prefix or joins module names with ``_``)."""
    return key.removeprefix("model.").replace("_", ".")


class VisionStudent(nn.Module):
    """``[B, 3, S, S]`` -> ``[B, embed_dim, embed_size, embed_size]`` through a timm backbone.

    Args:
        backbone_name: a key of :data:`VISION_BACKBONES`.
        embed_dim: output channels (the teacher trunk's width, 1024).
        embed_size: output side (the teacher's token grid, 72).
        img_size: the input side the student is meant for (SAM3: 1008). The backbones are
            resolution-agnostic, so other sizes run too; it sets :attr:`feature_size`.
        pretrained_path: optional local timm weight file for the backbone.
    """

    def __init__(
        self,
        backbone_name: str,
        embed_dim: int = 1024,
        embed_size: int = 72,
        img_size: int = 1008,
        pretrained_path: str | Path = "",
    ):
        super().__init__()
        if backbone_name not in VISION_BACKBONES:
            raise KeyError(
                f"unknown vision backbone {backbone_name!r}; choose from {sorted(VISION_BACKBONES)}"
            )
        self.name = backbone_name
        self.spec = VISION_BACKBONES[backbone_name]
        self.embed_dim = embed_dim
        self.embed_size = embed_size
        self.img_size = img_size
        self.backbone = timm.create_model(
            self.spec.timm_name,
            pretrained=False,
            features_only=True,
            out_indices=(-1,),
            **self.spec.kwargs,
        )
        self.out_channels: int = self.backbone.feature_info.channels()[-1]
        self.stride: int = self.backbone.feature_info.reduction()[-1]
        self.head = nn.Sequential(
            nn.Conv2d(self.out_channels, embed_dim, kernel_size=1, bias=False),
            nn.BatchNorm2d(embed_dim),
            nn.GELU(),
            nn.Conv2d(embed_dim, embed_dim, kernel_size=3, padding=1),
        )
        if pretrained_path:
            self.load_pretrained(pretrained_path)

    @property
    def feature_size(self) -> int:
        """Side of the backbone's last map at ``img_size`` (32 at 1008: padded stride-2 convs)."""
        return math.ceil(self.img_size / self.stride)

    def backbone_params(self) -> int:
        """Parameters of the timm backbone (the published count)."""
        return sum(p.numel() for p in self.backbone.parameters())

    def head_params(self) -> int:
        """Parameters of the 1024-d head."""
        return sum(p.numel() for p in self.head.parameters())

    def forward(self, images: Tensor) -> Tensor:
        """Images ``[B, 3, S, S]`` -> embeddings ``[B, embed_dim, embed_size, embed_size]``."""
        features = self.head(self.backbone(images)[-1])
        size = (self.embed_size, self.embed_size)
        return F.interpolate(features, size=size, mode="bilinear", align_corners=False)

    def load_pretrained(self, path: str | Path) -> list[str]:
        """Initialise the backbone from a local timm weight file; the head stays random.

        Accepted: the plain timm model's state dict (``timm.create_model(name).state_dict()`` or
        timm's hub files; any classifier keys, e.g. ``head.*``, are ignored) or the
        ``features_only`` backbone's own. Every backbone tensor must be present with its shape
        (BN's ``num_batches_tracked`` may be absent), and nothing else may be, or
        :class:`WeightFileError` names the offending keys. Returns the log lines (also logged).
        """
        path = Path(path)
        state = read_weight_file(path)
        target = self.backbone.state_dict()
        if all(k in target for k in state):  # the backbone's own layout
            to_file, classifier = {k: k for k in target}, []
            notes = [f"{path}: features_only layout"]
        else:  # the plain timm model's layout
            to_file, classifier = self._plain_names()
            notes = [f"{path}: timm {self.spec.timm_name} layout"]
        missing = [
            fk
            for k, fk in to_file.items()
            if fk not in state and not k.endswith("num_batches_tracked")
        ]
        known = set(to_file.values()) | set(classifier)
        unexpected = [k for k in state if k not in known]
        mismatched = [
            f"{fk}: file {tuple(state[fk].shape)} vs model {tuple(target[k].shape)}"
            for k, fk in to_file.items()
            if fk in state and state[fk].shape != target[k].shape
        ]
        if missing or unexpected or mismatched:
            self._fail(path, missing, unexpected, mismatched)
        mapped = {k: state[fk] for k, fk in to_file.items() if fk in state}
        self.backbone.load_state_dict(mapped, strict=False)
        notes.append(f"loaded {len(mapped)} backbone tensors")
        ignored = [k for k in state if k in classifier]
        if ignored:
            notes.append(f"ignored {len(ignored)} classifier tensors: {ignored[:MAX_LISTED]}")
        for line in notes:
            log.info(line)
        return notes

    def _plain_names(self) -> tuple[dict[str, str], list[str]]:
        """``(backbone key -> the same tensor's key in the plain timm model, the plain model's
        other keys: its classifier)``."""
        with torch.device("meta"):  # only the names are needed
            plain = timm.create_model(self.spec.timm_name, pretrained=False, **self.spec.kwargs)
        plain_keys = list(plain.state_dict())
        by_name = {_name_key(k): k for k in plain_keys}
        if len(by_name) != len(plain_keys):
            raise RuntimeError(f"timm {self.spec.timm_name}: ambiguous key normalisation")
        to_plain = {k: by_name[_name_key(k)] for k in self.backbone.state_dict()}
        used = set(to_plain.values())
        return to_plain, [k for k in plain_keys if k not in used]

    def _fail(
        self,
        path: Path,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[str] = (),
    ) -> NoReturn:
        raise WeightFileError(
            f"{path} does not fit the {self.name} backbone (timm '{self.spec.timm_name}'): "
            + key_problems(missing, unexpected, mismatched)
            + f". Pass a state dict of timm.create_model('{self.spec.timm_name}') "
            f"(e.g. timm's '{self.spec.timm_name}.<tag>' weights) as .pth/.pt/.safetensors."
        )

    def extra_repr(self) -> str:
        """Backbone name and the sizes the student maps between."""
        return (
            f"backbone={self.name!r} (timm {self.spec.timm_name!r}), img_size={self.img_size}, "
            f"embed_dim={self.embed_dim}, embed_size={self.embed_size}"
        )
