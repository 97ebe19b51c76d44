"""Data-path overhead of student training: store-backed loader vs batches already in memory.

Trains ES-EV-S (efficientvit_b0 + head, 1008² inputs, 1024x72x72 targets) for the same steps
twice per round: once fed by the real input pipeline (JPEG decode + resize/pad in DataLoader
workers, teacher records read from the embedding store by key) and once from the same batches
prepared beforehand in memory. Rounds alternate; the ratio of the median step times is the
data-path overhead (target <= 1.10: the model, not the input pipeline, sets the pace).

    python benchmarks/train_throughput.py                 # ~3 min on a 2-core CPU
    python benchmarks/train_throughput.py --steps 20 --batch-size 4 --workers 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stage1.common.config import load_config  # noqa: E402
from stage1.common.students import build_configured_student  # noqa: E402
from stage1.data.distill import ImageDistillDataset  # noqa: E402
from stage1.data.sa1b import list_sa1b  # noqa: E402
from stage1.data.transforms import ImageTransform, image_transform, preprocessing_record  # noqa: E402
from stage1.store import (  # noqa: E402
    EmbeddingStore,
    StoreSpec,
    StoreWriter,
    create_store,
)
from stage1.train.losses import distill_loss  # noqa: E402


def make_data(
    root: Path, n: int, transform: ImageTransform, shape: tuple[int, ...]
) -> tuple[Path, Path]:
    """``n`` random JPEGs (SA-1B-like 4:3 sizes) and a store of random teacher records."""
    rng = np.random.default_rng(0)
    images = root / "sa1b" / "images" / "train"
    images.mkdir(parents=True)
    keys = []
    for i in range(n):
        h, w = (1125, 1500) if i % 2 else (1500, 1125)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            images / f"sa_{i:05d}.jpg", quality=90
        )
        keys.append(f"sa_{i:05d}")
    store = root / "store"
    spec = StoreSpec(shape, meta={"preprocessing": preprocessing_record(transform)})
    create_store(store, spec, 1)
    with StoreWriter(store, 0) as writer:
        for key in keys:
            writer.write([key], rng.standard_normal((1, *shape), dtype=np.float32))
    return root / "sa1b", store


def main(argv: list[str] | None = None) -> None:
    """Run the comparison and print the ratio."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per timed pass")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians)")
    args = p.parse_args(argv)

    cfg = load_config(ROOT / "stage1" / "configs" / "es_ev_s.yaml")  # the student and geometry
    transform = image_transform(cfg)
    shape = (cfg.DISTILL.EMBED_DIM, cfg.DISTILL.EMBED_SIZE, cfg.DISTILL.EMBED_SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        n = args.steps * args.batch_size
        data, store_dir = make_data(Path(tmp), n, transform, shape)
        store = EmbeddingStore(store_dir)
        ds = ImageDistillDataset(list_sa1b(data, ("train",)), store, transform)
        loader = DataLoader(
            ds,
            batch_size=args.batch_size,
            num_workers=args.workers,
            shuffle=True,
            drop_last=True,
            persistent_workers=args.workers > 0,
        )
        torch.manual_seed(0)
        model = build_configured_student(cfg, "image")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(batch: dict) -> None:
            out = model(batch["image"])  # fp32: the fastest model step here, the strictest test
            loss = distill_loss(out, batch["teacher"], batch["valid"], channel_dim=1).total
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        def timed(batches) -> float:
            start = time.perf_counter()
            count = 0
            for batch in batches:
                step(batch)
                count += 1
            return (time.perf_counter() - start) / count

        in_memory = list(loader)  # the same kind of batches, decoded once, up front
        step(in_memory[0])  # warm-up
        times = {"loader": [], "memory": []}
        for r in range(args.rounds):
            for name in ("loader", "memory") if r % 2 == 0 else ("memory", "loader"):
                times[name].append(timed(loader if name == "loader" else in_memory))
                print(f"round {r + 1}: {name:6s} {times[name][-1]:.3f} s/step", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"ES-EV-S, batch {args.batch_size}, {args.workers} workers, {args.steps} steps/pass, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"median step: store-backed loader {med['loader']:.3f} s, in memory {med['memory']:.3f} "
        f"s, ratio {med['loader'] / med['memory']:.3f} (target <= 1.10)"
    )


if __name__ == "__main__":
    main()
