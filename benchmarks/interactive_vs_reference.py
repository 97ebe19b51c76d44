"""SAM3's interactive heads for one box prompt, ours vs Meta's (``sam3==0.1.4``), same weights.

From the same image features (seeded second-neck maps, turned into the heads' inputs by each
side's own ``no_mem_embed`` / ``conv_s0`` / ``conv_s1``, untimed), one timed pass is what a
``predict_inst(box=..., multimask_output=False)`` call runs on the heads: the box as two corner
points plus the padding point, the prompt encoder, the mask decoder and the single-mask
selection (stability of token 0, else the best-IoU multimask token). Ours is
``InteractiveHeads.forward``; Meta's is the prompt-encoder and mask-decoder calls of
``SAM3InteractiveImagePredictor._predict``, on modules built with the tracker's settings
(``benchmarks/seeded_models.py``). Weights on both sides come from
``tests/reference/seeded_init.py`` (the keys are checked equal).

Separately, the post-processing of one low-resolution mask for a 720x1280 photo: hole filling
(background components of at most 256 cells, 8-connected) and bilinear upsampling, then
``> 0``. The logits are a mask-like map both workers build alike: an ellipse with square holes
of 1 to 900 cells. Ours is ``sam3.instance.to_instance_masks``; Meta's is
``SAM2Transforms.postprocess_masks`` (+ the clamp and threshold of ``_predict``), whose CPU
hole filling needs scikit-image: without it Meta skips the filling (with a warning), and the
report says so.

Timing as in ``heads_vs_reference.py`` (workers and ABBA rounds of ``benchmarks/timing.py``);
each request runs ``--passes`` timed passes and answers their median. The per-image features
(``no_mem_embed``, ``conv_s0``/``conv_s1``) are timed too, as a third row.

    python tests/reference/prepare_oracle.py                      # once: Meta's package
    python benchmarks/interactive_vs_reference.py                 # full size: ~1 min
    python benchmarks/interactive_vs_reference.py --size small    # reduced sizes: ~25 s
    python benchmarks/heads_vs_reference.py ...                   # runs this part too
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

HERE = Path(__file__).resolve().parent
for _path in (HERE, HERE.parent / "tests" / "reference"):  # helpers; seeded_init, meta_oracle
    if str(_path) not in sys.path:
        sys.path.append(str(_path))

import seeded_models as models  # noqa: E402
from agreement import mask_iou_pairs, max_diffs  # noqa: E402
from timing import (  # noqa: E402
    StageClock,
    Worker,
    check_keys,
    print_stages,
    serve,
    timed,
    timed_rounds,
)

BOX = (0.30, 0.25, 0.70, 0.80)  # xyxy, as fractions of the input square
MAX_HOLE_AREA = 256.0  # SAM3's image predictor default
HEAD_OUTPUTS = ("low_res_masks", "iou")
STAGES = {  # stage -> module path, the same in our InteractiveHeads and in Meta's modules
    "prompt_encoder": "sam_prompt_encoder",
    "transformer": "sam_mask_decoder.transformer",
    "decoder_rest": "sam_mask_decoder",  # the whole decoder, less the transformer once timed
}
MODES = {  # timed request -> its title in the report
    "heads": "interactive heads (box -> mask)",
    "features": "image features (per image)",
    "post": "post-processing",
}


# ---------------------------------------------------------------- workers


def _ours(heads: Any, size: str) -> tuple[Any, Any, Any]:
    """(features of the fpn maps, pass, post-processing) for our side."""
    from sam3.instance import to_instance_masks
    from sam3.preprocess import ImageGeometry

    cfg = models.SAM_SIZES[size]
    side = cfg["resolution"]
    geometry = ImageGeometry(*cfg["photo"], side, side, side)

    def step(feats: dict[str, Tensor], box: Tensor) -> dict[str, Tensor]:
        out = heads(feats, boxes=box, multimask_output=False)
        return {k: out[k] for k in HEAD_OUTPUTS}

    def post(low: Tensor) -> dict[str, Tensor]:
        out = {
            "low_res_masks": low,
            "iou": low.new_zeros(1, 1),
            "object_score_logits": low.new_zeros(1, 1),
            "mask_index": torch.zeros(1, 1, dtype=torch.long),
        }
        res = to_instance_masks(out, geometry, batched=True, max_hole_area=MAX_HOLE_AREA)
        return {"masks": res.masks, "low_res_logits": res.low_res_logits}

    return lambda fpn: heads.image_features({"backbone_fpn": fpn}), step, post


def _meta(heads: Any, size: str) -> tuple[Any, Any, Any]:
    """The same three for Meta's modules (its sam3 is first on the path)."""
    from sam3.model.utils.sam1_utils import SAM2Transforms

    cfg = models.SAM_SIZES[size]
    side = cfg["resolution"]
    transforms = SAM2Transforms(side, 0.0, max_hole_area=MAX_HOLE_AREA, max_sprinkle_area=0.0)
    prompt_encoder, decoder = heads.sam_prompt_encoder, heads.sam_mask_decoder

    def features(fpn: list[Tensor]) -> dict[str, Any]:
        embed = fpn[2] + heads.no_mem_embed.view(1, -1, 1, 1)
        high_res = [decoder.conv_s0(fpn[0]), decoder.conv_s1(fpn[1])]
        return {"image_embed": embed, "high_res": high_res}

    def step(feats: dict[str, Any], box: Tensor) -> dict[str, Tensor]:
        coords = box.reshape(-1, 2, 2)
        labels = torch.tensor([[2, 3]], dtype=torch.int).repeat(box.size(0), 1)
        sparse, dense = prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        low, iou, _, _ = decoder(
            image_embeddings=feats["image_embed"],
            image_pe=prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
            repeat_image=False,
            high_res_features=feats["high_res"],
        )
        return {"low_res_masks": low, "iou": iou}

    def post(low: Tensor) -> dict[str, Tensor]:
        masks = transforms.postprocess_masks(low, cfg["photo"]) > 0.0
        return {"masks": masks, "low_res_logits": torch.clamp(low, -32.0, 32.0)}

    return features, step, post


