"""A user's mistake in a phase-1/2 entry point ends as one ``error:`` line, no traceback."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stage1.common.cli import EXIT_USER_ERROR, run_cli
from stage1.common.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINTS = {
    "save_embedding_image_stage1.py": "stage1/configs/teacher/sam_vit_huge_sa1b.yaml",
    "save_embedding_text_stage1.py": "stage1/configs/teacher/sam_text_teacher.yaml",
    "train_image_encoder_stage1.py": "stage1/configs/es_ev_s.yaml",
    "train_text_encoder_stage1.py": "stage1/configs/es_mc_s.yaml",
}


def _run(entry: str, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    """Run an entry point as a user would, from the repository root."""
    env = {k: v for k, v in os.environ.items() if k not in ("STAGE1_DEBUG", "STAGE1_ERROR_DIR")}
    return subprocess.run(
        [sys.executable, f"stage1/{entry}", *args],
        cwd=ROOT,
        env={**env, **extra_env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_error_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Assert the process failed with exactly one ``error:`` line on stderr; return it."""
    everything = proc.stdout + proc.stderr
    assert "Traceback" not in everything, everything[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert proc.returncode == EXIT_USER_ERROR
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_missing_config_file_is_one_line_in_every_entry_point(entry, tmp_path):
    missing = tmp_path / "nope.yaml"
    _one_error_line(_run(entry, "--cfg", str(missing)), str(missing))


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_bad_opts_key_is_one_line_with_a_suggestion(entry, tmp_path):
    out = tmp_path / "run"
    proc = _run(
        entry, "--cfg", ENTRY_POINTS[entry], "--output", str(out), "--opts", "DATA.BATCHSIZE", "2"
    )
    _one_error_line(proc, "DATA.BATCHSIZE", "DATA.BATCH_SIZE")
    assert not out.exists()


@pytest.mark.parametrize(
    "opts, fragment",
    [
        (["DATA.BATCH_SIZE"], "odd"),  # a key without its value
        (["DATA.BATCH_SIZE", "many"], "DATA.BATCH_SIZE"),  # wrong type
        (["TRAIN.AMP", "maybe"], "TRAIN.AMP"),  # not a choice
    ],
)
def test_opts_mistakes_are_one_line(opts, fragment):
    cfg = ENTRY_POINTS["train_text_encoder_stage1.py"]
    _one_error_line(_run("train_text_encoder_stage1.py", "--cfg", cfg, "--opts", *opts), fragment)


def test_a_bad_batch_size_flag_is_one_line():
    cfg = ENTRY_POINTS["save_embedding_image_stage1.py"]
    proc = _run("save_embedding_image_stage1.py", "--cfg", cfg, "--batch-size", "0")
    _one_error_line(proc, "DATA.BATCH_SIZE")


def test_argparse_usage_errors_exit_non_zero():
    proc = _run("train_image_encoder_stage1.py", "--no-such-flag")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("train_image_encoder_stage1.py: error:")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(how, tmp_path):
    args = ["--cfg", str(tmp_path / "nope.yaml")]
    if how == "flag":
        proc = _run("train_image_encoder_stage1.py", *args, "--debug")
    else:
        proc = _run("train_image_encoder_stage1.py", *args, STAGE1_DEBUG="1")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_os_errors_are_one_line_with_the_path(capsys, monkeypatch):
    monkeypatch.delenv("STAGE1_DEBUG", raising=False)
    monkeypatch.delenv("STAGE1_ERROR_DIR", raising=False)
    monkeypatch.setattr(sys, "argv", ["entry.py"])

    def full_disk(argv):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/run/ckpt_epoch_3.pth")

    with pytest.raises(SystemExit) as exit_info:
        run_cli(full_disk)
    assert exit_info.value.code == EXIT_USER_ERROR
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: /data/run/ckpt_epoch_3.pth: ")
    assert os.strerror(errno.ENOSPC) in lines[0] and " — " in lines[0]


def test_other_exceptions_keep_their_traceback(monkeypatch):
    monkeypatch.delenv("STAGE1_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["entry.py"])

    def bug(argv):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError, match="a bug"):
        run_cli(bug)


def test_under_a_launcher_the_line_goes_to_the_error_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("STAGE1_DEBUG", raising=False)
    monkeypatch.setenv("STAGE1_ERROR_DIR", str(tmp_path))
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setattr(sys, "argv", ["entry.py"])

    def mistake(argv):
        raise ConfigError("TRAIN.AMP = 'x' is not a known choice — choose one of ['auto']")

    with pytest.raises(SystemExit) as exit_info:
        run_cli(mistake)
    assert exit_info.value.code == EXIT_USER_ERROR
    assert [p.name for p in tmp_path.iterdir()] == ["rank3.txt"]
    written = (tmp_path / "rank3.txt").read_text()
    assert written == "error: TRAIN.AMP = 'x' is not a known choice — choose one of ['auto']\n"
    assert capsys.readouterr().err == ""  # the launcher prints it, once for all ranks
