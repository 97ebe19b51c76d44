"""Timing two implementations fairly on a shared CPU, for the ``*_vs_reference`` benchmarks.

Each implementation lives in a worker process of its own (Meta's with the oracle's
``sam3==0.1.4`` first on its path) that holds one model and answers commands on stdin, one line
each. The parent asks the two in turn for one timed pass (ABBA order, after untimed warm-ups),
so runs alternate and never overlap. Every pass also reports how many cores it kept busy
(process CPU time / wall time): a run under :data:`BUSY_SHARE` of its threads shared the CPU
with someone else's load (two OpenMP threads on one free core can be several times slower, not
2x); such runs are counted and the medians of the others are printed beside the overall ones.
Ratios are of the medians and, separately, the median of the per-round ratios (each round
times both back to back, so slow drifts of a shared machine cancel).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "reference"  # seeded_init, meta_oracle, prepare_oracle
BUSY_SHARE = 0.75  # a run with fewer cores busy than this share of its threads was contended
Reply = tuple[float, float, dict[str, float]]  # seconds, cores busy, stage seconds


# ---------------------------------------------------------------- figures


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of ``a[i] / b[i]``."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def uncontended_median(times: list[float], cores: list[float], threads: int) -> float | None:
    """Median of the runs that kept at least :data:`BUSY_SHARE` of their ``threads`` cores
    busy (the others shared the CPU with someone else's load); ``None`` if there are none."""
    kept = [t for t, c in zip(times, cores, strict=True) if c >= BUSY_SHARE * threads]
    return statistics.median(kept) if kept else None


def cpu_bf16_flags(cpuinfo: str) -> dict[str, bool]:
    """Whether ``/proc/cpuinfo``'s text lists the native bf16 instruction sets."""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return {name: name in flags for name in ("avx512_bf16", "amx_bf16", "amx_tile")}


def cpu_report() -> dict[str, Any]:
    """The CPU's model name, torch's CPU capability and the cpuinfo bf16 flags."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")),
        "?",
    )
    return {
        "model": model,
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        **cpu_bf16_flags(cpuinfo),
        "mkldnn_bf16": bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: None)()),
    }


# ---------------------------------------------------------------- inside a worker


class StageClock:
    """Wall time spent inside named submodules (forward hooks), summed over one pass."""

    def __init__(self, model: nn.Module, stages: dict[str, str]):
        self.stages = stages  # stage -> module path
        self.seconds: dict[str, float] = {}
        self._start: dict[str, float] = {}
        for stage, path in self.stages.items():
            module = model.get_submodule(path)
            module.register_forward_pre_hook(partial(self._enter, stage))
            module.register_forward_hook(partial(self._leave, stage))

    def _enter(self, stage: str, *_: Any) -> None:
        self._start[stage] = time.perf_counter()

    def _leave(self, stage: str, *_: Any) -> None:
        spent = time.perf_counter() - self._start[stage]
        self.seconds[stage] = self.seconds.get(stage, 0.0) + spent

    def take(self, total: float) -> dict[str, float]:
        """This pass's stage times plus ``other`` (the rest of ``total``); resets the clock."""
        out = {s: self.seconds.get(s, 0.0) for s in self.stages}
        out["other"] = total - sum(out.values())
        self.seconds = {}
        return out


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """One call of ``fn``: its result, the wall seconds and the cores it kept busy."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    seconds = time.perf_counter() - t0
    return out, seconds, (time.process_time() - c0) / seconds


def serve(
    run: Callable[[str], Reply],
    last: dict[str, Any],
    model: nn.Module,
    **more: Callable[..., Reply],
) -> None:
    """A worker's loop: say ``ready``, then answer each command line with ``ok <seconds> <cores
    busy> <stages json>``, or with ``err <error>`` (the parent decides what to skip), until
    ``quit``. ``run MODE`` is ``run(MODE)``, which keeps its outputs in ``last[MODE]``;
    ``save MODE PATH`` writes them; ``keys PATH`` writes the shapes of ``model``'s state dict
    (as JSON); ``more`` holds further commands (``NAME ARGS...``)."""

    def save(mode: str, path: str) -> Reply:
        torch.save(last[mode], path)
        return 0.0, 0.0, {}

    def keys(path: str) -> Reply:
        Path(path).write_text(json.dumps({k: list(v.shape) for k, v in model.state_dict().items()}))
        return 0.0, 0.0, {}

    handlers = {"run": run, "save": save, "keys": keys, **more}
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "quit":
            return
        try:
            seconds, cores, stages = handlers[cmd](*args)
        except Exception as err:
            first = str(err).splitlines()[0] if str(err) else ""
            print(f"err {type(err).__name__}: {first}", flush=True)
        else:
            print(f"ok {seconds:.6f} {cores:.3f} {json.dumps(stages)}", flush=True)


# ---------------------------------------------------------------- in the parent


class WorkerError(RuntimeError):
    """A worker answered a command with an error."""


class Worker:
    """A worker process seen from the parent: ``script --worker ROLE ARGS...``; the ``meta``
    role runs with the oracle's site folder first on its path."""

    def __init__(self, script: Path, role: str, *args: str):
        env = dict(os.environ)
        if role == "meta":
            if str(REFERENCE) not in sys.path:
                sys.path.append(str(REFERENCE))
            from prepare_oracle import is_ready, oracle_site

            if not is_ready():
                raise SystemExit(
                    "Meta's package is missing: run python tests/reference/prepare_oracle.py"
                )
            env["PYTHONPATH"] = os.pathsep.join([str(oracle_site()), str(REFERENCE)])
        else:
            env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(REFERENCE)])
        self.name = role
        self.proc = subprocess.Popen(
            [sys.executable, str(script), "--worker", role, *args],
            env=env,
            cwd=tempfile.gettempdir(),
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"{role} worker failed to start (exit {self.proc.poll()}): {line!r}")

    def ask(self, *words: str) -> Reply:
        """Send one command; return the seconds, the cores busy and the stage times it reports."""
        self.proc.stdin.write(" ".join(words) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if line.startswith("err"):
            raise WorkerError(f"{self.name}: {line[4:].strip()}")
        if not line.startswith("ok"):
            raise RuntimeError(f"{self.name} worker died (exit {self.proc.poll()}): {line!r}")
        _, seconds, cores, stages = line.split(maxsplit=3)
        return float(seconds), float(cores), json.loads(stages)

    def outputs(self, mode: str, folder: str) -> dict[str, Tensor]:
        """The outputs of this worker's last ``mode`` pass (``save MODE PATH``)."""
        path = f"{folder}/{self.name}.{mode}.pt"
        self.ask("save", mode, path)
        return torch.load(path, weights_only=True)

    def close(self) -> None:
        """Stop the worker."""
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait()


def check_keys(pair: list[Worker], folder: str, ignore: str | None = None) -> None:
    """Exit unless both workers' models have the same state-dict keys and shapes (keys that
    start with ``ignore`` left out)."""
    keys = []
    for w in pair:
        w.ask("keys", f"{folder}/{w.name}.keys.json")
        shapes = json.loads(Path(f"{folder}/{w.name}.keys.json").read_text())
        keys.append({k: v for k, v in shapes.items() if not (ignore and k.startswith(ignore))})
    if keys[0] != keys[1]:
        raise SystemExit(f"the models' keys differ: {sorted(set(keys[0]) ^ set(keys[1]))[:5]}")


def timed_rounds(
    pair: list[Worker], mode: str, repeats: int, warmup: int, threads: int
) -> dict[str, Any]:
    """Warm up, then ``repeats`` alternating (ABBA) ``run MODE`` passes; times, medians,
    ratios, median stage times, and the runs that got under :data:`BUSY_SHARE` of their
    ``threads`` cores (others' load on a shared CPU)."""
    for _ in range(warmup):
        for w in pair:
            print(f"  warm-up: {w.name:9s} {mode} {w.ask('run', mode)[0]:8.2f} s", flush=True)
    times: dict[str, list[float]] = {w.name: [] for w in pair}
    stages: dict[str, list[dict[str, float]]] = {w.name: [] for w in pair}
    cores: dict[str, list[float]] = {w.name: [] for w in pair}
    for i in range(repeats):
        for w in pair if i % 2 == 0 else pair[::-1]:
            seconds, busy, parts = w.ask("run", mode)
            times[w.name].append(seconds)
            cores[w.name].append(busy)
            stages[w.name].append(parts)
            print(f"  run {i + 1}: {w.name:9s} {mode} {seconds:8.2f} s, {busy:.2f} cores busy")
    a, b = (w.name for w in pair)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "times": times,
        "median": median,
        "ratio": median[a] / median[b],
        "paired_ratio": paired_ratio(times[a], times[b]),
        "cores_busy": cores,
        "contended_runs": sum(c < BUSY_SHARE * threads for v in cores.values() for c in v),
        "median_uncontended": {k: uncontended_median(times[k], cores[k], threads) for k in times},
        "stages": {
            k: {s: statistics.median(r[s] for r in rows) for s in rows[0]}
            for k, rows in stages.items()
        },
    }


