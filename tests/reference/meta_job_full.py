"""Oracle job ``full``: Meta's SAM3 at its real sizes, built and seeded once, one photo's forward
shared by the vision, text, grounding and interactive comparisons.

Job parameters:

* ``seed``; ``fan_in_init`` (as the ``interactive`` job's: the SAM heads' weights rescaled to
  std 1/sqrt(fan_in) after seeding; no other part reads them).
* ``images``: RGB photo paths, set with Meta's ``Sam3Processor.set_image`` (1008²).
* ``captions``: encoded with the model's text encoder (the ``text`` job's outputs).
* ``grounding_cases``: the ``grounding`` job's ``cases``, on the set photos' features.
* ``interactive_cases``: the ``interactive`` job's ``cases``.

The model is ``build_sam3_image_model(enable_inst_interactivity=True)`` (CPU) with its random
initialisation skipped (every tensor it would fill is overwritten by ``seeded_state``), seeded
under our names (``inst_interactive_predictor.model.`` renamed ``tracker.``, the rest as Meta
names it).

Returns ``vision.*``: the ``vision`` job's keys for image 0's forward (its ``input`` is the
preprocessed photo); ``text.*``: the ``text`` job's keys for ``captions``; ``grounding.*``:
the ``grounding`` job's ``image.{i}.*`` and ``case.{k}.*`` keys; ``interactive.*``: the
``interactive`` job's ``image.{i}.*``, ``case.{k}.*`` and ``hole_filling`` keys.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from meta_job_grounding import ground_cases, image_result
from meta_job_interactive import predict_cases, seed_interactive, set_images
from meta_job_text import text_result
from meta_job_vision import capturing_vision, vision_result
from meta_oracle import fail, log_phase, resolve_bpe_path

FULL_RESOLUTION = 1008
# What a module's initialisation fills tensors with: every such tensor is seeded afterwards.
_INIT = torch.nn.init
SKIPPED_FILLS = {
    _INIT.uniform_,
    _INIT.normal_,
    _INIT.trunc_normal_,
    _INIT.constant_,
    _INIT.ones_,
    _INIT.zeros_,
    _INIT.xavier_uniform_,
    _INIT.xavier_normal_,
    _INIT.kaiming_uniform_,
    _INIT.kaiming_normal_,
    _INIT.orthogonal_,
    torch.Tensor.uniform_,
    torch.Tensor.normal_,
    torch.Tensor.erfinv_,
}


class _SkipFills(TorchFunctionMode):
    """Make :data:`SKIPPED_FILLS` return their tensor unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in SKIPPED_FILLS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def no_random_init() -> Iterator[None]:
    """Build modules without their random initialisation (also timm's ``trunc_normal_``, which
    Meta's ViT and tracker import by name)."""
    from sam3.model import sam3_tracker_base, vitdet

    keep = lambda tensor, *args, **kwargs: tensor  # noqa: E731
    with (
        mock.patch.object(vitdet, "trunc_normal_", keep),
        mock.patch.object(sam3_tracker_base, "trunc_normal_", keep),
        _SkipFills(),
    ):
        yield


def build(meta: Any, job: dict[str, Any]) -> nn.Module:
    """Meta's SAM3 image model with interactivity, built without its random initialisation."""
    with no_random_init():
        model = meta.build_sam3_image_model(
            bpe_path=resolve_bpe_path(job),
            device="cpu",
            load_from_HF=False,
            checkpoint_path=None,
            enable_segmentation=True,
            enable_inst_interactivity=True,
            compile=False,
        )
    return model.eval()


def run(meta: Any, job: dict[str, Any]) -> dict[str, Any]:
    """Build, seed, set every photo, then every comparison's outputs; see the docstring."""
    from sam3.model.sam3_image_processor import Sam3Processor

    if not job.get("images"):
        fail("full job needs images")
    clock = time.perf_counter()
    torch.manual_seed(int(job["seed"]))
    model = build(meta, job)
    clock = log_phase("build", clock)
    seed_interactive(model, int(job["seed"]), bool(job.get("fan_in_init")))
    clock = log_phase("seed", clock)

    backbone, trunk = model.backbone, model.backbone.vision_backbone.trunk
    result: dict[str, Any] = {}
    forwards: list[int] = []
    with capturing_vision(backbone) as captured:

        def on_forward(samples: torch.Tensor, out: dict[str, Any]) -> None:
            i = len(forwards)
            forwards.append(i)
            result.update({"grounding." + k: v for k, v in image_result(i, samples, out).items()})
            if i == 0:
                vision = vision_result(samples, out, captured, trunk, list(trunk.full_attn_ids))
                result.update({"vision." + k: v for k, v in vision.items()})

        processor = Sam3Processor(model, resolution=FULL_RESOLUTION, device="cpu")
        paths = [str(p) for p in job["images"]]
        states, images = set_images(processor, backbone, paths, on_forward)
    result.update({"interactive." + k: v for k, v in images.items()})
    clock = log_phase("set_image", clock)

    result.update({"text." + k: v for k, v in text_result(backbone, job["captions"]).items()})
    clock = log_phase("text", clock)
    with torch.inference_mode():
        features = [state["backbone_out"] for state in states]
        grounding = ground_cases(model, features, job["grounding_cases"])
    result.update({"grounding." + k: v for k, v in grounding.items()})
    clock = log_phase("grounding", clock)
    interactive = predict_cases(model, states, job["interactive_cases"])
    result.update({"interactive." + k: v for k, v in interactive.items()})
    log_phase("predict_inst", clock)
    clones: dict[int, torch.Tensor] = {}  # a tensor under several keys is saved once

    def compact(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        if id(value) not in clones:
            clones[id(value)] = value.clone()
        return clones[id(value)]

    return {k: compact(v) for k, v in result.items()}
