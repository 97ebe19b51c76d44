"""SAM3's detector heads, ours vs Meta's (``sam3==0.1.4``), and the whole image model end to end.

Three measurements on this CPU, each from two worker processes that hold one model apiece and
are asked in turn for timed passes (ABBA rounds after one untimed warm-up each; medians, their
ratio and the median of the per-round ratios; ``benchmarks/timing.py``). The models:
``benchmarks/seeded_models.py``.

1. Heads only (geometry encoder -> segmentation head) for one text prompt, ours vs Meta's with the
   same seeded weights (``tests/reference/seeded_init.py``) and the same inputs: seeded FPN maps
   and text features, our sine position encoding (one file both workers read). Prints the times,
   ours / Meta's, the largest output differences and where the time goes, stage by stage.
2. End to end, ours only: a photo from ``data/samples`` (preprocess, backbone, text, heads) with
   SAM3 (random weights) and with the merged ES-EV-S + ES-MC-S model (EfficientViT-B0 and
   MobileCLIP-S0 in SAM3's place, random weights; neck and heads SAM3's), and the speed-up.
3. Both again under ``torch.autocast("cpu", torch.bfloat16)``: times, and how the bf16 outputs
   agree with the fp32 ones on the top detections by fp32 score (box IoU, mask IoU, score
   differences, shared top-k queries). The CPU's native bf16 support is printed first.
4. The interactive heads for one box prompt (single mask), ours vs Meta's on the same seeded
   weights, and the post-processing to a 720x1280 photo: ``interactive_vs_reference.py``
   (which also runs alone), fp32 only.

Runs that kept under 3/4 of ``--threads`` cores busy shared the CPU with someone else's load:
they are counted, and the medians of the others printed beside the overall ones. Our trunk runs
unpacked, as the predictor runs it (``benchmarks/teacher_vs_reference.py`` times the packed one).

    python tests/reference/prepare_oracle.py                 # once: Meta's package, oracle only
    python benchmarks/heads_vs_reference.py --size small     # reduced sizes: ~1 min
    python benchmarks/heads_vs_reference.py --skip-e2e --json heads.json   # heads: ~1.5 min
    python benchmarks/heads_vs_reference.py --repeats 2 --bf16-repeats 1   # all, full: ~8 min

Wall times on 2 free cores; one full-size SAM3 pass end to end takes ~45 s in fp32 (its
warm-up ~90 s), the merged model's ~5 s, and heads alone ~3-4 s. Under others' load, expect
two to three times as long.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

HERE = Path(__file__).resolve().parent
for _path in (HERE, HERE.parent / "tests" / "reference"):  # helpers; seeded_init, meta_oracle
    if str(_path) not in sys.path:
        sys.path.append(str(_path))

import interactive_vs_reference  # noqa: E402
import seeded_models as models  # noqa: E402
from agreement import OUTPUTS, max_diffs, print_agreement, top_k_agreement  # noqa: E402
from timing import (  # noqa: E402
    StageClock,
    Worker,
    WorkerError,
    check_keys,
    cpu_report,
    print_stages,
    report_timing,
    serve,
    timed,
    timed_rounds,
)

PHOTO, CAPTION = HERE.parent / "data" / "samples" / "chelsea.jpg", "a cat"
INTERACTIVE_ROUNDS, INTERACTIVE_PASSES = 6, 10  # part 4: alternating requests, passes each


# ---------------------------------------------------------------- workers


def _heads_pass(role: str, size: str, inputs_path: str) -> tuple[Any, Any]:
    """(model, pass) for the heads-only workers; the pass returns the grounding outputs."""
    if role == "ours":
        models.write_heads_inputs(inputs_path, size)
    model = models.detector_heads(role, size)
    if role == "ours":
        step = lambda state: model.forward_grounding(state)  # noqa: E731
    else:  # Meta's classes (its sam3 is first on the path now)
        from sam3.model.data_misc import FindStage
        from sam3.model.geometry_encoders import Prompt

        ids = torch.tensor([0])
        find = FindStage(ids, ids, None, None, None, None, None)
        empty = dict(box_embeddings=torch.zeros(0, 1, 4), box_mask=torch.zeros(1, 0).bool())
        step = lambda state: model.forward_grounding(  # noqa: E731
            backbone_out=state, find_input=find, find_target=None, geometric_prompt=Prompt(**empty)
        )
    inputs = torch.load(inputs_path, weights_only=True)
    return model, lambda: step(
        {k: (list(v) if isinstance(v, list) else v) for k, v in inputs.items()}
    )


def _e2e_pass(role: str, size: str) -> tuple[Any, Any]:
    """(model, pass) for the end-to-end workers; the pass times its own four stages."""
    from PIL import Image

    from sam3.preprocess import Preprocessing, preprocess

    model = models.image_model(role, size)
    prep = Preprocessing.from_record(model.preprocessing)
    with Image.open(PHOTO) as im:
        photo = im.convert("RGB")

    def step() -> tuple[dict[str, Tensor], dict[str, float]]:
        t = [time.perf_counter()]
        x, _ = preprocess(photo, prep)
        t.append(time.perf_counter())
        state = model.forward_image(x[None])
        t.append(time.perf_counter())
        state.update(model.forward_text([CAPTION]))
        t.append(time.perf_counter())
        out = model.forward_grounding(state)
        t.append(time.perf_counter())
        names = ("preprocess", "image_backbone", "text", "heads")
        return out, {n: b - a for n, a, b in zip(names, t, t[1:])}

    return model, step


def worker(role: str, size: str, threads: int, inputs_path: str) -> None:
    """Serve timed passes (``run fp32|bf16``, with the stage times) and their outputs."""
    torch.set_num_threads(threads)
    heads_only = role in ("ours", "meta")
    model, step = _heads_pass(role, size, inputs_path) if heads_only else _e2e_pass(role, size)
    clock = StageClock(model, models.DETECTOR_STAGES) if heads_only else None
    last: dict[str, dict[str, Tensor]] = {}

    def run(mode: str) -> tuple[float, float, dict[str, float]]:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=mode == "bf16"):
            out, seconds, cores = timed(step)  # cores < threads: others' load
        out, stages = (out, clock.take(seconds)) if heads_only else out
        last[mode] = {k: out[k].float().clone() for k in OUTPUTS}
        return seconds, cores, stages

    serve(run, last, model)


# ---------------------------------------------------------------- parent


def _pair(args: argparse.Namespace, roles: tuple[str, str], inputs: str) -> list[Worker]:
    """Two workers of this script (the first one starts first: ``ours`` writes the inputs)."""
    extra = ("--size", args.size, "--threads", str(args.threads), "--inputs", inputs)
    return [Worker(Path(__file__).resolve(), role, *extra) for role in roles]


def measure(pair: list[Worker], args: argparse.Namespace, folder: str) -> dict[str, Any]:
    """fp32 then bf16 rounds for two workers, and how their outputs compare."""
    fp32_rounds = timed_rounds(pair, "fp32", args.repeats, args.warmup, args.threads)
    result: dict[str, Any] = {"fp32": fp32_rounds, "agreement": {}}
    fp32 = {w.name: w.outputs("fp32", folder) for w in pair}
    bf16_repeats = args.repeats if args.bf16_repeats is None else args.bf16_repeats
    if bf16_repeats > 0:
        try:
            result["bf16"] = timed_rounds(pair, "bf16", bf16_repeats, args.warmup, args.threads)
        except WorkerError as err:
            print(f"  bf16 skipped: {err}")
            result["bf16"] = {"error": str(err)}
        else:
            for w in pair:
                bf16 = w.outputs("bf16", folder)
                agree = top_k_agreement(fp32[w.name], bf16, args.top_k)
                agree["max_diff"] = max_diffs(bf16, fp32[w.name])
                result["agreement"][f"{w.name}_bf16_vs_fp32"] = agree
    result["fp32_outputs"] = fp32
    return result


def _report_bf16(res: dict[str, Any], names: tuple[str, str]) -> None:
    """Each worker's bf16 speed-up over fp32 and its agreement with its fp32 outputs."""
    for name in names:
        speedup = res["fp32"]["median"][name] / res["bf16"]["median"][name]
        print(f"  {name} bf16 speed-up over fp32: {speedup:.3f}x")
        print_agreement(f"{name} bf16 vs fp32", res["agreement"][f"{name}_bf16_vs_fp32"])


