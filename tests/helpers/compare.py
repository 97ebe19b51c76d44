"""Comparing our tensors with the oracle's, with the measured errors kept for the summary."""

from __future__ import annotations

import torch

LEDGER: list[tuple[str, float, float]] = []  # (name, relative L2, max |diff|) of every comparison


def assert_matches(
    name: str, ours: torch.Tensor, ref: torch.Tensor, rel_l2: float = 1e-5, max_abs: float = 1e-3
) -> None:
    """Assert ``ours`` equals Meta's ``ref`` within the project's oracle tolerances; record the
    measured relative L2 error and max |diff| for the session summary."""
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
    ours, ref = ours.detach().double(), ref.detach().double()
    diff = (ours - ref).abs().max().item()
    rel = ((ours - ref).norm() / ref.norm().clamp_min(1e-30)).item()
    LEDGER.append((name, rel, diff))
    assert rel <= rel_l2 and diff <= max_abs, (
        f"{name}: relative L2 {rel:.3e}, max |diff| {diff:.3e}"
    )
