"""Geometric prompts (boxes and points) in SAM3's layout: sequence-first, normalised to [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class GeometricPrompt:
    """Boxes and points for a batch of ``B`` prompts; masks are True where an entry is padding.

    boxes ``[N, B, 4]`` (cx, cy, w, h) normalised by the image size, box_labels ``[N, B]``
    (1 = positive, 0 = negative), box_mask ``[B, N]``; points ``[P, B, 2]`` (x, y) normalised,
    point_labels ``[P, B]``, point_mask ``[B, P]``.
    """

    boxes: Tensor
    box_labels: Tensor
    box_mask: Tensor
    points: Tensor
    point_labels: Tensor
    point_mask: Tensor

    @classmethod
    def empty(cls, batch: int = 1, device: torch.device | str = "cpu") -> GeometricPrompt:
        """No boxes and no points (the text-only prompt)."""
        z = lambda *shape, dtype=torch.float32: torch.zeros(shape, dtype=dtype, device=device)  # noqa: E731
        return cls(
            boxes=z(0, batch, 4),
            box_labels=z(0, batch, dtype=torch.long),
            box_mask=z(batch, 0, dtype=torch.bool),
            points=z(0, batch, 2),
            point_labels=z(0, batch, dtype=torch.long),
            point_mask=z(batch, 0, dtype=torch.bool),
        )

    @property
    def batch(self) -> int:
        """Number of prompts ``B``."""
        return self.box_mask.shape[0]

    def with_boxes(self, boxes: Tensor, labels: Tensor) -> GeometricPrompt:
        """A copy with ``boxes [n, B, 4]`` (cxcywh, normalised) and ``labels [n, B]`` appended
        (all valid; every prompt of the batch gets ``n`` more boxes)."""
        n, batch = boxes.shape[:2]
        if batch != self.batch or labels.shape != (n, batch):
            raise ValueError(
                f"boxes {tuple(boxes.shape)} / labels {tuple(labels.shape)} do not fit a batch "
                f"of {self.batch} prompts (want [n, {self.batch}, 4] and [n, {self.batch}])"
            )
        boxes = boxes.to(self.boxes)
        pad = torch.zeros(batch, n, dtype=torch.bool, device=self.box_mask.device)
        return GeometricPrompt(
            boxes=torch.cat([self.boxes, boxes]),
            box_labels=torch.cat([self.box_labels, labels.to(self.box_labels)]),
            box_mask=torch.cat([self.box_mask, pad], dim=1),
            points=self.points,
            point_labels=self.point_labels,
            point_mask=self.point_mask,
        )