def run_heads(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    """Part 1 (and its bf16 half): our heads vs Meta's on the same weights and inputs."""
    size = models.HEAD_SIZES[args.size]
    print(
        f"\n== heads only: {args.size}, {size['resolution']}², "
        f"{size['heads']['num_queries']} queries"
    )
    pair = _pair(args, ("ours", "meta"), f"{folder}/inputs.pt")
    try:
        check_keys(pair, folder, ignore="backbone.")  # Meta's token trunk; ours has none
        res = measure(pair, args, folder)
    finally:
        for w in pair:
            w.close()
    fp32 = res.pop("fp32_outputs")
    res["ours_vs_meta"] = {
        "max_diff": max_diffs(fp32["ours"], fp32["meta"]),
        "top_k": top_k_agreement(fp32["meta"], fp32["ours"], args.top_k),
    }
    report_timing("heads", "fp32", res["fp32"], "ours", "meta")
    for key, d in res["ours_vs_meta"]["max_diff"].items():
        print(
            f"  ours vs Meta {key:18s} max |diff| {d['max_abs']:.3e}, relative L2 {d['rel_l2']:.3e}"
        )
    print_agreement("ours vs Meta fp32", res["ours_vs_meta"]["top_k"])
    print_stages("heads fp32 stages (median)", res["fp32"]["stages"])
    if "median" in res.get("bf16", {}):
        report_timing("heads", "bf16", res["bf16"], "ours", "meta")
        _report_bf16(res, ("ours", "meta"))
        print_stages("heads bf16 stages (median)", res["bf16"]["stages"])
    return res


def run_e2e(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    """Part 2 (and its bf16 half): SAM3 vs the merged ES-EV-S + ES-MC-S model, ours only."""
    print(f"\n== end to end: {PHOTO.name} '{CAPTION}', {args.size}; SAM3 vs {models.STUDENTS}")
    pair = _pair(args, ("sam3", "efficient"), "")
    try:
        res = measure(pair, args, folder)
    finally:
        for w in pair:
            w.close()
    res.pop("fp32_outputs")
    for mode in ("fp32", "bf16"):
        if "median" not in res.get(mode, {}):
            continue
        r = res[mode]
        r["speedup"] = r["ratio"]  # SAM3's time over the merged model's
        report_timing("e2e", mode, r, "sam3", "efficient")
        print(
            f"  speed-up of the merged model: {r['speedup']:.2f}x "
            f"(median of per-round ratios {r['paired_ratio']:.2f}x)"
        )
        print_stages(f"e2e {mode} stages (median)", r["stages"])
    if "median" in res.get("bf16", {}):
        _report_bf16(res, ("sam3", "efficient"))
    return res


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Parse arguments and run the parent or a worker."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", choices=sorted(models.HEAD_SIZES), default="full", help="full or reduced sizes"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed fp32 rounds per part")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes per worker and mode")
    parser.add_argument(
        "--bf16-repeats", type=int, default=None, help="bf16 rounds (default --repeats; 0: none)"
    )
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads per worker")
    parser.add_argument("--top-k", type=int, default=10, help="detections compared for agreement")
    parser.add_argument("--skip-e2e", action="store_true", help="measure the heads only")
    parser.add_argument("--skip-heads", action="store_true", help="measure end to end only")
    parser.add_argument(
        "--skip-interactive", action="store_true", help="leave out the interactive heads"
    )
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument(
        "--worker", choices=["ours", "meta", "sam3", "efficient"], help=argparse.SUPPRESS
    )
    parser.add_argument("--inputs", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.size, args.threads, args.inputs)
        return None
    cpu = cpu_report()
    print(
        f"{args.size} sizes, {args.repeats} alternating rounds, {args.threads} threads per worker, "
        f"torch {torch.__version__}\nCPU {cpu['model']}: capability {cpu['torch_capability']}, "
        f"avx512_bf16 {cpu['avx512_bf16']}, amx_bf16 {cpu['amx_bf16']}, "
        f"oneDNN bf16 {cpu['mkldnn_bf16']}; load average {os.getloadavg()[0]:.2f} at start"
    )
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "cpu": cpu}
    with tempfile.TemporaryDirectory() as folder:
        if not args.skip_heads:
            report["heads"] = run_heads(args, folder)
        if not args.skip_e2e:
            report["e2e"] = run_e2e(args, folder)
        if not args.skip_interactive:
            report["interactive"] = interactive_vs_reference.run_interactive(
                args.size, args.threads, INTERACTIVE_ROUNDS, INTERACTIVE_PASSES, args.warmup, folder
            )
    report["load_average_end"] = os.getloadavg()[0]
    print(
        f"load average {report['load_average_end']:.2f} at the end (2 cores shared: see contention)"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"figures written to {args.json}")
    return report


if __name__ == "__main__":
    main()
