"""SAM3's vision trunk: a plain ViT with windowed and global attention and 2-D RoPE.

Architecture after ViTDet (Li et al., "Exploring Plain Vision Transformer Backbones for Object
Detection", 2022) as configured by SAM3: patch 14, 32 pre-norm blocks, 24x24 windows except in
the global blocks, axial 2-D rotary position encoding, and a learned 24x24 absolute position grid
tiled over the token map. Module and parameter names follow ``sam3.pt`` so that its
``detector.backbone.vision_backbone.trunk.*`` keys load one-to-one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam3.model.packed_linear import PackableLinear

_gelu_ = getattr(torch._C._nn, "gelu_", None)  # in-place exact GELU, used without autograd


@dataclass(frozen=True)
class ViTConfig:
    """Hyperparameters of the trunk; the defaults are SAM3's."""

    img_size: int = 1008  # input side in pixels; the RoPE tables are built for it
    patch_size: int = 14  # patch side in pixels (1008 / 14 = 72 tokens per side)
    embed_dim: int = 1024  # token width
    depth: int = 32  # number of blocks
    num_heads: int = 16  # attention heads per block
    mlp_ratio: float = 4.625  # MLP hidden width / embed_dim (4736 for SAM3)
    window_size: int = 24  # window side (tokens) of the windowed blocks
    global_blocks: tuple[int, ...] = (7, 15, 23, 31)  # blocks with global attention
    pretrain_img_size: int = 336  # image side the absolute position grid was learned at
    rope_theta: float = 10000.0  # RoPE base frequency

    @property
    def grid_size(self) -> int:
        """Tokens per side of the output map."""
        return self.img_size // self.patch_size

    def validate(self) -> None:
        """Raise ``ValueError`` when the sizes cannot work together."""
        g, w = self.grid_size, self.window_size
        problems = []
        if self.img_size % self.patch_size:
            problems.append(
                f"img_size {self.img_size} is not a multiple of patch {self.patch_size}"
            )
        if self.embed_dim % self.num_heads or (self.embed_dim // self.num_heads) % 4:
            problems.append(
                f"embed_dim {self.embed_dim} / num_heads {self.num_heads} must be a multiple of 4"
            )
        if g % w:
            problems.append(f"token grid {g} is not a multiple of window_size {w}")
        if self.pretrain_img_size % self.patch_size:
            problems.append(f"pretrain_img_size {self.pretrain_img_size} % patch != 0")
        if not self.global_blocks or self.global_blocks[-1] != self.depth - 1:
            problems.append(
                f"the last global block must be the last block ({self.depth - 1}); "
                f"got {self.global_blocks}"
            )
        if problems:
            raise ValueError("invalid ViTConfig: " + "; ".join(problems))


def axial_rope_table(
    head_dim: int, side: int, scale: float = 1.0, theta: float = 10000.0
) -> Tensor:
    """Complex RoPE table ``[side*side, head_dim // 2]`` for a row-major ``side x side`` grid.

    The first half of the complex slots rotate with the token's column, the second half with its
    row; both use frequencies ``theta ** (-4j / head_dim)`` for ``j < head_dim // 4``. Positions
    are multiplied by ``scale`` (SAM3 interpolates its global blocks' positions by 24/72).
    """
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 4)[: head_dim // 4].float() / head_dim))
    t = torch.arange(side * side, dtype=torch.float32)
    col = (t % side) * scale
    row = torch.div(t, side, rounding_mode="floor") * scale
    angles = torch.cat([torch.outer(col, freqs), torch.outer(row, freqs)], dim=-1)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: Tensor, freqs_cis: Tensor) -> Tensor:
    """Rotate adjacent channel pairs of ``x [..., L, D]`` by ``freqs_cis [L, D/2]`` in fp32."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs_cis).flatten(-2).type_as(x)


class Attention(nn.Module):
    """Multi-head self-attention over a square token map with 2-D RoPE on queries and keys."""

    def __init__(self, dim: int, num_heads: int, side: int, rope_scale: float, theta: float):
        super().__init__()
        self.num_heads = num_heads
        self.side = side
        self.rope_scale = rope_scale
        self.theta = theta
        self.qkv = PackableLinear(dim, dim * 3, bias=True)
        self.proj = PackableLinear(dim, dim)
        self.register_buffer("freqs_cis", self.expected_freqs_cis(), persistent=True)

    def expected_freqs_cis(self, device: torch.device | str | None = None) -> Tensor:
        """The RoPE table this block must hold (used to fill and to validate ``freqs_cis``)."""
        head_dim = self.qkv.in_features // self.num_heads
        table = axial_rope_table(head_dim, self.side, self.rope_scale, self.theta)
        return table.to(device) if device is not None else table

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, side, side, C]`` -> same shape."""
        n, h, w, c = x.shape
        qkv = self.qkv(x).reshape(n, h * w, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q = apply_rope(q, self.freqs_cis)
        k = apply_rope(k, self.freqs_cis)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(n, h, w, c)
        return self.proj(out)


class Mlp(nn.Module):
    """Two-layer MLP with exact GELU (parameter names ``fc1``/``fc2`` as in timm)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = PackableLinear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = PackableLinear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Apply ``fc2(gelu(fc1(x)))`` (GELU in place when no gradient is recorded)."""
        h = self.fc1(x)
        h = F.gelu(h) if torch.is_grad_enabled() or _gelu_ is None else _gelu_(h)
        return self.fc2(h)


class Block(nn.Module):
    """Pre-norm transformer block; ``window_size > 0`` restricts attention to square windows."""

    def __init__(self, cfg: ViTConfig, window_size: int):
        super().__init__()
        dim = cfg.embed_dim
        self.window_size = window_size
        if window_size:  # local grid, positions at their own scale
            side, scale = window_size, 1.0
        else:  # whole map, positions interpolated to the window-size range SAM3 trained at
            side, scale = cfg.grid_size, cfg.window_size / cfg.grid_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = Attention(dim, cfg.num_heads, side, scale, cfg.rope_theta)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))

    def forward(self, x: Tensor, inplace: bool = False) -> Tensor:
        """``x [B, H, W, C]`` -> same shape; ``inplace`` adds the residuals into ``x`` (for
        inference, when the caller owns ``x``: saves two map-sized allocations per block)."""
        y = self.norm1(x)
        if self.window_size:
            y = self.attn(window_partition(y, self.window_size))
            y = window_unpartition(y, self.window_size, x.shape[1], x.shape[2])
        else:
            y = self.attn(y)
        if not inplace:
            x = x + y
            return x + self.mlp(self.norm2(x))
        x.add_(y)
        return x.add_(self.mlp(self.norm2(x)))


