"""SAM3's interactive heads for one box prompt, ours vs Meta's (``sam3==0.1.4``), same weights.

From the same image features (seeded second-neck maps, turned into the heads' inputs by each
side's own ``no_mem_embed`` / ``conv_s0`` / ``conv_s1``, untimed), one timed pass is what a
``predict_inst(box=..., multimask_output=False)`` call runs on the heads: the box as two corner
points plus the padding point, the prompt encoder, the mask decoder and the single-mask
selection (stability of token 0, else the best-IoU multimask token). Ours is
``InteractiveHeads.forward``; Meta's is the prompt-encoder and mask-decoder calls of
``SAM3InteractiveImagePredictor._predict``, on modules built with the tracker's settings.
Weights on both sides come from ``tests/reference/seeded_init.py`` (the keys are checked equal).

Separately, the post-processing of one low-resolution mask for a 720x1280 photo: hole filling
(background components of at most 256 cells, 8-connected) and bilinear upsampling, then
``> 0``. The logits are a mask-like map both workers build alike: an ellipse with square holes
of 1 to 900 cells. Ours is ``sam3.instance.to_instance_masks``; Meta's is
``SAM2Transforms.postprocess_masks`` (+ the clamp and threshold of ``_predict``), whose CPU
hole filling needs scikit-image: without it Meta skips the filling (with a warning), and the
report says so.

Timing as in ``heads_vs_reference.py``, whose workers and ABBA rounds this reuses; each
request runs ``--passes`` timed passes and answers their median. The per-image features
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
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import heads_vs_reference as hvr  # noqa: E402

from seeded_init import seeded_input, seeded_state  # noqa: E402  (on sys.path via hvr)

SEED, INPUT_SEED = 0, 1
BOX = (0.30, 0.25, 0.70, 0.80)  # xyxy, as fractions of the input square
MAX_HOLE_AREA = 256.0  # SAM3's image predictor default
HEAD_OUTPUTS = ("low_res_masks", "iou")
FULL = dict(embed_dim=256, num_heads=8, depth=2, mlp_dim=2048, mask_in_chans=16)
SMALL = dict(embed_dim=64, num_heads=4, depth=2, mlp_dim=256, mask_in_chans=16)
SIZES = {  # input side, heads, the photo the post-processing upsamples to (h, w)
    "full": dict(resolution=1008, heads=dict(FULL, iou_head_hidden=256), photo=(720, 1280)),
    "small": dict(resolution=336, heads=dict(SMALL, iou_head_hidden=64), photo=(180, 320)),
}
STAGES = {  # stage -> module path, the same in our InteractiveHeads and in Meta's modules
    "prompt_encoder": "sam_prompt_encoder",
    "transformer": "sam_mask_decoder.transformer",
    "decoder_rest": "sam_mask_decoder",  # the whole decoder, less the transformer once timed
}


# ---------------------------------------------------------------- pure helpers (tested)


def mask_like_logits(side: int) -> Tensor:
    """``[1, 1, side, side]`` logits of a mask-like map: an ellipse (positive inside, up to
    +8) with square background holes of sides ``side / 288`` times 1, 2, 4, 8, 12, 16, 20, 30
    cells (at 288: areas 1 to 900, six of them up to 256) on a row through its middle."""
    ys, xs = torch.meshgrid(torch.arange(side) + 0.5, torch.arange(side) + 0.5, indexing="ij")
    r = ((xs / side - 0.5) / 0.42) ** 2 + ((ys / side - 0.5) / 0.30) ** 2
    logits = 8.0 * (1.0 - r.sqrt())
    scale, x = side / 288, round(0.15 * side)
    for cells in (1, 2, 4, 8, 12, 16, 20, 30):
        k = max(1, round(cells * scale))
        y = side // 2 - k // 2
        logits[y : y + k, x : x + k] = -4.0
        x += k + max(2, round(6 * scale))
    return logits.view(1, 1, side, side)


# ---------------------------------------------------------------- workers


def _make_inputs(path: str, size: str) -> None:
    """Seeded second-neck maps (4x, 2x, 1x the embedding grid) and the box, in one file."""
    cfg = SIZES[size]
    d, grid = cfg["heads"]["embed_dim"], cfg["resolution"] // 14
    fpn = [
        seeded_input([1, d, grid * s, grid * s], INPUT_SEED + i) for i, s in enumerate((4, 2, 1))
    ]
    box = torch.tensor([BOX]) * cfg["resolution"]
    torch.save({"backbone_fpn": fpn, "box": box}, path)


def _ours(size: str) -> tuple[nn.Module, Any, Any, Any]:
    """(heads, features of the fpn maps, pass, post-processing) for our side."""
    from sam3.instance import to_instance_masks
    from sam3.model.heads_config import SamHeadsConfig
    from sam3.model.interactive import InteractiveHeads
    from sam3.preprocess import ImageGeometry

    cfg = SIZES[size]
    side = cfg["resolution"]
    heads = InteractiveHeads(SamHeadsConfig(**cfg["heads"]), side // 14, side)
    geometry = ImageGeometry(*cfg["photo"], side, side, side)

    def features(fpn: list[Tensor]) -> dict[str, Tensor]:
        return heads.image_features({"backbone_fpn": fpn})

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

    return heads, features, step, post


def _meta(size: str) -> tuple[nn.Module, Any, Any, Any]:
    """The same four for Meta's modules, built with the tracker's settings (oracle only)."""
    import meta_oracle

    meta_oracle.import_meta()  # puts Meta's sam3 first on sys.path
    from sam3.model.utils.sam1_utils import SAM2Transforms
    from sam3.sam.mask_decoder import MaskDecoder
    from sam3.sam.prompt_encoder import PromptEncoder
    from sam3.sam.transformer import TwoWayTransformer

    cfg = SIZES[size]
    h, side = cfg["heads"], cfg["resolution"]
    d, grid = h["embed_dim"], side // 14
    heads = nn.Module()
    heads.sam_prompt_encoder = PromptEncoder(
        embed_dim=d,
        image_embedding_size=(grid, grid),
        input_image_size=(side, side),
        mask_in_chans=h["mask_in_chans"],
    )
    heads.sam_mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=h["depth"], embedding_dim=d, mlp_dim=h["mlp_dim"], num_heads=h["num_heads"]
        ),
        transformer_dim=d,
        iou_head_depth=3,
        iou_head_hidden_dim=h["iou_head_hidden"],
        use_high_res_features=True,
        iou_prediction_use_sigmoid=True,
        pred_obj_scores=True,
        pred_obj_scores_mlp=True,
        use_multimask_token_for_obj_ptr=True,
        dynamic_multimask_via_stability=True,
        dynamic_multimask_stability_delta=0.05,
        dynamic_multimask_stability_thresh=0.98,
    )
    heads.no_mem_embed = nn.Parameter(torch.zeros(1, 1, d))
    transforms = SAM2Transforms(side, 0.0, max_hole_area=MAX_HOLE_AREA, max_sprinkle_area=0.0)
    prompt_encoder, decoder = heads.sam_prompt_encoder, heads.sam_mask_decoder

    def features(fpn: list[Tensor]) -> dict[str, Any]:
        embed = fpn[2] + heads.no_mem_embed.view(1, -1, 1, 1)
        return {
            "image_embed": embed,
            "high_res": [decoder.conv_s0(fpn[0]), decoder.conv_s1(fpn[1])],
        }

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

    return heads, features, step, post


def _flat(feats: dict[str, Any]) -> dict[str, Tensor]:
    """Image features as one tensor per key (``high_res.0``, ``high_res.1``)."""
    s0, s1 = feats["high_res"]
    return {"image_embed": feats["image_embed"], "high_res.0": s0, "high_res.1": s1}


def _timed(fn: Any, passes: int, clock: hvr.StageClock) -> tuple[Any, float, float, dict]:
    """``passes`` timed calls of ``fn`` -> the last output, the median seconds, the cores kept
    busy and the median stage times."""
    times, stages, wall, cpu = [], [], 0.0, 0.0
    with torch.inference_mode():
        for _ in range(passes):
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn()
            seconds = time.perf_counter() - t0
            cpu, wall = cpu + time.process_time() - c0, wall + seconds
            times.append(seconds)
            parts = clock.take(seconds)  # the decoder includes the transformer: once less
            parts["decoder_rest"] -= parts["transformer"]
            parts["other"] += parts["transformer"]
            stages.append(parts)
    parts = {s: statistics.median(r[s] for r in stages) for s in stages[0]}
    return out, statistics.median(times), cpu / wall, parts


def worker(role: str, size: str, threads: int, inputs_path: str, passes: int) -> None:
    """Serve requests: ``run heads|features|post`` -> ``ok <median s> <cores busy> <stages
    json>`` over ``passes`` timed passes; ``save MODE PATH`` writes the last outputs;
    ``describe PATH`` the state dict's shapes and whether hole filling runs."""
    import warnings

    torch.set_num_threads(threads)
    if role == "ours":
        _make_inputs(inputs_path, size)
    heads, features, step, post = (_ours if role == "ours" else _meta)(size)
    heads.eval()
    seeded_state(heads, SEED)
    inputs = torch.load(inputs_path, weights_only=True)
    fpn, box = inputs["backbone_fpn"], inputs["box"]
    with torch.inference_mode():
        feats = features(fpn)
    low = mask_like_logits(4 * (SIZES[size]["resolution"] // 14))
    run = {
        "heads": lambda: step(feats, box),
        "features": lambda: _flat(features(fpn)),
        "post": lambda: post(low),
    }
    clock, last = hvr.StageClock(heads, STAGES), {}
    warnings.simplefilter("ignore")  # Meta's "skipping the post-processing" without skimage
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "run":
            out, seconds, cores, parts = _timed(run[args[0]], passes, clock)
            last[args[0]] = {k: v.float().clone() for k, v in out.items()}
            parts = parts if args[0] == "heads" else {}
            print(f"ok {seconds:.6f} {cores:.3f} {json.dumps(parts)}", flush=True)
        elif cmd == "save":
            torch.save(last[args[0]], args[1])
            print("ok 0 0 {}", flush=True)
        elif cmd == "describe":
            keys = {k: list(v.shape) for k, v in heads.state_dict().items()}
            fills = role == "ours" or importlib.util.find_spec("skimage") is not None
            Path(args[0]).write_text(json.dumps({"keys": keys, "hole_filling": fills}))
            print("ok 0 0 {}", flush=True)
        elif cmd == "quit":
            return


# ---------------------------------------------------------------- parent

MODES = {  # timed request -> its title in the report
    "heads": "interactive heads (box -> mask)",
    "features": "image features (per image)",
    "post": "post-processing",
}


def run_interactive(
    size: str, threads: int, rounds: int, passes: int, warmup: int, folder: str
) -> dict[str, Any]:
    """Both workers, rounds of each timed request; times, ratios and output agreement."""
    cfg = SIZES[size]
    grid = cfg["resolution"] // 14
    print(
        f"\n== interactive heads, one box, single mask: {size}, {grid}² embedding, "
        f"{cfg['heads']['embed_dim']} wide; {rounds} rounds x {passes} passes"
    )
    inputs = f"{folder}/interactive_inputs.pt"
    extra = ["--passes", str(passes)]
    script = Path(__file__).resolve()
    ours = hvr.Worker("ours", size, threads, inputs, script=script, extra=extra)
    meta = hvr.Worker("meta", size, threads, inputs, script=script, extra=extra)
    pair, res = [ours, meta], {}
    try:
        for w in pair:
            w.ask("describe", f"{folder}/{w.name}.describe.json")
        info = [json.loads(Path(f"{folder}/{w.name}.describe.json").read_text()) for w in pair]
        keys = [i["keys"] for i in info]
        if keys[0] != keys[1]:
            raise SystemExit(f"the heads' keys differ: {sorted(set(keys[0]) ^ set(keys[1]))[:5]}")
        for mode in MODES:
            res[mode] = hvr.timed_rounds(pair, mode, rounds, warmup, threads)
            outs = [w.outputs(mode, folder) for w in pair]
            res[mode]["ours_vs_meta"] = hvr.max_diffs(outs[0], outs[1], tuple(sorted(outs[1])))
            if mode == "post":
                masks = [o["masks"].flatten(0, 1) for o in outs]
                res[mode]["mask_iou"] = float(hvr.mask_iou_pairs(*masks).min())
    finally:
        ours.close()
        meta.close()
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
    hvr.print_stages("interactive heads stages (median)", res["heads"]["stages"])


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Parse arguments and run the parent or a worker."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full", help="full or reduced")
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