def _flat(feats: dict[str, Any]) -> dict[str, Tensor]:
    """Image features as one tensor per key (``high_res.0``, ``high_res.1``)."""
    s0, s1 = feats["high_res"]
    return {"image_embed": feats["image_embed"], "high_res.0": s0, "high_res.1": s1}


def worker(role: str, size: str, threads: int, inputs_path: str, passes: int) -> None:
    """Serve requests: ``run heads|features|post`` over ``passes`` timed passes (their median
    seconds, cores busy and, for heads, median stage times), their outputs, and ``describe
    PATH``: whether hole filling runs."""
    torch.set_num_threads(threads)
    if role == "ours":
        models.write_interactive_inputs(inputs_path, size, BOX)
    heads = models.interactive_heads(role, size)
    features, step, post = (_ours if role == "ours" else _meta)(heads, size)
    inputs = torch.load(inputs_path, weights_only=True)
    fpn, box = inputs["backbone_fpn"], inputs["box"]
    with torch.inference_mode():
        feats = features(fpn)
    low = models.mask_like_logits(4 * (models.SAM_SIZES[size]["resolution"] // 14))
    calls = {
        "heads": lambda: step(feats, box),
        "features": lambda: _flat(features(fpn)),
        "post": lambda: post(low),
    }
    clock, last = StageClock(heads, STAGES), {}
    warnings.simplefilter("ignore")  # Meta's "skipping the post-processing" without skimage

    def run(mode: str) -> tuple[float, float, dict[str, float]]:
        times, stages, wall, cpu = [], [], 0.0, 0.0
        with torch.inference_mode():
            for _ in range(passes):
                out, seconds, cores = timed(calls[mode])
                cpu, wall = cpu + cores * seconds, wall + seconds
                times.append(seconds)
                parts = clock.take(seconds)  # the decoder includes the transformer: once less
                parts["decoder_rest"] -= parts["transformer"]
                parts["other"] += parts["transformer"]
                stages.append(parts)
        last[mode] = {k: v.float().clone() for k, v in out.items()}
        parts = {s: statistics.median(r[s] for r in stages) for s in stages[0]}
        return statistics.median(times), cpu / wall, parts if mode == "heads" else {}

    def describe(path: str) -> tuple[float, float, dict]:
        fills = role == "ours" or importlib.util.find_spec("skimage") is not None
        Path(path).write_text(json.dumps({"hole_filling": fills}))
        return 0.0, 0.0, {}

    serve(run, last, heads, describe=describe)


# ---------------------------------------------------------------- parent


def run_interactive(
    size: str, threads: int, rounds: int, passes: int, warmup: int, folder: str
) -> dict[str, Any]:
    """Both workers, rounds of each timed request; times, ratios and output agreement."""
    cfg = models.SAM_SIZES[size]
    print(
        f"\n== interactive heads, one box, single mask: {size}, {cfg['resolution'] // 14}² "
        f"embedding, {cfg['heads']['embed_dim']} wide; {rounds} rounds x {passes} passes"
    )
    inputs = f"{folder}/interactive_inputs.pt"
    extra = ("--size", size, "--threads", str(threads), "--inputs", inputs)
    script = Path(__file__).resolve()
    pair = [Worker(script, role, *extra, "--passes", str(passes)) for role in ("ours", "meta")]
    res: dict[str, Any] = {}
    try:
        check_keys(pair, folder)
        for w in pair:
            w.ask("describe", f"{folder}/{w.name}.describe.json")
        info = [json.loads(Path(f"{folder}/{w.name}.describe.json").read_text()) for w in pair]
        for mode in MODES:
            res[mode] = timed_rounds(pair, mode, rounds, warmup, threads)
            outs = [w.outputs(mode, folder) for w in pair]
            res[mode]["ours_vs_meta"] = max_diffs(outs[0], outs[1], tuple(sorted(outs[1])))
            if mode == "post":
                masks = [o["masks"].flatten(0, 1) for o in outs]
                res[mode]["mask_iou"] = float(mask_iou_pairs(*masks).min())
    finally:
        for w in pair:
            w.close()
    res["meta_hole_filling"] = info[1]["hole_filling"]
    report(res, cfg)
    return res


def report(res: dict[str, Any], cfg: dict[str, Any]) -> None:
    """Print the medians in ms, the ratios and the agreement of the outputs."""
    print(
        f"\n{'median of ' + str(len(res['heads']['times']['ours'])) + ' rounds':34s}"
        f"{'ours':>10s}{'Meta':>10s}{'ours/Meta':>11s}{'per round':>11s}"
    )
    for mode, title in MODES.items():
        r = res[mode]
        m = {k: 1000 * v for k, v in r["median"].items()}
        print(
            f"{title:34s}{m['ours']:7.2f} ms{m['meta']:7.2f} ms"
            f"{r['ratio']:11.3f}{r['paired_ratio']:11.3f}"
        )
    for mode, r in ((m, res[m]) for m in MODES):
        if r["contended_runs"]:
            print(f"  {mode}: {r['contended_runs']} requests got under 3/4 of their cores")
        for key, d in r["ours_vs_meta"].items():
            print(
                f"  {mode} ours vs Meta {key:14s} max |diff| {d['max_abs']:.3e}, "
                f"rel L2 {d['rel_l2']:.3e}"
            )
    h, w = cfg["photo"]
    fills = "with" if res["meta_hole_filling"] else "WITHOUT (no scikit-image in its environment)"
    print(f"  post-processing to {h}x{w}: Meta's ran {fills} hole filling, ours with it")
    print(f"  post-processing masks IoU ours vs Meta {res['post']['mask_iou']:.6f}")
    print_stages("interactive heads stages (median)", res["heads"]["stages"])


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Parse arguments and run the parent or a worker."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", choices=sorted(models.SAM_SIZES), default="full", help="full or reduced"
    )
    parser.add_argument("--rounds", type=int, default=6, help="alternating timed requests")
    parser.add_argument("--passes", type=int, default=10, help="timed passes per request")
    parser.add_argument("--warmup", type=int, default=1, help="untimed requests per worker")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads per worker")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--worker", choices=["ours", "meta"], help=argparse.SUPPRESS)
    parser.add_argument("--inputs", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.passes < 1:
        parser.error("--rounds and --passes must be at least 1")
    if args.worker:
        worker(args.worker, args.size, args.threads, args.inputs, args.passes)
        return None
    print(
        f"torch {torch.__version__}, {args.threads} threads per worker; "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )
    with tempfile.TemporaryDirectory() as folder:
        res = run_interactive(
            args.size, args.threads, args.rounds, args.passes, args.warmup, folder
        )
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
        print(f"figures written to {args.json}")
    return res


if __name__ == "__main__":
    main()
