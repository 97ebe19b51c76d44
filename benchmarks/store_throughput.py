"""Embedding-store random reads vs a raw sequential read of the same file; int8 size/fidelity.

Part 1 writes a float16 store of ``--records`` records of ``--shape`` (default: SAM3 image
embeddings, 1024x72x72, ~425 MB) and a second one of ``--text-records`` text records
(32x256, ~330 MB), warms the page cache, then times, best of ``--repeats``:

- raw: one sequential pass over ``rank0-values.bin`` with ``f.readinto`` into a 16 MiB buffer;
- store: a fresh ``EmbeddingStore`` (new memory maps, as a new DataLoader worker has) reading
  every record by key in random order, copied into a preallocated record buffer;
- get_many: the same through ``get_many`` on random batches (up to 64 records or 64 MiB),
  which looks keys up with one vectorised search, into a preallocated batch buffer.

It prints the throughput ratio store / raw and the per-record overhead (store - raw) / N.

Part 2 encodes ``--int8-records`` synthetic records per kind of data as int8 and prints bytes
per record vs float16 and the cosine vs the float16 record (per record, and the worst cell:
cosine over channels at one position, what the distillation loss uses).

Targets: ratio >= 0.8 for image records; int8 cosine >= 0.9999 per record.

    python benchmarks/store_throughput.py                      # ~1 min on 2 cores, ~0.8 GB disk
    python benchmarks/store_throughput.py --records 20 --text-records 5000 --dir /mnt/nvme
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stage1.store import (  # noqa: E402
    EmbeddingStore,
    StoreSpec,
    StoreWriter,
    create_store,
    decode_record,
    encode_records,
)

KINDS = {
    "normal": "unit normal",
    "heavy-tailed": "Student-t, 4 degrees of freedom",
    "outlier channels": "log-normal channel scales, 1% channels x20-60, channel offsets",
    "realistic": "outlier channels + 4 high-norm tokens (x8 on every channel)",
}


def synthetic_activations(
    rng: np.random.Generator, shape: tuple[int, ...], kind: str
) -> np.ndarray:
    """One float32 record of synthetic encoder activations of the given ``kind`` (KINDS)."""
    channels = shape[0]
    if kind == "heavy-tailed":
        return rng.standard_t(4, size=shape).astype(np.float32)
    x = rng.standard_normal(shape, dtype=np.float32)
    if kind == "normal":
        return x
    scale = np.exp(rng.normal(0.0, 0.5, channels)).astype(np.float32)
    outliers = rng.choice(channels, max(1, channels // 100), replace=False)
    scale[outliers] *= rng.uniform(20, 60, len(outliers)).astype(np.float32)
    x = x.reshape(channels, -1) * scale[:, None]
    x += rng.normal(0.0, 0.3, channels).astype(np.float32)[:, None]
    if kind == "realistic":
        tokens = rng.choice(x.shape[1], min(4, x.shape[1]), replace=False)
        x[:, tokens] *= 8.0
    return x.reshape(shape)


def _write_store(root: Path, shape: tuple[int, ...], n: int) -> list[str]:
    create_store(root, StoreSpec(shape, "float16", meta={"teacher": "random"}), world_size=1)
    rng = np.random.default_rng(0)
    per_batch = max(1, (64 << 20) // (4 * int(np.prod(shape))))
    keys = [f"item_{i:07d}" for i in range(n)]
    with StoreWriter(root, 0) as writer:
        for lo in range(0, n, per_batch):
            hi = min(n, lo + per_batch)
            writer.write(keys[lo:hi], rng.standard_normal((hi - lo, *shape), dtype=np.float32))
    return keys


def _raw_sequential(path: Path) -> float:
    buf = bytearray(16 << 20)
    view = memoryview(buf)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(view):
            pass
    return time.perf_counter() - start


def _store_random(root: Path, keys: list[str], seed: int) -> float:
    order = np.random.default_rng(seed).permutation(len(keys))
    store = EmbeddingStore(root)  # fresh maps: page faults are part of the cost
    out = np.empty(store.spec.shape, store.spec.dtype)
    start = time.perf_counter()
    for i in order:
        np.copyto(out, store.get(keys[i]))
    return time.perf_counter() - start


def _store_batches(root: Path, keys: list[str], seed: int, batch: int) -> float:
    order = np.random.default_rng(seed).permutation(len(keys))
    store = EmbeddingStore(root)
    out = np.empty((batch, *store.spec.shape), store.spec.dtype)
    start = time.perf_counter()
    for lo in range(0, len(keys), batch):
        some = [keys[i] for i in order[lo : lo + batch]]
        store.get_many(some, out=out[: len(some)])
    return time.perf_counter() - start


def throughput(root: Path, shape: tuple[int, ...], n: int, repeats: int) -> None:
    """Write a store of ``n`` records of ``shape`` and print store vs raw read figures."""
    keys = _write_store(root, shape, n)
    values = root / "rank0-values.bin"
    size = values.stat().st_size
    _raw_sequential(values)  # warm the page cache
    start = time.perf_counter()
    EmbeddingStore(root)
    index_s = time.perf_counter() - start
    raw = min(_raw_sequential(values) for _ in range(repeats))
    store = min(_store_random(root, keys, seed) for seed in range(repeats))
    print(
        f"{shape} float16, {n} records, {size / 2**20:.0f} MiB: "
        f"raw sequential {size / raw / 2**30:.2f} GiB/s, "
        f"store random-by-key {size / store / 2**30:.2f} GiB/s, "
        f"ratio {raw / store:.2f}, overhead {(store - raw) / n * 1e6:.1f} us/record "
        f"(index built in {index_s * 1e3:.0f} ms)"
    )
    per_batch = max(1, min(64, (64 << 20) // (2 * int(np.prod(shape)))))  # <= 64 MiB
    batched = min(_store_batches(root, keys, seed, per_batch) for seed in range(repeats))
    print(
        f"{'':>{len(str(shape))}} get_many, random batches of {per_batch}: "
        f"{size / batched / 2**30:.2f} GiB/s, ratio {raw / batched:.2f}, "
        f"overhead {(batched - raw) / n * 1e6:.1f} us/record"
    )


def int8_fidelity(shape: tuple[int, ...], n: int) -> None:
    """Print int8 bytes/record vs float16 and cosine vs the float16 record, per kind of data."""
    fp16, int8 = StoreSpec(shape, "float16"), StoreSpec(shape, "int8")
    print(
        f"int8 {shape}: {int8.record_bytes} bytes/record vs {fp16.record_bytes} float16 "
        f"({int8.record_bytes / fp16.record_bytes:.3f}x)"
    )
    for kind, description in KINDS.items():
        rng = np.random.default_rng(1)
        per_record, worst_cell = [], 1.0
        for _ in range(n):
            x = synthetic_activations(rng, shape, kind)
            ref = x.astype(np.float16).astype(np.float64).reshape(shape[0], -1)
            got = decode_record(encode_records(x[None], int8)[0], int8)
            got = got.astype(np.float64).reshape(shape[0], -1)
            dot, nr, ng = (ref * got).sum(), (ref * ref).sum(), (got * got).sum()
            per_record.append(dot / np.sqrt(nr * ng))
            cells = (ref * got).sum(0) / np.sqrt((ref * ref).sum(0) * (got * got).sum(0))
            worst_cell = min(worst_cell, float(cells.min()))
        print(
            f"  {kind:17s} cosine per record mean {np.mean(per_record):.6f} "
            f"min {np.min(per_record):.6f}, worst cell {worst_cell:.5f}   ({description})"
        )


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(","))


def main(argv: list[str] | None = None) -> None:
    """Run both parts with the command-line sizes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=40, help="image-shape records (~10 MB)")
    parser.add_argument("--shape", type=_shape, default=(1024, 72, 72), help="record shape")
    parser.add_argument("--text-records", type=int, default=20000, help="0 skips the text run")
    parser.add_argument("--text-shape", type=_shape, default=(32, 256), help="text record shape")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best counts")
    parser.add_argument("--int8-records", type=int, default=3, help="records per kind of data")
    parser.add_argument("--dir", default=None, help="where the temporary stores go (a disk)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        throughput(Path(tmp) / "image", args.shape, args.records, args.repeats)
        if args.text_records:
            throughput(Path(tmp) / "text", args.text_shape, args.text_records, args.repeats)
    if args.int8_records:
        int8_fidelity(args.shape, args.int8_records)


if __name__ == "__main__":
    main()
