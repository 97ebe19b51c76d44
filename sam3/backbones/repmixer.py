"""MobileCLIP-S0's "mct" text tower: RepMixer blocks around four pre-LN transformer layers.

Architecture from Vasu et al., "MobileCLIP: Fast Image-Text Models through Multi-Modal
Reinforced Training" (CVPR 2024), whose S0 text encoder replaces the first and last of six
transformer layers with RepMixer blocks (FastViT, Vasu et al. 2023) applied along the token axis:
a depthwise ``(1, 11)`` convolution mixes neighbouring tokens, a depthwise convolutional FFN
follows, both behind per-channel layer scales initialised to 1e-5. Written here (open_clip has no
such tower); module names and shapes follow Apple's checkpoints.

Tensors inside a RepMixer block are ``[B, C, 1, L]`` so that the parameter names and shapes are
those of Apple's checkpoints: ``token_mixer.{mixer,norm}.rbr_skip.*``,
``token_mixer.mixer.rbr_conv.0.{conv,bn}.*``, ``token_mixer.layer_scale``,
``convffn.{conv.conv, conv.bn, fc1, fc2}.*`` and ``layer_scale``. The transformer layers are
open_clip's :class:`~open_clip.transformer.ResidualAttentionBlock` (``ln_1``, ``attn``, ``ln_2``,
``mlp.c_fc``, ``mlp.c_proj``), so Apple's S0 keys convert with the same renaming as its S1 keys.

Padding: when a padding mask is given, padded positions are zeroed at the input of every
convolution, exactly as the convolution's own zero padding treats positions past the end of the
sequence, and are hidden from attention as keys. The outputs at non-padded positions then do not
depend on what the padded positions hold.
"""

from __future__ import annotations

import torch
from open_clip.transformer import LayerNorm, ResidualAttentionBlock
from torch import Tensor, nn

LAYER_SCALE_INIT = 1e-5  # initial value of both per-channel layer scales of a RepMixer block


def padding_attn_mask(pad_mask: Tensor, heads: int, dtype: torch.dtype) -> Tensor:
    """Additive attention mask ``[B * heads, L, L]`` that hides padded keys (``-inf``).

    Args:
        pad_mask: ``[B, L]`` bool, True at padded positions.
        heads: attention heads (``nn.MultiheadAttention`` wants one mask per batch and head).
        dtype: floating dtype of the mask.

    A row that is padding everywhere is left unmasked (instead of producing NaN).
    """
    hide = pad_mask & ~pad_mask.all(dim=1, keepdim=True)
    mask = torch.zeros(hide.shape, dtype=dtype, device=hide.device)
    mask = mask.masked_fill(hide, float("-inf"))
    b, n = hide.shape
    return mask[:, None, :].expand(b, n, n).repeat_interleave(heads, dim=0)


def _conv_bn(dim: int, kernel_size: int) -> nn.Sequential:
    """Depthwise ``(1, k)`` convolution (no bias) followed by batch norm: ``conv``, ``bn``."""
    seq = nn.Sequential()
    seq.add_module(
        "conv",
        nn.Conv2d(
            dim, dim, (1, kernel_size), padding=(0, kernel_size // 2), groups=dim, bias=False
        ),
    )
    seq.add_module("bn", nn.BatchNorm2d(dim))
    return seq


class BranchSum(nn.Module):
    """Training-time reparameterisable block: a batch-norm identity branch (``rbr_skip``) plus
    ``conv_branches`` depthwise conv+BN branches (``rbr_conv.i``), summed, no activation."""

    def __init__(self, dim: int, kernel_size: int, conv_branches: int):
        super().__init__()
        self.rbr_skip = nn.BatchNorm2d(dim)
        self.rbr_conv = nn.ModuleList(_conv_bn(dim, kernel_size) for _ in range(conv_branches))

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, 1, L]`` -> same shape."""
        out = self.rbr_skip(x)
        for branch in self.rbr_conv:
            out = out + branch(x)
        return out


class RepMixer(nn.Module):
    """Token mixer ``x + layer_scale * (mixer(x) - norm(x))`` with depthwise ``(1, k)`` mixing."""

    def __init__(self, dim: int, kernel_size: int = 11, layer_scale_init: float = LAYER_SCALE_INIT):
        super().__init__()
        self.norm = BranchSum(dim, kernel_size, conv_branches=0)
        self.mixer = BranchSum(dim, kernel_size, conv_branches=1)
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), layer_scale_init))

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, 1, L]`` -> same shape."""
        return x + self.layer_scale * (self.mixer(x) - self.norm(x))


