"""A store folder on disk: its shard files, its manifest (created, checked, finalized), the keys
already stored and the disk space an export needs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sam3.files import write_json_atomic
from stage1.common.preflight import check_output_folder
from stage1.store.spec import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    InsufficientDiskError,
    StoreCorruptError,
    StoreError,
    StoreMismatchError,
    StoreSpec,
    creation_differences,
    legacy_spec,
)

_SHARD_RE = re.compile(r"rank(\d+)-(keys\.txt|values\.bin)")
_KEY_BYTES = 64  # disk bytes assumed per key line in check_disk_space


def shard_paths(root: Path, rank: int) -> tuple[Path, Path]:
    """The keys file and the values file of ``rank``'s shard."""
    return root / f"rank{rank}-keys.txt", root / f"rank{rank}-values.bin"


def shard_ranks(root: Path) -> list[int]:
    """Ranks that have a keys or a values file, ascending."""
    found = {int(m.group(1)) for p in root.iterdir() if (m := _SHARD_RE.fullmatch(p.name))}
    return sorted(found)


def file_size(path: Path) -> int:
    """Bytes in ``path``, 0 when it does not exist."""
    return path.stat().st_size if path.exists() else 0


def read_lines(path: Path) -> tuple[list[bytes], bytes]:
    """Complete ("\\n"-terminated) lines of a keys file, and its partial tail (b"" if none)."""
    data = path.read_bytes() if path.exists() else b""
    parts = data.split(b"\n")
    return parts[:-1], parts[-1]


