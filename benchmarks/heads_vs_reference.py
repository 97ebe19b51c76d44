"""SAM3's detector heads, ours vs Meta's (``sam3==0.1.4``), and the whole image model end to end.

Three measurements on this CPU, each from worker processes that hold one model apiece and are
asked in turn (ABBA order, after one untimed warm-up each) for one timed pass, so runs alternate
and never overlap; figures are medians, ratios are of the medians and, separately, the median of
the per-round ratios (each round times both back to back, so slow drifts of a shared machine
cancel):

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

Each timed run also reports how many cores it kept busy (process CPU time / wall time); runs
under 3/4 of ``--threads`` shared the CPU with someone else's load (two OpenMP threads on one
free core can be several times slower, not 2x), so they are counted and the medians of the
other runs are printed beside the overall ones. Our trunk runs unpacked, as the predictor runs
it (``benchmarks/teacher_vs_reference.py`` times the packed one).

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
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "reference"
if str(REFERENCE) not in sys.path:  # seeded_init is pure torch: both sides import it
    sys.path.append(str(REFERENCE))

from seeded_init import seeded_input, seeded_state  # noqa: E402

PHOTO, CAPTION = ROOT / "data" / "samples" / "chelsea.jpg", "a cat"
SEED, INPUT_SEED = 0, 1
TEXT_TOKENS = 5  # valid tokens of the seeded caption (sot, three words, eot); the rest is padding
CONTEXT = 32  # SAM3's text context length
BUSY_SHARE = 0.75  # a run with fewer cores busy than this share of its threads was contended
OUTPUTS = ("pred_logits", "pred_boxes_xyxy", "pred_masks", "presence_logit_dec")
STAGES = {  # stage -> module path, the same in our model and in Meta's Sam3Image
    "geometry": "geometry_encoder",
    "fusion_encoder": "transformer.encoder",
    "decoder": "transformer.decoder",
    "scoring": "dot_prod_scoring",
    "segmentation_head": "segmentation_head",
}
FULL_HEADS = dict(
    d_model=256,
    num_heads=8,
    dim_feedforward=2048,
    geometry_layers=3,
    encoder_layers=6,
    decoder_layers=6,
    num_queries=200,
    scoring_hidden=2048,
)
SMALL_HEADS = dict(
    d_model=128,
    num_heads=4,
    dim_feedforward=512,
    geometry_layers=2,
    encoder_layers=3,
    decoder_layers=3,
    num_queries=100,
    scoring_hidden=512,
)
SIZES = {
    "full": dict(resolution=1008, heads=FULL_HEADS),
    "small": dict(resolution=336, heads=SMALL_HEADS),
}
STUDENTS = {"image": "efficientvit_b0", "text": "MobileCLIP-S0"}  # ES-EV-S, ES-MC-S
INTERACTIVE_ROUNDS, INTERACTIVE_PASSES = 6, 10  # part 4: alternating requests, passes each


# ---------------------------------------------------------------- pure helpers (tested)


def box_iou_pairs(a: Tensor, b: Tensor) -> Tensor:
    """IoU of ``a[i]`` with ``b[i]`` for xyxy boxes ``[N, 4]`` (0 where the union is empty)."""
    a, b = a.double(), b.double()
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp(min=0).prod(dim=1)  # noqa: E731
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-300), torch.zeros_like(union))


def mask_iou_pairs(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boolean masks ``a[i]`` and ``b[i]`` (``[N, H, W]``); two empty masks agree (1)."""
    a, b = a.flatten(1).bool(), b.flatten(1).bool()
    inter, union = (a & b).sum(1).double(), (a | b).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def detection_scores(out: dict[str, Tensor]) -> Tensor:
    """SAM3's score per query of the first prompt: sigmoid(logit) * sigmoid(presence)."""
    return (
        out["pred_logits"][0, :, 0].float().sigmoid()
        * out["presence_logit_dec"][0, 0].float().sigmoid()
    )


def top_k_agreement(ref: dict[str, Tensor], other: dict[str, Tensor], k: int) -> dict[str, Any]:
    """How ``other`` agrees with ``ref`` on ``ref``'s ``k`` best-scored queries (same queries):
    box and mask IoU (masks at logit > 0), score differences, and the share of those queries
    that are also among ``other``'s top ``k``."""
    ref_scores, other_scores = detection_scores(ref), detection_scores(other)
    k = min(k, ref_scores.numel())
    top = ref_scores.topk(k).indices
    boxes = box_iou_pairs(ref["pred_boxes_xyxy"][0, top], other["pred_boxes_xyxy"][0, top])
    masks = mask_iou_pairs(ref["pred_masks"][0, top] > 0, other["pred_masks"][0, top] > 0)
    diff = (ref_scores[top] - other_scores[top]).abs()
    shared = len(set(top.tolist()) & set(other_scores.topk(k).indices.tolist()))
    return {
        "k": k,
        "box_iou_mean": float(boxes.mean()),
        "box_iou_min": float(boxes.min()),
        "mask_iou_mean": float(masks.mean()),
        "mask_iou_min": float(masks.min()),
        "score_diff_max": float(diff.max()),
        "score_diff_mean": float(diff.mean()),
        "shared_top_k": shared / k,
    }


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


