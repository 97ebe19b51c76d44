"""The models and inputs the ``*_vs_reference`` benchmarks time, at full (SAM3's) or reduced
sizes, built alike on both sides and seeded with ``tests/reference/seeded_init.py`` (whose
values depend only on each key and shape, so equal state dicts get bit-identical weights).

Every function imports ``sam3`` inside itself: the worker's path decides whose package that is
(ours, or Meta's ``sam3==0.1.4`` first on a ``meta`` worker's path), and ``tests/reference``
must be on the path (the workers get it through ``PYTHONPATH``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

SEED, INPUT_SEED = 0, 1  # the weights' seed and the first seeded input's

# ---------------------------------------------------------------- detector heads

TEXT_TOKENS = 5  # valid tokens of the seeded caption (sot, three words, eot); the rest is padding
CONTEXT = 32  # SAM3's text context length
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
HEAD_SIZES = {  # input side and detector heads
    "full": dict(resolution=1008, heads=FULL_HEADS),
    "small": dict(resolution=336, heads=SMALL_HEADS),
}
DETECTOR_STAGES = {  # stage -> module path, the same in our model and in Meta's Sam3Image
    "geometry": "geometry_encoder",
    "fusion_encoder": "transformer.encoder",
    "decoder": "transformer.decoder",
    "scoring": "dot_prod_scoring",
    "segmentation_head": "segmentation_head",
}
STUDENTS = {"image": "efficientvit_b0", "text": "MobileCLIP-S0"}  # ES-EV-S, ES-MC-S


def write_heads_inputs(path: str, size: str) -> None:
    """Seeded FPN maps, our sine position encoding and seeded text features, in one file."""
    from sam3.model.position_encoding import PositionEmbeddingSine

    from seeded_init import seeded_input

    d, grid = HEAD_SIZES[size]["heads"]["d_model"], HEAD_SIZES[size]["resolution"] // 14
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


def detector_heads(role: str, size: str) -> nn.Module:
    """The image model without a real backbone (the heads get their inputs from the file of
    :func:`write_heads_inputs`): ours (``role`` ``"ours"``) or Meta's ``Sam3Image`` with a token
    trunk (``"meta"``), seeded, in eval mode."""
    from seeded_init import seeded_state

    resolution, heads = HEAD_SIZES[size]["resolution"], HEAD_SIZES[size]["heads"]
    if role == "ours":
        from sam3.model.heads_config import HeadsConfig
        from sam3.model.sam3_image import Sam3ImageModel

        model = Sam3ImageModel(nn.Module(), HeadsConfig(**heads))
    else:
        import meta_oracle
        from meta_job_grounding import build_reduced_model

        meta = meta_oracle.import_meta()  # puts Meta's sam3 first on sys.path
        vision = dict(
            img_size=resolution,
            patch_size=14,
            embed_dim=32,
            depth=1,
            num_heads=2,
            mlp_ratio=1.0,
            window_size=resolution // 14 // 3,
            global_att_blocks=[0],
            pretrain_img_size=336,
        )
        job = {"vision": vision, "text": dict(width=64, heads=1, layers=1), "heads": heads}
        model = build_reduced_model(meta, job)
    model.eval()
    seeded_state(model, SEED)
    return model


def image_model(role: str, size: str) -> nn.Module:
    """Our whole image model: SAM3's (``role`` ``"sam3"``, random weights) or the merged
    ES-EV-S + ES-MC-S one (``"efficient"``: the students in SAM3's place, random weights;
    neck and heads SAM3's); the heads seeded alike, in eval mode."""
    from sam3.arch import BackboneConfig, ImageModelConfig
    from sam3.merged import merged_backbone
    from sam3.model.heads_config import HeadsConfig
    from sam3.model.sam3_image import Sam3ImageModel
    from sam3.model.text_encoder import TextConfig
    from sam3.model.vit import ViTConfig
    from sam3.model_builder import build_sam3_image_model
    from sam3.schema import SAM3_PREPROCESSING

    from seeded_init import seeded_state

    heads = HeadsConfig(**HEAD_SIZES[size]["heads"])
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
    for path in DETECTOR_STAGES.values():
        seeded_state(model.get_submodule(path), SEED)
    return model.eval()


# ---------------------------------------------------------------- interactive heads

FULL_SAM = dict(embed_dim=256, num_heads=8, depth=2, mlp_dim=2048, mask_in_chans=16)
SMALL_SAM = dict(embed_dim=64, num_heads=4, depth=2, mlp_dim=256, mask_in_chans=16)
SAM_SIZES = {  # input side, heads, the photo the post-processing upsamples to (h, w)
    "full": dict(resolution=1008, heads=dict(FULL_SAM, iou_head_hidden=256), photo=(720, 1280)),
    "small": dict(resolution=336, heads=dict(SMALL_SAM, iou_head_hidden=64), photo=(180, 320)),
}


def write_interactive_inputs(path: str, size: str, box_fractions: tuple[float, ...]) -> None:
    """Seeded second-neck maps (4x, 2x, 1x the embedding grid) and the box (xyxy fractions of
    the input square, in its pixels), in one file."""
    from seeded_init import seeded_input

    cfg = SAM_SIZES[size]
    d, grid = cfg["heads"]["embed_dim"], cfg["resolution"] // 14
    fpn = [
        seeded_input([1, d, grid * s, grid * s], INPUT_SEED + i) for i, s in enumerate((4, 2, 1))
    ]
    box = torch.tensor([box_fractions]) * cfg["resolution"]
    torch.save({"backbone_fpn": fpn, "box": box}, path)


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


def interactive_heads(role: str, size: str) -> nn.Module:
    """The interactive heads: our ``InteractiveHeads`` (``role`` ``"ours"``) or Meta's prompt
    encoder and mask decoder built with the tracker's settings, beside a ``no_mem_embed``
    (``"meta"``); the module names agree, seeded, in eval mode."""
    from seeded_init import seeded_state

    cfg = SAM_SIZES[size]
    h, side = cfg["heads"], cfg["resolution"]
    if role == "ours":
        from sam3.model.heads_config import SamHeadsConfig
        from sam3.model.interactive import InteractiveHeads

        heads: Any = InteractiveHeads(SamHeadsConfig(**h), side // 14, side)
    else:
        import meta_oracle

        meta_oracle.import_meta()  # puts Meta's sam3 first on sys.path
        from sam3.sam.mask_decoder import MaskDecoder
        from sam3.sam.prompt_encoder import PromptEncoder
        from sam3.sam.transformer import TwoWayTransformer

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
    heads.eval()
    seeded_state(heads, SEED)
    return heads


# ---------------------------------------------------------------- vision trunk


def vision_trunk(role: str, geometry: dict[str, Any]) -> nn.Module:
    """SAM3's vision trunk at ``geometry`` (Meta's argument names): ours (``role``
    ``"ours"``) or Meta's (``"meta"``), seeded, in eval mode."""
    from seeded_init import seeded_state

    if role == "ours":
        from sam3.model.vit import ViT, ViTConfig

        keys = {k: v for k, v in geometry.items() if k != "global_att_blocks"}
        trunk = ViT(ViTConfig(**keys, global_blocks=tuple(geometry["global_att_blocks"])))
    else:
        import meta_oracle

        trunk = meta_oracle.build_meta_trunk(meta_oracle.import_meta(), geometry)
    trunk.eval()
    seeded_state(trunk, SEED)
    return trunk
