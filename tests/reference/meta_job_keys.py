"""Oracle job ``keys``: the names, shapes and dtypes of Meta's full SAM3 build (on the meta
device where possible), in sam3.pt's key space, and the full-size RoPE tables.

Job parameters: ``seed`` (optional, default 0; and the optional ``bpe_path``). Returns
``shapes`` and ``dtypes`` (dicts keyed in sam3.pt's ``detector.*``/``tracker.*`` space),
``built_on`` (``"meta"`` or ``"cpu"``) and the full-size ``freqs_cis.window`` [576, 32] /
``freqs_cis.global`` [5184, 32].
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from meta_oracle import fail, resolve_bpe_path

# sam3.pt key counts (build_sam3_image_model(enable_inst_interactivity=True), renamed).
EXPECTED_DETECTOR_KEYS = 1156
EXPECTED_TRACKER_KEYS = 309

# Full-size SAM3 trunk geometry, for the keys job's RoPE tables.
FULL_EMBED_DIM = 1024
FULL_HEADS = 16
FULL_WINDOW = 24
FULL_GRID = 1008 // 14


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


def run(meta: SimpleNamespace, job: dict[str, Any]) -> dict[str, Any]:
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