def max_diffs(
    a: dict[str, Tensor], b: dict[str, Tensor], keys: tuple[str, ...] = OUTPUTS
) -> dict[str, dict[str, float]]:
    """Largest ``|a - b|`` and the relative L2 error of every output in ``keys``."""
    out = {}
    for key in keys:
        x, y = a[key].double(), b[key].double()
        out[key] = {
            "max_abs": float((x - y).abs().max()),
            "rel_l2": float((x - y).norm() / y.norm().clamp(min=1e-300)),
        }
    return out


# ---------------------------------------------------------------- workers


class StageClock:
    """Wall time spent inside named submodules (forward hooks), summed over one pass."""

    def __init__(self, model: nn.Module, stages: dict[str, str] | None = None):
        self.stages = STAGES if stages is None else stages  # stage -> module path
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


def _make_inputs(path: str, size: str) -> None:
    """Seeded FPN maps, our sine position encoding and seeded text features, in one file."""
    from sam3.model.position_encoding import PositionEmbeddingSine

    d, grid = SIZES[size]["heads"]["d_model"], SIZES[size]["resolution"] // 14
    fpn = [
        seeded_input([1, d, grid * s, grid * s], INPUT_SEED + i) for i, s in enumerate((4, 2, 1))
    ]
    pos_enc = PositionEmbeddingSine(d)
    mask = torch.ones(1, CONTEXT, dtype=torch.bool)
    mask[:, :TEXT_TOKENS] = False
    torch.save(
        {
            "backbone_fpn": fpn,
            "vision_pos_enc": [pos_enc(f).clone() for f in fpn],
            "language_features": seeded_input([CONTEXT, 1, d], INPUT_SEED + 10),
            "language_mask": mask,
        },
        path,
    )


def _heads_runner(role: str, size: str, inputs_path: str) -> tuple[nn.Module, Any]:
    """(model, pass) for the heads-only workers; the pass returns the grounding outputs."""
    resolution, heads = SIZES[size]["resolution"], SIZES[size]["heads"]
    if role == "ours":
        from sam3.model.heads_config import HeadsConfig
        from sam3.model.sam3_image import Sam3ImageModel

        _make_inputs(inputs_path, size)
        model = Sam3ImageModel(nn.Module(), HeadsConfig(**heads))  # no backbone: inputs given
        step = lambda state: model.forward_grounding(state)  # noqa: E731
    else:
        import meta_oracle
        from meta_job_grounding import _prompt, _reduced_model

        meta = meta_oracle.import_meta()  # puts Meta's sam3 first on sys.path
        find_stage = importlib.import_module("sam3.model.data_misc").FindStage

        grid = resolution // 14
        vision = dict(  # a token backbone: the heads get their inputs from the file
            img_size=resolution,
            patch_size=14,
            embed_dim=32,
            depth=1,
            num_heads=2,
            mlp_ratio=1.0,
            window_size=grid // 3,
            global_att_blocks=[0],
            pretrain_img_size=336,
        )
        job = {"vision": vision, "text": dict(width=64, heads=1, layers=1), "heads": heads}
        model = _reduced_model(meta, job)
        ids = torch.tensor([0])
        find = find_stage(ids, ids, None, None, None, None, None)
        step = lambda state: model.forward_grounding(  # noqa: E731
            backbone_out=state, find_input=find, find_target=None, geometric_prompt=_prompt({})
        )
    model.eval()
    seeded_state(model, SEED)
    inputs = torch.load(inputs_path, weights_only=True)
    return model, lambda: step(
        {k: (list(v) if isinstance(v, list) else v) for k, v in inputs.items()}
    )


