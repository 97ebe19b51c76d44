"""SAM3 teachers for the export phase: the vision trunk alone, or the text encoder alone.

The image teacher returns the trunk's last map ``[B, EMBED_DIM, EMBED_SIZE, EMBED_SIZE]``
(before the neck: the students replace the trunk); the text teacher returns
``language_features`` as ``[B, CONTEXT_LENGTH, 256]``. :func:`teacher_image_config` gives the
whole image model of an architecture (backbone, detector heads and interactive SAM heads), and
:func:`save_random_image_teacher` saves a reduced random one in ``sam3.pt``'s layout.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from yacs.config import CfgNode

from sam3.arch import TRACKER, ImageModelConfig
from sam3.checkpoint import SAM3_DOWNLOAD_HINT
from sam3.files import torch_save_atomic
from sam3.model.heads_config import HeadsConfig, SamHeadsConfig
from sam3.model.text_encoder import TextConfig
from sam3.model.vit import ViTConfig
from sam3.model_builder import (
    BackboneConfig,
    build_sam3_backbone,
    build_sam3_image_model,
)
from sam3.schema import DETECTOR_PREFIX
from stage1.common.errors import UserError

log = logging.getLogger(__name__)


class TeacherError(UserError, ValueError):
    """The config asks for a teacher that cannot be built (architecture, size, weights)."""


class TeacherCheckpointError(TeacherError, FileNotFoundError):
    """``MODEL.RESUME`` names no file."""


def _sam3_arch(img_size: int) -> BackboneConfig:
    if img_size != 1008:
        raise TeacherError(
            f"MODEL.TEACHER_ARCH sam3 runs at 1008x1008 only (its RoPE tables are fixed), but "
            f"DATA.IMG_SIZE is {img_size} — set DATA.IMG_SIZE 1008 (and, for an image export, "
            "DISTILL.EMBED_SIZE 72)"
        )
    return BackboneConfig()


def _sam3_tiny_arch(img_size: int) -> BackboneConfig:
    """Two narrow blocks at any multiple of 14: for smoke runs and tests, never for real use."""
    grid = img_size // 14
    if img_size % 14 or grid < 2:
        size = max(28, 14 * round(img_size / 14))
        raise TeacherError(
            f"MODEL.TEACHER_ARCH sam3_tiny needs DATA.IMG_SIZE to be a multiple of 14 (at least "
            f"28), but it is {img_size} — set DATA.IMG_SIZE {size} (and, for an image export, "
            f"DISTILL.EMBED_SIZE {size // 14})"
        )
    window = grid // 2 if grid % 2 == 0 else grid
    vit = ViTConfig(
        img_size=img_size,
        embed_dim=64,
        depth=2,
        num_heads=4,
        window_size=window,
        global_blocks=(1,),
        pretrain_img_size=14 * window,
    )
    # one 64-wide text head, SAM3's head width, so the architecture reads back from the file's
    # tensor shapes (sam3.arch); heads have no tensor of their own
    return BackboneConfig(vit=vit, text=TextConfig(width=64, heads=1, layers=2))


# teacher architectures by MODEL.TEACHER_ARCH; each maps DATA.IMG_SIZE to a backbone config
TEACHER_ARCHS: dict[str, Callable[[int], BackboneConfig]] = {
    "sam3": _sam3_arch,
    "sam3_tiny": _sam3_tiny_arch,
}

# detector heads by MODEL.TEACHER_ARCH; sam3_tiny: one layer each, 50 queries, narrow FFNs (its
# width stays the backbone's 256, and 8 attention heads as SAM3's rule d_model // 32 reads back)
TEACHER_HEADS: dict[str, HeadsConfig] = {
    "sam3": HeadsConfig(),
    "sam3_tiny": HeadsConfig(
        dim_feedforward=256,
        geometry_layers=1,
        encoder_layers=1,
        decoder_layers=1,
        num_queries=50,
        scoring_hidden=256,
    ),
}


def teacher_image_config(arch: str, img_size: int) -> ImageModelConfig:
    """The whole image model of teacher ``arch`` at ``img_size``: backbone, detector heads, and
    the interactive SAM heads, which keep SAM3's sizes for every arch (4.2M parameters; their
    grid and input side follow the trunk's)."""
    if arch not in TEACHER_ARCHS:
        raise TeacherError(
            f"MODEL.TEACHER_ARCH {arch!r} is unknown — use one of {sorted(TEACHER_ARCHS)}"
        )
    return ImageModelConfig(
        backbone=TEACHER_ARCHS[arch](img_size),
        heads=TEACHER_HEADS[arch],
        sam_heads=SamHeadsConfig(),
    )


