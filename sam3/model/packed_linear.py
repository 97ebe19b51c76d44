"""``nn.Linear`` that can keep a oneDNN-packed copy of its weight for fp32 CPU inference.

By default PyTorch runs an fp32 CPU linear through MKL, which re-packs the weight on every call.
oneDNN's matmul on a weight reordered once into its blocked layout skips that work, which speeds
up the SAM3 trunk's GEMMs on AVX2 CPUs (``benchmarks/teacher_vs_reference.py`` measures the
whole trunk). The packed copy costs as much memory as the weight, so packing is opt-in
(:meth:`PackableLinear.pack_for_cpu`). The parameter stays the source of truth: the copy is used
only for fp32 CPU calls that record no gradient and run outside autocast, and it is rebuilt when
the weight changes (``load_state_dict``, in-place updates, ``.to()``). It is never saved.
Writes through ``weight.data`` bypass the version counter that reveals a change: call
``pack_for_cpu`` again after them.

:func:`inference_linear` is the unpacked variant for weights used once per call or sliced per
call (attention projections, FFNs of the detector heads): oneDNN's matmul on the plain weight,
which runs these shapes faster than MKL's sgemm on AMD CPUs.
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


_ONEDNN = onednn_linear_available()


def _needs_grad(*tensors: Tensor | None) -> bool:
    return any(t is not None and t.requires_grad for t in tensors)


def onednn_linear_applies(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> bool:
    """Whether :func:`onednn_linear` may compute ``x @ weight.T``: fp32 CPU tensors, a
    contiguous weight, no gradient recorded (oneDNN's op has no backward) and no autocast."""
    return (
        _ONEDNN
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and weight.is_contiguous()
        and not (torch.is_grad_enabled() and _needs_grad(x, weight, bias))
        and not _autocast_on()
    )


def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None, relu: bool = False) -> Tensor:
    """oneDNN's ``x @ weight.T + bias`` (then ReLU, fused) for a contiguous 2-D ``weight``.

    ``x`` is flattened to 2-D and made contiguous first: oneDNN runs many times slower on
    strided or batched inputs. No checks: see :func:`onednn_linear_applies`.
    """
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    y = torch.ops.mkldnn._linear_pointwise(flat, weight, bias, "relu" if relu else "none", [], "")
    return y.view(*x.shape[:-1], weight.shape[0])


def inference_linear(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, relu: bool = False
) -> Tensor:
    """``F.linear(x, weight, bias)`` (then ReLU if ``relu``), through oneDNN where it applies.

    oneDNN is used for fp32 CPU inference (:func:`onednn_linear_applies`); anything else
    (gradients, autocast, other devices or dtypes, a non-contiguous weight) takes ``F.linear``,
    so the function is a drop-in for training too. The result is a fresh tensor either way.
    """
    if onednn_linear_applies(x, weight, bias):
        return onednn_linear(x, weight, bias, relu)
    y = F.linear(x, weight, bias)
    return y.relu_() if relu else y


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
