"""SAM3's image model: the VL backbone and the detector heads, with Meta's grounding semantics.

``forward_grounding`` runs everything after the backbone for a batch of prompts: the geometry
encoder (boxes/points + CLS), the prompt = 32 text tokens followed by the geometry tokens, the
fusion encoder, the decoder (queries, presence token, box refinement), dot-product scoring and
the segmentation head. The backbone outputs of an image are computed once
(``forward_image``) and reused by every prompt on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..schema import SAM3_PREPROCESSING
from .box_ops import box_cxcywh_to_xyxy, inverse_sigmoid
from .decoder import TransformerDecoder
from .fusion_encoder import FusionEncoder
from .geometry_encoder import GeometryEncoder
from .heads_config import HeadsConfig, SamHeadsConfig
from .interactive import InteractiveHeads
from .prompt import GeometricPrompt
from .scoring import DotProductScoring
from .segmentation_head import SegmentationHead
from .vl_backbone import SAM3VLBackbone

BOXES_ONLY_TEXT = "visual"  # the caption SAM3 encodes when a prompt has no text


class DetectorTransformer(nn.Module):
    """Holds the fusion encoder and the decoder (``transformer.encoder`` / ``.decoder`` keys)."""

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        self.encoder = FusionEncoder(cfg)
        self.decoder = TransformerDecoder(cfg)


def _select(x: Tensor, ids: Tensor, batch_dim: int) -> Tensor:
    """Rows ``ids`` of ``x`` along ``batch_dim``; a single source row is expanded, not copied."""
    if x.shape[batch_dim] == 1:
        shape = list(x.shape)
        shape[batch_dim] = ids.numel()
        return x.expand(shape)
    return x.index_select(batch_dim, ids)


class Sam3ImageModel(nn.Module):
    """Backbone + heads; parameter names follow ``sam3.pt``'s ``detector.*`` keys, and those of
    the interactive heads (``tracker``, built when ``sam_heads`` is given) its ``tracker.*``
    keys. ``interactive_size`` = (embedding grid, input side) of those heads."""

    def __init__(
        self,
        backbone: SAM3VLBackbone,
        cfg: HeadsConfig | None = None,
        preprocessing: dict[str, Any] | None = None,
        sam_heads: SamHeadsConfig | None = None,
        interactive_size: tuple[int, int] = (72, 1008),
    ):
        super().__init__()
        cfg = cfg or HeadsConfig()
        self.cfg = cfg
        self.backbone = backbone
        self.geometry_encoder = GeometryEncoder(cfg)
        self.transformer = DetectorTransformer(cfg)
        self.dot_prod_scoring = DotProductScoring(cfg)
        self.segmentation_head = SegmentationHead(cfg)
        self.preprocessing = dict(preprocessing or SAM3_PREPROCESSING)
        self.tracker = None if sam_heads is None else InteractiveHeads(sam_heads, *interactive_size)

    @property
    def has_interactivity(self) -> bool:
        """Whether the interactive (point/box) heads were built."""
        return self.tracker is not None

    def interactive_features(self, backbone_out: dict[str, Any]) -> dict[str, Tensor]:
        """``forward_image`` outputs -> the interactive heads' image features (see
        :meth:`InteractiveHeads.image_features`)."""
        sam2_out = backbone_out.get("sam2_backbone_out")
        if self.tracker is None or sam2_out is None:
            raise RuntimeError(
                "this model was built without interactivity: build it with "
                "enable_inst_interactivity=True for point and box prompts"
            )
        return self.tracker.image_features(sam2_out)

    def forward_image(self, images: Tensor) -> dict[str, Any]:
        """Preprocessed images ``[B, 3, S, S]`` -> the backbone's image outputs."""
        return self.backbone.forward_image(images)

    def forward_text(
        self, captions: Sequence[str], device: torch.device | str | None = None
    ) -> dict[str, Tensor]:
        """Captions -> ``language_features [L, B, C]``, ``language_mask [B, L]`` (True = pad)."""
        return self.backbone.forward_text(captions, device=device)

    def forward_grounding(
        self,
        backbone_out: dict[str, Any],
        prompt: GeometricPrompt | None = None,
        image_ids: Tensor | None = None,
        text_ids: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Detect and segment what each of ``B`` prompts names.

        Args:
            backbone_out: ``forward_image`` outputs updated with ``forward_text`` outputs.
            prompt: boxes/points of the ``B`` prompts (``None``: text only, one prompt).
            image_ids, text_ids: ``[B]`` indices of each prompt's image and caption in
                ``backbone_out`` (default: the i-th, or the only one).

        Returns:
            ``pred_logits [B, Q, 1]``, ``pred_boxes [B, Q, 4]`` (cxcywh in [0, 1]),
            ``pred_boxes_xyxy``, ``pred_masks [B, Q, 4H, 4W]`` (logits),
            ``presence_logit_dec [B, 1]``, ``semantic_seg [B, 1, 4H, 4W]``, ``queries
            [B, Q, C]``, ``encoder_hidden_states [HW, B, C]``, ``prompt [S, B, C]`` and
            ``prompt_mask [B, S]``.
        """
        fpn, pos = backbone_out["backbone_fpn"], backbone_out["vision_pos_enc"]
        device = fpn[-1].device
        prompt = prompt if prompt is not None else GeometricPrompt.empty(1, device)
        batch = prompt.batch
        image_ids = self._ids(image_ids, fpn[-1].shape[0], batch, device, "image")
        text_ids = self._ids(
            text_ids, backbone_out["language_mask"].shape[0], batch, device, "text"
        )
        feat_size = tuple(fpn[-1].shape[-2:])
        img_feats = _select(fpn[-1], image_ids, 0).flatten(2).permute(2, 0, 1)
        img_pos = _select(pos[-1], image_ids, 0).flatten(2).permute(2, 0, 1)
        text = _select(backbone_out["language_features"], text_ids, 1)
        text_mask = _select(backbone_out["language_mask"], text_ids, 0)

        geo, geo_mask = self.geometry_encoder(prompt, img_feats, img_pos, feat_size)
        tokens = torch.cat([text, geo.to(text.dtype)], dim=0)
        mask = torch.cat([text_mask, geo_mask], dim=1)
        memory, memory_pos = self.transformer.encoder(img_feats, img_pos, tokens, mask, feat_size)
        decoder = self.transformer.decoder
        hs, ref, presence, _ = decoder(memory, memory_pos, tokens, mask, feat_size)
        last = hs[-1].transpose(0, 1)  # [B, Q, C]
        boxes = (inverse_sigmoid(ref[-1].transpose(0, 1)) + decoder.bbox_embed(last)).sigmoid()
        logits = self.dot_prod_scoring(last.unsqueeze(0), tokens, mask)[-1]
        seg = self.segmentation_head(
            [_select(f, image_ids, 0) for f in fpn], last, memory, tokens, mask
        )
        return {
            "pred_logits": logits,
            "pred_boxes": boxes,
            "pred_boxes_xyxy": box_cxcywh_to_xyxy(boxes),
            "pred_masks": seg["pred_masks"],
            "presence_logit_dec": presence[-1].transpose(0, 1).reshape(batch, 1),
            "semantic_seg": seg["semantic_seg"],
            "queries": last,
            "encoder_hidden_states": memory,
            "prompt": tokens,
            "prompt_mask": mask,
        }

    @staticmethod
    def _ids(ids: Tensor | None, available: int, batch: int, device: Any, what: str) -> Tensor:
        if ids is None:
            if available not in (1, batch):
                raise ValueError(
                    f"{batch} prompts on {available} {what}s: pass {what}_ids to say which "
                    f"{what} each prompt uses"
                )
            ids = torch.arange(batch) if available == batch else torch.zeros(batch)
        ids = torch.as_tensor(ids, dtype=torch.long, device=device).reshape(-1)
        if ids.numel() != batch or (
            ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < available
        ):
            raise ValueError(f"{what}_ids {ids.tolist()} must hold {batch} indices < {available}")
        return ids
