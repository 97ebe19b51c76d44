"""Text and box prompts on one photo with SAM3's image model, results in the photo's pixels.

The backbone runs once per photo (:meth:`Sam3Predictor.set_image`); every prompt on it then runs
only the text encoder (cached per caption) and the heads. Detections follow SAM3's own
post-processing: score = sigmoid(query logit) * sigmoid(presence logit), kept where strictly above
the threshold, in query order; boxes scaled to the photo; masks upsampled bilinearly to the photo
and thresholded at 0.5 after a sigmoid (only the kept ones).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .instance import MAX_HOLE_AREA, InstanceMasks, prepare_prompt, to_instance_masks
from .model.box_ops import box_cxcywh_to_xyxy
from .model.prompt import GeometricPrompt
from .model.sam3_image import BOXES_ONLY_TEXT
from .preprocess import ImageGeometry, Preprocessing, clip_box, preprocess

TEXT_CACHE_SIZE = 16  # captions whose encodings are kept across photos


@dataclass
class Detections:
    """What one prompt found: ``masks`` bool ``[N, H, W]`` and ``boxes`` float32 ``[N, 4]``
    (xyxy pixels, not clipped) of the original photo, ``scores [N]``, and ``raw``, the model's
    outputs for the whole query set (float32)."""

    masks: Tensor
    boxes: Tensor
    scores: Tensor
    raw: dict[str, Any]

    def __len__(self) -> int:
        return int(self.scores.numel())


@dataclass
class ImageState:
    """One photo's backbone outputs and the prompts given on it so far."""

    image: dict[str, Any]  # forward_image outputs (never modified)
    geometry: ImageGeometry
    device: torch.device
    text: str | None = None
    text_out: dict[str, Any] | None = None
    prompt: GeometricPrompt | None = None
    boxes: list[tuple[list[float], bool]] = field(default_factory=list)  # pixels xyxy, positive
    raw: dict[str, Any] | None = None  # the last prompt's outputs
    interactive: dict[str, Any] | None = None  # the SAM heads' image features, once computed