def sam3_layout(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """An image model's ``state_dict`` under ``sam3.pt``'s names: the interactive heads'
    ``tracker.*`` keys as they are, everything else under ``detector.``."""
    return {k if k.startswith(TRACKER) else DETECTOR_PREFIX + k: v for k, v in state.items()}


def save_random_image_teacher(path: Path, arch: str, img_size: int, seed: int = 0) -> int:
    """Build the whole image model of ``arch`` with interactivity, randomly initialised from
    ``seed``, and save it as ``{"model": state}`` in ``sam3.pt``'s layout (atomically); returns
    the number of tensors saved."""
    torch.manual_seed(seed)
    cfg = teacher_image_config(arch, img_size)
    model = build_sam3_image_model(None, cfg=cfg, enable_inst_interactivity=True)
    state = sam3_layout(model.state_dict())
    torch_save_atomic({"model": state}, path)
    return len(state)


def resolve_teacher_weights(cfg: CfgNode) -> Path | None:
    """The checkpoint to load, or ``None`` for an explicitly allowed random teacher."""
    if cfg.MODEL.RESUME:
        path = Path(cfg.MODEL.RESUME)
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise TeacherCheckpointError(
                f"MODEL.RESUME = {cfg.MODEL.RESUME!r} {what} — {SAM3_DOWNLOAD_HINT} "
                "(sam3_checkpoints/sam3.pt is the default), or set MODEL.RESUME to your copy"
            )
        return path
    if not cfg.MODEL.ALLOW_RANDOM_TEACHER:
        raise TeacherError(
            "MODEL.RESUME is empty, so there is no teacher to export from — set MODEL.RESUME to "
            "sam3.pt, or (smoke runs only) opt in to random weights with "
            "--opts MODEL.ALLOW_RANDOM_TEACHER True"
        )
    return None


def teacher_arch(cfg: CfgNode) -> BackboneConfig:
    """The backbone config of ``MODEL.TEACHER_ARCH`` at ``DATA.IMG_SIZE`` (nothing is built)."""
    return TEACHER_ARCHS[cfg.MODEL.TEACHER_ARCH](cfg.DATA.IMG_SIZE)


def teacher_out_shape(cfg: CfgNode, kind: str) -> tuple[int, ...]:
    """What the teacher outputs per image ``(C, G, G)`` or per caption ``(ctx, width)``."""
    arch = teacher_arch(cfg)
    if kind == "image":
        return (arch.vit.embed_dim, arch.vit.grid_size, arch.vit.grid_size)
    return (cfg.DISTILL.CONTEXT_LENGTH, arch.d_model)


def teacher_record(cfg: CfgNode, kind: str, weights: Path | None, sha: str) -> dict[str, Any]:
    """What a store manifest records about the teacher (``meta["teacher"]``)."""
    return {
        "kind": kind,
        "arch": cfg.MODEL.TEACHER_ARCH,
        "checkpoint": str(weights) if weights else "random",
        "checkpoint_sha256": sha if weights else "random",
        "precision": cfg.DISTILL.EXPORT_PRECISION,
    }


class Teacher(nn.Module):
    """A frozen SAM3 backbone side plus what a store manifest records about it."""

    def __init__(self, cfg: CfgNode, kind: str, device: torch.device, checkpoint_sha: str = ""):
        super().__init__()
        if kind not in ("image", "text"):
            raise ValueError(f"teacher kind must be 'image' or 'text', got {kind!r}")
        self.kind = kind
        self.context_length = cfg.DISTILL.CONTEXT_LENGTH
        arch = teacher_arch(cfg)
        weights = resolve_teacher_weights(cfg)
        if weights is None:
            log.warning(
                "!!! RANDOM TEACHER: MODEL.RESUME is empty and MODEL.ALLOW_RANDOM_TEACHER is set. "
                "The embeddings are meaningless for distillation (smoke runs only) and the store "
                "manifest records them as random. !!!"
            )
            torch.manual_seed(cfg.SEED)  # the same random weights on every rank
        self.backbone = build_sam3_backbone(
            weights,
            device=device,
            enable_vision=kind == "image",
            enable_text=kind == "text",
            cfg=arch,
        )
        self.backbone.requires_grad_(False)
        self.device = device
        self.precision = cfg.DISTILL.EXPORT_PRECISION
        if kind == "image" and device.type == "cpu" and self.precision == "fp32":
            packed = self.backbone.vision_backbone.trunk.pack_for_cpu()
            log.info("CPU teacher: %d trunk linears use oneDNN-packed weights", packed)
        self.record = teacher_record(cfg, kind, weights, checkpoint_sha)
        self.out_shape = teacher_out_shape(cfg, kind)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def forward(self, batch: Tensor | Sequence[str]) -> Tensor:
        """Images ``[B, 3, S, S]`` -> trunk map, or captions -> ``[B, ctx, 256]``; fp32."""
        with self._autocast():
            if self.kind == "image":
                out = self.backbone.vision_backbone.trunk(batch.to(self.device))[-1]
            else:
                out = self.backbone.forward_text(
                    list(batch), device=self.device, context_length=self.context_length
                )["language_features"].transpose(0, 1)
        return out.float()
