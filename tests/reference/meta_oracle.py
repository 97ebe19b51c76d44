"""Run one numerical-oracle job with Meta's ``sam3==0.1.4`` (never with our ``sam3``).

Usage: ``python meta_oracle.py JOB.json OUT.pt`` runs one job; the tests run theirs through
``meta_worker.py`` (``oracle.OracleWorker``), many jobs in one process. Either runs in a
subprocess whose ``PYTHONPATH`` is only the oracle site and this folder; the oracle site is put
first on ``sys.path`` here and the imported ``sam3`` must come from it. The result is a dict
written with ``torch.save`` (to a temporary name, then ``os.replace``) that loads with
``torch.load(weights_only=True)``.

Each job kind lives in its own module beside this one, ``meta_job_<kind>.py`` (imported only
when such a job runs), whose docstring lists its parameters and results: a ``run(meta, job) ->
dict`` function, and optionally ``PARAMS`` (the parameters it needs) and ``check(job)`` (checks
of their values), both run before the slow import of Meta's package. Every job is
deterministic (``torch.manual_seed(seed)`` before building, then
``seeded_init.seeded_state(module, seed)``).

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
from types import ModuleType, SimpleNamespace
from typing import Any, NoReturn

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(1, str(HERE))

from prepare_oracle import PINS, oracle_site  # noqa: E402

PREPARE_HINT = "python tests/reference/prepare_oracle.py"
_PLAIN_KIND = re.compile(r"^[a-z][a-z0-9_]*$")
BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"


def fail(message: str) -> NoReturn:
    """Print an error for the parent process and exit with status 2."""
    print(f"meta_oracle: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


@functools.cache
def import_meta() -> SimpleNamespace:
    """Import Meta's sam3 modules from the oracle site (checked) and apply the CPU patches;
    once per process."""
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


JOB_MODULE_PREFIX = "meta_job_"


def find_job(kind: Any) -> ModuleType | None:
    """The module that runs ``kind`` (``meta_job_<kind>``), imported; ``None`` if none."""
    if not isinstance(kind, str) or not _PLAIN_KIND.match(kind):
        return None
    if not (HERE / f"{JOB_MODULE_PREFIX}{kind}.py").is_file():
        return None
    return importlib.import_module(f"{JOB_MODULE_PREFIX}{kind}")


def known_kinds() -> list[str]:
    """Every job kind this oracle runs."""
    return sorted(p.stem[len(JOB_MODULE_PREFIX) :] for p in HERE.glob(f"{JOB_MODULE_PREFIX}*.py"))


def save_atomic(obj: dict[str, Any], out_path: Path) -> None:
    """``torch.save`` to a temporary name beside ``out_path``, then rename it into place."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".partial")
    torch.save(obj, tmp)
    os.replace(tmp, out_path)


def run_job_file(job_path: Path, out_path: Path) -> None:
    """Read the job JSON, run it with Meta's code and write the result file."""
    try:
        job = json.loads(job_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        fail(f"cannot read job file {job_path}: {err}")
    module = find_job(job.get("kind")) if isinstance(job, dict) else None
    if module is None:
        fail(f"job must be a JSON object with kind in {known_kinds()}, got {job!r:.200}")
    # Cheap parameter checks first, before the slow import of Meta's package.
    require(job, getattr(module, "PARAMS", ()))
    if hasattr(module, "check"):
        module.check(job)
    meta = import_meta()
    start = time.perf_counter()
    result = module.run(meta, job)
    print(
        f"meta_oracle: {job['kind']} job done in {time.perf_counter() - start:.1f}s "
        f"with {meta.sam3_file}",
        flush=True,
    )
    clock = time.perf_counter()
    save_atomic(result, out_path)
    log_phase("save", clock)


def main(argv: list[str]) -> int:
    """``python meta_oracle.py JOB.json OUT.pt``: run one job."""
    if len(argv) != 2:
        fail("usage: python meta_oracle.py JOB.json OUT.pt")
    run_job_file(Path(argv[0]), Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
