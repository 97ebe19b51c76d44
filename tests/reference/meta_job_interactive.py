"""Oracle job ``interactive``: Meta's point/box/mask-prompted (SAM1-task) image path, dumped.

Job parameters:

* ``size``: ``"reduced"`` (SAM3 at its real sizes is the ``full`` job's): the job's ``vision``
  trunk (the ``vision`` job's trunk keys) under a ``Sam3DualViTDetNeck(d_model=256,
  add_sam2_neck=True)`` in a ``SAM3VLBackbone(text=None, scalp=1)``, and Meta's
  ``build_tracker(apply_temporal_disambiguation=False)`` with only ``image_size = img_size``
  and ``backbone_stride = patch_size`` changed (SAM heads at width 256, video-only parts as
  Meta builds them), wrapped as the builder wraps it in ``SAM3InteractiveImagePredictor``.
  The wrapper's hard-coded feature sizes (288/144/72) are set to the reduced grid (4g, 2g,
  g), g = img_size // patch_size; no detector heads.
* ``seed``: weights from ``seeded_state`` on our key names: Meta's ``Sam3Image`` state-dict
  names with ``inst_interactive_predictor.model.`` renamed ``tracker.`` (``backbone.*`` and
  ``tracker.*``). ``fan_in_init`` (default false): afterwards every Linear, Conv2d and
  ConvTranspose2d weight of ``tracker.sam_prompt_encoder`` / ``tracker.sam_mask_decoder`` is
  multiplied by ``1 / (0.02 * sqrt(fan_in))`` (std 1/sqrt(fan_in)); fan_in = in_features,
  in_channels/groups*kh*kw (Conv2d), in_channels/groups*(kh/sh)*(kw/sw) (ConvTranspose2d).
* ``images``: RGB photo paths, set with Meta's ``Sam3Processor.set_image`` (PIL).
* ``cases``: ``{"image": i, "point_coords": [[x, y], ...] | null, "point_labels": [...] | null,
  "box": [x0, y0, x1, y1] | [[...], ...] | null, "multimask_output": bool,
  "mask_input_from": k | null, "mask_input_index": j}``, pixel coordinates of the photo, run
  through Meta's ``Sam3Image.predict_inst``. ``mask_input_from`` passes entry ``j`` of case
  ``k``'s returned ``low_res_logits`` (flattened to ``[-1, h, w]``) as ``mask_input [1, h, w]``.

Returns, per image ``i``: ``image.{i}.input`` ``[1,3,S,S]``, ``image.{i}.orig_hw`` (int64
``[H, W]``), ``image.{i}.sam2_fpn.{0,1,2}`` (before ``conv_s0/s1``), ``image.{i}.high_res.{0,1}``
(after them), ``image.{i}.image_embed`` (level 2 + ``no_mem_embed``; only for images with a
case). Per case ``k`` (shapes as Meta returns them: ``[C, ...]``, or ``[N, C, ...]`` for N > 1
prompt sets): ``masks`` (float32 {0, 1}), ``scores``, ``low_res_logits``; from the mask
decoder's ``predict_masks`` call: ``all_masks`` ``[N,4,h,w]``, ``all_iou`` ``[N,4]``,
``object_score_logits`` ``[N,1]``, ``sparse``, ``dense``, ``image_pe``; ``selected`` (int64
``[N, C]``: the token whose clamped logits equal each returned mask). ``state_keys`` (name ->
shape, ``tracker.*`` and ``backbone.vision_backbone.sam2_convs.*`` only); ``hole_filling``:
1 if Meta's hole filling ran in every call (no "Skipping the post-processing" warning), else 0.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from meta_oracle import build_meta_trunk, check_vision_params, fail, log_phase
from seeded_init import WEIGHT_STD, seeded_state

TRACKER_PREFIX = "inst_interactive_predictor.model."
SKIP_WARNING = "Skipping the post-processing step"


def _reduced_parts(meta: Any, vision: dict[str, Any]) -> tuple[nn.Module, nn.Module]:
    """Meta's VL backbone (reduced trunk, both necks) and its wrapped tracker at that size."""
    from sam3 import model_builder

    check_vision_params({**vision, "d_model": 256})
    neck = meta.Sam3DualViTDetNeck(
        trunk=build_meta_trunk(meta, vision),
        position_encoding=meta.PositionEmbeddingSine(
            num_pos_feats=256, normalize=True, scale=None, temperature=10000
        ),
        d_model=256,
        scale_factors=[4.0, 2.0, 1.0, 0.5],
        add_sam2_neck=True,
    )
    backbone = meta.SAM3VLBackbone(visual=neck, text=None, scalp=1)
    real_cls = model_builder.Sam3TrackerPredictor

    def sized_tracker(**kwargs: Any) -> nn.Module:
        kwargs.update(image_size=int(vision["img_size"]), backbone_stride=int(vision["patch_size"]))
        return real_cls(**kwargs)

    model_builder.Sam3TrackerPredictor = sized_tracker
    try:
        tracker = model_builder.build_tracker(apply_temporal_disambiguation=False)
    finally:
        model_builder.Sam3TrackerPredictor = real_cls
    predictor = model_builder.SAM3InteractiveImagePredictor(tracker)
    grid = tracker.sam_image_embedding_size
    predictor._bb_feat_sizes = [(4 * grid, 4 * grid), (2 * grid, 2 * grid), (grid, grid)]
    return backbone.eval(), predictor.eval()


