"""The quickstart's segmentation step: the teacher and the merged model on the held-out photo.

Both image models get the same two prompts, a caption and a box. Each answer is cut down to its
best detection (top-1 by score, not SAM3's 0.5 threshold: random or briefly distilled heads score
about 0.3, so a threshold would usually keep nothing); the two models' best masks are compared by
IoU and drawn side by side (rows: text / box prompt, columns: teacher / merged).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from sam3.arch import ImageModelConfig  # noqa: E402
from sam3.model_builder import build_efficientsam3_image_model, build_sam3_image_model  # noqa: E402
from sam3.predictor import Detections, Sam3Predictor  # noqa: E402
from sam3.visualize import draw_detections  # noqa: E402
from stage1.pictures import _save as save_figure  # noqa: E402

TEXT_PROMPT = "an astronaut"  # a subject of the training captions, and what the photo shows
BOX_PROMPT = (352.0, 0.0, 470.0, 290.0)  # xyxy pixels: the model shuttle right of the astronaut
PROMPTS = ("text", "box")


def best_detection(found: Detections) -> Detections:
    """The highest-scoring detection of ``found`` alone (the first on a tie); empty stays empty."""
    if not len(found):
        return found
    i = int(torch.argmax(found.scores))
    return Detections(
        masks=found.masks[i : i + 1],
        boxes=found.boxes[i : i + 1],
        scores=found.scores[i : i + 1],
        raw=found.raw,
    )


def mask_iou(a: Tensor, b: Tensor) -> float:
    """Intersection over union of two ``[H, W]`` masks (nonzero = inside); 1.0 when both are
    empty (they agree)."""
    if a.shape != b.shape:
        raise ValueError(f"masks of different shapes: {tuple(a.shape)} vs {tuple(b.shape)}")
    a, b = a.bool(), b.bool()
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def _first_mask(found: Detections, size: tuple[int, int]) -> Tensor:
    """The first mask on the CPU, or an empty one of ``size`` (``H, W``)."""
    return found.masks[0].cpu() if len(found) else torch.zeros(size, dtype=torch.bool)


def segment(model: nn.Module, photo: Image.Image) -> dict[str, Detections]:
    """The best detection of ``model`` for :data:`TEXT_PROMPT` and for :data:`BOX_PROMPT`."""
    predictor = Sam3Predictor(model, confidence_threshold=0.0)  # every query; top-1 below
    state = predictor.set_image(photo)
    return {
        "text": best_detection(predictor.predict(state, text=TEXT_PROMPT)),
        "box": best_detection(predictor.predict(state, boxes=[BOX_PROMPT])),
    }


def _area(found: Detections) -> float:
    """The first mask's share of the photo (0 without a detection)."""
    return float(found.masks[0].float().mean()) if len(found) else 0.0


def _label(prompt: str) -> str:
    return f'text "{TEXT_PROMPT}"' if prompt == "text" else f"box {[round(v) for v in BOX_PROMPT]}"


def draw_segmentation(
    path: Path,
    photo: Image.Image,
    found: dict[str, dict[str, Detections]],
    iou: dict[str, float],
    title: str,
) -> Path:
    """Save a grid of ``photo`` with each model's (columns) best detection per prompt (rows):
    mask, box, score; the prompt box in white; the second column's panels give the IoU."""
    names = list(found)
    fig, axes = plt.subplots(
        len(PROMPTS), len(names), figsize=(4.2 * len(names), 4.5 * len(PROMPTS)), squeeze=False
    )
    for row, prompt in enumerate(PROMPTS):
        for col, name in enumerate(names):
            det = found[name][prompt]
            prompt_boxes = [(BOX_PROMPT, True)] if prompt == "box" else []
            picture = draw_detections(
                photo,
                det.masks.cpu().numpy(),
                det.boxes.cpu().numpy(),
                det.scores.tolist(),
                prompt_boxes=prompt_boxes,
            )
            best = "no detection"
            if len(det):
                best = f"best score {float(det.scores[0]):.3f}, mask {_area(det):.0%} of the photo"
            extra = f"\nmask IoU vs {names[0]} {iou[prompt]:.3f}" if col else ""
            ax = axes[row][col]
            ax.imshow(picture)
            ax.set_title(f"{name}: {_label(prompt)}\n{best}{extra}", fontsize=9)
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def run_segmentation(
    teacher_ckpt: Path,
    teacher_cfg: ImageModelConfig,
    merged: Path,
    photo_path: Path,
    png: Path,
    teacher_kind: str,
    device: str = "",
) -> dict[str, Any]:
    """Segment the photo with the teacher (``sam3.pt`` layout, architecture ``teacher_cfg``) and
    the merged model, print and draw the best detections; returns the picture's ``path``,
    ``iou`` and ``scores`` (per prompt; the scores per model)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # the architecture is given, not read from the file: a reduced text encoder's head count
    # has no tensor of its own
    models = {
        "teacher": build_sam3_image_model(teacher_ckpt, device, cfg=teacher_cfg),
        "merged": build_efficientsam3_image_model(merged, device),
    }
    photo = Image.open(photo_path).convert("RGB")
    size = (photo.height, photo.width)
    found = {name: segment(model, photo) for name, model in models.items()}
    iou = {
        p: mask_iou(_first_mask(found["teacher"][p], size), _first_mask(found["merged"][p], size))
        for p in PROMPTS
    }
    raw = found["merged"]["text"].raw
    print(
        f"  merged model: {sum(p.numel() for p in models['merged'].parameters()) / 1e6:.1f} M "
        f"parameters; {raw['pred_logits'].shape[1]} queries, mask logits "
        f"{tuple(raw['pred_masks'].shape[-2:])}, upsampled to the photo's {size[1]}x{size[0]}"
    )
    print("  best detection per prompt (top-1 by score, no 0.5 threshold): score, mask area")
    scores = {}
    for p in PROMPTS:
        scores[p] = {n: float(f[p].scores.max()) if len(f[p]) else 0.0 for n, f in found.items()}
        t, m = found["teacher"][p], found["merged"][p]
        print(
            f"    {_label(p):24} teacher {scores[p]['teacher']:.3f} {_area(t):4.0%}   merged "
            f"{scores[p]['merged']:.3f} {_area(m):4.0%}   mask IoU {iou[p]:.3f}"
        )
    title = (
        f"{photo_path.name} (held out): best detection per prompt, top-1 by score (no 0.5 "
        f"threshold); teacher = {teacher_kind}"
    )
    path = draw_segmentation(png, photo, found, iou, title)
    print(f"  {path}")
    return {"path": path, "iou": iou, "scores": scores}
