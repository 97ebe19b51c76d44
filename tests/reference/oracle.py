"""Run Meta's ``sam3==0.1.4`` as a numerical oracle, in a subprocess, from our tests.

Tests put ``tests/reference`` on ``sys.path`` (e.g. in ``conftest.py``) and run jobs through an
:class:`OracleWorker`: one ``meta_worker.py`` subprocess that runs every job of the session
(torch and Meta's package imported once), with ``PYTHONPATH`` set to the oracle site and this
folder only, and with ``out_dir`` as its working directory, so our repository root (and our own
``sam3``) is never importable there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.append(str(HERE))

from prepare_oracle import is_ready, oracle_site  # noqa: E402

META_WORKER = HERE / "meta_worker.py"
PREPARE_HINT = "python tests/reference/prepare_oracle.py"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TAIL_LINES = 40

__all__ = ["META_WORKER", "OracleWorker", "is_ready", "oracle_env", "oracle_site"]


def oracle_env() -> dict[str, str]:
    """Return the subprocess environment: ours, with PYTHONPATH = oracle site + this folder."""
    env = dict(os.environ)  # thread settings (OMP_NUM_THREADS, MKL_NUM_THREADS, ...) inherited
    env["PYTHONPATH"] = str(oracle_site()) + os.pathsep + str(HERE)
    env.pop("PYTHONSTARTUP", None)
    return env


def _tail(text: str, lines: int = _TAIL_LINES) -> str:
    """Return the last ``lines`` lines of ``text``."""
    return "\n".join(text.strip().splitlines()[-lines:])


class OracleWorker:
    """Runs ``meta_oracle`` jobs in one long-lived ``meta_worker.py`` process (started on the
    first job, started again if it died); :meth:`close` ends it."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir).resolve()
        self.proc: subprocess.Popen | None = None

    def _worker(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "worker.log", "a", encoding="utf-8") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, str(META_WORKER)],
                    cwd=str(self.out_dir),
                    env=oracle_env(),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                )
        return self.proc

    def run(self, job: dict[str, Any], name: str, timeout: float | None = None) -> dict[str, Any]:
        """Run one job and return its result dict (tensors and plain containers).

        Writes ``out_dir/NAME.job.json``, ``out_dir/NAME.pt`` and ``out_dir/NAME.log`` (the
        job's stdout and stderr). Raises ``RuntimeError`` if the oracle is not prepared, if the
        job fails or times out (the worker is then ended).
        """
        if not is_ready():
            raise RuntimeError(
                f"Meta's sam3 oracle is not prepared (no valid stamp under "
                f"{oracle_site().parent}). Run `{PREPARE_HINT}` once (it pip-installs "
                "sam3==0.1.4 into an ignored folder)."
            )
        if not isinstance(job, dict) or "kind" not in job:
            raise ValueError(f"job must be a dict with a 'kind' entry, got {job!r:.200}")
        if not _SAFE_NAME.match(name):
            raise ValueError(f"name {name!r} must be a plain file stem (letters, digits, _ . -)")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        paths = {end: self.out_dir / f"{name}.{end}" for end in ("job.json", "pt", "log")}
        paths["job.json"].write_text(json.dumps(job, indent=2, sort_keys=True) + "\n", "utf-8")
        paths["pt"].unlink(missing_ok=True)
        request = {"job": str(paths["job.json"]), "out": str(paths["pt"]), "log": str(paths["log"])}
        proc = self._worker()
        try:
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            reply = self._reply(proc, timeout)
        except BrokenPipeError:  # the worker died before it read the request
            reply = None
        what = f"oracle job {name!r} ({job['kind']})"
        if reply is None:
            self.close()
            log = _read(paths["log"]) or _read(self.out_dir / "worker.log")
            raise RuntimeError(
                f"{what}: no answer (timed out after {timeout}s, or the worker died); log "
                f"tail:\n{_tail(log)}"
            )
        if reply["code"] != 0:
            raise RuntimeError(
                f"{what} failed with exit code {reply['code']} (full log: {paths['log']}); "
                f"log tail:\n{_tail(_read(paths['log']))}"
            )
        if not paths["pt"].is_file():
            raise RuntimeError(f"{what} wrote no result at {paths['pt']} (log: {paths['log']})")
        return self.load(name)

    def load(self, name: str) -> dict[str, Any]:
        """The result of the job that ran as ``name``."""
        return torch.load(self.out_dir / f"{name}.pt", map_location="cpu", weights_only=True)

    @staticmethod
    def _reply(proc: subprocess.Popen, timeout: float | None) -> dict[str, Any] | None:
        """The worker's answer, or ``None`` if it died or ``timeout`` seconds passed."""
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                return None
        line = proc.stdout.readline()
        return json.loads(line) if line else None

    def close(self) -> None:
        """End the worker (it exits when its stdin closes; killed if it does not)."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()


def _read(path: Path) -> str:
    """``path``'s text, or an empty string if there is none."""
    return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
