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
