"""Oracle job ``grounding``: Meta's whole image model, text and box prompts, every stage dumped.

Job parameters:

* ``size``: ``"reduced"``: SAM3's classes with the job's ``vision`` (as the ``vision`` job),
  ``text`` (``width, heads, layers``) and ``heads`` (``d_model, num_heads, dim_feedforward,
  geometry_layers, encoder_layers, decoder_layers, num_queries, scoring_hidden``) sizes (SAM3
  at its real sizes is the ``full`` job's, ``meta_job_full.py``).
* ``seed``; ``images``: photo paths (read as RGB; preprocessed as Meta's ``Sam3Processor``
  does) and/or ``input_seed`` for one seeded input; ``captions``.
* ``cases``: a list of ``{"image": i, "text": caption or null, "boxes": [[cx, cy, w, h], ...],
  "labels": [0/1, ...]}``; a null text uses Meta's dummy caption ``"visual"``.
* ``processor`` (optional): ``{"image": i, "case": k, "threshold": t}`` runs
  ``Sam3Processor`` on that photo at its original size for case ``k``.

Returns, per image ``i``: ``image.{i}.input``, ``image.{i}.fpn.{l}``, ``image.{i}.pos.{l}``;
per case ``k``: ``case.{k}.language_features`` / ``language_mask``, ``prompt``,
``prompt_mask``, ``memory``, ``hs``, ``reference_boxes``, ``presence`` (the decoder's own
outputs), and ``pred_logits``, ``pred_boxes``, ``pred_boxes_xyxy``, ``pred_masks``,
``presence_logit_dec``, ``semantic_seg``, ``queries``, ``encoder_hidden_states``;
``processor.{boxes, scores, masks, masks_logits}`` when asked; ``state_keys`` (key -> shape).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from meta_oracle import build_meta_trunk, fail, log_phase, resolve_bpe_path
from seeded_init import seeded_input, seeded_state

OUTPUTS = (
    "pred_logits",
    "pred_boxes",
    "pred_boxes_xyxy",
    "pred_masks",
    "presence_logit_dec",
    "semantic_seg",
    "queries",
    "encoder_hidden_states",
)


def build_reduced_model(meta: Any, job: dict[str, Any]) -> nn.Module:
    """Meta's Sam3Image from its own classes at the job's sizes, each part built as the
    component jobs build it (with SAM3's builder flags)."""
    from sam3.model import model_misc, sam3_image

    from meta_job_decoder import build_meta_decoder
    from meta_job_encoders import build_fusion, build_geometry
    from meta_job_seghead import build as build_seghead_and_scoring

    vision, text, h = job["vision"], job["text"], job["heads"]
    d, nh, ff = int(h["d_model"]), int(h["num_heads"]), int(h["dim_feedforward"])
    neck = meta.Sam3DualViTDetNeck(
        trunk=build_meta_trunk(meta, vision),
        position_encoding=meta.PositionEmbeddingSine(
            num_pos_feats=d, normalize=True, scale=None, temperature=10000
        ),
        d_model=d,
        scale_factors=[4.0, 2.0, 1.0, 0.5],
        add_sam2_neck=False,
    )
    text_encoder = meta.VETextEncoder(
        d_model=d,
        tokenizer=meta.SimpleTokenizer(bpe_path=resolve_bpe_path(job)),
        width=int(text["width"]),
        heads=int(text["heads"]),
        layers=int(text["layers"]),
    )
    sizes = {
        "d_model": d,
        "num_heads": nh,
        "dim_feedforward": ff,
        "geometry_layers": int(h["geometry_layers"]),
        "encoder_layers": int(h["encoder_layers"]),
        "roi_size": 7,
    }
    grid = int(vision["img_size"]) // int(vision["patch_size"])
    decoder = build_meta_decoder(
        {
            "d_model": d,
            "num_heads": nh,
            "dim_feedforward": ff,
            "layers": int(h["decoder_layers"]),
            "num_queries": int(h["num_queries"]),
            "height": grid,
        }
    )
    heads = build_seghead_and_scoring(d, nh, int(h["scoring_hidden"]))
    return sam3_image.Sam3Image(
        backbone=meta.SAM3VLBackbone(visual=neck, text=text_encoder, scalp=1),
        transformer=model_misc.TransformerWrapper(
            encoder=build_fusion(sizes), decoder=decoder, d_model=d
        ),
        input_geometry_encoder=build_geometry(sizes),
        segmentation_head=heads.segmentation_head,
        num_feature_levels=1,
        o2m_mask_predict=True,
        dot_prod_scoring=heads.dot_prod_scoring,
        use_instance_query=False,
        multimask_output=True,
        inst_interactive_predictor=None,
        matcher=None,
    )


def _transform(resolution: int) -> Any:
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.ToDtype(torch.uint8, scale=True),
            v2.Resize(size=(resolution, resolution)),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
        ]
    )


def _inputs(job: dict[str, Any], resolution: int) -> list[torch.Tensor]:
    from PIL import Image
    from torchvision.transforms import v2

    images = []
    for path in job.get("images", []):
        with Image.open(path) as im:
            images.append(_transform(resolution)(v2.functional.to_image(im.convert("RGB"))))
    if "input_seed" in job:
        images.append(seeded_input([3, resolution, resolution], int(job["input_seed"])))
    if not images:
        fail("grounding job needs images or input_seed")
    return [x.unsqueeze(0) for x in images]


