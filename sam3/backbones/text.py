"""MobileCLIP text students: SAM3's tokenizer -> a MobileCLIP text tower -> ``projector``.

A :class:`TextStudent` replaces SAM3's whole language backbone (token embeddings included) and
returns what SAM3's text encoder returns, so it can stand in for it. Towers:

- ``MobileCLIP-S1``: open_clip's pre-LN ``TextTransformer`` (width 512, 8 heads, 12 layers);
- ``MobileCLIP2-L``: the same at width 768, 12 heads, 12 layers (open_clip's MobileCLIP2-L-14);
- ``MobileCLIP-S0``: the "mct" tower of :mod:`sam3.backbones.repmixer`.

All are non-causal. The towers carry no pooled projection (MobileCLIP's ``projection_layer`` /
open_clip's ``text_projection``): the all-token path never uses it, so it would be a parameter
without gradient. Weight files that hold one load anyway; it is reported as ignored.

Module keys: ``encoder.token_embedding.weight``, ``encoder.positional_embedding``,
``encoder.transformer.resblocks.{i}.*``, ``encoder.ln_final.*``, ``projector.*``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from open_clip.transformer import TextTransformer
from torch import Tensor, nn

from ..model.tokenizer import PAD_TOKEN, Sam3Tokenizer
from .repmixer import MCTTextTower, padding_attn_mask
from .weights import WeightFileError, read_weight_file, state_problems

log = logging.getLogger(__name__)

VOCAB_SIZE = 49408  # CLIP BPE vocabulary (SAM3's tokenizer)


class OpenClipTextTower(TextTransformer):
    """open_clip's ``TextTransformer`` (non-causal, no pooled projection) with a per-token path
    that takes an explicit padding mask."""

    def encode(self, tokens: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        """Token ids ``[B, L]`` -> per-token features ``[B, L, width]`` after ``ln_final``."""
        n = tokens.shape[1]
        if n > self.context_length:
            raise ValueError(f"got {n} tokens; the tower holds {self.context_length} positions")
        x = self.token_embedding(tokens) + self.positional_embedding[:n]
        attn_mask = None if pad_mask is None else padding_attn_mask(pad_mask, self.heads, x.dtype)
        return self.ln_final(self.transformer(x, attn_mask=attn_mask))


def _open_clip_tower(width: int, heads: int, layers: int) -> Callable[[int], nn.Module]:
    def build(context_length: int) -> nn.Module:
        return OpenClipTextTower(
            context_length=context_length,
            vocab_size=VOCAB_SIZE,
            width=width,
            heads=heads,
            layers=layers,
            output_dim=None,  # no pooled projection (unused on the all-token path)
            no_causal_mask=True,
            output_tokens=True,
        )

    return build


def _mct_tower(width: int, heads: int, layers: int) -> Callable[[int], nn.Module]:
    def build(context_length: int) -> nn.Module:
        return MCTTextTower(context_length, VOCAB_SIZE, width, heads, layers)

    return build


@dataclass(frozen=True)
class TextTowerSpec:
    """A MobileCLIP text tower: its size and how to build it for a context length."""

    width: int  # token width
    heads: int  # attention heads
    layers: int  # transformer layers (S0: between its two RepMixer blocks)
    build: Callable[[int], nn.Module]  # context_length -> tower
    source: str  # where the architecture comes from


def _spec(width: int, heads: int, layers: int, tower: Callable, source: str) -> TextTowerSpec:
    return TextTowerSpec(width, heads, layers, tower(width, heads, layers), source)


TEXT_TOWERS: dict[str, TextTowerSpec] = {
    "MobileCLIP-S0": _spec(512, 8, 4, _mct_tower, "Apple MobileCLIP-S0 text encoder ('mct')"),
    "MobileCLIP-S1": _spec(512, 8, 12, _open_clip_tower, "open_clip MobileCLIP-S1 text tower"),
    "MobileCLIP2-L": _spec(768, 12, 12, _open_clip_tower, "open_clip MobileCLIP2-L-14 text tower"),
}


class TextStudent(nn.Module):
    """Captions -> SAM3-shaped text features through a MobileCLIP text tower.

    Args:
        name: a key of :data:`TEXT_TOWERS`.
        context_length: tokens per caption (SAM3 uses 32); also the rows of the position table.
        d_model: output width (SAM3's detector width, 256).
        mask_padding: hide padding tokens (id 0) from attention and from the RepMixer
            convolutions, so that features of real tokens do not depend on the padding.
        pretrained_path: optional local MobileCLIP weight file to initialise the tower from (see
            :meth:`load_pretrained`).
    """

    def __init__(
        self,
        name: str,
        context_length: int = 32,
        d_model: int = 256,
        mask_padding: bool = True,
        pretrained_path: str | Path = "",
    ):
        super().__init__()
        if name not in TEXT_TOWERS:
            raise KeyError(f"unknown text tower {name!r}; choose from {sorted(TEXT_TOWERS)}")
        spec = TEXT_TOWERS[name]
        self.name = name
        self.context_length = context_length
        self.width = spec.width
        self.mask_padding = mask_padding
        self.tokenizer = Sam3Tokenizer(context_length)
        self.encoder = spec.build(context_length)
        self.projector = nn.Linear(spec.width, d_model)
        if pretrained_path:
            self.load_pretrained(pretrained_path)

    def backbone_params(self) -> int:
        """Parameters of the text tower (``encoder``)."""
        return sum(p.numel() for p in self.encoder.parameters())

    def head_params(self) -> int:
        """Parameters of the ``projector``."""
        return sum(p.numel() for p in self.projector.parameters())

    def encode_tokens(self, tokens: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        """Token ids ``[B, L]`` -> features ``[B, L, d_model]`` (batch-first; used in training).

        ``pad_mask [B, L]`` (True = padding) overrides ``tokens == 0``; it is applied only when
        the student masks padding (``mask_padding``) or when given explicitly.
        """
        if pad_mask is None and self.mask_padding:
            pad_mask = tokens == PAD_TOKEN
        return self.projector(self.encoder.encode(tokens, pad_mask))

    def forward(
        self,
        captions: Sequence[str],
        device: torch.device | str | None = None,
        context_length: int | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Encode captions like SAM3's text encoder.

        Returns:
            ``(pad mask [B, L] bool, True = padding; features [L, B, d_model];
            token embeddings [L, B, width])``, sequence-first; ``L`` is ``context_length``
            (default: the student's, at most the student's).
        """
        n = context_length or self.context_length
        if n > self.context_length:
            raise ValueError(
                f"context_length {n} exceeds the student's {self.context_length} positions; "
                f"build the student with context_length={n}"
            )
        device = device if device is not None else self.projector.weight.device
        tokens = self.tokenizer(list(captions), n).to(device)
        features = self.encode_tokens(tokens)
        embeds = self.encoder.token_embedding(tokens)
        return tokens == PAD_TOKEN, features.transpose(0, 1), embeds.transpose(0, 1)

    def load_pretrained(self, path: str | Path) -> list[str]:
        """Initialise the tower (and the projector, if the file has one) from a local file.

        Accepted layouts: Apple MobileCLIP checkpoints (``text_encoder.*``), open_clip CLIP state
        dicts (``text.*``), text-tower-only state dicts (open_clip or Apple names), and student
        checkpoints (``encoder.*`` + ``projector.*``, bare or under
        ``detector.backbone.language_backbone.``). Every tower tensor must be present with its
        shape; a longer position table is truncated to ``context_length`` rows. Returns the log
        lines (also logged).

        Raises:
            WeightFileError: missing, unexpected or mismatched tensors (named, with the file).
        """
        path = Path(path)
        state = read_weight_file(path)
        layout, prefix, projector_prefix = _detect_layout(state)
        notes = [f"{path}: {layout} layout"]
        tower = _take(state, prefix)
        projector = _take(state, projector_prefix) if projector_prefix else {}
        outside = len(state) - len(tower) - len(projector)
        if outside:
            notes.append(f"ignored {outside} tensors outside the text tower (image tower etc.)")
        tower = {_to_open_clip_name(k): v for k, v in tower.items()}
        for unused in [k for k in tower if k in _UNUSED_TOWER_KEYS]:
            del tower[unused]
            notes.append(f"ignored {unused!r} (pooled projection, unused on the all-token path)")
        if "positional_embedding" in tower:  # Apple stores it as [1, 1, rows, width]
            table = tower["positional_embedding"]
            tower["positional_embedding"] = table.reshape(table.shape[-2:])
        notes += self._fit_positions(tower, path)
        _check_covers(self.encoder, tower, path, layout)
        self.encoder.load_state_dict(tower, strict=False)
        if projector:
            _check_covers(self.projector, projector, path, layout + " projector")
            self.projector.load_state_dict(projector)
            notes.append("loaded the projector")
        else:
            notes.append("the file has no projector; it keeps its random initialisation")
        for line in notes:
            log.info(line)
        return notes

    def _fit_positions(self, tower: dict[str, Tensor], path: Path) -> list[str]:
        table = tower.get("positional_embedding")
        if table is None:
            return []
        rows = table.shape[0]
        if rows < self.context_length:
            raise WeightFileError(
                f"{path}: the position table has {rows} rows but the student uses "
                f"context_length={self.context_length}; build it with context_length <= {rows}"
            )
        if rows == self.context_length:
            return []
        tower["positional_embedding"] = table[: self.context_length].clone()
        return [f"truncated the position table from {rows} to {self.context_length} rows"]


# Tower keys in weight files that the student does not have (and does not need).
_UNUSED_TOWER_KEYS = frozenset({"text_projection"})

# (prefix of the tower's keys, prefix of the projector's keys or "", layout name), tried in order.
_LAYOUTS: tuple[tuple[str, str, str], ...] = (
    ("text_encoder.", "", "Apple MobileCLIP"),
    ("text.", "", "open_clip CLIP"),
    (
        "detector.backbone.language_backbone.encoder.",
        "detector.backbone.language_backbone.projector.",
        "merged SAM3 checkpoint",
    ),
    ("encoder.", "projector.", "text student"),
)

# Apple MobileCLIP text-encoder names -> open_clip names (ours), applied in order.
_APPLE_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^embedding_layer\.", "token_embedding."),
    (r"^positional_embedding\.pos_embed\.pos_embed$", "positional_embedding"),
    (r"^final_layer_norm\.", "ln_final."),
    (r"^projection_layer$", "text_projection"),
    (r"^transformer\.(\d+)\.", r"transformer.resblocks.\1."),
    (r"\.pre_norm_mha\.0\.", ".ln_1."),
    (r"\.pre_norm_mha\.1\.qkv_proj\.(weight|bias)$", r".attn.in_proj_\1"),
    (r"\.pre_norm_mha\.1\.out_proj\.", ".attn.out_proj."),
    (r"\.pre_norm_ffn\.0\.", ".ln_2."),
    (r"\.pre_norm_ffn\.1\.", ".mlp.c_fc."),
    (r"\.pre_norm_ffn\.4\.", ".mlp.c_proj."),
)


def _to_open_clip_name(key: str) -> str:
    """Map an Apple MobileCLIP text-tower key to ours; open_clip keys pass through unchanged."""
    for pattern, repl in _APPLE_RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def _take(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``state`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _detect_layout(state: dict[str, Tensor]) -> tuple[str, str, str]:
    """``(layout name, tower prefix, projector prefix)`` of a text weight file."""
    for prefix, projector_prefix, name in _LAYOUTS:
        if any(k.startswith(prefix) for k in state):
            return name, prefix, projector_prefix
    return "text tower", "", ""


def _check_covers(module: nn.Module, state: dict[str, Tensor], path: Path, layout: str) -> None:
    """Raise :class:`WeightFileError` unless ``state`` holds exactly ``module``'s tensors (BN's
    ``num_batches_tracked`` may be absent)."""
    problems = state_problems(module.state_dict(), state, may_lack="num_batches_tracked")
    if problems:
        raise WeightFileError(
            f"{path} ({layout} layout) does not fit this {type(module).__name__}: "
            + problems
            + ". Is it a weight file of this student's architecture?"
        )
