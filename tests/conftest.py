"""Shared fixtures and hooks: the Meta oracle runner (each job run once per session) and the
summary of every oracle comparison's measured error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REFERENCE = Path(__file__).resolve().parent / "reference"
sys.path.insert(0, str(REFERENCE))

from helpers.compare import LEDGER  # noqa: E402
from oracle import OracleWorker  # noqa: E402


@pytest.fixture(scope="session")
def oracle(tmp_path_factory):
    """``oracle(job, name)`` runs one Meta job once per session (in one worker process for the
    session) and returns its outputs; a later call with the same name reads them again from
    the result file, so they stay in memory only while a test holds them."""
    worker = OracleWorker(tmp_path_factory.mktemp("oracle"))
    done: set[str] = set()

    def run(job: dict, name: str) -> dict:
        if name in done:
            return worker.load(name)
        result = worker.run(job, name)
        done.add(name)
        return result

    yield run
    worker.close()


def pytest_terminal_summary(terminalreporter):
    """Print every oracle comparison's measured error."""
    if LEDGER:
        terminalreporter.section("oracle comparisons (ours vs Meta's sam3 0.1.4)")
        for name, rel, diff in LEDGER:
            terminalreporter.write_line(f"{name:60s} rel L2 {rel:.2e}   max |diff| {diff:.2e}")
