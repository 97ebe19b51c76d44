"""Oracle job ``vision``: Meta's trunk and necks in a ``SAM3VLBackbone``, seeded, on a seeded input.

Job parameters: ``img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio, window_size,
global_att_blocks, pretrain_img_size, d_model, add_sam2_neck, batch, seed, input_seed``.

Returns ``input``, ``trunk_out``, ``fpn.{0,1,2}``, ``pos.{0,1,2}``, ``vision_features``,
``all_neck.{0..3}`` (incl. the 0.5x level that ``scalp=1`` drops), ``sam2_fpn.{i}`` and
``sam2_pos.{i}`` (if ``add_sam2_neck``), ``freqs_cis.window`` (if any window block) and
``freqs_cis.global``. Meta's trunk returns the map after block ``global_att_blocks[-1]`` (the
last *listed* global block); blocks after it run but are discarded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from meta_oracle import build_meta_trunk, fail, log_phase, require
from meta_oracle import check_vision_params as check
from seeded_init import seeded_input, seeded_state

PARAMS = (
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


def run(meta: SimpleNamespace, job: dict[str, Any]) -> dict[str, Any]:
    """Build a (small or full) SAM3 vision backbone, seed it, and dump trunk/neck outputs."""
    require(job, PARAMS)
    check(job)
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
    with capturing_vision(backbone) as captured, torch.no_grad():
        out = backbone.forward_image(image)
    log_phase("forward_image", clock)
    return vision_result(image, out, captured, trunk, [int(i) for i in job["global_att_blocks"]])


@contextlib.contextmanager
def capturing_vision(backbone: nn.Module) -> Iterator[dict[str, Any]]:
    """Record the trunk's (``"trunk"``) and the neck's own (``"neck"``) outputs of the
    ``backbone.forward_image`` calls inside the block (identical to calling them separately, at
    half the cost). SAM3VLBackbone calls ``vision_backbone.forward(...)`` directly, which
    bypasses module hooks, so the neck's forward is wrapped on the instance; the neck calls
    ``self.trunk(...)``, so a hook works."""
    captured: dict[str, Any] = {}
    neck = backbone.vision_backbone
    neck_forward = neck.forward

    def neck_forward_capturing(samples: torch.Tensor) -> Any:
        captured["neck"] = neck_forward(samples)
        return captured["neck"]

    neck.forward = neck_forward_capturing
    hook = neck.trunk.register_forward_hook(lambda _m, _i, o: captured.__setitem__("trunk", o))
    try:
        yield captured
    finally:
        hook.remove()
        del neck.forward


def vision_result(
    image: torch.Tensor,
    out: dict[str, Any],
    captured: dict[str, Any],
    trunk: nn.Module,
    global_blocks: list[int],
) -> dict[str, Any]:
    """The ``vision`` job's result for one ``forward_image(image)`` call: its output ``out`` and
    what :func:`capturing_vision` recorded during it."""
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
    window_blocks = [i for i in range(len(trunk.blocks)) if i not in global_blocks]
    if window_blocks:
        result["freqs_cis.window"] = trunk.blocks[window_blocks[0]].attn.freqs_cis.clone()
    result["freqs_cis.global"] = trunk.blocks[global_blocks[-1]].attn.freqs_cis.clone()
    return result