def window_partition(x: Tensor, window: int) -> Tensor:
    """``[B, H, W, C]`` -> ``[B * (H/window) * (W/window), window, window, C]`` (no padding)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)


def window_unpartition(windows: Tensor, window: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition` for an ``h x w`` map."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // window) * (w // window))
    x = windows.view(b, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection (no bias), returned channels-last."""

    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 3, H, W]`` -> ``[B, H/p, W/p, C]``."""
        return self.proj(x).permute(0, 2, 3, 1)


class ViT(nn.Module):
    """SAM3's vision trunk: ``[B, 3, S, S]`` -> ``[[B, C, S/p, S/p]]`` (a list of one map)."""

    def __init__(self, cfg: ViTConfig | None = None):
        super().__init__()
        cfg = cfg or ViTConfig()
        cfg.validate()
        self.cfg = cfg
        self.channel_list = [cfg.embed_dim]
        pretrain_side = cfg.pretrain_img_size // cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        # one class-token slot (unused, kept for checkpoint compatibility) + the learned grid
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + pretrain_side**2, cfg.embed_dim))
        self.ln_pre = nn.LayerNorm(cfg.embed_dim, eps=1e-5)
        self.blocks = nn.ModuleList(
            Block(cfg, 0 if i in cfg.global_blocks else cfg.window_size) for i in range(cfg.depth)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """SAM3's initialisation: truncated normal (std 0.02) for linears and ``pos_embed``."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def tiled_pos_embed(self, h: int, w: int) -> Tensor:
        """The learned grid repeated (not interpolated) over an ``h x w`` map: ``[1, h, w, C]``."""
        grid = self.pos_embed[:, 1:]
        side = int(grid.shape[1] ** 0.5)
        grid = grid.reshape(1, side, side, -1)
        reps = (h // side + 1, w // side + 1)
        return grid.repeat(1, reps[0], reps[1], 1)[:, :h, :w]

    def forward(self, x: Tensor) -> list[Tensor]:
        """Run the trunk; returns ``[features [B, C, H/p, W/p]]``."""
        if x.shape[-2:] != (self.cfg.img_size, self.cfg.img_size):
            raise ValueError(
                f"the trunk was built for {self.cfg.img_size}x{self.cfg.img_size} inputs "
                f"(its RoPE tables are fixed), got {tuple(x.shape[-2:])}"
            )
        x = self.patch_embed(x)
        x = self.ln_pre(x + self.tiled_pos_embed(x.shape[1], x.shape[2]))
        inplace = not torch.is_grad_enabled()  # x is ours from here on
        for blk in self.blocks:
            x = blk(x, inplace)
        return [x.permute(0, 3, 1, 2)]

    def pack_for_cpu(self) -> int:
        """Keep oneDNN-packed copies of the block linears' weights for fp32 CPU inference.

        Faster GEMMs on CPUs for frozen use (the export teacher); costs as much memory again as
        those weights (1.8 GB for SAM3's trunk) until :meth:`unpack`. Training, autocast, other
        devices and changed weights take the plain path. Returns how many linears were packed
        (0 where this PyTorch build has no oneDNN).
        """
        rows = self.cfg.grid_size**2  # tokens per image: a window batch has as many
        return sum(m.pack_for_cpu(rows) for m in self.modules() if isinstance(m, PackableLinear))

    def unpack(self) -> None:
        """Free the packed copies made by :meth:`pack_for_cpu`."""
        for m in self.modules():
            if isinstance(m, PackableLinear):
                m.unpack()

    def rope_mismatches(self, atol: float = 0.0) -> list[str]:
        """Names of blocks whose ``freqs_cis`` differ from the table their geometry implies."""
        bad = []
        for i, blk in enumerate(self.blocks):
            held = blk.attn.freqs_cis
            want = blk.attn.expected_freqs_cis(held.device)
            if held.shape != want.shape or (held - want).abs().max().item() > atol:
                bad.append(f"blocks.{i}.attn.freqs_cis")
        return bad