def _prompt(case: dict[str, Any]) -> Any:
    from sam3.model.geometry_encoders import Prompt

    boxes = torch.tensor(case.get("boxes", []), dtype=torch.float32).view(-1, 1, 4)
    labels = torch.tensor(case.get("labels", []), dtype=torch.bool).view(-1, 1)
    prompt = Prompt(box_embeddings=torch.zeros(0, 1, 4), box_mask=torch.zeros(1, 0).bool())
    if len(boxes):
        prompt.append_boxes(boxes, labels)
    return prompt


def run(meta: Any, job: dict[str, Any]) -> dict[str, Any]:
    """Build, seed, run every case; see the module docstring for the result's keys."""
    if job.get("size") != "reduced":
        fail(
            f"grounding job size must be 'reduced', got {job.get('size')!r} (full size: 'full' job)"
        )
    clock = time.perf_counter()
    torch.manual_seed(int(job["seed"]))
    model = build_reduced_model(meta, job).eval()
    clock = log_phase("build", clock)
    seeded_state(model, int(job["seed"]))
    clock = log_phase("seed", clock)
    resolution = int(job["vision"]["img_size"])
    result: dict[str, Any] = {
        "state_keys": {k: list(v.shape) for k, v in model.state_dict().items()}
    }
    inputs = _inputs(job, resolution)
    with torch.inference_mode():
        backbone = []
        for i, x in enumerate(inputs):
            out = model.backbone.forward_image(x)
            backbone.append(out)
            result.update(image_result(i, x, out))
        clock = log_phase("forward_image", clock)
        result.update(ground_cases(model, backbone, job["cases"]))
        clock = log_phase("grounding", clock)
        if job.get("processor"):
            result.update(_run_processor(model, job, resolution))
            log_phase("processor", clock)
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in result.items()}


def image_result(i: int, x: torch.Tensor, out: dict[str, Any]) -> dict[str, Any]:
    """``image.{i}.*``: the input and the backbone's maps and position encodings."""
    result = {f"image.{i}.input": x}
    for level, (f, p) in enumerate(zip(out["backbone_fpn"], out["vision_pos_enc"])):
        result[f"image.{i}.fpn.{level}"] = f
        result[f"image.{i}.pos.{level}"] = p
    return result


def ground_cases(model: nn.Module, backbone: list[dict], cases: list[dict]) -> dict[str, Any]:
    """``case.{k}.*`` of every case, on ``backbone`` (``forward_image`` outputs by image)."""
    from sam3.model.data_misc import FindStage

    captured: dict[str, Any] = {}
    dec_forward = model.transformer.decoder.forward

    def capture_decoder(*args: Any, **kwargs: Any) -> Any:
        captured["decoder"] = dec_forward(*args, **kwargs)
        return captured["decoder"]

    find = FindStage(
        img_ids=torch.tensor([0]),
        text_ids=torch.tensor([0]),
        input_boxes=None,
        input_boxes_mask=None,
        input_boxes_label=None,
        input_points=None,
        input_points_mask=None,
    )
    result: dict[str, Any] = {}
    model.transformer.decoder.forward = capture_decoder
    try:
        for k, case in enumerate(cases):
            caption = case.get("text") or "visual"
            state = dict(backbone[int(case["image"])])
            state.update(model.backbone.forward_text([caption], device="cpu"))
            out = model.forward_grounding(
                backbone_out=state,
                find_input=find,
                find_target=None,
                geometric_prompt=_prompt(case),
            )
            enc = out["prev_encoder_out"]["encoder_out"]
            hs, ref, presence, _ = captured["decoder"]
            tag = f"case.{k}."
            result.update(
                {
                    tag + "language_features": state["language_features"],
                    tag + "language_mask": state["language_mask"],
                    tag + "prompt": enc["prompt_before_enc"],
                    tag + "prompt_mask": enc["prompt_mask"],
                    tag + "memory": enc["encoder_hidden_states"],
                    tag + "hs": hs,
                    tag + "reference_boxes": ref,
                    tag + "presence": presence,
                }
            )
            for name in OUTPUTS:
                result[tag + name] = out[name]
    finally:
        del model.transformer.decoder.forward
    return result


def _run_processor(model: nn.Module, job: dict[str, Any], resolution: int) -> dict[str, Any]:
    """Meta's Sam3Processor on one photo at its original size, for one case."""
    from PIL import Image

    from sam3.model.sam3_image_processor import Sam3Processor

    spec = job["processor"]
    case = job["cases"][int(spec["case"])]
    processor = Sam3Processor(
        model, resolution=resolution, device="cpu", confidence_threshold=float(spec["threshold"])
    )
    with Image.open(job["images"][int(spec["image"])]) as im:
        state = processor.set_image(im.convert("RGB"))
    if case.get("text"):
        state = processor.set_text_prompt(case["text"], state)
    for box, label in zip(case.get("boxes", []), case.get("labels", [])):
        state = processor.add_geometric_prompt(box, bool(label), state)
    return {
        "processor.boxes": state["boxes"],
        "processor.scores": state["scores"],
        "processor.masks": state["masks"],
        "processor.masks_logits": state["masks_logits"],
    }