def _named_state(owner: Any, backbone: nn.Module) -> dict[str, torch.Tensor]:
    """Our names -> Meta's tensors (shared storage)."""
    if isinstance(owner, nn.Module):
        return {
            ("tracker." + k[len(TRACKER_PREFIX) :] if k.startswith(TRACKER_PREFIX) else k): v
            for k, v in owner.state_dict(keep_vars=True).items()
        }
    named = {"backbone." + k: v for k, v in backbone.state_dict(keep_vars=True).items()}
    tracker = owner.inst_interactive_predictor.model
    named.update({"tracker." + k: v for k, v in tracker.state_dict(keep_vars=True).items()})
    return named


def rescale_heads_to_fan_in(tracker: nn.Module) -> None:
    """Scale the SAM heads' Linear/Conv/ConvTranspose weights from std 0.02 to 1/sqrt(fan_in)."""
    with torch.no_grad():
        for head in (tracker.sam_prompt_encoder, tracker.sam_mask_decoder):
            for module in head.modules():
                if isinstance(module, nn.Linear):
                    fan_in = module.in_features
                elif isinstance(module, nn.ConvTranspose2d):
                    kh, kw = module.kernel_size
                    sh, sw = module.stride
                    fan_in = module.in_channels // module.groups * (kh / sh) * (kw / sw)
                elif isinstance(module, nn.Conv2d):
                    fan_in = module.weight[0].numel()
                else:
                    continue
                module.weight.mul_(1.0 / (WEIGHT_STD * math.sqrt(fan_in)))


def _prompt_kwargs(case: dict[str, Any], returned: list[np.ndarray]) -> dict[str, Any]:
    """``predict_inst`` arguments for one case (numpy, as Meta's examples pass them)."""
    kwargs: dict[str, Any] = {"multimask_output": bool(case.get("multimask_output", True))}
    if case.get("point_coords") is not None:
        kwargs["point_coords"] = np.asarray(case["point_coords"], dtype=np.float32)
        kwargs["point_labels"] = np.asarray(case["point_labels"], dtype=np.int32)
    if case.get("box") is not None:
        kwargs["box"] = np.asarray(case["box"], dtype=np.float32)
    source = case.get("mask_input_from")
    if source is not None:
        if not 0 <= int(source) < len(returned):
            fail(f"mask_input_from {source} must name an earlier case (0..{len(returned) - 1})")
        low = returned[int(source)]
        kwargs["mask_input"] = low.reshape(-1, *low.shape[-2:])[int(case["mask_input_index"])][None]
    return kwargs


def _selected(all_masks: torch.Tensor, low_res: torch.Tensor, k: int) -> torch.Tensor:
    """Token index of each returned low-res mask (exact match after clamping to [-32, 32])."""
    n, tokens = all_masks.shape[:2]
    ref = all_masks.clamp(-32.0, 32.0)
    low = low_res.reshape(n, -1, *low_res.shape[-2:])
    selected = torch.empty(n, low.shape[1], dtype=torch.int64)
    for a in range(n):
        for b in range(low.shape[1]):
            hits = [t for t in range(tokens) if torch.equal(ref[a, t], low[a, b])]
            if not hits:
                fail(f"case {k}: returned mask {a},{b} equals none of the decoder's 4 tokens")
            selected[a, b] = hits[0]
    return selected


def set_images(
    processor: Any,
    backbone: nn.Module,
    paths: list[str],
    on_forward: Callable[[torch.Tensor, dict], None] | None = None,
) -> tuple[list, dict]:
    """``Sam3Processor.set_image`` per photo; also the input and the sam2 levels before conv.
    ``on_forward(samples, out)`` sees each ``forward_image`` call before the processor changes
    its output."""
    from PIL import Image

    result: dict[str, Any] = {}
    states = []
    seen: dict[str, Any] = {}
    forward_image = backbone.forward_image

    def capture(samples: torch.Tensor) -> Any:
        out = forward_image(samples)
        seen["input"], seen["fpn"] = samples, list(out["sam2_backbone_out"]["backbone_fpn"])
        if on_forward is not None:
            on_forward(samples, out)
        return out

    backbone.forward_image = capture
    try:
        for i, path in enumerate(paths):
            with Image.open(path) as im:
                state = processor.set_image(im.convert("RGB"))
            states.append(state)
            tag = f"image.{i}."
            result[tag + "input"] = seen["input"]
            hw = [state["original_height"], state["original_width"]]
            result[tag + "orig_hw"] = torch.tensor(hw, dtype=torch.int64)
            for level, feat in enumerate(seen["fpn"]):
                result[f"{tag}sam2_fpn.{level}"] = feat
            for level in (0, 1):
                sam2 = state["backbone_out"]["sam2_backbone_out"]
                result[f"{tag}high_res.{level}"] = sam2["backbone_fpn"][level]
    finally:
        del backbone.forward_image
    return states, result


