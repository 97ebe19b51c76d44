"""The quickstart's segmentation step: the teacher and the merged model on the held-out photo.

Both image models get the same three prompts: a caption and a box for the detector heads, and
the same box for the interactive SAM heads (``predict_inst``, one mask). A detector answer is cut
down to its best detection (top-1 by score, not SAM3's 0.5 threshold: random or briefly distilled
heads score about 0.3, so a threshold would usually keep nothing); the interactive answer is its
one mask, scored by its predicted IoU. The two models' masks are compared by IoU and drawn side
by side (rows: text / box / box with the SAM heads, columns: teacher / merged).
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
from sam3.instance import InstanceMasks  # noqa: E402
from sam3.model_builder import build_efficientsam3_image_model, build_sam3_image_model  # noqa: E402
from sam3.predictor import Detections, Sam3Predictor  # noqa: E402
from sam3.visualize import draw_detections  # noqa: E402
from stage1.report.pictures import save_figure  # noqa: E402

TEXT_PROMPT = "an astronaut"  # a subject of the training captions, and what the photo shows
BOX_PROMPT = (352.0, 0.0, 470.0, 290.0)  # xyxy pixels: the model shuttle right of the astronaut
PROMPTS = ("text", "box", "interactive")  # rows: detector heads twice, then the SAM heads


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


def instance_detection(found: InstanceMasks, prompt_box: tuple[float, ...]) -> Detections:
    """A one-mask interactive answer as one detection: its mask, the mask's bounding box (the
    prompt box when the mask is empty) and its predicted IoU as the score."""
    masks = found.masks.reshape(-1, *found.masks.shape[-2:])[:1].cpu()
    ys, xs = torch.nonzero(masks[0], as_tuple=True)
    box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else list(prompt_box)
    raw = {"object_score_logits": found.object_score_logits, "mask_index": found.mask_index}
    return Detections(
        masks=masks,
        boxes=torch.tensor([[float(v) for v in box]]),
        scores=found.scores.reshape(-1)[:1].float().cpu(),
        raw=raw,
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
    """The best detection of ``model`` for :data:`TEXT_PROMPT` and for :data:`BOX_PROMPT`, and
    the SAM heads' one mask for :data:`BOX_PROMPT` (``model`` built with interactivity)."""
    predictor = Sam3Predictor(model, confidence_threshold=0.0)  # every query; top-1 below
    state = predictor.set_image(photo)
    inst = predictor.predict_inst(state, box=list(BOX_PROMPT), multimask_output=False)
    return {
        "text": best_detection(predictor.predict(state, text=TEXT_PROMPT)),
        "box": best_detection(predictor.predict(state, boxes=[BOX_PROMPT])),
        "interactive": instance_detection(inst, BOX_PROMPT),
    }


def _area(found: Detections) -> float:
    """The first mask's share of the photo (0 without a detection)."""
    return float(found.masks[0].float().mean()) if len(found) else 0.0


def _label(prompt: str) -> str:
    if prompt == "text":
        return f'text "{TEXT_PROMPT}"'
    box = f"box {[round(v) for v in BOX_PROMPT]}"
    return box if prompt == "box" else f"{box}, SAM heads"


def _summary(prompt: str, found: Detections) -> str:
    if prompt == "interactive":
        return (
            f"one mask: predicted IoU {float(found.scores[0]):.3f}, {_area(found):.0%} of the photo"
        )
    if not len(found):
        return "no detection"
    return f"best score {float(found.scores[0]):.3f}, mask {_area(found):.0%} of the photo"


def draw_segmentation(
    path: Path,
    photo: Image.Image,
    found: dict[str, dict[str, Detections]],
    iou: dict[str, float],
    title: str,
) -> Path:
    """Save a grid of ``photo`` with each model's (columns) answer per prompt (rows, the
    :data:`PROMPTS` that ``iou`` has): mask, box, score; the prompt box in white; the second
    column's panels give the IoU."""
    names, prompts = list(found), [p for p in PROMPTS if p in iou]
    fig, axes = plt.subplots(
        len(prompts), len(names), figsize=(4.2 * len(names), 4.5 * len(prompts)), squeeze=False
    )
    for row, prompt in enumerate(prompts):
        for col, name in enumerate(names):
            det = found[name][prompt]
            prompt_boxes = [(BOX_PROMPT, True)] if prompt != "text" else []
            picture = draw_detections(
                photo,
                det.masks.cpu().numpy(),
                det.boxes.cpu().numpy(),
                det.scores.tolist(),
                prompt_boxes=prompt_boxes,
            )
            extra = f"\nmask IoU vs {names[0]} {iou[prompt]:.3f}" if col else ""
            ax = axes[row][col]
            ax.imshow(picture)
            ax.set_title(f"{name}: {_label(prompt)}\n{_summary(prompt, det)}{extra}", fontsize=9)
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def compare_segmentations(
    models: dict[str, nn.Module], photo: Image.Image, png: Path, title: str
) -> dict[str, Any]:
    """Segment ``photo`` with two image models (built with interactivity; the first is the
    reference), print each answer per prompt and draw them; returns the picture's ``path``,
    ``iou`` and ``scores`` (per prompt; the scores per model) and the answers (``found``)."""
    if len(models) != 2:
        raise ValueError(f"compare two models, got {len(models)}: {list(models)}")
    (first, _), (second, _) = models.items()
    size = (photo.height, photo.width)
    found = {name: segment(model, photo) for name, model in models.items()}
    iou = {
        p: mask_iou(_first_mask(found[first][p], size), _first_mask(found[second][p], size))
        for p in PROMPTS
    }
    print(
        "  per prompt: the best detection (top-1 by score, no 0.5 threshold), or the SAM heads' "
        "one mask (score: its predicted IoU); score, mask area"
    )
    scores = {}
    for p in PROMPTS:
        scores[p] = {n: float(f[p].scores.max()) if len(f[p]) else 0.0 for n, f in found.items()}
        a, b = found[first][p], found[second][p]
        print(
            f"    {_label(p):34} {first} {scores[p][first]:.3f} {_area(a):4.0%}   {second} "
            f"{scores[p][second]:.3f} {_area(b):4.0%}   mask IoU {iou[p]:.3f}"
        )
    path = draw_segmentation(png, photo, found, iou, title)
    print(f"  {path}")
    return {"path": path, "iou": iou, "scores": scores, "found": found}


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
    the merged model, both with their interactive heads; see :func:`compare_segmentations`."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # the architecture is given, not read from the file: a reduced text encoder's head count
    # has no tensor of its own
    models = {
        "teacher": build_sam3_image_model(
            teacher_ckpt, device, cfg=teacher_cfg, enable_inst_interactivity=True
        ),
        "merged": build_efficientsam3_image_model(merged, device, enable_inst_interactivity=True),
    }
    photo = Image.open(photo_path).convert("RGB")
    merged_model = models["merged"]
    print(
        f"  merged model: {sum(p.numel() for p in merged_model.parameters()) / 1e6:.1f} M "
        f"parameters with its interactive heads; {merged_model.cfg.num_queries} queries; masks "
        f"upsampled to the photo's {photo.width}x{photo.height}"
    )
    title = (
        f"{photo_path.name} (held out): best detection per prompt, top-1 by score (no 0.5 "
        f"threshold),\nand the SAM heads' one mask; teacher = {teacher_kind}"
    )
    result = compare_segmentations(models, photo, png, title)
    return {k: result[k] for k in ("path", "iou", "scores")}
