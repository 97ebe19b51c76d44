"""Run one numerical-oracle job with Meta's ``sam3==0.1.4`` (never with our ``sam3``).

Usage: ``python meta_oracle.py JOB.json OUT.pt``. Started by ``oracle.run_oracle`` in a
subprocess whose ``PYTHONPATH`` is only the oracle site and this folder; the oracle site is put
first on ``sys.path`` here and the imported ``sam3`` must come from it. The result is a dict
written with ``torch.save`` (to a temporary name, then ``os.replace``) that loads with
``torch.load(weights_only=True)``.

Jobs (``"kind"``), all deterministic (``torch.manual_seed(seed)`` before building, then
``seeded_init.seeded_state(module, seed)``):

* ``vision``: ``img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio, window_size,
  global_att_blocks, pretrain_img_size, d_model, add_sam2_neck, batch, seed, input_seed``.
  Returns ``input``, ``trunk_out``, ``fpn.{0,1,2}``, ``pos.{0,1,2}``, ``vision_features``,
  ``all_neck.{0..3}`` (incl. the 0.5x level that ``scalp=1`` drops), ``sam2_fpn.{i}`` and
  ``sam2_pos.{i}`` (if ``add_sam2_neck``), ``freqs_cis.window`` (if any window block) and
  ``freqs_cis.global``. Meta's trunk returns the map after block ``global_att_blocks[-1]``
  (the last *listed* global block); blocks after it run but are discarded.
* ``text``: ``width, heads, layers, context_length, d_model, captions, seed``. Returns
  ``tokens``, ``language_features``, ``language_mask``, ``language_embeds``.
* ``tokenizer``: ``texts, context_lengths``. Returns ``tokens.{ctx}`` per context length.
* ``keys``: ``seed`` (optional, default 0). Returns ``shapes`` and ``dtypes`` (dicts keyed in
  sam3.pt's ``detector.*``/``tracker.*`` space), ``built_on`` (``"meta"`` or ``"cpu"``) and the
  full-size ``freqs_cis.window`` [576, 32] / ``freqs_cis.global`` [5184, 32].

Every job also accepts an optional ``bpe_path``; by default open_clip's bundled BPE file
(byte-identical to Meta's) is used.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(1, str(HERE))

from prepare_oracle import PINS, oracle_site  # noqa: E402
from seeded_init import seeded_input, seeded_state  # noqa: E402

PREPARE_HINT = "python tests/reference/prepare_oracle.py"
_PLAIN_KIND = re.compile(r"^[a-z][a-z0-9_]*$")
BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

# sam3.pt key counts (build_sam3_image_model(enable_inst_interactivity=True), renamed).
EXPECTED_DETECTOR_KEYS = 1156
EXPECTED_TRACKER_KEYS = 309

# Full-size SAM3 trunk geometry, for the keys job's RoPE tables.
FULL_EMBED_DIM = 1024
FULL_HEADS = 16
FULL_WINDOW = 24
FULL_GRID = 1008 // 14

VISION_PARAMS = (
    "img_size",
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "window_size",
    "global_att_blocks",
    "pretrain_img_size",
    "d_model",
    "add_sam2_neck",
    "batch",
    "seed",
    "input_seed",
)
TEXT_PARAMS = ("width", "heads", "layers", "context_length", "d_model", "captions", "seed")
TOKENIZER_PARAMS = ("texts", "context_lengths")


def fail(message: str) -> NoReturn:
    """Print an error for the parent process and exit with status 2."""
    print(f"meta_oracle: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def import_meta() -> SimpleNamespace:
    """Import Meta's sam3 modules from the oracle site (checked) and apply the CPU patches."""
    site = oracle_site().resolve()
    if not (site / "sam3" / "model_builder.py").is_file():
        fail(f"Meta's sam3 is not installed in {site}; run: {PREPARE_HINT}")
    if "sam3" in sys.modules:
        fail("a module named sam3 was imported before the oracle site was put on sys.path")
    if not sys.path or Path(sys.path[0]).resolve() != site:
        sys.path.insert(0, str(site))
    import sam3  # Meta's package, from the oracle site

    where = Path(sam3.__file__).resolve()
    if site not in where.parents:
        fail(
            f"imported sam3 from {where}, not from the oracle site {site}; the oracle must "
            "never run our package (check PYTHONPATH and the working directory)"
        )
    if getattr(sam3, "__version__", None) != PINS["sam3"]:
        fail(f"Meta's sam3 reports version {sam3.__version__!r}, expected {PINS['sam3']!r}")

    from sam3 import model_builder
    from sam3.model import (
        decoder,
        necks,
        position_encoding,
        text_encoder_ve,
        tokenizer_ve,
        vitdet,
        vl_combiner,
    )

    patch_for_cpu(position_encoding.PositionEmbeddingSine, decoder.TransformerDecoder)
    return SimpleNamespace(
        ViT=vitdet.ViT,
        Attention=vitdet.Attention,
        PositionEmbeddingSine=position_encoding.PositionEmbeddingSine,
        Sam3DualViTDetNeck=necks.Sam3DualViTDetNeck,
        SAM3VLBackbone=vl_combiner.SAM3VLBackbone,
        VETextEncoder=text_encoder_ve.VETextEncoder,
        SimpleTokenizer=tokenizer_ve.SimpleTokenizer,
        build_sam3_image_model=model_builder.build_sam3_image_model,
        sam3_file=str(where),
    )


