"""Reading SAM3-format checkpoints and loading them with strict key accounting.

A SAM3 checkpoint (``sam3.pt``) is a state dict, bare or under ``"model"``, whose keys start with
``detector.`` (the image model) or ``tracker.`` (the video tracker). A module built from part of
the model is loaded from the keys under one prefix: every key the module needs must be there
with its shape, and every key it does not use is counted and reported by prefix.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn

from .files import UnreadableFileError, load_weights_only

log = logging.getLogger(__name__)

SAM3_DOWNLOAD_HINT = (
    "download sam3.pt from https://huggingface.co/facebook/sam3 (accept the licence there) "
    "and put it in sam3_checkpoints/, or pass the path of your copy"
)
MAX_LISTED = 8  # how many offending keys an error message names


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model that was built."""


@dataclass
class LoadReport:
    """What a strict load consumed and what it left unused (grouped by key prefix)."""

    source: str
    prefix: str
    loaded: int
    unused: dict[str, int] = field(default_factory=dict)

    @property
    def unused_total(self) -> int:
        """Number of checkpoint keys the built modules did not take."""
        return sum(self.unused.values())

    def summary(self) -> str:
        """One human-readable paragraph."""
        lines = [f"loaded {self.loaded} tensors from {self.source} (keys under '{self.prefix}')"]
        if self.unused:
            lines.append(f"{self.unused_total} keys not used by the built modules:")
            lines += [f"  {p}.*: {n}" for p, n in sorted(self.unused.items())]
        return "\n".join(lines)


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """Read a checkpoint file: ``(state dict, meta)``, ``meta`` being ``{}`` when there is none.

    ``.safetensors`` files are read with safetensors (``meta`` from the JSON under the
    ``"meta"`` metadata entry); anything else with :func:`sam3.files.load_weights_only`,
    memory-mapped when possible, as a bare state dict or one under ``"model"`` (then ``"meta"``
    beside it is returned and every other entry, e.g. optimizer state, is ignored). Raises
    ``FileNotFoundError`` (saying where to get ``sam3.pt``) or :class:`CheckpointError` (naming
    the file and what is wrong with it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SAM3 checkpoint {path} does not exist: {SAM3_DOWNLOAD_HINT}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        obj = load_weights_only(path, mmap=True)
    except UnreadableFileError as err:
        raise CheckpointError(str(err)) from err
    meta: dict = {}
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        meta = obj.get("meta") or {}
        if not isinstance(meta, Mapping):
            raise CheckpointError(f"{path}: 'meta' is a {type(meta).__name__}, not a mapping")
        meta = dict(meta)
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not named tensors: {bad[:MAX_LISTED]}")
    return dict(obj), meta


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
            header = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
    try:
        meta = json.loads(header.get("meta", "{}"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: the 'meta' metadata entry is not JSON: {err}") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: the 'meta' metadata entry is not a JSON object")
    return state, meta


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The state dict of a checkpoint file (see :func:`read_checkpoint`)."""
    return read_checkpoint(path)[0]


def _dotted_prefixes(keys: list[str]) -> set[str]:
    out = set()
    for key in keys:
        parts = key.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return out


def group_by_prefix(unused: list[str], used: list[str], min_depth: int = 2) -> dict[str, int]:
    """Count ``unused`` keys under the shortest prefix (of at least ``min_depth`` parts) that no
    ``used`` key shares, e.g. ``detector.backbone.vision_backbone.sam2_convs``."""
    used_prefixes = _dotted_prefixes(used)
    counts: Counter[str] = Counter()
    for key in unused:
        parts = key.split(".")
        group = key
        for i in range(min_depth, len(parts)):
            candidate = ".".join(parts[:i])
            if candidate not in used_prefixes:
                group = candidate
                break
        counts[group] += 1
    return dict(counts)


def _kind(t: Tensor) -> str:
    if t.is_complex():
        return "complex"
    return "float" if t.is_floating_point() else "integer"


def _file_key(name: str, prefix: str, routes: Mapping[str, str]) -> str:
    for module_prefix, file_prefix in routes.items():
        if name.startswith(module_prefix):
            return file_prefix + name[len(module_prefix) :]
    return prefix + name


def load_strict(
    module: nn.Module,
    state: Mapping[str, Tensor],
    prefix: str = "",
    source: str = "<memory>",
    routes: Mapping[str, str] | None = None,
) -> LoadReport:
    """Load the keys of ``state`` under ``prefix`` into ``module``; fail on any gap.

    Every tensor of ``module.state_dict()`` must be present as ``prefix + name`` with the same
    shape and kind (float/complex/integer); values are cast to the module's dtype. ``routes``
    maps module-name prefixes to other file prefixes (e.g. ``{"tracker.": "tracker."}``: the
    image model's interactive heads load from ``tracker.*``, the rest from ``detector.*``).
    Keys the module does not use are returned, grouped, in the report.
    """
    own = module.state_dict()
    names = {name: _file_key(name, prefix, routes or {}) for name in own}
    missing, mismatched = [], []
    for name, target in own.items():
        key = names[name]
        src = state.get(key)
        if src is None:
            missing.append(key)
        elif src.shape != target.shape or _kind(src) != _kind(target):
            mismatched.append(
                f"{key}: file {tuple(src.shape)} {src.dtype}, "
                f"model {tuple(target.shape)} {target.dtype}"
            )
    if missing or mismatched:
        parts = [f"{source} does not fit the model that was built (keys under '{prefix}'):"]
        if missing:
            parts.append(f"{len(missing)} missing, first: {missing[:MAX_LISTED]}")
        if mismatched:
            parts.append(
                f"{len(mismatched)} with another shape/type, first: {mismatched[:MAX_LISTED]}"
            )
        parts.append("check that the file is a SAM3 checkpoint and that the build options match it")
        raise CheckpointError("\n".join(parts))
    module.load_state_dict({name: state[key] for name, key in names.items()}, strict=True)
    used = list(names.values())
    routed = sorted({f for n, f in (routes or {}).items() if any(k.startswith(n) for k in own)})
    prefix = "', '".join([prefix, *routed]) if routed else prefix
    used_set = set(used)
    unused = [k for k in state if k not in used_set]
    return LoadReport(source, prefix, len(used), group_by_prefix(unused, used))


def load_sam3_checkpoint(
    module: nn.Module,
    checkpoint: str | Path | Mapping[str, Tensor],
    prefix: str,
    source: str = "<state dict>",
    routes: Mapping[str, str] | None = None,
) -> LoadReport:
    """Read ``checkpoint`` (a path or a state dict) and :func:`load_strict` it into ``module``
    (``routes`` as there), then check every RoPE table it brought against the one the module's
    geometry implies. ``source`` names an in-memory state dict in messages."""
    if isinstance(checkpoint, Mapping):
        state = checkpoint
    else:
        state, source = read_state_dict(checkpoint), str(checkpoint)
    report = load_strict(module, state, prefix, source, routes)
    bad = [
        f"{name}.{block}" if name else block
        for name, sub in module.named_modules()
        if hasattr(sub, "rope_mismatches")
        for block in sub.rope_mismatches(atol=1e-4)
    ]
    if bad:
        raise CheckpointError(
            f"{source}: the stored RoPE tables do not match this trunk's geometry "
            f"({len(bad)} blocks, first: {bad[:MAX_LISTED]}); the file was made for another "
            "image size or window size"
        )
    log.info(report.summary())
    return report
