"""Where a merge writes: the default output name, checking the output location early, and
writing it atomically (:mod:`sam3.files`) with progress (a byte bar for ``.pth``, timed log
lines for both formats)."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor
from tqdm import tqdm

from sam3.files import atomic_open, atomic_path
from stage1.merge.checks import MergeError
from stage1.store import format_bytes

log = logging.getLogger("stage1.merge")


class Named(Protocol):
    """A student as read (see ``stage1.merge.students.StudentWeights``)."""

    kind: str
    name: str


def file_name(name: str) -> str:
    """A student name spelt for file names: ``MobileCLIP-S0`` -> ``mobileclip_s0``."""
    return name.strip().lower().replace("-", "_").replace(".", "_")


def default_output(students: Sequence[Named]) -> Path:
    """``output/efficient_sam3_{image}[_{text}].pth`` from the students' canonical names."""
    names = "_".join(file_name(s.name) for s in sorted(students, key=lambda s: s.kind))
    return Path("output") / f"efficient_sam3_{names}.pth"


def with_format(output: Path, safetensors: bool) -> tuple[Path, bool]:
    """``(output, whether it is written as safetensors)``: ``safetensors`` turns a ``.pth`` /
    ``.pt`` name into ``.safetensors`` (any other name gains the suffix); without it, a name
    ending in ``.safetensors`` still asks for that format."""
    if not safetensors:
        return output, output.suffix == ".safetensors"
    if output.suffix in (".pth", ".pt"):
        return output.with_suffix(".safetensors"), True
    return (output if output.suffix == ".safetensors" else Path(f"{output}.safetensors")), True


def state_bytes(state: Mapping[str, Tensor]) -> int:
    """Bytes of tensor data in ``state``."""
    return sum(t.numel() * t.element_size() for t in state.values())


def check_output(output: Path, inputs: Sequence[Path], overwrite: bool = False) -> None:
    """Fail early (before any heavy work) when ``output`` cannot be written: it is an input or
    a folder, it exists and ``overwrite`` is not set, or its folder cannot be created or
    written (tried with a probe file)."""
    if any(output.resolve() == p.resolve() for p in inputs if p.exists()):
        raise MergeError(f"--output {output} is one of the inputs — write to a new file")
    if output.is_dir():
        raise MergeError(f"--output {output} is a folder — give a file name")
    if output.exists() and not overwrite:
        raise MergeError(
            f"--output {output} already exists — pass another --output, or --overwrite to "
            "replace it"
        )
    folder = output.parent
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise MergeError(
            f"cannot create the output folder {folder}: {existing} is a file — pass another "
            "--output"
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise MergeError(
            f"the output folder {folder} is not writable ({err.strerror or err}) — pass another "
            "--output"
        ) from err


def _unshared(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous tensors, no two sharing memory (what safetensors requires)."""
    seen: set[int] = set()
    out = {}
    for key, tensor in state.items():
        tensor = tensor.contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add(ptr)
        out[key] = tensor
    return out


class _CountingWriter:
    """A binary file that advances a progress bar by the bytes written to it."""

    def __init__(self, f: Any, bar: tqdm):
        self._f, self._bar = f, bar

    def write(self, data: bytes) -> int:
        """Write ``data`` and count it."""
        n = self._f.write(data)
        self._bar.update(len(data))
        return n

    def flush(self) -> None:
        """Flush the file."""
        self._f.flush()


def save_merged(output: Path, state: dict[str, Tensor], meta: dict, safetensors: bool) -> None:
    """Write ``{"model", "meta"}`` (``.pth``) or a ``.safetensors`` file with ``meta`` in its
    metadata, atomically (a failure leaves ``output`` as it was); logs the size and the time
    taken, and shows a byte bar while a ``.pth`` is written."""
    output.parent.mkdir(parents=True, exist_ok=True)
    size = state_bytes(state)
    log.info("writing %s (%d tensors, %s)", output, len(state), format_bytes(size))
    start = time.perf_counter()
    if safetensors:
        from safetensors.torch import save_file

        with atomic_path(output) as tmp:
            save_file(_unshared(state), str(tmp), metadata={"meta": json.dumps(meta)})
    else:
        with (
            atomic_open(output, "wb") as f,
            tqdm(
                total=size,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"write {output.name}",
                dynamic_ncols=True,
            ) as bar,
        ):
            torch.save({"model": state, "meta": meta}, _CountingWriter(f, bar))
    written = format_bytes(output.stat().st_size)
    log.info("wrote %s (%s) in %.1f s", output, written, time.perf_counter() - start)
