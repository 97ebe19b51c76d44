"""Run Meta's ``sam3==0.1.4`` as a numerical oracle, in a subprocess, from our tests.

Tests put ``tests/reference`` on ``sys.path`` (e.g. in ``conftest.py``) and call
:func:`run_oracle`. The subprocess runs ``meta_oracle.py`` with ``PYTHONPATH`` set to the oracle
site and this folder only, and with ``out_dir`` as its working directory, so our repository root
(and our own ``sam3``) is never importable there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.append(str(HERE))

from prepare_oracle import is_ready, oracle_site  # noqa: E402

META_ORACLE = HERE / "meta_oracle.py"
PREPARE_HINT = "python tests/reference/prepare_oracle.py"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_STDERR_TAIL_LINES = 40

__all__ = ["META_ORACLE", "is_ready", "oracle_env", "oracle_site", "run_oracle"]


def oracle_env() -> dict[str, str]:
    """Return the subprocess environment: ours, with PYTHONPATH = oracle site + this folder."""
    env = dict(os.environ)  # thread settings (OMP_NUM_THREADS, MKL_NUM_THREADS, ...) inherited
    env["PYTHONPATH"] = str(oracle_site()) + os.pathsep + str(HERE)
    env.pop("PYTHONSTARTUP", None)
    return env


def _tail(text: str, lines: int = _STDERR_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of ``text``."""
    return "\n".join(text.strip().splitlines()[-lines:])


def run_oracle(
    job: dict[str, Any], out_dir: Path, name: str, timeout: float | None = None
) -> dict[str, Any]:
    """Run one ``meta_oracle.py`` job and return its result dict (tensors and plain containers).

    Writes ``out_dir/NAME.job.json``, ``out_dir/NAME.pt`` and ``out_dir/NAME.log``. Raises
    ``RuntimeError`` if the oracle is not prepared, if the subprocess fails or times out.
    """
    if not is_ready():
        raise RuntimeError(
            f"Meta's sam3 oracle is not prepared (no valid stamp under {oracle_site().parent}). "
            f"Run `{PREPARE_HINT}` once (it pip-installs sam3==0.1.4 into an ignored folder)."
        )
    if not isinstance(job, dict) or "kind" not in job:
        raise ValueError(f"job must be a dict with a 'kind' entry, got {job!r:.200}")
    if not _SAFE_NAME.match(name):
        raise ValueError(f"name {name!r} must be a plain file stem (letters, digits, _ . -)")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    job_path = out_dir / f"{name}.job.json"
    out_path = out_dir / f"{name}.pt"
    log_path = out_dir / f"{name}.log"
    job_path.write_text(json.dumps(job, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    out_path.unlink(missing_ok=True)

    cmd = [sys.executable, str(META_ORACLE), str(job_path), str(out_path)]
    try:
        proc = subprocess.run(
            cmd,
            cwd=str(out_dir),
            env=oracle_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        stderr = err.stderr or ""
        if isinstance(stderr, bytes):
            stderr = stderr.decode(errors="replace")
        raise RuntimeError(
            f"oracle job {name!r} ({job['kind']}) timed out after {timeout}s; "
            f"stderr tail:\n{_tail(stderr)}"
        ) from err
    log_path.write_text(
        f"$ {' '.join(cmd)}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}",
        encoding="utf-8",
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"oracle job {name!r} ({job['kind']}) failed with exit code {proc.returncode} "
            f"(full log: {log_path}); stderr tail:\n{_tail(proc.stderr)}"
        )
    if not out_path.is_file():
        raise RuntimeError(
            f"oracle job {name!r} exited 0 but wrote no result at {out_path} (log: {log_path})"
        )
    return torch.load(out_path, map_location="cpu", weights_only=True)
