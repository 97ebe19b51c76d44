"""Shared fixtures: the Meta oracle runner (cached per session) and an error ledger."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REFERENCE = Path(__file__).resolve().parent / "reference"
sys.path.insert(0, str(REFERENCE))

from oracle import run_oracle  # noqa: E402

_LEDGER: list[tuple[str, float, float]] = []


@pytest.fixture(scope="session")
def oracle(tmp_path_factory):
    """``oracle(job, name)`` runs one Meta job once per session and returns its outputs."""
    out_dir = tmp_path_factory.mktemp("oracle")
    cache: dict[str, dict] = {}

    def run(job: dict, name: str) -> dict:
        if name not in cache:
            cache[name] = run_oracle(job, out_dir, name)
        return cache[name]

    return run


def assert_matches(
    name: str, ours: torch.Tensor, ref: torch.Tensor, rel_l2: float = 1e-5, max_abs: float = 1e-3
) -> None:
    """Assert ``ours`` equals Meta's ``ref`` within the project's oracle tolerances; record the
    measured relative L2 error and max |diff| for the session summary."""
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
    ours, ref = ours.detach().double(), ref.detach().double()
    diff = (ours - ref).abs().max().item()
    rel = ((ours - ref).norm() / ref.norm().clamp_min(1e-30)).item()
    _LEDGER.append((name, rel, diff))
    assert rel <= rel_l2 and diff <= max_abs, (
        f"{name}: relative L2 {rel:.3e}, max |diff| {diff:.3e}"
    )


def pytest_terminal_summary(terminalreporter):
    """Print every oracle comparison's measured error."""
    if _LEDGER:
        terminalreporter.section("oracle comparisons (ours vs Meta's sam3 0.1.4)")
        for name, rel, diff in _LEDGER:
            terminalreporter.write_line(f"{name:60s} rel L2 {rel:.2e}   max |diff| {diff:.2e}")


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