def _e2e_model(role: str, size: str) -> nn.Module:
    """SAM3's image model or the merged ES-EV-S + ES-MC-S one; heads seeded alike."""
    from sam3.arch import BackboneConfig, ImageModelConfig
    from sam3.merged import merged_backbone
    from sam3.model.heads_config import HeadsConfig
    from sam3.model.sam3_image import SAM3_PREPROCESSING, Sam3ImageModel
    from sam3.model.text_encoder import TextConfig
    from sam3.model.vit import ViTConfig
    from sam3.model_builder import build_sam3_image_model

    heads = HeadsConfig(**SIZES[size]["heads"])
    if size == "full":
        cfg = ImageModelConfig()
    else:
        vit = ViTConfig(
            img_size=336, embed_dim=256, depth=4, num_heads=4, window_size=8, global_blocks=(1, 3)
        )
        backbone = BackboneConfig(vit, TextConfig(width=256, heads=4, layers=4), heads.d_model)
        cfg = ImageModelConfig(backbone, heads)
    torch.manual_seed(SEED)
    if role == "sam3":
        model = build_sam3_image_model(cfg=cfg)
    else:
        students = merged_backbone(
            {"name": STUDENTS["image"]}, {"name": STUDENTS["text"]}, cfg.backbone
        )
        prep = {**SAM3_PREPROCESSING, "img_size": cfg.backbone.vit.img_size}
        model = Sam3ImageModel(students, cfg.heads, prep)
    for path in STAGES.values():
        seeded_state(model.get_submodule(path), SEED)
    return model.eval()


def _e2e_runner(role: str, size: str) -> tuple[nn.Module, Any]:
    """(model, pass) for the end-to-end workers; the pass times its own four stages."""
    from PIL import Image

    from sam3.preprocess import Preprocessing, preprocess

    model = _e2e_model(role, size)
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
    """Serve timed passes: ``run fp32|bf16`` -> ``ok <seconds> <cores busy> <stages json>``;
    ``save MODE PATH`` writes the last outputs; ``keys PATH`` the state dict's shapes."""
    torch.set_num_threads(threads)
    heads_only = role in ("ours", "meta")
    model, step = _heads_runner(role, size, inputs_path) if heads_only else _e2e_runner(role, size)
    clock = StageClock(model) if heads_only else None
    last: dict[str, dict[str, Tensor]] = {}
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, *args = line.split()
        try:
            if cmd == "run":
                with (
                    torch.inference_mode(),
                    torch.autocast("cpu", torch.bfloat16, enabled=args[0] == "bf16"),
                ):
                    t0, c0 = time.perf_counter(), time.process_time()
                    out = step()
                    seconds = time.perf_counter() - t0
                    cores = (time.process_time() - c0) / seconds  # < threads: others' load
                out, stages = (out, clock.take(seconds)) if heads_only else out
                last[args[0]] = {k: out[k].float().clone() for k in OUTPUTS}
                print(f"ok {seconds:.4f} {cores:.3f} {json.dumps(stages)}", flush=True)
            elif cmd == "save":
                torch.save(last[args[0]], args[1])
                print("ok 0 0 {}", flush=True)
            elif cmd == "keys":
                keys = {k: list(v.shape) for k, v in model.state_dict().items()}
                Path(args[0]).write_text(json.dumps(keys))
                print("ok 0 0 {}", flush=True)
            elif cmd == "quit":
                return
        except Exception as err:  # reported to the parent, which decides what to skip
            print(
                f"err {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                flush=True,
            )


class WorkerError(RuntimeError):
    """A worker answered a command with an error."""


class Worker:
    """A worker process seen from the parent."""

    def __init__(
        self,
        role: str,
        size: str,
        threads: int,
        inputs_path: str,
        script: Path | None = None,
        extra: tuple[str, ...] | list[str] = (),
    ):
        """Start ``script`` (this file by default) as a ``role`` worker; ``extra`` arguments
        follow the common ones."""
        env = dict(os.environ)
        if role == "meta":
            from prepare_oracle import is_ready, oracle_site

            if not is_ready():
                raise SystemExit(
                    "Meta's package is missing: run python tests/reference/prepare_oracle.py"
                )
            env["PYTHONPATH"] = os.pathsep.join([str(oracle_site()), str(REFERENCE)])
        else:
            env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(REFERENCE)])
        script = Path(__file__).resolve() if script is None else script
        cmd = [sys.executable, str(script), "--worker", role, "--size", size]
        cmd += ["--threads", str(threads), "--inputs", inputs_path, *extra]
        self.name = role
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=tempfile.gettempdir(),
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"{role} worker failed to start (exit {self.proc.poll()}): {line!r}")

    def ask(self, *words: str) -> tuple[float, float, dict[str, float]]:
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
        """The outputs of this worker's last ``mode`` pass."""
        path = f"{folder}/{self.name}.{mode}.pt"
        self.ask("save", mode, path)
        return torch.load(path, weights_only=True)

    def close(self) -> None:
        """Stop the worker."""
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait()


