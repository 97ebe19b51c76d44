"""A vision student in the place of SAM3's ViT trunk, with the interface SAM3's neck expects."""

from __future__ import annotations

from torch import Tensor, nn


class StudentTrunk(nn.Module):
    """A vision student in the teacher trunk's place: ``[B, 3, S, S]`` -> ``[map]``.

    Holds the student as ``model`` (so its keys sit under ``trunk.model.``) and exposes the
    trunk's interface that the neck relies on: ``channel_list`` and a list of one map.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.channel_list = [model.embed_dim]

    def forward(self, images: Tensor) -> list[Tensor]:
        """Images -> ``[student map [B, embed_dim, embed_size, embed_size]]``."""
        return [self.model(images)]
