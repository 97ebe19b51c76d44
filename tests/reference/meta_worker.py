"""Run many numerical-oracle jobs in one process, so that torch and Meta's ``sam3`` are imported
once per test session instead of once per job.

Usage: ``python meta_worker.py`` (started by ``oracle.OracleWorker``, in the same environment
as ``meta_oracle.py``). Each line on stdin is a JSON request ``{"job": JOB.json, "out": OUT.pt,
"log": LOG}``; the job runs as ``meta_oracle.py JOB.json OUT.pt`` would, with its stdout and
stderr (file descriptors 1 and 2) written to ``LOG``, and the worker answers with one JSON line
``{"code": N}`` on its stdout: 0 when ``OUT.pt`` was written, else the exit status the one-job
command would have had. It exits when stdin closes.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(1, str(HERE))

import meta_oracle  # noqa: E402


def run_logged(job_path: Path, out_path: Path, log_path: Path) -> int:
    """Run one job with file descriptors 1 and 2 sent to ``log_path``; return its exit status."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "w", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            meta_oracle.run_job_file(job_path, out_path)
            code = 0
        except SystemExit as err:
            code = err.code if isinstance(err.code, int) else 1
        except BaseException:  # reported in the log; the next job still runs
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
    return code


def main() -> int:
    """Answer every request on stdin (see the module docstring) until stdin closes."""
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # nothing but the replies goes to the parent's pipe
    for line in sys.stdin:
        request = json.loads(line)
        code = run_logged(Path(request["job"]), Path(request["out"]), Path(request["log"]))
        replies.write(json.dumps({"code": code}) + "\n")
        replies.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
