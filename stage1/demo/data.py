"""The quickstart's tiny datasets: SA-1B-style photos from data/samples/ and a captions parquet."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"
HELD_OUT = "astronaut"  # the validation image, also the one drawn

_SUBJECTS = [
    "a tabby cat", "a cup of coffee", "a rocket", "an astronaut", "a red car", "two dogs",
    "a wooden chair", "a bowl of fruit", "a city street", "a sailing boat", "a mountain lake",
    "a bicycle", "a plate of pasta", "a child with a kite", "an old lighthouse", "a green apple",
]  # fmt: skip
_DETAILS = [
    "in bright sunlight", "at night", "on a white table", "seen from above", "in the rain",
    "next to a window", "in a busy market", "with a blurred background",
]  # fmt: skip
_STYLES = ["A photo of", "A close-up of", "A picture showing", "An image of"]


def held_out_photo(root: Path) -> Path:
    """Where :func:`make_images` put the held-out photo under ``root``."""
    return root / "images" / "val" / f"sa_{HELD_OUT}.jpg"


def make_images(root: Path) -> Path:
    """An SA-1B-style folder: train = each sample photo, its mirror and three crops; val = the
    held-out photo."""
    photos = sorted(SAMPLES.glob("*.jpg"))
    if not any(p.stem == HELD_OUT for p in photos):
        raise FileNotFoundError(f"{SAMPLES}/{HELD_OUT}.jpg is missing: is the checkout complete?")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
    n = 0
    for photo in photos:
        image = Image.open(photo).convert("RGB")
        if photo.stem == HELD_OUT:
            image.save(held_out_photo(root), quality=92)
            continue
        variants = [image, ImageOps.mirror(image)]
        w, h = image.size
        for _ in range(3):
            cw, ch = int(w * rng.uniform(0.55, 0.8)), int(h * rng.uniform(0.55, 0.8))
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            variants.append(image.crop((x0, y0, x0 + cw, y0 + ch)))
        for i, variant in enumerate(variants):
            variant.save(root / "images" / "train" / f"sa_{photo.stem}_{i}.jpg", quality=92)
            n += 1
    print(f"  {n} training images, 1 validation image ({HELD_OUT}) in {root}")
    return root


def make_captions(root: Path) -> Path:
    """A Recap-DataComp-style parquet (``key``, ``url``, ``re_caption``, ``org_caption``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    combos = list(itertools.product(_STYLES, _SUBJECTS, _DETAILS))
    rng = np.random.default_rng(0)
    picked = [combos[i] for i in rng.permutation(len(combos))[:160]]
    captions = [f"{style} {subject} {detail}." for style, subject, detail in picked]
    root.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "key": [f"{i:06d}" for i in range(len(captions))],
            "url": [f"https://example.invalid/{i}.jpg" for i in range(len(captions))],
            "re_caption": captions,
            "org_caption": [c.split(" ", 3)[-1] for c in captions],
        }
    )
    pq.write_table(table, root / "part-00000.parquet")
    print(f"  {len(captions)} captions in {root / 'part-00000.parquet'}")
    return root