class Sam3Predictor:
    """Detect and segment what a text and/or boxes name on a photo.

    Args:
        model: a SAM3 image model (``preprocessing``, ``forward_image``, ``forward_text``,
            ``forward_grounding``), e.g. from :func:`sam3.model_builder.load_image_model`.
        confidence_threshold: keep detections whose score is strictly above it.
        device: where to run (the model is moved there); default: the model's parameters'.
        autocast_dtype: e.g. ``torch.bfloat16`` to run the model under ``torch.autocast``;
            results are float32 either way.
        max_hole_area: background holes of at most this many low-resolution cells are filled
            in :meth:`predict_inst`'s masks (SAM3's 256; 0 turns it off).
    """

    def __init__(
        self,
        model: nn.Module,
        confidence_threshold: float = 0.5,
        device: torch.device | str | None = None,
        autocast_dtype: torch.dtype | None = None,
        max_hole_area: float = MAX_HOLE_AREA,
    ):
        if device is None:
            param = next(iter(model.parameters()), None)
            device = param.device if param is not None else torch.device("cpu")
        else:
            model.to(device)
        self.model = model.eval()
        self.device = torch.device(device)
        record = getattr(model, "preprocessing", None)
        if not isinstance(record, dict):
            raise ValueError("the model has no preprocessing record (model.preprocessing)")
        self.prep = Preprocessing.from_record(record)
        self.autocast_dtype = autocast_dtype
        self.confidence_threshold = 0.5
        self.set_confidence_threshold(confidence_threshold)
        self._text_cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.max_hole_area = float(max_hole_area)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @torch.inference_mode()
    def set_image(self, image: Any) -> ImageState:
        """Run the backbone on a photo: a PIL image, an ``H x W x 3`` uint8 numpy array, or a
        ``[3, H, W]`` tensor (uint8, or float in [0, 1])."""
        x, geometry = preprocess(image, self.prep, self.device)
        with self._autocast():
            out = self.model.forward_image(x.unsqueeze(0))
        return ImageState(image=out, geometry=geometry, device=self.device)

    def _encode_text(self, text: str) -> dict[str, Any]:
        cached = self._text_cache.pop(text, None)
        if cached is None:
            with self._autocast():
                cached = self.model.forward_text([text], device=self.device)
        self._text_cache[text] = cached
        while len(self._text_cache) > TEXT_CACHE_SIZE:
            self._text_cache.popitem(last=False)
        return cached

    def _set_text(self, state: ImageState, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"the text prompt must be a non-empty string, got {text!r}")
        state.text, state.text_out = text, self._encode_text(text)

    def _add_boxes(self, state: ImageState, boxes: Any, positive: bool | Sequence[bool]) -> None:
        try:
            rows = torch.as_tensor(boxes, dtype=torch.float64).tolist()
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"boxes are [x0, y0, x1, y1] or [n, 4], got {boxes!r}") from None
        rows = [rows] if isinstance(rows, list) and rows and not isinstance(rows[0], list) else rows
        if not isinstance(rows, list) or not rows:
            raise ValueError(f"boxes are [x0, y0, x1, y1] or [n, 4], got {boxes!r}")
        flags = [bool(positive)] * len(rows) if isinstance(positive, bool) else list(positive)
        if len(flags) != len(rows):
            raise ValueError(f"{len(rows)} boxes but {len(flags)} positive flags")
        geometry = state.geometry
        clipped = [clip_box(b, geometry.orig_w, geometry.orig_h) for b in rows]
        prompt = state.prompt or GeometricPrompt.empty(1, self.device)
        state.prompt = prompt.with_boxes(
            torch.tensor([geometry.box_to_input(b) for b in clipped], device=self.device).view(
                -1, 1, 4
            ),
            torch.tensor(flags, dtype=torch.long, device=self.device).view(-1, 1),
        )
        state.boxes.extend(zip(clipped, flags))

    @torch.inference_mode()
    def set_text_prompt(self, state: ImageState, text: str) -> Detections:
        """Set (or replace) the text of the prompt, keeping any boxes, and detect."""
        self._set_text(state, text)
        return self._ground(state)

    @torch.inference_mode()
    def add_box_prompt(
        self,
        state: ImageState,
        box_xyxy_pixels: Sequence[float] | Sequence[Sequence[float]],
        positive: bool | Sequence[bool] = True,
    ) -> Detections:
        """Add one box (``[x0, y0, x1, y1]`` in the photo's pixels) or several (``[n, 4]``, with
        one ``positive`` flag each or one for all) to the prompt and detect once.

        Boxes accumulate until :meth:`reset_prompts`; without a text prompt SAM3's caption
        ``"visual"`` stands in. A box reaching outside the photo is clipped to it.
        """
        self._add_boxes(state, box_xyxy_pixels, positive)
        return self._ground(state)

    @torch.inference_mode()
    def predict(
        self,
        state: ImageState,
        text: str | None = None,
        boxes: Sequence[Sequence[float]] | None = None,
        positive: bool | Sequence[bool] = True,
    ) -> Detections:
        """A whole prompt at once (text and/or boxes, as above), replacing earlier prompts; the
        heads run once."""
        boxes = () if boxes is None else boxes
        if text is None and not len(boxes):
            raise ValueError("a prompt needs a text, a box or both")
        self.reset_prompts(state)
        if text is not None:
            self._set_text(state, text)
        if len(boxes):
            self._add_boxes(state, boxes, positive)
        return self._ground(state)

    def reset_prompts(self, state: ImageState) -> None:
        """Forget the text, the boxes and the last results (the photo's features stay)."""
        state.text = state.text_out = state.prompt = state.raw = None
        state.boxes = []

    def set_confidence_threshold(
        self, threshold: float, state: ImageState | None = None
    ) -> Detections | None:
        """Change the threshold; given a state with results, re-filter them (no model run)."""
        threshold = float(threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"the confidence threshold must lie in [0, 1], got {threshold}")
        self.confidence_threshold = threshold
        if state is not None and state.raw is not None:
            return self._postprocess(state)
        return None

    @torch.inference_mode()
    def predict_inst(
        self,
        state: ImageState,
        point_coords: Any = None,
        point_labels: Any = None,
        box: Any = None,
        mask_input: Any = None,
        multimask_output: bool = True,
    ) -> InstanceMasks:
        """Segment the object that clicks and/or a box point at (SAM's task, SAM3's SAM heads).

        Args:
            state: from :meth:`set_image` (its backbone outputs are reused).
            point_coords: ``[P, 2]`` (x, y) in the photo's pixels, or ``[N, P, 2]`` for ``N``
                prompt sets at once.
            point_labels: ``[P]`` / ``[N, P]``: 1 positive, 0 negative.
            box: ``[x0, y0, x1, y1]`` in the photo's pixels, or ``[N, 4]`` (many boxes at once;
                one per point set when both are given).
            mask_input: low-resolution logits ``[4S, 4S]`` (or ``[N, 1, 4S, 4S]``), e.g. one of
                an earlier call's ``low_res_logits``, to refine.
            multimask_output: three candidate masks per prompt set (best for one click), or
                the one SAM3 selects (best for boxes and several clicks).

        Returns:
            :class:`InstanceMasks`; batched prompts give a leading ``N``.
        """
        if not isinstance(state, ImageState):
            raise ValueError(f"call set_image(photo) first and pass its state, got {state!r}")
        model = self.model
        if not getattr(model, "has_interactivity", False):
            raise ValueError(
                "this model has no interactive heads — load it with "
                "enable_inst_interactivity=True for point and box prompts"
            )
        heads = model.tracker
        prompt = prepare_prompt(
            state.geometry,
            heads.mask_input_size,
            point_coords,
            point_labels,
            box,
            mask_input,
            self.device,
        )
        with self._autocast():
            if state.interactive is None:
                state.interactive = model.interactive_features(state.image)
            out = heads(
                state.interactive,
                prompt.point_coords,
                prompt.point_labels,
                prompt.boxes,
                prompt.mask_input,
                multimask_output=bool(multimask_output),
            )
        return to_instance_masks(out, state.geometry, prompt.batched, self.max_hole_area)

    @torch.inference_mode()
    def _ground(self, state: ImageState) -> Detections:
        if state.text_out is None:  # boxes without text
            state.text_out = self._encode_text(BOXES_ONLY_TEXT)
        prompt = state.prompt or GeometricPrompt.empty(1, self.device)
        with self._autocast():
            raw = self.model.forward_grounding({**state.image, **state.text_out}, prompt)
        state.raw = {
            k: v.float() if isinstance(v, Tensor) and v.is_floating_point() else v
            for k, v in raw.items()
        }
        return self._postprocess(state)

    @torch.inference_mode()
    def _postprocess(self, state: ImageState) -> Detections:
        raw = state.raw
        probs = raw["pred_logits"][0, :, 0].sigmoid() * raw["presence_logit_dec"][0].sigmoid()
        keep = probs > self.confidence_threshold
        boxes = state.geometry.boxes_to_pixels(box_cxcywh_to_xyxy(raw["pred_boxes"][0][keep]))
        masks = state.geometry.masks_to_image(raw["pred_masks"][0][keep])
        return Detections(masks=masks, boxes=boxes, scores=probs[keep], raw=raw)
