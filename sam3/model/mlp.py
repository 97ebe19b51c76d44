"""The small multi-layer perceptron used throughout SAM3's heads (``layers.{i}`` names)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them; optional residual and output norm.

    Parameter names follow ``sam3.pt``: ``layers.{i}.{weight,bias}`` and ``out_norm.*``.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        residual: bool = False,
        out_norm: bool = False,
    ):
        super().__init__()
        if residual and input_dim != output_dim:
            raise ValueError(f"a residual MLP needs input_dim == output_dim ({input_dim=})")
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.residual = residual
        self.out_norm = nn.LayerNorm(output_dim) if out_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """``[..., input_dim]`` -> ``[..., output_dim]``."""
        y = x
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            y = layer(y) if i == last else F.relu(layer(y))
        if self.residual:
            y = y + x
        return self.out_norm(y)
