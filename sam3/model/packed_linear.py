"""``nn.Linear`` that can keep a oneDNN-packed copy of its weight for fp32 CPU inference.

By default PyTorch runs an fp32 CPU linear through MKL, which re-packs the weight on every call.
oneDNN's matmul on a weight reordered once into its blocked layout runs the SAM3 trunk's GEMMs
3-9 % faster on AVX2 CPUs (``benchmarks/teacher_vs_reference.py`` measures the whole trunk). The
packed copy costs as much memory as the weight, so packing is opt-in
(:meth:`PackableLinear.pack_for_cpu`). The parameter stays the source of truth: the copy is used
only for fp32 CPU calls that record no gradient and run outside autocast, and it is rebuilt when
the weight changes (``load_state_dict``, in-place updates, ``.to()``). It is never saved.
Writes through ``weight.data`` bypass the version counter that reveals a change: call
``pack_for_cpu`` again after them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def onednn_linear_available() -> bool:
    """Whether this PyTorch build has oneDNN's packed-weight linear."""
    if not torch.backends.mkldnn.is_available():
        return False
    ops = torch.ops.mkldnn
    return hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise")


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 has no device argument
        return torch.is_autocast_cpu_enabled()


def packed_linear(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ W.T + bias`` with ``W`` given as a oneDNN-packed weight."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class PackableLinear(nn.Linear):
    """A drop-in ``nn.Linear`` (same parameters and state-dict keys) with optional CPU packing."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._pack_rows: int | None = None  # the typical row count the packing is tuned for
        self._packing = False  # whether pack_for_cpu was asked for (and unpack not since)
        self._packed: Tensor | None = None
        self._packed_from: tuple[int, int] | None = None  # (data_ptr, version) of the weight

    def pack_for_cpu(self, rows: int | None = None) -> bool:
        """Keep a packed copy of the weight, tuned for inputs of about ``rows`` rows.

        Returns False (and uses the plain path) where oneDNN is missing or the weight is not an
        fp32 CPU tensor; a later call after ``.to("cpu")`` or a weight change packs again.
        """
        self._pack_rows, self._packing = rows, True
        return self._repack()

    def unpack(self) -> None:
        """Drop the packed copy and use the plain path from now on."""
        self._packing = False
        self._packed = self._packed_from = None

    @property
    def is_packed(self) -> bool:
        """Whether a packed copy of the current weight is held."""
        return self._packed is not None and self._packed_from == self._weight_id()

    def _weight_id(self) -> tuple[int, int]:
        return self.weight.data_ptr(), self.weight._version

    def _repack(self) -> bool:
        w = self.weight
        self._packed = self._packed_from = None
        if not (onednn_linear_available() and w.device.type == "cpu" and w.dtype == torch.float32):
            return False
        with torch.no_grad():
            self._packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), self._pack_rows)
        self._packed_from = self._weight_id()
        return True

    def _packed_applies(self, x: Tensor) -> bool:
        if not self._packing or x.device.type != "cpu" or x.dtype != torch.float32:
            return False
        if self.weight.device.type != "cpu" or self.weight.dtype != torch.float32:
            return False
        if torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in self.parameters())
        ):
            return False  # the packed op has no backward
        if _autocast_on():
            return False
        return self.is_packed or self._repack()

    def forward(self, x: Tensor) -> Tensor:
        """``x @ weight.T + bias``, through the packed copy where it applies."""
        if self._packed_applies(x):
            return packed_linear(x, self._packed, self.bias)
        return F.linear(x, self.weight, self.bias)

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave the packed tensor out (oneDNN tensors have no storage)."""
        state = self.__dict__.copy()
        state["_packed"] = state["_packed_from"] = None
        return state