class ConvFFN(nn.Module):
    """Depthwise ``(1, k)`` conv + BN, then a 1x1-conv MLP ``fc1 -> GELU -> fc2``."""

    def __init__(self, dim: int, hidden: int, kernel_size: int = 11):
        super().__init__()
        self.conv = _conv_bn(dim, kernel_size)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        for conv in (self.conv.conv, self.fc1, self.fc2):
            nn.init.trunc_normal_(conv.weight, std=0.02)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, 1, L]`` -> same shape."""
        return self.fc2(self.act(self.fc1(self.conv(x))))


class RepMixerBlock(nn.Module):
    """RepMixer token mixing then a layer-scaled ConvFFN, on token sequences ``[B, L, C]``."""

    def __init__(
        self,
        dim: int,
        kernel_size: int = 11,
        mlp_ratio: float = 4.0,
        layer_scale_init: float = LAYER_SCALE_INIT,
    ):
        super().__init__()
        self.token_mixer = RepMixer(dim, kernel_size, layer_scale_init)
        self.convffn = ConvFFN(dim, int(dim * mlp_ratio), kernel_size)
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), layer_scale_init))

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        """Mix ``x [B, L, C]``; positions where ``pad_mask [B, L]`` is True are read as zeros."""
        x = x.transpose(1, 2).unsqueeze(2)  # [B, C, 1, L]
        keep = None if pad_mask is None else ~pad_mask[:, None, None, :]
        if keep is not None:
            x = x * keep
        x = self.token_mixer(x)
        if keep is not None:
            x = x * keep
        x = x + self.layer_scale * self.convffn(x)
        return x.squeeze(2).transpose(1, 2)


class MCTStack(nn.Module):
    """``resblocks``: RepMixerBlock, ``layers`` transformer layers, RepMixerBlock (Apple's order,
    so Apple's ``transformer.{i}`` keys map to ``transformer.resblocks.{i}``)."""

    def __init__(self, width: int, heads: int, layers: int, mlp_ratio: float, kernel_size: int):
        super().__init__()
        self.heads = heads
        self.resblocks = nn.ModuleList(
            [
                RepMixerBlock(width, kernel_size, mlp_ratio),
                *(
                    ResidualAttentionBlock(width, heads, mlp_ratio, batch_first=True)
                    for _ in range(layers)
                ),
                RepMixerBlock(width, kernel_size, mlp_ratio),
            ]
        )

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        """``x [B, L, C]`` -> same shape; ``pad_mask [B, L]`` (True = padding) or None."""
        attn_mask = None if pad_mask is None else padding_attn_mask(pad_mask, self.heads, x.dtype)
        for block in self.resblocks:
            if isinstance(block, RepMixerBlock):
                x = block(x, pad_mask)
            else:
                x = block(x, attn_mask=attn_mask)
        return x


class MCTTextTower(nn.Module):
    """MobileCLIP-S0's text tower: token + learned position embeddings -> :class:`MCTStack` ->
    ``ln_final``; non-causal. Attribute names follow open_clip's ``TextTransformer``."""

    def __init__(
        self,
        context_length: int = 32,
        vocab_size: int = 49408,
        width: int = 512,
        heads: int = 8,
        layers: int = 4,
        mlp_ratio: float = 4.0,
        kernel_size: int = 11,
    ):
        super().__init__()
        self.context_length = context_length
        self.width = width
        self.heads = heads
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = MCTStack(width, heads, layers, mlp_ratio, kernel_size)
        self.ln_final = LayerNorm(width)
        self._init_parameters(layers)

    def _init_parameters(self, layers: int) -> None:
        # open_clip's text-tower initialisation for the embeddings and attention layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        attn_std = self.width**-0.5
        proj_std = attn_std * (2 * layers) ** -0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.transformer.resblocks:
            if isinstance(block, ResidualAttentionBlock):
                nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
                nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
                nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
                nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)

    def encode(self, tokens: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        """Token ids ``[B, L]`` -> per-token features ``[B, L, width]`` after ``ln_final``."""
        n = tokens.shape[1]
        if n > self.context_length:
            raise ValueError(f"got {n} tokens; the tower holds {self.context_length} positions")
        x = self.token_embedding(tokens) + self.positional_embedding[:n]
        return self.ln_final(self.transformer(x, pad_mask))

    def forward(self, tokens: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        """Same as :meth:`encode`."""
        return self.encode(tokens, pad_mask)
