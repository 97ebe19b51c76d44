"""Deterministic, file-free weights shared by our tests and Meta's oracle subprocess.

Pure torch, no project imports: both sides import this module. A tensor's values depend only on
``(seed, key, shape)``, so two models whose state-dict keys and shapes agree get bit-identical
weights without exchanging any file.

Rule, per floating-point (non-complex) entry of a state dict, drawn in float32 from a
``torch.Generator`` seeded with ``seed * 1_000_003 + zlib.crc32(key)``:

* LayerNorm-like weight (the key contains ``norm`` or ``ln_`` and ends with ``.weight``):
  ``1 + 0.1 * N(0, 1)``;
* any other key ending with ``.bias``: ``0.02 * N(0, 1)``;
* everything else (linear/conv weights, embeddings, ``pos_embed``, ``positional_embedding``,
  ``text_projection``, ...): ``0.02 * N(0, 1)``.

Complex tensors (the RoPE ``freqs_cis`` buffers) and integer/bool tensors are left untouched.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import torch
from torch import nn

WEIGHT_STD = 0.02
BIAS_STD = 0.02
NORM_WEIGHT_STD = 0.1


def key_generator(seed: int, key: str) -> torch.Generator:
    """Return a CPU generator seeded from ``seed`` and the CRC32 of ``key``."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed * 1_000_003 + zlib.crc32(key.encode("utf-8")))
    return gen


def is_norm_weight(key: str) -> bool:
    """Return True for keys treated as LayerNorm-like weights (initialised around 1)."""
    if not key.endswith(".weight"):
        return False
    return "norm" in key or "ln_" in key


def seeded_tensor(key: str, shape: Sequence[int], seed: int) -> torch.Tensor:
    """Return the float32 values that :func:`seeded_state` assigns to ``key`` of ``shape``."""
    noise = torch.randn(tuple(shape), generator=key_generator(seed, key), dtype=torch.float32)
    if is_norm_weight(key):
        return 1.0 + NORM_WEIGHT_STD * noise
    if key.endswith(".bias"):
        return BIAS_STD * noise
    return WEIGHT_STD * noise


def _is_seedable(tensor: torch.Tensor) -> bool:
    """Return True for real floating-point tensors (complex and integer ones are skipped)."""
    return tensor.is_floating_point() and not tensor.is_complex()


def _fill(tensor: torch.Tensor, key: str, seed: int) -> None:
    """Write :func:`seeded_tensor`'s values into ``tensor``: drawn in place where that gives the
    same values (a contiguous float32 CPU tensor: ``randn`` is ``empty().normal_()``), at a
    third of the cost of drawing, scaling and copying."""
    if tensor.dtype != torch.float32 or tensor.device.type != "cpu" or not tensor.is_contiguous():
        tensor.copy_(seeded_tensor(key, tensor.shape, seed).to(tensor.dtype))
        return
    tensor.normal_(generator=key_generator(seed, key))
    if is_norm_weight(key):
        tensor.mul_(NORM_WEIGHT_STD).add_(1.0)
    else:
        tensor.mul_(BIAS_STD if key.endswith(".bias") else WEIGHT_STD)


def seeded_state(named: Mapping[str, torch.Tensor] | nn.Module, seed: int) -> None:
    """Overwrite, in place, every real floating-point tensor of a module or a name->tensor map.

    For a module its ``state_dict()`` is used (parameters and persistent buffers; the tensors
    share storage with the module, so the module itself changes).
    """
    state = named.state_dict(keep_vars=True) if isinstance(named, nn.Module) else named
    if not isinstance(state, Mapping):
        raise TypeError(
            f"seeded_state expects an nn.Module or a mapping of name -> tensor, got {type(named)}"
        )
    with torch.no_grad():
        for key, tensor in state.items():
            if not isinstance(tensor, torch.Tensor) or not _is_seedable(tensor):
                continue
            if tensor.device.type == "meta":
                raise ValueError(
                    f"cannot seed {key!r}: it lives on the meta device; materialise the "
                    "module (e.g. module.to_empty(device='cpu')) first"
                )
            _fill(tensor, key, seed)


def seeded_input(shape: Sequence[int], seed: int) -> torch.Tensor:
    """Return a float32 tensor of ``shape`` with values uniform in [-1, 1), from its own seed."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    return torch.rand(tuple(shape), generator=gen, dtype=torch.float32) * 2.0 - 1.0