def shard_records(root: Path, rank: int, record_bytes: int) -> tuple[list[bytes], int]:
    """Key lines of a shard and how many complete records it holds (torn tails ignored)."""
    keys_path, values_path = shard_paths(root, rank)
    lines, _ = read_lines(keys_path)
    return lines, min(len(lines), file_size(values_path) // record_bytes)


def _fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk, where the OS allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically (sorted keys, indent 2, a final newline), then flush
    the rename itself to disk."""
    write_json_atomic(path, manifest, indent=2, sort_keys=True)
    _fsync_dir(path.parent)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def format_bytes(n: int) -> str:
    """``n`` bytes at their scale: "300 bytes", "3.75 KiB", "9.89 GiB", "3.00 TiB"."""
    if abs(n) < 1024:
        return f"{int(n)} bytes"
    for power, unit in ((4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
        if abs(n) >= 1024**power:
            return f"{n / 1024**power:.2f} {unit}"
    raise AssertionError("unreachable")


def no_manifest_error(root: Path, writing: bool = False) -> StoreError:
    """Why ``root`` cannot be used without a manifest (to read, or with ``writing`` to write
    into), and what to do."""
    ranks = shard_ranks(root) if root.is_dir() else []
    if not ranks:
        return StoreError(
            f"no {MANIFEST} in {root}, so it is not an embedding store — export into it first "
            "(create_store(root, spec, world_size) before StoreWriter), or give the store folder"
        )
    names = ", ".join(p.name for r in ranks[:2] for p in shard_paths(root, r) if p.exists())
    found = (
        f"{root} holds shard files ({names}{', ...' if len(ranks) > 2 else ''}) but no "
        f"{MANIFEST} (a store of the public EfficientSAM3, or one whose manifest was lost)"
    )
    inspect = (
        f"`python -m stage1.embedding_store info|verify {root} --legacy-shape C,H,W` (or "
        "SEQ,DIM; legacy_shape= in Python)"
    )
    if writing:
        return StoreError(
            f"{found}, so their record layout is unknown and nothing will be written there — "
            f"inspect them with {inspect}, and export into a new folder (another OUTPUT or "
            "DISTILL.TEACHER_EMBED_PATH)"
        )
    return StoreError(f"{found} — read it with its record shape: {inspect}")


def load_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``manifest.json`` of a store; :class:`StoreError` if it is missing."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise no_manifest_error(root)
    try:
        manifest = json.loads(path.read_text())
        spec = StoreSpec.from_json(manifest["spec"])
    except (ValueError, KeyError, TypeError) as err:
        raise StoreCorruptError(
            f"{path} is not a valid store manifest ({err}) — restore it from a backup or "
            "re-export into an empty folder"
        ) from err
    if manifest["spec"].get("record_bytes", spec.record_bytes) != spec.record_bytes:
        raise StoreCorruptError(
            f"{path} says records are {manifest['spec']['record_bytes']} bytes, but its spec "
            f"gives {spec.record_bytes} (the manifest was edited or written by other code) — "
            "restore it or re-export into an empty folder"
        )
    if manifest.get("format") != FORMAT_NAME or manifest.get("format_version", 0) > FORMAT_VERSION:
        raise StoreError(
            f"{path} has format {manifest.get('format')!r} version "
            f"{manifest.get('format_version')}, but this code reads {FORMAT_NAME!r} up to "
            f"version {FORMAT_VERSION} — update the code or use another folder"
        )
    manifest["spec"] = spec
    return manifest


def open_spec(root: str | os.PathLike, legacy_shape: Sequence[int] | None = None) -> StoreSpec:
    """The spec of the store in ``root``: from its manifest, or with ``legacy_shape`` the
    layout of a public EfficientSAM3 store (no manifest, float16 after a 4-byte header).
    :class:`StoreError` when the folder is missing or is not such a store."""
    root = Path(root)
    if not root.is_dir():
        what = "is a file, not a store folder" if root.exists() else "does not exist"
        raise StoreError(
            f"embedding store folder {root} {what} — run the export first, or give the folder "
            "the export wrote (DISTILL.TEACHER_EMBED_PATH, by default OUTPUT/embeddings)"
        )
    if legacy_shape is None:
        return load_manifest(root)["spec"]
    if (root / MANIFEST).exists():
        raise StoreError(
            f"{root} has a {MANIFEST}, so it is not a legacy EfficientSAM3 store — open it "
            "without legacy_shape (--legacy-shape)"
        )
    return legacy_spec(legacy_shape)


def check_store_folder(root: str | os.PathLike) -> StoreSpec | None:
    """The spec of the store already in ``root``, or ``None`` for a folder that holds none yet
    (missing or without shard files). Creates nothing. :class:`StoreError` (a
    :class:`~stage1.common.errors.UserError`) for a folder that must not be written: a file, not
    writable, shard files without a manifest, an unreadable manifest."""
    root = check_output_folder(root, "DISTILL.TEACHER_EMBED_PATH")
    if (root / MANIFEST).exists():
        return load_manifest(root)["spec"]
    if root.is_dir() and shard_ranks(root):
        raise no_manifest_error(root, writing=True)
    return None


def create_store(root: str | os.PathLike, spec: StoreSpec, world_size: int) -> None:
    """Create the store folder and its manifest (atomically), or check an existing manifest.

    An existing store must agree on shape, encoding, header bytes and the meta fields
    "teacher" (by kind, arch, checkpoint SHA-256 and precision: the manifest keeps the path
    it was first written with), "preprocessing", "context_length" and "record_header", else
    :class:`StoreMismatchError`; a different ``world_size`` (a resume on more or fewer GPUs)
    is recorded. Shard files without a manifest are refused (:func:`check_store_folder`);
    a refusal creates nothing."""
    root = Path(root)
    path = root / MANIFEST
    if check_store_folder(root) is not None:
        manifest = load_manifest(root)
        diffs = creation_differences(manifest["spec"], spec)
        if diffs:
            raise StoreMismatchError(
                f"the embedding store in {root} was created with another spec ("
                + "; ".join(diffs)
                + ") — export into another folder (a new OUTPUT or DISTILL.TEACHER_EMBED_PATH), "
                "or delete this one to start over"
            )
        if manifest.get("world_size") != world_size:
            manifest["world_size"] = int(world_size)
            manifest["spec"] = manifest["spec"].to_json()
            _write_manifest(path, manifest)
        return
    root.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "spec": spec.to_json(),
        "world_size": int(world_size),
        "created_at": _now(),
        "counts": None,
    }
    _write_manifest(path, manifest)


def finalize_manifest(root: str | os.PathLike) -> dict[str, int]:
    """Recount complete records per shard and write them into the manifest (atomically);
    rank 0 calls this once every rank has closed its writer. Returns {rank: count}."""
    root = Path(root)
    manifest = load_manifest(root)
    spec = manifest["spec"]
    counts = {str(r): shard_records(root, r, spec.record_bytes)[1] for r in shard_ranks(root)}
    manifest.update(
        spec=spec.to_json(), counts=counts, records=sum(counts.values()), finalized_at=_now()
    )
    _write_manifest(root / MANIFEST, manifest)
    return {int(r): n for r, n in counts.items()}


def existing_keys(root: str | os.PathLike) -> set[str]:
    """Keys with a complete record in any shard (torn tails ignored): what a resumed export
    skips, and what keeps two ranks from storing the same key."""
    root = Path(root)
    record_bytes = load_manifest(root)["spec"].record_bytes
    keys: set[str] = set()
    for rank in shard_ranks(root):
        lines, n = shard_records(root, rank, record_bytes)
        keys.update(line.decode() for line in lines[:n])
    return keys


def check_disk_space(
    root: str | os.PathLike, n_records: int, spec: StoreSpec, force: bool = False
) -> int:
    """Bytes needed for ``n_records`` more records (values plus ~64 bytes per key line);
    :class:`InsufficientDiskError` when the filesystem holding ``root`` has less free space,
    unless ``force`` (then a warning). The int8 hint is given only for a store not created
    yet (an existing one keeps its encoding)."""
    need = int(n_records) * (spec.record_bytes + _KEY_BYTES)
    probe = Path(root).absolute()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        hint = ", store int8 (DISTILL.STORE_DTYPE int8, half the size)"
        new = not (Path(root) / MANIFEST).exists()
        have, want = format_bytes(free), format_bytes(need)
        if have == want:  # too close to tell apart at that scale
            have, want = f"{free:,} bytes", f"{need:,} bytes"
        msg = (
            f"the embedding store in {root} needs about {want} for {n_records} records of "
            f"{spec.record_bytes} bytes, but only {have} is free there — free some space, "
            f"point DISTILL.TEACHER_EMBED_PATH at a larger disk"
            f"{hint if spec.encoding == 'float16' and new else ''}, or set DISTILL.FORCE True to "
            "export anyway"
        )
        if not force:
            raise InsufficientDiskError(msg)
        warnings.warn(msg + " (continuing: forced)", stacklevel=2)
    return need
