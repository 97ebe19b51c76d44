"""Our SAM3 vision trunk vs Meta's (``sam3==0.1.4``) on the same weights and input, on this CPU.

Two worker processes hold one trunk each (ours, Meta's from the oracle folder), built with the
same seeded weights; ours runs as the export's CPU teacher does, with oneDNN-packed weights in its
linears (``--plain`` times it without). After one untimed warm-up pass each, the parent asks
them in turn for one timed forward pass, so the runs alternate (ABBA order) and never overlap. It
prints every time, the medians and their ratio ours / Meta's, the median of the per-round ratios
(each round times both back to back, so slow drifts of the machine cancel), the largest
difference between the two outputs, and then a bf16-autocast run of ours: its median time, the
speed-up over fp32, and its cosine similarity to the fp32 output. Workers and rounds:
``benchmarks/timing.py``; the trunks: ``benchmarks/seeded_models.py``.

    python tests/reference/prepare_oracle.py     # once: installs Meta's package for the oracle
    python benchmarks/teacher_vs_reference.py    # full size (1008², 32 blocks): ~10 min, 2 cores
    python benchmarks/teacher_vs_reference.py --size small --repeats 5
    python benchmarks/teacher_vs_reference.py --bf16-repeats 1   # bf16 is slow on CPUs without
                                                                  # native bf16 (AVX512-BF16/AMX)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
for _path in (HERE, HERE.parent / "tests" / "reference"):  # helpers; seeded_init, meta_oracle
    if str(_path) not in sys.path:
        sys.path.append(str(_path))

import seeded_models as models  # noqa: E402
from timing import Worker, serve, timed, timed_rounds  # noqa: E402

from seeded_init import seeded_input  # noqa: E402

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


def flat_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two whole maps, accumulated in float64 (in float32 the sums over
    millions of values round far enough to print values above 1), clipped to [-1, 1]."""
    a, b = a.double().flatten(), b.double().flatten()
    return max(-1.0, min(1.0, float(a @ b / (a.norm() * b.norm()))))


def worker(impl: str, size: str, threads: int, plain: bool) -> None:
    """Serve timed forward passes: ``run fp32|bf16``; ``save MODE PATH`` writes the last
    output of that mode."""
    torch.set_num_threads(threads)
    geometry = SIZES[size]
    trunk = models.vision_trunk(impl, geometry)
    if impl == "ours" and not plain:
        trunk.pack_for_cpu()
    x = seeded_input([1, 3, geometry["img_size"], geometry["img_size"]], models.INPUT_SEED)
    last: dict[str, torch.Tensor] = {}

    def run(mode: str) -> tuple[float, float, dict]:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=mode == "bf16"):
            out, seconds, cores = timed(lambda: trunk(x)[-1])
        last[mode] = out.float()
        return seconds, cores, {}

    serve(run, last, trunk)


def _load(worker: Worker, mode: str) -> torch.Tensor:
    """The last ``mode`` output of ``worker``."""
    with tempfile.TemporaryDirectory() as tmp:
        worker.ask("save", mode, f"{tmp}/out.pt")
        return torch.load(f"{tmp}/out.pt", weights_only=True)


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
    common = ("--size", args.size, "--threads", str(args.threads))
    script = Path(__file__).resolve()
    ours = Worker(script, "ours", *common, *(["--plain"] if args.plain else []))
    meta = Worker(script, "meta", *common)
    res = timed_rounds([ours, meta], "fp32", args.repeats, args.warmup, args.threads)
    a, b = _load(ours, "fp32"), _load(meta, "fp32")
    meta.close()
    med = res["median"]
    rel = ((a - b).norm() / b.norm()).item()
    print(
        f"fp32 median: ours {med['ours']:.2f} s, Meta {med['meta']:.2f} s, "
        f"ratio ours/Meta = {res['ratio']:.3f} "
        f"(median of per-round ratios {res['paired_ratio']:.3f})"
    )
    print(f"outputs: max |diff| = {(a - b).abs().max().item():.3e}, relative L2 = {rel:.3e}")

    bf16_repeats = args.repeats if args.bf16_repeats is None else args.bf16_repeats
    if bf16_repeats > 0:
        bf16 = []
        for i in range(bf16_repeats):
            bf16.append(ours.ask("run", "bf16")[0])
            print(f"  run {i + 1}: ours bf16 {bf16[-1]:8.2f} s", flush=True)
        cos = flat_cosine(_load(ours, "bf16"), a)
        m = statistics.median(bf16)
        print(
            f"bf16 autocast median: {m:.2f} s, speed-up vs fp32 = {med['ours'] / m:.3f}x, "
            f"cosine to fp32 = {cos:.6f}"
        )
    ours.close()


if __name__ == "__main__":
    main()
