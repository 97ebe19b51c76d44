"""SAM3's vision-language backbone with Meta's calling convention (``forward_image``/``_text``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


class SAM3VLBackbone(nn.Module):
    """Holds ``vision_backbone`` (trunk + neck) and ``language_backbone``; either may be absent.

    ``scalp`` drops that many of the coarsest pyramid levels from the outputs (SAM3 uses 1, so
    ``backbone_fpn`` holds the 4x, 2x and 1x maps).
    """

    def __init__(self, visual: nn.Module | None, text: nn.Module | None, scalp: int = 1):
        super().__init__()
        if visual is None and text is None:
            raise ValueError("build at least one of the vision and language backbones")
        self.vision_backbone = visual
        self.language_backbone = text
        self.scalp = scalp

    def _scalped(self, items: list[Tensor]) -> list[Tensor]:
        return items[: len(items) - self.scalp] if self.scalp > 0 else items

    def forward_image(self, images: Tensor) -> dict[str, Any]:
        """Images ``[B, 3, S, S]`` -> ``vision_features``, ``vision_pos_enc``, ``backbone_fpn``
        and ``sam2_backbone_out`` (``None`` unless the sam2 neck is built)."""
        if self.vision_backbone is None:
            raise RuntimeError("this backbone was built without the vision side (enable_vision)")
        maps, pos, sam2_maps, sam2_pos = self.vision_backbone(images)
        maps, pos = self._scalped(maps), self._scalped(pos)
        sam2_out = None
        if sam2_maps is not None:
            sam2_maps, sam2_pos = self._scalped(sam2_maps), self._scalped(sam2_pos)
            sam2_out = {
                "vision_features": sam2_maps[-1],
                "vision_pos_enc": sam2_pos,
                "backbone_fpn": sam2_maps,
            }
        return {
            "vision_features": maps[-1],
            "vision_pos_enc": pos,
            "backbone_fpn": maps,
            "sam2_backbone_out": sam2_out,
        }

    def forward_text(
        self,
        captions: Sequence[str],
        device: torch.device | str | None = None,
        context_length: int | None = None,
    ) -> dict[str, Tensor]:
        """Captions -> ``language_features [L, B, 256]``, ``language_mask [B, L]`` (True = pad)
        and ``language_embeds [L, B, width]``; ``L`` is ``context_length`` (default 32)."""
        if self.language_backbone is None:
            raise RuntimeError("this backbone was built without the text side (enable_text)")
        mask, features, embeds = self.language_backbone(
            list(captions), device=device, context_length=context_length
        )
        return {"language_features": features, "language_mask": mask, "language_embeds": embeds}

    def forward(self, images: Tensor, captions: Sequence[str]) -> dict[str, Any]:
        """Both sides at once: ``forward_image(images)`` updated with ``forward_text(captions)``."""
        out = self.forward_image(images)
        out.update(self.forward_text(captions, device=images.device))
        return out
