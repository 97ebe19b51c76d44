"""Local weight files for students: reading them, and saying precisely why one does not fit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import load_file as load_safetensors
from torch import Tensor

from ..checkpoint import MAX_LISTED
from ..files import UnreadableFileError, load_weights_only


class WeightFileError(ValueError):
    """A weight file that cannot initialise the student it was given to."""


def key_problems(
    missing: Sequence[str] = (), unexpected: Sequence[str] = (), mismatched: Sequence[str] = ()
) -> str:
    """``"missing (3): [...]; unexpected (1): [...]"``: the first keys of each kind, counted."""
    parts = []
    for label, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("shape mismatch", mismatched),
    ):
        if items:
            more = f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
            parts.append(f"{label} ({len(items)}): {list(items)[:MAX_LISTED]}{more}")
    return "; ".join(parts)


def state_problems(
    want: Mapping[str, Tensor], state: Mapping[str, Tensor], may_lack: str = ""
) -> str:
    """:func:`key_problems` of ``state`` against a module's ``want``ed state dict: missing,
    unexpected and shape-mismatched keys ("" when it fits). Keys of ``want`` ending in
    ``may_lack`` (e.g. ``"num_batches_tracked"``) may be absent."""
    missing = [k for k in want if k not in state and not (may_lack and k.endswith(may_lack))]
    unexpected = [k for k in state if k not in want]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(want[k].shape)}"
        for k in want
        if k in state and state[k].shape != want[k].shape
    ]
    return key_problems(missing, unexpected, mismatched)


def read_weight_file(path: str | Path) -> dict[str, Tensor]:
    """Read a local weight file into a flat state dict.

    ``.safetensors`` via safetensors; anything else via ``torch.load(weights_only=True)``. A
    state dict under ``"state_dict"`` or ``"model"`` is unwrapped and a DDP ``module.`` prefix on
    every key is removed.

    Raises:
        FileNotFoundError: no such file.
        WeightFileError: unreadable, or not a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file {path} does not exist; pass the path of a local copy")
    try:
        if path.suffix == ".safetensors":
            obj: Any = load_safetensors(str(path), device="cpu")
        else:
            obj = load_weights_only(path)
    except Exception as err:  # safetensors raises several kinds; torch's come wrapped
        cause = err.__cause__ if isinstance(err, UnreadableFileError) else err
        raise WeightFileError(f"{path} could not be read as a weight file: {cause}") from err
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping):
        raise WeightFileError(f"{path} holds a {type(obj).__name__}, not a state dict")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise WeightFileError(f"{path}: entries that are not named tensors: {bad[:MAX_LISTED]}")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state
