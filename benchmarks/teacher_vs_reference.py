"""Our SAM3 vision trunk vs Meta's (``sam3==0.1.4``) on the same weights and input, on this CPU.

Two worker processes hold one trunk each (ours, Meta's from the oracle folder), built with the
same seeded weights; ours runs as the export's CPU teacher does, with oneDNN-packed weights in its
linears (``--plain`` times it without). After one untimed warm-up pass each, the parent asks
them in turn for one timed forward pass, so the runs alternate (ABBA order) and never overlap. It
prints every time, the medians and their ratio ours / Meta's, the median of the per-round ratios
(each round times both back to back, so slow drifts of the machine cancel), the largest
difference between the two outputs, and then a bf16-autocast run of ours: its median time, the
speed-up over fp32, and its cosine similarity to the fp32 output.

    python tests/reference/prepare_oracle.py     # once: installs Meta's package for the oracle
    python benchmarks/teacher_vs_reference.py    # full size (1008², 32 blocks): ~10 min, 2 cores
    python benchmarks/teacher_vs_reference.py --size small --repeats 5
    python benchmarks/teacher_vs_reference.py --bf16-repeats 1   # bf16 is slow on CPUs without
                                                                  # native bf16 (AVX512-BF16/AMX)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "reference"

# Trunk geometries (Meta's argument names); "full" is SAM3's.
SIZES = {
    "full": dict(
        img_size=1008,
        patch_size=14,
        embed_dim=1024,
        depth=32,
        num_heads=16,
        mlp_ratio=4.625,
        window_size=24,
        global_att_blocks=[7, 15, 23, 31],
        pretrain_img_size=336,
    ),
    "small": dict(
        img_size=504,
        patch_size=14,
        embed_dim=512,
        depth=8,
        num_heads=8,
        mlp_ratio=4.625,
        window_size=12,
        global_att_blocks=[3, 7],
        pretrain_img_size=168,
    ),
}
SEED, INPUT_SEED = 0, 1


def flat_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two whole maps, accumulated in float64 (in float32 the sums over
    millions of values round far enough to print values above 1), clipped to [-1, 1]."""
    a, b = a.double().flatten(), b.double().flatten()
    return max(-1.0, min(1.0, float(a @ b / (a.norm() * b.norm()))))


def _build_trunk(impl: str, geometry: dict) -> torch.nn.Module:
    """Build our trunk or Meta's (inside a worker, whose sys.path is set for that side)."""
    if impl == "ours":
        from sam3.model.vit import ViT, ViTConfig

        keys = {k: v for k, v in geometry.items() if k != "global_att_blocks"}
        return ViT(ViTConfig(**keys, global_blocks=tuple(geometry["global_att_blocks"])))
    import meta_oracle  # from tests/reference, with Meta's package first on the path

    return meta_oracle.build_meta_trunk(meta_oracle.import_meta(), geometry)


def worker(impl: str, size: str, threads: int, plain: bool) -> None:
    """Serve timed forward passes: read a command per line, answer ``ok <seconds>``."""
    torch.set_num_threads(threads)
    sys.path.insert(0, str(REFERENCE))
    from seeded_init import seeded_input, seeded_state

    geometry = SIZES[size]
    trunk = _build_trunk(impl, geometry).eval()
    seeded_state(trunk, SEED)
    if impl == "ours" and not plain:
        trunk.pack_for_cpu()
    x = seeded_input([1, 3, geometry["img_size"], geometry["img_size"]], INPUT_SEED)
    last: dict[str, torch.Tensor] = {}
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "run":
            mode = args[0]
            with (
                torch.inference_mode(),
                torch.autocast("cpu", torch.bfloat16, enabled=mode == "bf16"),
            ):
                t0 = time.perf_counter()
                out = trunk(x)[-1]
                seconds = time.perf_counter() - t0
            last[mode] = out.float()
            print(f"ok {seconds:.4f}", flush=True)
        elif cmd == "save":
            torch.save(last[args[0]], args[1])
            print("ok 0", flush=True)
        elif cmd == "quit":
            return


