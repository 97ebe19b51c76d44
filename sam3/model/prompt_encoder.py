"""SAM's prompt encoder: clicks, box corners and a low-resolution mask -> decoder prompts.

Points carry a random-Fourier position encoding of their (pixel-centred) location plus the
embedding of their label: 0 negative click, 1 positive click, 2 / 3 a box's top-left /
bottom-right corner, -1 padding (its embedding only, no position). A mask input (logits at 4x
the embedding grid, e.g. a previous call's low-resolution output) is downscaled by two strided
convs to the embedding grid; without one, ``no_mask_embed`` fills the grid.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .norms import LayerNorm2d

PAD_LABEL = -1  # a padding point: no position, only ``not_a_point_embed``
NUM_POINT_LABELS = 4  # negative, positive, box top-left, box bottom-right


class PositionEmbeddingRandom(nn.Module):
    """``[sin(2 pi (2c - 1) G), cos(...)]`` for coordinates ``c`` in [0, 1]^2 (x, y) and a fixed
    Gaussian matrix ``G [2, num_pos_feats]`` (a buffer stored in checkpoints)."""

    def __init__(self, num_pos_feats: int = 128):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def encode(self, coords: Tensor) -> Tensor:
        """``[..., 2]`` normalised (x, y) -> ``[..., 2 * num_pos_feats]``."""
        g = self.positional_encoding_gaussian_matrix
        u = ((2 * coords - 1) @ g.to(coords.dtype)) * (2 * math.pi)
        return torch.cat([u.sin(), u.cos()], dim=-1)

    def dense(self, h: int, w: int) -> Tensor:
        """The encoding of every cell centre of an ``h x w`` grid: ``[C, h, w]``."""
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w)], dim=-1)
        return self.encode(grid).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    """Sparse (points) and dense (mask) prompt embeddings; names follow
    ``tracker.sam_prompt_encoder.*`` in ``sam3.pt``.

    Args:
        embed_dim: output width.
        embedding_size: the image embedding grid (square side, e.g. 72).
        input_size: the model's input side in pixels (e.g. 1008).
        mask_in_chans: hidden channels of the mask downscaling.
    """

    def __init__(self, embed_dim: int, embedding_size: int, input_size: int, mask_in_chans: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.embedding_size = embedding_size
        self.input_size = input_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, embed_dim) for _ in range(NUM_POINT_LABELS)
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        quarter = mask_in_chans // 4
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, quarter, kernel_size=2, stride=2),
            LayerNorm2d(quarter),
            nn.GELU(),
            nn.Conv2d(quarter, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    @property
    def mask_input_size(self) -> int:
        """Side of the mask logits :meth:`forward` accepts (4x the embedding grid)."""
        return 4 * self.embedding_size

    def dense_pe(self) -> Tensor:
        """The image positional encoding ``[1, C, S, S]`` (S = embedding grid); read only.

        Where no gradient is recorded the encoding is kept and reused while the Gaussian
        matrix is unchanged (the same tensor at the same version; ``.to()`` and
        ``load_state_dict`` change one or the other), since it is a function of that alone."""
        g = self.pe_layer.positional_encoding_gaussian_matrix
        if torch.is_grad_enabled():
            return self._dense_pe()
        key = (g._version, torch.is_inference_mode_enabled())
        cached = getattr(self, "_pe_cache", None)
        if cached is None or cached[0] is not g or cached[1] != key:
            self._pe_cache = (g, key, self._dense_pe())
        return self._pe_cache[2]

    def _dense_pe(self) -> Tensor:
        return self.pe_layer.dense(self.embedding_size, self.embedding_size).unsqueeze(0)

    def embed_points(self, coords: Tensor, labels: Tensor) -> Tensor:
        """``coords [N, T, 2]`` (x, y in input pixels) and ``labels [N, T]`` -> ``[N, T, C]``."""
        pe = self.pe_layer.encode((coords + 0.5) / self.input_size)
        label = labels.unsqueeze(-1)
        out = torch.where(label == PAD_LABEL, self.not_a_point_embed.weight.to(pe.dtype), pe)
        for i, emb in enumerate(self.point_embeddings):
            out = torch.where(label == i, out + emb.weight.to(pe.dtype), out)
        return out

    def forward(
        self, coords: Tensor | None, labels: Tensor | None, masks: Tensor | None, batch: int = 1
    ) -> tuple[Tensor, Tensor]:
        """Prompts -> ``(sparse [N, T, C], dense [N, C, S, S])``.

        ``coords``/``labels`` as in :meth:`embed_points` (``None``: no points, ``T = 0``);
        ``masks [N, 1, 4S, 4S]`` logits or ``None``; ``batch`` is ``N`` when neither is given.
        """
        if coords is not None:
            batch = coords.shape[0]
            sparse = self.embed_points(coords, labels)
        else:
            batch = masks.shape[0] if masks is not None else batch
            weight = self.no_mask_embed.weight
            sparse = weight.new_empty(batch, 0, self.embed_dim)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            size = self.embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, size, size)
        return sparse, dense