def run(meta: Any, job: dict[str, Any]) -> dict[str, Any]:
    """Build, seed, set every photo, run every case; see the module docstring for the keys."""
    from sam3.model.sam3_image_processor import Sam3Processor

    if job.get("size") != "reduced":
        fail(f"interactive job size must be 'reduced', got {job.get('size')!r} (full: 'full' job)")
    if not job.get("images") or not job.get("cases"):
        fail("interactive job needs images and cases")
    clock = time.perf_counter()
    torch.manual_seed(int(job["seed"]))
    backbone, predictor = _reduced_parts(meta, job["vision"])
    owner = SimpleNamespace(backbone=backbone, inst_interactive_predictor=predictor)
    clock = log_phase("build", clock)
    named = seed_interactive(owner, int(job["seed"]), bool(job.get("fan_in_init")))
    clock = log_phase("seed", clock)
    result: dict[str, Any] = {
        "state_keys": {
            k: list(v.shape)
            for k, v in named.items()
            if k.startswith(("tracker.", "backbone.vision_backbone.sam2_convs."))
        }
    }
    processor = Sam3Processor(owner, resolution=predictor.model.image_size, device="cpu")
    states, images = set_images(processor, backbone, [str(p) for p in job["images"]])
    result.update(images)
    clock = log_phase("set_image", clock)
    result.update(predict_cases(owner, states, job["cases"]))
    log_phase("predict_inst", clock)
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in result.items()}


def seed_interactive(owner: Any, seed: int, fan_in_init: bool) -> dict[str, torch.Tensor]:
    """``seeded_state`` under our names (returned, sharing storage), then the SAM heads'
    ``fan_in_init`` if asked."""
    named = _named_state(owner, owner.backbone)
    seeded_state(named, seed)
    if fan_in_init:
        rescale_heads_to_fan_in(owner.inst_interactive_predictor.model)
    return named


def predict_cases(owner: Any, states: list, cases: list[dict]) -> dict[str, Any]:
    """``case.{k}.*`` of every case through ``Sam3Image.predict_inst`` on the set ``states``,
    and ``hole_filling``."""
    from sam3.model.sam3_image import Sam3Image

    predictor = owner.inst_interactive_predictor
    decoder = predictor.model.sam_mask_decoder
    seen: dict[str, Any] = {}
    predict, predict_masks = predictor.predict, decoder.predict_masks

    def predict_capturing(**kwargs: Any) -> Any:
        seen["image_embed"] = predictor._features["image_embed"]
        return predict(**kwargs)

    def predict_masks_capturing(**kwargs: Any) -> Any:
        seen["decoder_in"], seen["decoder_out"] = kwargs, predict_masks(**kwargs)
        return seen["decoder_out"]

    predictor.predict = predict_capturing
    decoder.predict_masks = predict_masks_capturing
    result: dict[str, Any] = {}
    returned: list[np.ndarray] = []
    hole_filling = 1
    try:
        with torch.inference_mode():
            for k, case in enumerate(cases):
                i = int(case["image"])
                if not 0 <= i < len(states):
                    fail(f"case {k} names image {i}, but the job has {len(states)} images")
                seen.clear()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    masks, scores, low_res = Sam3Image.predict_inst(
                        owner, states[i], **_prompt_kwargs(case, returned)
                    )
                skipped = [str(w.message) for w in caught if SKIP_WARNING in str(w.message)]
                if skipped:
                    hole_filling = 0
                    reason = skipped[0].splitlines()[0]
                    print(f"meta_oracle: case {k}: hole filling skipped: {reason}", flush=True)
                returned.append(low_res)
                result.setdefault(f"image.{i}.image_embed", seen["image_embed"])
                all_masks, all_iou, _, object_scores = seen["decoder_out"]
                decoder_in = seen["decoder_in"]
                tag = f"case.{k}."
                result[tag + "masks"] = torch.from_numpy(masks)
                result[tag + "scores"] = torch.from_numpy(scores)
                result[tag + "low_res_logits"] = torch.from_numpy(low_res)
                result[tag + "all_masks"] = all_masks
                result[tag + "all_iou"] = all_iou
                result[tag + "object_score_logits"] = object_scores
                result[tag + "sparse"] = decoder_in["sparse_prompt_embeddings"]
                result[tag + "dense"] = decoder_in["dense_prompt_embeddings"]
                result[tag + "image_pe"] = decoder_in["image_pe"]
                low = result[tag + "low_res_logits"]
                result[tag + "selected"] = _selected(all_masks, low, k)
    finally:
        del predictor.predict, decoder.predict_masks
    result["hole_filling"] = torch.tensor(hole_filling)
    return result
