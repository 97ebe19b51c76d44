"""The interactive (SAM1-task) heads of SAM3: clicks, boxes and mask inputs -> masks.

SAM3 answers "segment this object" with its tracker's SAM heads on the second neck
(``sam2_convs``): for a still image the memory path is skipped and ``no_mem_embed`` is added to
the image embedding instead. :class:`InteractiveHeads` holds those heads under the names of
``sam3.pt``'s ``tracker.*`` keys (``sam_prompt_encoder``, ``sam_mask_decoder``,
``no_mem_embed``); the tracker's video-only parts (memory encoder and attention, object
pointers) are not built.

Prompt semantics follow SAM3's image predictor: a box becomes two corner points (labels 2 and
3) placed before the clicks, and one padding point always follows.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .heads_config import SamHeadsConfig
from .mask_decoder import MaskDecoder
from .prompt_encoder import PAD_LABEL, PromptEncoder

BOX_CORNER_LABELS = (2, 3)  # top-left, bottom-right


class InteractiveHeads(nn.Module):
    """SAM's prompt encoder and mask decoder (+ ``no_mem_embed``) for one input geometry.

    Args:
        cfg: the heads' sizes.
        embedding_size: side of the image embedding grid (the trunk's, e.g. 72).
        input_size: side of the model's input square in pixels (e.g. 1008).
    """

    def __init__(self, cfg: SamHeadsConfig, embedding_size: int, input_size: int):
        super().__init__()
        self.cfg = cfg
        self.sam_prompt_encoder = PromptEncoder(
            cfg.embed_dim, embedding_size, input_size, cfg.mask_in_chans
        )
        self.sam_mask_decoder = MaskDecoder(cfg)
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))

    @property
    def input_size(self) -> int:
        """Side of the input square the point coordinates refer to."""
        return self.sam_prompt_encoder.input_size

    @property
    def mask_input_size(self) -> int:
        """Side of the low-resolution mask logits (outputs and ``mask_input``)."""
        return self.sam_prompt_encoder.mask_input_size

    def image_features(self, sam2_out: dict[str, Any]) -> dict[str, Tensor]:
        """The second neck's outputs -> ``image_embed [B, C, S, S]`` (+ ``no_mem_embed``) and
        ``high_res`` (``conv_s0`` of the 4x map, ``conv_s1`` of the 2x map)."""
        fpn = sam2_out["backbone_fpn"]
        if len(fpn) != 3:
            raise ValueError(f"expected the second neck's 3 levels (4x, 2x, 1x), got {len(fpn)}")
        embed = fpn[2] + self.no_mem_embed.to(fpn[2].dtype).view(1, -1, 1, 1)
        return {"image_embed": embed, "high_res": self.sam_mask_decoder.high_res(fpn[0], fpn[1])}

    def forward(
        self,
        features: dict[str, Tensor],
        point_coords: Tensor | None = None,
        point_labels: Tensor | None = None,
        boxes: Tensor | None = None,
        mask_input: Tensor | None = None,
        multimask_output: bool = True,
        image_index: int = 0,
    ) -> dict[str, Tensor]:
        """Masks for ``N`` prompt sets on one image of ``features``.

        Args:
            features: :meth:`image_features` of a batch of images.
            point_coords: ``[N, P, 2]`` (x, y) in input-square pixels, or ``None``.
            point_labels: ``[N, P]``: 1 positive, 0 negative.
            boxes: ``[N, 4]`` xyxy in input-square pixels, or ``None``.
            mask_input: ``[N, 1, 4S, 4S]`` mask logits (e.g. an earlier low-res output).
            multimask_output: three masks per prompt set, or one (see ``MaskDecoder.select``).
            image_index: which image of ``features``.

        Returns:
            ``low_res_masks [N, K, 4S, 4S]`` and ``iou [N, K]`` (K = 3 or 1), ``mask_index
            [N, K]`` (the decoder token of each), and the decoder's ``all_masks [N, 4, ...]``,
            ``all_iou [N, 4]``, ``object_score_logits [N, 1]``.
        """
        coords, labels = _prompt_points(point_coords, point_labels, boxes)
        sparse, dense = self.sam_prompt_encoder(coords, labels, mask_input)
        i = slice(image_index, image_index + 1)
        s0, s1 = features["high_res"]
        out = self.sam_mask_decoder(
            features["image_embed"][i],
            self.sam_prompt_encoder.dense_pe().to(sparse.dtype),
            sparse,
            dense,
            (s0[i], s1[i]),
        )
        masks, iou, index = self.sam_mask_decoder.select(out["masks"], out["iou"], multimask_output)
        return {
            "low_res_masks": masks,
            "iou": iou,
            "mask_index": index,
            "all_masks": out["masks"],
            "all_iou": out["iou"],
            "object_score_logits": out["object_score_logits"],
        }


def _prompt_points(
    coords: Tensor | None, labels: Tensor | None, boxes: Tensor | None
) -> tuple[Tensor | None, Tensor | None]:
    """Box corners (labels 2, 3), then the clicks, then one padding point (label -1)."""
    parts: list[tuple[Tensor, Tensor]] = []
    if boxes is not None:
        n = boxes.shape[0]
        corner_labels = torch.tensor(BOX_CORNER_LABELS, device=boxes.device).expand(n, -1)
        parts.append((boxes.reshape(n, 2, 2), corner_labels))
    if coords is not None:
        if labels is None:
            raise ValueError("point_coords need point_labels (1 positive, 0 negative)")
        parts.append((coords, labels))
    if not parts:
        return None, None
    n = parts[0][0].shape[0]
    if parts[-1][0].shape[0] != n:
        raise ValueError(f"{n} boxes but {parts[-1][0].shape[0]} sets of points: give one each")
    ref = parts[0][0]
    parts.append((ref.new_zeros(n, 1, 2), torch.full((n, 1), PAD_LABEL, device=ref.device)))
    return (
        torch.cat([p[0].to(ref.dtype) for p in parts], dim=1),
        torch.cat([p[1].to(torch.long) for p in parts], dim=1),
    )