def timed_rounds(
    pair: list[Worker], mode: str, repeats: int, warmup: int, threads: int
) -> dict[str, Any]:
    """Warm up, then ``repeats`` alternating (ABBA) timed passes; times, medians, ratios, and
    the runs that got under 3/4 of their ``threads`` cores (others' load on a shared CPU)."""
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


def print_agreement(label: str, agree: dict[str, float]) -> None:
    """One line of top-k agreement figures."""
    print(
        f"  {label}: top-{agree['k']} box IoU mean {agree['box_iou_mean']:.4f} "
        f"(min {agree['box_iou_min']:.4f}), mask IoU mean {agree['mask_iou_mean']:.4f} "
        f"(min {agree['mask_iou_min']:.4f}), |score diff| max {agree['score_diff_max']:.2e} "
        f"(mean {agree['score_diff_mean']:.2e}), shared top-k {agree['shared_top_k']:.2f}"
    )


def measure(pair: list[Worker], args: argparse.Namespace, folder: str) -> dict[str, Any]:
    """fp32 then bf16 rounds for two workers, and how their outputs compare."""
    fp32_rounds = timed_rounds(pair, "fp32", args.repeats, args.warmup, args.threads)
    result: dict[str, Any] = {"fp32": fp32_rounds}
    fp32 = {w.name: w.outputs("fp32", folder) for w in pair}
    result["agreement"] = {}
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
                result["agreement"][f"{w.name}_bf16_vs_fp32"] = top_k_agreement(
                    fp32[w.name], bf16, args.top_k
                )
                result["agreement"][f"{w.name}_bf16_vs_fp32"]["max_diff"] = max_diffs(
                    bf16, fp32[w.name]
                )
    result["fp32_outputs"] = fp32
    return result


def report_timing(title: str, mode: str, res: dict[str, Any], a: str, b: str) -> None:
    """Medians and ratios of one mode's rounds."""
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


def cpu_report() -> dict[str, Any]:
    """torch's CPU capability and the cpuinfo bf16 flags."""
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


def run_heads(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    """Part 1 (and its bf16 half): our heads vs Meta's on the same weights and inputs."""
    size = SIZES[args.size]
    print(
        f"\n== heads only: {args.size}, {size['resolution']}², "
        f"{size['heads']['num_queries']} queries"
    )
    inputs = f"{folder}/inputs.pt"
    ours = Worker("ours", args.size, args.threads, inputs)  # writes the inputs file
    meta = Worker("meta", args.size, args.threads, inputs)
    try:
        for w in (ours, meta):
            w.ask("keys", f"{folder}/{w.name}.keys.json")
        keys = {
            w.name: json.loads(Path(f"{folder}/{w.name}.keys.json").read_text())
            for w in (ours, meta)
        }
        heads_keys = {k: v for k, v in keys["meta"].items() if not k.startswith("backbone.")}
        if heads_keys != keys["ours"]:
            raise SystemExit(
                f"the heads' keys differ: {sorted(set(heads_keys) ^ set(keys['ours']))[:5]}"
            )
        res = measure([ours, meta], args, folder)
    finally:
        ours.close()
        meta.close()
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
        for name in ("ours", "meta"):
            speedup = res["fp32"]["median"][name] / res["bf16"]["median"][name]
            print(f"  {name} bf16 speed-up over fp32: {speedup:.3f}x")
            print_agreement(f"{name} bf16 vs fp32", res["agreement"][f"{name}_bf16_vs_fp32"])
        print_stages("heads bf16 stages (median)", res["bf16"]["stages"])
    return res


def run_e2e(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    """Part 2 (and its bf16 half): SAM3 vs the merged ES-EV-S + ES-MC-S model, ours only."""
    print(f"\n== end to end: {PHOTO.name} '{CAPTION}', {args.size}; SAM3 vs {STUDENTS}")
    sam3 = Worker("sam3", args.size, args.threads, "")
    efficient = Worker("efficient", args.size, args.threads, "")
    try:
        res = measure([sam3, efficient], args, folder)
    finally:
        sam3.close()
        efficient.close()
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
    for name in ("sam3", "efficient"):
        if "median" in res.get("bf16", {}):
            speedup = res["fp32"]["median"][name] / res["bf16"]["median"][name]
            print(f"  {name} bf16 speed-up over fp32: {speedup:.3f}x")
            print_agreement(f"{name} bf16 vs fp32", res["agreement"][f"{name}_bf16_vs_fp32"])
    return res


def _interactive() -> Any:
    """The interactive benchmark module (beside this file)."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module("interactive_vs_reference")


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Parse arguments and run the parent or a worker."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", choices=sorted(SIZES), default="full", help="full or reduced sizes"
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
            report["interactive"] = _interactive().run_interactive(
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