def patch_for_cpu(pos_enc_cls: type, decoder_cls: type) -> None:
    """Apply the three numerically neutral CPU patches (sam3_model.md section 7)."""
    if getattr(pos_enc_cls, "_oracle_patched", False):
        return
    original_init = pos_enc_cls.__init__
    init_signature = inspect.signature(original_init)

    @functools.wraps(original_init)
    def init_without_precompute(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        bound = init_signature.bind(self, *args, **kwargs)
        # The pre-filled cache is allocated on "cuda" and covers sizes SAM3 never uses.
        bound.arguments["precompute_resolution"] = None
        original_init(*bound.args, **bound.kwargs)

    pos_enc_cls.__init__ = init_without_precompute
    pos_enc_cls._oracle_patched = True

    original_get_coords: Callable[..., Any] = decoder_cls._get_coords

    def get_coords_cpu(height: int, width: int, device: Any) -> Any:
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            device = "cpu"
        return original_get_coords(height, width, device)

    decoder_cls._get_coords = staticmethod(get_coords_cpu)

    if not torch.cuda.is_available():

        def pin_memory_noop(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            return self

        torch.Tensor.pin_memory = pin_memory_noop


def resolve_bpe_path(job: dict[str, Any]) -> str:
    """Return the BPE vocabulary path: ``job["bpe_path"]`` or open_clip's bundled file."""
    if job.get("bpe_path"):
        path = Path(job["bpe_path"])
    else:
        spec = importlib.util.find_spec("open_clip")
        if spec is None or not spec.submodule_search_locations:
            fail("open_clip is not installed; it provides the BPE file (or pass bpe_path)")
        path = Path(next(iter(spec.submodule_search_locations))) / BPE_NAME
    if not path.is_file():
        fail(f"BPE vocabulary not found at {path}; pass an existing bpe_path in the job")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != BPE_SHA256:
        fail(f"BPE file {path} has sha256 {digest}, expected {BPE_SHA256} (Meta's file)")
    return str(path)


def log_phase(phase: str, start: float) -> float:
    """Print how long ``phase`` took since ``start``; return the current time."""
    now = time.perf_counter()
    print(f"meta_oracle: {phase} {now - start:.1f}s", flush=True)
    return now


def require(job: dict[str, Any], names: tuple[str, ...]) -> None:
    """Fail with the list of missing parameters if ``job`` lacks any of ``names``."""
    missing = [name for name in names if name not in job]
    if missing:
        fail(f"{job.get('kind')!r} job is missing parameters {missing}; it needs {list(names)}")


def check_vision_params(job: dict[str, Any]) -> None:
    """Reject vision sizes that Meta's ViT cannot run (instead of an obscure assert)."""
    img, patch, dim = int(job["img_size"]), int(job["patch_size"]), int(job["embed_dim"])
    heads, depth = int(job["num_heads"]), int(job["depth"])
    globals_ = [int(i) for i in job["global_att_blocks"]]
    problems = []
    if img % patch:
        problems.append(f"img_size {img} must be a multiple of patch_size {patch}")
    if int(job["pretrain_img_size"]) % patch:
        problems.append("pretrain_img_size must be a multiple of patch_size")
    if dim % heads or (dim // heads) % 4:
        problems.append(f"embed_dim/num_heads = {dim}/{heads} must be an integer divisible by 4")
    if dim % 4:
        problems.append("embed_dim must be divisible by 4 (the 4x neck level has dim // 4)")
    if not globals_ or any(not 0 <= i < depth for i in globals_):
        problems.append(f"global_att_blocks {globals_} must be non-empty indices < depth {depth}")
    if int(job["d_model"]) % 2:
        problems.append("d_model must be even (sine position encoding)")
    if problems:
        fail("invalid vision job: " + "; ".join(problems))


def build_meta_trunk(meta: SimpleNamespace, geometry: dict[str, Any]) -> nn.Module:
    """Meta's ``ViT`` configured as SAM3's ``_create_vit_backbone`` but with ``geometry``'s
    sizes (the vision job's trunk parameters), drop-path off."""
    return meta.ViT(
        img_size=int(geometry["img_size"]),
        pretrain_img_size=int(geometry["pretrain_img_size"]),
        patch_size=int(geometry["patch_size"]),
        embed_dim=int(geometry["embed_dim"]),
        depth=int(geometry["depth"]),
        num_heads=int(geometry["num_heads"]),
        mlp_ratio=float(geometry["mlp_ratio"]),
        norm_layer="LayerNorm",
        drop_path_rate=0.0,
        qkv_bias=True,
        use_abs_pos=True,
        tile_abs_pos=True,
        global_att_blocks=tuple(int(i) for i in geometry["global_att_blocks"]),
        rel_pos_blocks=(),
        use_rope=True,
        use_interp_rope=True,
        window_size=int(geometry["window_size"]),
        pretrain_use_cls_token=True,
        retain_cls_token=False,
        ln_pre=True,
        ln_post=False,
        return_interm_layers=False,
        bias_patch_embed=False,
        compile_mode=None,
    )


def run_vision(meta: SimpleNamespace, job: dict[str, Any]) -> dict[str, Any]:
    """Build a (small or full) SAM3 vision backbone, seed it, and dump trunk/neck outputs."""
    require(job, VISION_PARAMS)
    check_vision_params(job)
    seed = int(job["seed"])
    clock = time.perf_counter()
    torch.manual_seed(seed)
    trunk = build_meta_trunk(meta, job)
    d_model = int(job["d_model"])
    position_encoding = meta.PositionEmbeddingSine(
        num_pos_feats=d_model, normalize=True, scale=None, temperature=10000
    )
    neck = meta.Sam3DualViTDetNeck(
        trunk=trunk,
        position_encoding=position_encoding,
        d_model=d_model,
        scale_factors=[4.0, 2.0, 1.0, 0.5],
        add_sam2_neck=bool(job["add_sam2_neck"]),
    )
    backbone = meta.SAM3VLBackbone(visual=neck, text=None, scalp=1)
    backbone.eval()
    clock = log_phase("build", clock)
    seeded_state(backbone, seed)
    clock = log_phase("seed", clock)

    size = int(job["img_size"])
    image = seeded_input([int(job["batch"]), 3, size, size], int(job["input_seed"]))
    captured: dict[str, Any] = {}
    # The trunk's and the neck's own outputs are captured during the single forward_image pass
    # (identical to calling them separately, at half the cost). SAM3VLBackbone calls
    # ``vision_backbone.forward(...)`` directly, which bypasses module hooks, so the neck's
    # forward is wrapped on the instance; the neck calls ``self.trunk(...)``, so a hook works.
    neck_forward = neck.forward

    def neck_forward_capturing(samples: torch.Tensor) -> Any:
        captured["neck"] = neck_forward(samples)
        return captured["neck"]

    neck.forward = neck_forward_capturing
    hook = trunk.register_forward_hook(lambda _m, _i, out: captured.__setitem__("trunk", out))
    try:
        with torch.no_grad():
            out = backbone.forward_image(image)
    finally:
        hook.remove()
        del neck.forward
    clock = log_phase("forward_image", clock)
    if "trunk" not in captured or "neck" not in captured:
        fail("could not capture the trunk/neck outputs; Meta's forward path changed")

    result: dict[str, Any] = {"input": image, "trunk_out": captured["trunk"][-1]}
    for i, feat in enumerate(out["backbone_fpn"]):
        result[f"fpn.{i}"] = feat
    for i, pos in enumerate(out["vision_pos_enc"]):
        result[f"pos.{i}"] = pos
    result["vision_features"] = out["vision_features"]
    sam2 = out["sam2_backbone_out"]
    if sam2 is not None:
        for i, feat in enumerate(sam2["backbone_fpn"]):
            result[f"sam2_fpn.{i}"] = feat
        for i, pos in enumerate(sam2["vision_pos_enc"]):
            result[f"sam2_pos.{i}"] = pos
    for i, feat in enumerate(captured["neck"][0]):
        result[f"all_neck.{i}"] = feat
    global_blocks = [int(i) for i in job["global_att_blocks"]]
    window_blocks = [i for i in range(len(trunk.blocks)) if i not in global_blocks]
    if window_blocks:
        result["freqs_cis.window"] = trunk.blocks[window_blocks[0]].attn.freqs_cis.clone()
    result["freqs_cis.global"] = trunk.blocks[global_blocks[-1]].attn.freqs_cis.clone()
    return result


def run_text(meta: SimpleNamespace, job: dict[str, Any]) -> dict[str, Any]:
    """Build a SAM3 text encoder (keys ``language_backbone.*``), seed it, and encode captions."""
    require(job, TEXT_PARAMS)
    captions = [str(c) for c in job["captions"]]
    if not captions:
        fail("text job needs at least one caption")
    seed = int(job["seed"])
    context_length = int(job["context_length"])
    clock = time.perf_counter()
    torch.manual_seed(seed)
    tokenizer = meta.SimpleTokenizer(bpe_path=resolve_bpe_path(job))
    encoder = meta.VETextEncoder(
        d_model=int(job["d_model"]),
        tokenizer=tokenizer,
        width=int(job["width"]),
        heads=int(job["heads"]),
        layers=int(job["layers"]),
        context_length=context_length,
    )
    backbone = meta.SAM3VLBackbone(visual=None, text=encoder, scalp=1)
    backbone.eval()
    clock = log_phase("build", clock)
    seeded_state(backbone, seed)
    clock = log_phase("seed", clock)
    tokens = tokenizer(captions, context_length=context_length)
    with torch.no_grad():
        out = backbone.forward_text(captions, device="cpu")
    log_phase("forward_text", clock)
    return {
        "tokens": tokens,
        "language_features": out["language_features"],
        "language_mask": out["language_mask"],
        "language_embeds": out["language_embeds"],
    }


def run_tokenizer(meta: SimpleNamespace, job: dict[str, Any]) -> dict[str, Any]:
    """Tokenize ``texts`` with Meta's SimpleTokenizer at each of ``context_lengths``."""
    require(job, TOKENIZER_PARAMS)
    tokenizer = meta.SimpleTokenizer(bpe_path=resolve_bpe_path(job))
    texts = [str(t) for t in job["texts"]]
    return {
        f"tokens.{int(ctx)}": tokenizer(texts, context_length=int(ctx))
        for ctx in job["context_lengths"]
    }


def build_full_model(meta: SimpleNamespace, job: dict[str, Any]) -> tuple[nn.Module, str]:
    """Build the full image model with instance interactivity; on the meta device if possible."""
    kwargs = {
        "bpe_path": resolve_bpe_path(job),
        "device": "cpu",
        "load_from_HF": False,
        "checkpoint_path": None,
        "enable_segmentation": True,
        "enable_inst_interactivity": True,
        "compile": False,
    }
    torch.manual_seed(int(job.get("seed", 0)))
    # ViT.__init__ calls ``.item()`` on ``torch.linspace(...)`` (drop-path rates), which a meta
    # tensor cannot do; during the meta build linspace defaults to the CPU instead.
    original_linspace = torch.linspace

    @functools.wraps(original_linspace)
    def linspace_on_cpu(*args: Any, **kwargs: Any) -> torch.Tensor:
        kwargs.setdefault("device", "cpu")
        return original_linspace(*args, **kwargs)

    torch.linspace = linspace_on_cpu
    try:
        with torch.device("meta"):
            return meta.build_sam3_image_model(**kwargs), "meta"
    except Exception as err:  # any failure here means: build for real on the CPU
        print(f"meta_oracle: meta-device build failed ({err!r}); building on CPU", flush=True)
    finally:
        torch.linspace = original_linspace
    torch.manual_seed(int(job.get("seed", 0)))
    return meta.build_sam3_image_model(**kwargs), "cpu"


def to_checkpoint_key(key: str) -> str:
    """Map a key of Meta's image model (inst interactivity on) onto sam3.pt's key space."""
    tracker_prefix = "inst_interactive_predictor.model."
    if key.startswith(tracker_prefix):
        return "tracker." + key[len(tracker_prefix) :]
    return "detector." + key


def full_rope_tables(meta: SimpleNamespace) -> dict[str, torch.Tensor]:
    """Compute the full-size trunk's window and global RoPE tables with Meta's Attention."""
    common = {
        "dim": FULL_EMBED_DIM,
        "num_heads": FULL_HEADS,
        "qkv_bias": True,
        "use_rel_pos": False,
        "use_rope": True,
        "rope_pt_size": (FULL_WINDOW, FULL_WINDOW),
        "rope_interp": True,
        "cls_token": False,
    }
    with torch.device("cpu"):
        window = meta.Attention(input_size=(FULL_WINDOW, FULL_WINDOW), **common)
        global_ = meta.Attention(input_size=(FULL_GRID, FULL_GRID), **common)
    return {
        "freqs_cis.window": window.freqs_cis.clone(),
        "freqs_cis.global": global_.freqs_cis.clone(),
    }


def run_keys(meta: SimpleNamespace, job: dict[str, Any]) -> dict[str, Any]:
    """List sam3.pt's key names, shapes and dtypes from Meta's full build, plus RoPE tables."""
    model, built_on = build_full_model(meta, job)
    shapes: dict[str, list[int]] = {}
    dtypes: dict[str, str] = {}
    for key, tensor in model.state_dict().items():
        ckpt_key = to_checkpoint_key(key)
        shapes[ckpt_key] = [int(s) for s in tensor.shape]
        dtypes[ckpt_key] = str(tensor.dtype)
    n_det = sum(k.startswith("detector.") for k in shapes)
    n_trk = sum(k.startswith("tracker.") for k in shapes)
    if (n_det, n_trk) != (EXPECTED_DETECTOR_KEYS, EXPECTED_TRACKER_KEYS):
        fail(
            f"Meta's build gave {n_det} detector.* and {n_trk} tracker.* keys, expected "
            f"{EXPECTED_DETECTOR_KEYS} and {EXPECTED_TRACKER_KEYS} (1465 in sam3.pt)"
        )
    del model
    result: dict[str, Any] = {"shapes": shapes, "dtypes": dtypes, "built_on": built_on}
    result.update(full_rope_tables(meta))
    return result


JOBS: dict[str, Callable[[SimpleNamespace, dict[str, Any]], dict[str, Any]]] = {
    "vision": run_vision,
    "text": run_text,
    "tokenizer": run_tokenizer,
    "keys": run_keys,
}
# Further kinds live in their own modules beside this one: ``meta_job_<kind>.py`` with a
# ``run(meta, job) -> dict`` function (imported only when such a job runs).
JOB_MODULE_PREFIX = "meta_job_"


def find_job(kind: str) -> Callable[[SimpleNamespace, dict[str, Any]], dict[str, Any]] | None:
    """What runs ``kind``: built in, or ``meta_job_<kind>.run``; ``None`` if neither."""
    if kind in JOBS:
        return JOBS[kind]
    if not isinstance(kind, str) or not _PLAIN_KIND.match(kind):
        return None
    if not (HERE / f"{JOB_MODULE_PREFIX}{kind}.py").is_file():
        return None
    return lambda meta, job: importlib.import_module(f"{JOB_MODULE_PREFIX}{kind}").run(meta, job)


def known_kinds() -> list[str]:
    """Every job kind this oracle runs."""
    plugins = [p.stem[len(JOB_MODULE_PREFIX) :] for p in HERE.glob(f"{JOB_MODULE_PREFIX}*.py")]
    return sorted([*JOBS, *plugins])


def save_atomic(obj: dict[str, Any], out_path: Path) -> None:
    """``torch.save`` to a temporary name beside ``out_path``, then rename it into place."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".partial")
    torch.save(obj, tmp)
    os.replace(tmp, out_path)


def main(argv: list[str]) -> int:
    """Read the job JSON, run it with Meta's code and write the result file."""
    if len(argv) != 2:
        fail("usage: python meta_oracle.py JOB.json OUT.pt")
    job_path, out_path = Path(argv[0]), Path(argv[1])
    try:
        job = json.loads(job_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        fail(f"cannot read job file {job_path}: {err}")
    run_job = find_job(job.get("kind")) if isinstance(job, dict) else None
    if run_job is None:
        fail(f"job must be a JSON object with kind in {known_kinds()}, got {job!r:.200}")
    # Cheap parameter checks first, before the slow import of Meta's package.
    required = {"vision": VISION_PARAMS, "text": TEXT_PARAMS, "tokenizer": TOKENIZER_PARAMS}
    require(job, required.get(job["kind"], ()))
    if job["kind"] == "vision":
        check_vision_params(job)
    meta = import_meta()
    start = time.perf_counter()
    result = run_job(meta, job)
    print(
        f"meta_oracle: {job['kind']} job done in {time.perf_counter() - start:.1f}s "
        f"with {meta.sam3_file}",
        flush=True,
    )
    clock = time.perf_counter()
    save_atomic(result, out_path)
    log_phase("save", clock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
