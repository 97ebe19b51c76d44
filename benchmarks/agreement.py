"""How two sets of outputs agree, for the ``*_vs_reference`` benchmarks: largest differences
and relative L2 errors, and the agreement of detections on the reference's best-scored queries
(box IoU, mask IoU, score differences, shared top-k)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

OUTPUTS = ("pred_logits", "pred_boxes_xyxy", "pred_masks", "presence_logit_dec")  # detector's


def box_iou_pairs(a: Tensor, b: Tensor) -> Tensor:
    """IoU of ``a[i]`` with ``b[i]`` for xyxy boxes ``[N, 4]`` (0 where the union is empty)."""
    a, b = a.double(), b.double()
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp(min=0).prod(dim=1)  # noqa: E731
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-300), torch.zeros_like(union))


def mask_iou_pairs(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boolean masks ``a[i]`` and ``b[i]`` (``[N, H, W]``); two empty masks agree (1)."""
    a, b = a.flatten(1).bool(), b.flatten(1).bool()
    inter, union = (a & b).sum(1).double(), (a | b).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def detection_scores(out: dict[str, Tensor]) -> Tensor:
    """SAM3's score per query of the first prompt: sigmoid(logit) * sigmoid(presence)."""
    return (
        out["pred_logits"][0, :, 0].float().sigmoid()
        * out["presence_logit_dec"][0, 0].float().sigmoid()
    )


def top_k_agreement(ref: dict[str, Tensor], other: dict[str, Tensor], k: int) -> dict[str, Any]:
    """How ``other`` agrees with ``ref`` on ``ref``'s ``k`` best-scored queries (same queries):
    box and mask IoU (masks at logit > 0), score differences, and the share of those queries
    that are also among ``other``'s top ``k``."""
    ref_scores, other_scores = detection_scores(ref), detection_scores(other)
    k = min(k, ref_scores.numel())
    top = ref_scores.topk(k).indices
    boxes = box_iou_pairs(ref["pred_boxes_xyxy"][0, top], other["pred_boxes_xyxy"][0, top])
    masks = mask_iou_pairs(ref["pred_masks"][0, top] > 0, other["pred_masks"][0, top] > 0)
    diff = (ref_scores[top] - other_scores[top]).abs()
    shared = len(set(top.tolist()) & set(other_scores.topk(k).indices.tolist()))
    return {
        "k": k,
        "box_iou_mean": float(boxes.mean()),
        "box_iou_min": float(boxes.min()),
        "mask_iou_mean": float(masks.mean()),
        "mask_iou_min": float(masks.min()),
        "score_diff_max": float(diff.max()),
        "score_diff_mean": float(diff.mean()),
        "shared_top_k": shared / k,
    }


def max_diffs(
    a: dict[str, Tensor], b: dict[str, Tensor], keys: tuple[str, ...] = OUTPUTS
) -> dict[str, dict[str, float]]:
    """Largest ``|a - b|`` and the relative L2 error of every output in ``keys``."""
    out = {}
    for key in keys:
        x, y = a[key].double(), b[key].double()
        out[key] = {
            "max_abs": float((x - y).abs().max()),
            "rel_l2": float((x - y).norm() / y.norm().clamp(min=1e-300)),
        }
    return out


def print_agreement(label: str, agree: dict[str, float]) -> None:
    """One line of top-k agreement figures."""
    print(
        f"  {label}: top-{agree['k']} box IoU mean {agree['box_iou_mean']:.4f} "
        f"(min {agree['box_iou_min']:.4f}), mask IoU mean {agree['mask_iou_mean']:.4f} "
        f"(min {agree['mask_iou_min']:.4f}), |score diff| max {agree['score_diff_max']:.2e} "
        f"(mean {agree['score_diff_mean']:.2e}), shared top-k {agree['shared_top_k']:.2f}"
    )