def report_timing(title: str, mode: str, res: dict[str, Any], a: str, b: str) -> None:
    """Medians and ratios of one mode's rounds, and how many runs were contended."""
    m, busy = res["median"], {k: statistics.median(v) for k, v in res["cores_busy"].items()}
    print(
        f"{title} {mode} median: {a} {m[a]:.3f} s, {b} {m[b]:.3f} s, ratio {a}/{b} = "
        f"{res['ratio']:.3f} (median of per-round ratios {res['paired_ratio']:.3f}); "
        f"cores busy {busy[a]:.2f} / {busy[b]:.2f}"
    )
    if res["contended_runs"]:
        clean = res["median_uncontended"]
        rest = ", ".join(f"{k} {v:.3f} s" if v else f"{k} -" for k, v in clean.items())
        print(f"  {res['contended_runs']} runs got under 3/4 of their cores (others' load)")
        print(f"  medians of the other runs: {rest}")


def print_stages(title: str, stages: dict[str, dict[str, float]]) -> None:
    """One row per stage, one column per worker: median seconds and share of the total."""
    names = list(stages)
    print(f"{title}:  " + "".join(f"{n:>22s}" for n in names))
    for stage in next(iter(stages.values())):
        cells = []
        for n in names:
            total = sum(stages[n].values())
            cells.append(f"{stages[n][stage]:9.3f} s ({100 * stages[n][stage] / total:4.1f}%)")
        print(f"  {stage:18s}" + "".join(f"{c:>22s}" for c in cells))
