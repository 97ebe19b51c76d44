"""Small embedding stores for the store's tests: deterministic records, a store created with a
fixed meta, a public-EfficientSAM3 (manifest-less) store, and the raw bytes of a folder."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from stage1.store import DIGEST_BYTES, SOURCE_DIGEST, StoreSpec, create_store, load_manifest

IMG = (4, 3, 3)  # an image record's shape (channels first)
TXT = (8, 16)  # a text record's shape (sequence, width)
META = {
    "teacher": {"checkpoint": "random", "arch": "sam3_tiny"},
    "preprocessing": {"resize": "pad", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
    "context_length": 32,
}


def record(i: int, shape: tuple[int, ...] = IMG) -> np.ndarray:
    """The deterministic float32 embedding of key number ``i``."""
    return np.random.default_rng(i).standard_normal(shape).astype(np.float32)


def batch(ids: Iterable[int], shape: tuple[int, ...] = IMG) -> tuple[list[str], np.ndarray]:
    """Keys ``k0000``... of ``ids`` and their stacked :func:`record` embeddings."""
    ids = list(ids)
    return [f"k{i:04d}" for i in ids], np.stack([record(i, shape) for i in ids])


def new_store(
    root: Path, shape: tuple[int, ...] = IMG, encoding: str = "float16", world_size: int = 1, **meta
) -> StoreSpec:
    """``create_store`` with :data:`META` (updated by ``meta``); returns the spec."""
    spec = StoreSpec(shape, encoding, meta={**META, **meta})
    create_store(root, spec, world_size)
    return spec


def digest_spec(shape: tuple[int, ...] = TXT, encoding: str = "float16") -> StoreSpec:
    """A text-store spec whose record headers carry each caption's source digest."""
    meta = {**META, "record_header": SOURCE_DIGEST}
    return StoreSpec(shape, encoding, header_bytes=DIGEST_BYTES, meta=meta)


def write_legacy(root: Path, shards: dict[int, list[int]] | None = None) -> None:
    """A public-EfficientSAM3 store (no manifest, an int32 before each float16 record); by
    default rank 1 repeats key 0, as the public sampler pads its shards."""
    root.mkdir(parents=True, exist_ok=True)
    for rank, ids in (shards or {0: [0, 1, 2], 1: [3, 0]}).items():
        with open(root / f"rank{rank}-values.bin", "wb") as f:
            for i in ids:
                f.write(np.int32(12345 + i).tobytes())  # the unused "aug seed"
                f.write(record(i, TXT).astype("<f2").tobytes())
        (root / f"rank{rank}-keys.txt").write_text("".join(f"k{i:04d}\n" for i in ids))


def folder_bytes(root: Path) -> dict[str, bytes]:
    """Every file of ``root`` by name, with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def raw_records(root: Path) -> dict[str, bytes]:
    """key -> record bytes, straight from the shard files (complete records only)."""
    rb = load_manifest(root)["spec"].record_bytes
    out = {}
    for keys_file in sorted(root.glob("rank*-keys.txt")):
        data = keys_file.with_name(keys_file.name.replace("keys.txt", "values.bin")).read_bytes()
        for i, key in enumerate(keys_file.read_bytes().split(b"\n")[:-1]):
            if (i + 1) * rb <= len(data):
                out[key.decode()] = data[i * rb : (i + 1) * rb]
    return out