class Worker:
    """A worker process seen from the parent."""

    def __init__(self, impl: str, size: str, threads: int, plain: bool = False):
        env = dict(os.environ)
        if impl == "meta":
            sys.path.insert(0, str(REFERENCE))
            from prepare_oracle import is_ready, oracle_site

            if not is_ready():
                raise SystemExit(
                    "Meta's package is missing: run python tests/reference/prepare_oracle.py"
                )
            env["PYTHONPATH"] = os.pathsep.join([str(oracle_site()), str(REFERENCE)])
        else:
            env["PYTHONPATH"] = str(ROOT)
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            impl,
            "--size",
            size,
            "--threads",
            str(threads),
        ] + (["--plain"] if plain else [])
        self.name = impl
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=tempfile.gettempdir(),
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._expect("ready")

    def _expect(self, word: str) -> str:
        line = self.proc.stdout.readline()
        if not line.startswith(word):
            raise RuntimeError(f"{self.name} worker failed (exit {self.proc.poll()}): {line!r}")
        return line

    def ask(self, *words: str) -> float:
        """Send one command; return the seconds it reports."""
        self.proc.stdin.write(" ".join(words) + "\n")
        self.proc.stdin.flush()
        return float(self._expect("ok").split()[1])

    def close(self) -> None:
        """Stop the worker."""
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait()


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run the parent or a worker."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full", help="trunk geometry")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per implementation")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed runs per implementation before timing"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="intra-op threads in each worker",
    )
    parser.add_argument(
        "--bf16-repeats",
        type=int,
        default=None,
        help="timed bf16 runs (default: --repeats; 0 skips bf16)",
    )
    parser.add_argument(
        "--plain", action="store_true", help="time our trunk without oneDNN-packed weights"
    )
    parser.add_argument("--worker", choices=["ours", "meta"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.size, args.threads, args.plain)
        return

    print(
        f"trunk '{args.size}', {args.repeats} alternating runs each, {args.threads} threads, "
        f"torch {torch.__version__}; ours {'plain' if args.plain else 'with packed weights'}"
    )
    ours = Worker("ours", args.size, args.threads, args.plain)
    meta = Worker("meta", args.size, args.threads)
    for _ in range(args.warmup):
        for w in (ours, meta):
            print(f"  warm-up: {w.name:4s} fp32 {w.ask('run', 'fp32'):8.2f} s", flush=True)
    times: dict[str, list[float]] = {"ours": [], "meta": []}
    for i in range(args.repeats):
        for w in (ours, meta) if i % 2 == 0 else (meta, ours):
            times[w.name].append(w.ask("run", "fp32"))
            print(f"  run {i + 1}: {w.name:4s} fp32 {times[w.name][-1]:8.2f} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        ours.ask("save", "fp32", f"{tmp}/ours.pt")
        meta.ask("save", "fp32", f"{tmp}/meta.pt")
        a = torch.load(f"{tmp}/ours.pt", weights_only=True)
        b = torch.load(f"{tmp}/meta.pt", weights_only=True)
    meta.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    rel = ((a - b).norm() / b.norm()).item()
    paired = statistics.median(o / m for o, m in zip(times["ours"], times["meta"]))
    print(
        f"fp32 median: ours {med['ours']:.2f} s, Meta {med['meta']:.2f} s, "
        f"ratio ours/Meta = {med['ours'] / med['meta']:.3f} "
        f"(median of per-round ratios {paired:.3f})"
    )
    print(f"outputs: max |diff| = {(a - b).abs().max().item():.3e}, relative L2 = {rel:.3e}")

    bf16_repeats = args.repeats if args.bf16_repeats is None else args.bf16_repeats
    if bf16_repeats > 0:
        bf16 = []
        for i in range(bf16_repeats):
            bf16.append(ours.ask("run", "bf16"))
            print(f"  run {i + 1}: ours bf16 {bf16[-1]:8.2f} s", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            ours.ask("save", "bf16", f"{tmp}/bf16.pt")
            c = torch.load(f"{tmp}/bf16.pt", weights_only=True)
        cos = flat_cosine(c, a)
        m = statistics.median(bf16)
        print(
            f"bf16 autocast median: {m:.2f} s, speed-up vs fp32 = {med['ours'] / m:.3f}x, "
            f"cosine to fp32 = {cos:.6f}"
        )
    ours.close()


if __name__ == "__main__":
    main()
