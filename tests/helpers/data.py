"""Tiny datasets in the layouts the pipeline reads, and the options of a tiny random teacher."""

from __future__ import annotations

from pathlib import Path


def make_sa1b(root: Path, n_train: int = 5, n_val: int = 2, corrupt: bool = True) -> Path:
    """A tiny SA-1B folder: smooth random JPEGs (a 4x4 grid of colours, bilinearly enlarged) of
    assorted sizes and aspect ratios (+ one corrupt file if asked)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = (int(v) for v in rng.integers(40, 160, 2))
            grid = Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8))
            image = grid.resize((w, h), Image.BILINEAR)
            image.save(root / "images" / split / f"sa_{split}{i:03d}.jpg")
    if corrupt:
        (root / "images" / "train" / "sa_corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


def make_recap(root: Path, n: int = 10) -> Path:
    """A tiny Recap-DataComp folder: one parquet file with a null, an empty and a duplicate."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    keys = [f"k{i:04d}" for i in range(n)] + ["knull", "kempty", "k0001"]
    caps = [f"a photo of object number {i}" for i in range(n)] + [None, "  ", "dup"]
    pq.write_table(pa.table({"key": keys, "re_caption": caps}), root / "part-00000.parquet")
    return root


# Options that turn the spec's commands into smoke runs: no sam3.pt here, so a seeded random
# tiny teacher (explicit opt-in) at 112 px (an 8x8x64 embedding).
# The tiny teacher's geometry (and no loader workers), shared by the smoke runs of every phase.
TINY_GEOMETRY = [
    "DATA.IMG_SIZE",
    "112",
    "DISTILL.EMBED_DIM",
    "64",
    "DISTILL.EMBED_SIZE",
    "8",
    "DATA.NUM_WORKERS",
    "0",
]
TINY_TEACHER = [
    "MODEL.RESUME",
    "",
    "MODEL.ALLOW_RANDOM_TEACHER",
    "True",
    "MODEL.TEACHER_ARCH",
    "sam3_tiny",
    *TINY_GEOMETRY,
]
