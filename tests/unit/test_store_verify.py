"""Checking a store: truncated, corrupted and over-long shards, a recomputed sample, progress,
and the ``info`` / ``verify`` command line (exit status, one-line errors, both module names)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stage1.common.cli import EXIT_USER_ERROR, error_line
from stage1.common.errors import UserError
from stage1.store import (
    EmbeddingStore,
    StoreCorruptError,
    StoreWriter,
    existing_keys,
    verify,
)
from stage1.store.cli import main

from helpers.store import IMG, batch, new_store, record, write_legacy

REPO = Path(__file__).resolve().parents[2]


def test_verify_names_the_first_incomplete_record_of_a_truncated_file(tmp_path):
    spec = new_store(tmp_path)
    keys, values = batch(range(4))
    with StoreWriter(tmp_path, 0) as w:
        w.write(keys, values)
    os.truncate(tmp_path / "rank0-values.bin", 2 * spec.record_bytes + 5)
    report = verify(tmp_path)
    assert not report.ok and report.records == 2
    text = " ".join(report.problems)
    assert "truncated" in text and "'k0002'" in text and f"offset {2 * spec.record_bytes}" in text
    with pytest.raises(StoreCorruptError, match="k0002"):
        report.raise_if_bad()
    # keys whose records are incomplete do not count as stored, and a writer drops them
    assert existing_keys(tmp_path) == set(keys[:2]) and len(EmbeddingStore(tmp_path)) == 2
    with StoreWriter(tmp_path, 0) as w:
        assert (tmp_path / "rank0-values.bin").stat().st_size == 2 * spec.record_bytes
        assert (tmp_path / "rank0-keys.txt").read_text() == "k0000\nk0001\n"
        w.write(keys[2:], values[2:])
    assert verify(tmp_path).ok


@pytest.mark.parametrize("encoding", ["float16", "int8"])
def test_verify_finds_a_corrupted_record(tmp_path, encoding):
    spec = new_store(tmp_path, encoding=encoding)
    keys, values = batch(range(3))
    with StoreWriter(tmp_path, 0) as w:
        w.write(keys, values)
    assert verify(tmp_path).ok
    nan = np.full(2, np.nan, "<f2" if encoding == "float16" else "<f4").tobytes()
    with open(tmp_path / "rank0-values.bin", "r+b") as f:
        f.seek(spec.record_bytes + 4)  # inside record 1 (float16 payload / int8 scales)
        f.write(nan)
    report = verify(tmp_path)
    assert not report.ok and report.checked == 3
    assert any(
        "'k0001'" in p and f"offset {spec.record_bytes}" in p and "NaN" in p
        for p in report.problems
    )
    sampled = verify(tmp_path, decode_sample=1, seed=0)
    assert sampled.checked == 1


def test_verify_finds_trailing_garbage(tmp_path):
    spec = new_store(tmp_path)
    keys, values = batch(range(2))
    with StoreWriter(tmp_path, 0) as w:
        w.write(keys, values)
    with open(tmp_path / "rank0-values.bin", "ab") as f:
        f.write(b"garbage")
    problems = verify(tmp_path).problems
    assert len(problems) == 1
    assert "7 bytes of trailing garbage" in problems[0]
    assert f"offset {2 * spec.record_bytes}" in problems[0]


def test_verify_reports_a_missing_store_instead_of_raising(tmp_path):
    report = verify(tmp_path / "missing")
    assert not report.ok and "does not exist" in report.problems[0]


def test_verify_recomputes_a_sample(tmp_path):
    new_store(tmp_path)
    keys, values = batch(range(10))
    with StoreWriter(tmp_path, 0) as w:
        w.write(keys, values)
    asked = []

    def teacher(ks: list[str]) -> torch.Tensor:
        asked.extend(ks)
        return torch.from_numpy(np.stack([record(int(k[1:])) for k in ks]))

    report = verify(tmp_path, recompute=teacher, sample=4, seed=1)
    assert report.ok and report.sampled == 4 and len(set(asked)) == 4
    assert 0 < report.max_abs_error < 5e-3 and report.max_rel_error < 1e-3
    wrong = verify(tmp_path, recompute=lambda ks: np.zeros((len(ks), *IMG)) + 1, sample=3)
    assert not wrong.ok and "relative error" in wrong.summary()
    shape = verify(tmp_path, recompute=lambda ks: np.zeros((len(ks), 2)), sample=2)
    assert any("recompute returned shape" in p for p in shape.problems)


def test_verify_shows_progress(tmp_path, capsys, monkeypatch):
    new_store(tmp_path, world_size=2)
    keys, values = batch(range(5))
    with StoreWriter(tmp_path, 0) as w0, StoreWriter(tmp_path, 1) as w1:
        w0.write(keys[:3], values[:3])
        w1.write(keys[3:], values[3:])
    seen, asked = [], []

    def teacher(ks: list[str]) -> np.ndarray:
        asked.append(len(ks))
        return np.stack([record(int(k[1:])) for k in ks])

    report = verify(
        tmp_path,
        recompute=teacher,
        sample=4,
        recompute_batch=3,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert report.ok and report.sampled == 4 and asked == [3, 1]
    assert seen[-1] == (9, 9) and [d for d, _ in seen] == sorted({d for d, _ in seen})
    assert capsys.readouterr().err == ""
    verify(tmp_path)  # stderr is not a terminal: no bar
    assert capsys.readouterr().err == ""
    verify(tmp_path, progress=True)
    assert "5/5" in capsys.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["verify", str(tmp_path)]) == 0
    assert "5/5" in capsys.readouterr().err


def test_cli_verify_exit_code(tmp_path, capsys):
    new_store(tmp_path)
    keys, values = batch(range(3))
    with StoreWriter(tmp_path, 0) as w:
        w.write(keys, values)
    assert main(["verify", str(tmp_path)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["verify", str(tmp_path), "--sample", "1"]) == 0
    assert "1 decoded" in capsys.readouterr().out
    assert main(["info", str(tmp_path)]) == 0
    assert "3 records" in capsys.readouterr().out
    os.truncate(tmp_path / "rank0-values.bin", 100)
    assert main(["verify", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "truncated" in captured.out and captured.err == ""


def test_cli_reads_a_legacy_store(tmp_path, capsys):
    write_legacy(tmp_path)
    assert main(["verify", str(tmp_path), "--legacy-shape", "8,16"]) == 0
    assert main(["info", str(tmp_path), "--legacy-shape", "8x16"]) == 0
    out = capsys.readouterr().out
    assert "4 records" in out and "duplicate keys ignored (legacy store): 1" in out


def test_cli_mistakes_are_one_error_line(tmp_path, capsys):
    store, legacy = tmp_path / "store", tmp_path / "legacy"
    new_store(store)
    write_legacy(legacy)
    (tmp_path / "file").write_text("x")
    mistakes = [
        ["info", str(tmp_path / "missing")],
        ["verify", str(tmp_path / "missing")],
        ["verify", str(tmp_path / "file")],
        ["info", str(legacy)],
        ["verify", str(legacy)],
        ["info", str(legacy), "--legacy-shape", "abc"],
        ["verify", str(legacy), "--legacy-shape", "0,16"],
        ["verify", str(legacy), "--legacy-shape", ","],
        ["verify", str(store), "--legacy-shape", "8,16"],
        ["verify", str(store), "--sample", "-1"],
        ["verify", str(store), "--sample", "many"],
        ["info"],
        ["check", str(store)],
    ]
    for argv in mistakes:
        with pytest.raises(UserError, match=" — ") as err:  # every kind of mistake
            main(argv)
        line = error_line(err.value)
        assert "\n" not in line and " — " in line, (argv, line)
        assert capsys.readouterr() == ("", ""), argv
    with pytest.raises(UserError, match="see `python -m stage1.embedding_store info --help`"):
        main(["info"])


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m module args`` from the repository, without debugging."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "STAGE1_DEBUG": ""},
        timeout=120,
    )


def test_cli_error_is_one_line_without_traceback(tmp_path):
    write_legacy(tmp_path)  # no manifest, and no --legacy-shape given
    run = run_module("stage1.embedding_store", "verify", str(tmp_path))  # the earlier name
    assert run.returncode == EXIT_USER_ERROR and "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert "--legacy-shape" in lines[0] and run.stdout == ""


def test_cli_runs_as_python_m_stage1_store(tmp_path):
    new_store(tmp_path)
    run = run_module("stage1.store", "info", str(tmp_path))
    assert run.returncode == 0 and "0 records" in run.stdout, run.stderr
    run = run_module("stage1.store", "verify")  # no path: the error names the command as run
    assert run.returncode == EXIT_USER_ERROR and "Traceback" not in run.stderr
    assert run.stderr.splitlines() == [
        "error: the following arguments are required: path — see "
        "`python -m stage1.store verify --help`"
    ]
