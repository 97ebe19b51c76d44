"""The predictor's pre- and post-processing, on a fake model whose outputs are known."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sam3 import preprocess as preprocess_module
from sam3.model.box_ops import box_cxcywh_to_xyxy
from sam3.model.prompt import GeometricPrompt
from sam3.predictor import Sam3Predictor
from sam3.preprocess import Preprocessing, preprocess
from stage1.data.transforms import ImageTransform

from conftest import assert_matches


def _prep(mode: str, size: int = 56) -> dict:
    return {"img_size": size, "resize_mode": mode, "pixel_mean": [0.5] * 3, "pixel_std": [0.5] * 3}


class FakeModel(nn.Module):
    """The image model's interface with fixed grounding outputs; records every call."""

    def __init__(self, preprocessing: dict, logits, boxes, masks, presence: float = 100.0):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.preprocessing = preprocessing
        q = len(logits)
        self.outputs = {
            "pred_logits": torch.tensor(logits, dtype=torch.float32).view(1, q, 1),
            "pred_boxes": torch.tensor(boxes, dtype=torch.float32).view(1, q, 4),
            "pred_masks": torch.as_tensor(masks, dtype=torch.float32).view(1, q, *masks.shape[-2:]),
            "presence_logit_dec": torch.tensor([[presence]]),
        }
        self.images: list[torch.Tensor] = []
        self.captions: list[list[str]] = []
        self.grounding: list[tuple[dict, object, bool]] = []
        self.out_dtype = torch.float32

    def forward_image(self, images):
        self.images.append(images.clone())
        return {"backbone_fpn": [images]}

    def forward_text(self, captions, device=None):
        self.captions.append(list(captions))
        n = float(len(captions[0]))  # tells the captions apart downstream
        return {
            "language_features": torch.full((4, 1, 2), n, device=device),
            "language_mask": torch.zeros(1, 4, dtype=torch.bool, device=device),
            "language_embeds": torch.full((4, 1, 2), n, device=device),
        }

    def forward_grounding(self, backbone_out, prompt, image_ids=None, text_ids=None):
        self.grounding.append((backbone_out, prompt, torch.is_autocast_enabled("cpu")))
        return {k: v.to(self.anchor.device, self.out_dtype) for k, v in self.outputs.items()}


def _fake(mode="squash", logits=(3.0,), boxes=((0.5, 0.5, 0.2, 0.4),), masks=None, **kw):
    size = kw.pop("size", 56)
    h = size // 14 * 4
    masks = torch.full((len(logits), h, h), 5.0) if masks is None else masks
    return FakeModel(_prep(mode, size), list(logits), [list(b) for b in boxes], masks, **kw)


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["squash", "pad"])
@pytest.mark.parametrize(("h", "w"), [(37, 91), (91, 37), (50, 50), (1, 60), (113, 57)])
def test_preprocessing_equals_the_stage1_transform(mode, h, w):
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    record = {"img_size": 56, "resize_mode": mode, "pixel_mean": mean, "pixel_std": std}
    photo = _photo(h, w)
    ours, geometry = preprocess(photo, Preprocessing.from_record(record))
    ref, (vh, vw) = ImageTransform(56, mode, mean, std)(torch.from_numpy(photo).permute(2, 0, 1))
    assert torch.equal(ours, ref)
    assert (geometry.valid_h, geometry.valid_w, geometry.orig_h, geometry.orig_w) == (vh, vw, h, w)


def test_every_image_kind_gives_the_same_input():
    photo = _photo(30, 47)
    prep = Preprocessing.from_record(_prep("pad"))
    ref = preprocess(photo, prep)[0]
    chw = torch.from_numpy(photo).permute(2, 0, 1)
    for image in (
        Image.fromarray(photo),
        chw,
        chw.float() / 255,
        Image.fromarray(photo).convert("RGBA"),
    ):
        assert torch.equal(preprocess(image, prep)[0], ref)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((8, 8, 3), np.float32),
        np.zeros((8, 8, 4), np.uint8),
        np.zeros((8, 8), np.uint8),
        torch.zeros(4, 8, 8, dtype=torch.uint8),
        torch.zeros(8, 8, 3, dtype=torch.uint8),
        torch.zeros(3, 8, 8, dtype=torch.int32),
        torch.full((3, 8, 8), 1.5),
        [[0, 0, 0]],
    ],
)
def test_bad_images_are_a_clear_value_error(image):
    predictor = Sam3Predictor(_fake())
    with pytest.raises(ValueError, match="image|numpy|expected"):
        predictor.set_image(image)


@pytest.mark.parametrize(
    ("mode", "expected"), [("squash", [40, 10, 60, 15]), ("pad", [40, 20, 60, 30])]
)
def test_pixel_boxes_on_a_non_square_photo(mode, expected):
    # 50 x 100 photo, 56 input: pad resizes it to 28 x 56, so one normalised unit is 100 px on
    # both axes; squash stretches y, one unit is 100 px in x and 50 px in y.
    model = _fake(mode, logits=[3.0], boxes=[[0.5, 0.25, 0.2, 0.1]])
    predictor = Sam3Predictor(model)
    state = predictor.set_image(_photo(50, 100))
    det = predictor.set_text_prompt(state, "a dog")
    assert det.boxes.dtype == torch.float32
    torch.testing.assert_close(det.boxes, torch.tensor([expected], dtype=torch.float32))
    assert det.masks.shape == (1, 50, 100) and det.masks.dtype == torch.bool


@pytest.mark.parametrize(("mode", "box"), [("squash", [40, 10, 60, 15]), ("pad", [40, 20, 60, 30])])
def test_prompt_boxes_go_to_normalised_cxcywh_of_the_input(mode, box):
    model = _fake(mode)
    predictor = Sam3Predictor(model)
    state = predictor.set_image(_photo(50, 100))
    predictor.add_box_prompt(state, box)
    prompt = model.grounding[-1][1]
    torch.testing.assert_close(prompt.boxes, torch.tensor([[[0.5, 0.25, 0.2, 0.1]]]))
    assert prompt.box_labels.tolist() == [[1]]


def test_a_box_reaching_outside_is_clipped_and_bad_boxes_are_refused():
    model = _fake("pad")
    predictor = Sam3Predictor(model)
    state = predictor.set_image(_photo(50, 100))
    predictor.add_box_prompt(state, [-10, -10, 60, 30])  # clipped to [0, 0, 60, 30]
    torch.testing.assert_close(
        model.grounding[-1][1].boxes, torch.tensor([[[0.3, 0.15, 0.6, 0.3]]])
    )
    for bad in ([10, 10, 10, 20], [10, 20, 30, 5], [120, 0, 130, 10], [0, 0, math.nan, 5], [1, 2]):
        with pytest.raises(ValueError, match="box"):
            predictor.add_box_prompt(state, bad)


def test_scores_use_presence_strict_threshold_and_query_order():
    logits = [2.0, 0.0, -1.0, 3.0]
    boxes = [[0.5, 0.5, 0.1, 0.1]] * 4
    model = _fake(logits=logits, boxes=boxes)  # presence logit 100: sigmoid is exactly 1
    predictor = Sam3Predictor(model)
    state = predictor.set_image(_photo(20, 30))
    det = predictor.set_text_prompt(state, "cat")
    # sigmoid: 0.881, 0.5 (not > 0.5), 0.269, 0.953; kept in query order, not by score
    torch.testing.assert_close(det.scores, torch.tensor([0.880797, 0.952574]))
    assert det.masks.shape[0] == det.boxes.shape[0] == 2

    model.outputs["presence_logit_dec"] = torch.tensor([[math.log(3.0)]])  # sigmoid 0.75
    det = predictor.set_text_prompt(state, "cat")
    torch.testing.assert_close(det.scores, torch.tensor([0.660598, 0.714431]))

    runs = len(model.grounding)
    det = predictor.set_confidence_threshold(0.7, state)
    torch.testing.assert_close(det.scores, torch.tensor([0.714431]))
    assert len(model.grounding) == runs  # re-filtered, not re-run

    model.outputs["presence_logit_dec"] = torch.tensor([[0.0]])  # halves every score
    assert len(predictor.set_text_prompt(state, "cat")) == 0


def test_only_the_kept_masks_are_upsampled(monkeypatch):
    logits = [-5.0] * 200
    logits[17] = logits[150] = 5.0
    model = _fake(logits=logits, boxes=[[0.5, 0.5, 0.1, 0.1]] * 200)
    sizes = []
    real = preprocess_module.F.interpolate

    def spy(x, *args, **kwargs):
        sizes.append(x.shape[0])
        return real(x, *args, **kwargs)

    monkeypatch.setattr(preprocess_module.F, "interpolate", spy)
    predictor = Sam3Predictor(model)
    det = predictor.set_text_prompt(predictor.set_image(_photo(40, 60)), "x")
    assert len(det) == 2 and sum(sizes) == 2


def _half_masks(size: int = 112) -> torch.Tensor:
    """Mask logits over the square: +5 everywhere except the right half of the top half."""
    h = size // 14 * 4
    m = torch.full((1, h, h), 5.0)
    m[:, : h // 2, h // 2 :] = -5.0
    return m


def test_pad_masks_are_cropped_to_the_photo():
    # 56 x 112 photo in a 112 square: pad puts it in the top half (16 of 32 mask rows), so its
    # mask is the left half, all rows.
    model = _fake("pad", size=112, masks=_half_masks())
    predictor = Sam3Predictor(model)
    det = predictor.set_text_prompt(predictor.set_image(_photo(56, 112)), "x")
    expected = torch.zeros(56, 112, dtype=torch.bool)
    expected[:, :56] = True
    assert torch.equal(det.masks[0], expected)


def test_squash_masks_cover_the_whole_square():
    # Squash maps all 32 mask rows onto the 56 rows: the +5/-5 edge between mask rows 15 and 16
    # lands between photo rows 27 and 28, the column edge between columns 55 and 56.
    model = _fake("squash", size=112, masks=_half_masks())
    predictor = Sam3Predictor(model)
    det = predictor.set_text_prompt(predictor.set_image(_photo(56, 112)), "x")
    expected = torch.ones(56, 112, dtype=torch.bool)
    expected[:28, 56:] = False
    assert torch.equal(det.masks[0], expected)


@pytest.mark.parametrize("transpose", [False, True])
def test_pad_masks_with_a_fractional_extent_map_proportionally(transpose):
    # A 30 x 100 photo in a 56 square: resized to 17 x 56, i.e. 17 * 16 / 56 = 4.857 of the 16
    # mask rows. Logits rise linearly, (row centre) - 2.4 cells, which bilinear interpolation
    # keeps exactly: photo row i (centre i + 0.5) sits at (i + 0.5) * 4.857 / 30 cells, so it is
    # positive from i + 0.5 > 2.4 * 30 / 4.857 = 14.82, i.e. from row 15 on.
    ramp = (torch.arange(16, dtype=torch.float32) + 0.5 - 2.4).view(16, 1).expand(16, 16)
    masks = (ramp.T if transpose else ramp).reshape(1, 16, 16)
    model = _fake("pad", masks=masks)
    predictor = Sam3Predictor(model)
    photo = _photo(100, 30) if transpose else _photo(30, 100)
    mask = predictor.set_text_prompt(predictor.set_image(photo), "x").masks[0]
    mask = mask.T if transpose else mask
    assert mask.shape == (30, 100)
    assert not mask[:15].any() and mask[15:].all()


def test_negative_boxes_accumulate_with_their_labels():
    model = _fake()
    predictor = Sam3Predictor(model)
    state = predictor.set_image(_photo(40, 40))
    predictor.add_box_prompt(state, [1, 1, 10, 10], positive=False)
    predictor.add_box_prompt(state, [5, 5, 30, 30])
    prompt = model.grounding[-1][1]
    assert prompt.box_labels.tolist() == [[0], [1]]
    assert prompt.box_mask.shape == (1, 2) and not prompt.box_mask.any()
    assert [p for _, p in state.boxes] == [False, True]


def test_boxes_without_text_use_the_caption_visual_and_text_replaces_it():
    model = _fake()
    predictor = Sam3Predictor(model)
    state = predictor.set_image(_photo(40, 40))
    predictor.add_box_prompt(state, [5, 5, 30, 30])
    assert model.captions == [["visual"]]
    assert model.grounding[-1][0]["language_features"].flatten()[0] == len("visual")
    predictor.set_text_prompt(state, "a dog")
    backbone_out, prompt, _ = model.grounding[-1]
    assert backbone_out["language_features"].flatten()[0] == len("a dog")
    assert prompt.boxes.shape == (1, 1, 4)  # the box stays
    predictor.reset_prompts(state)
    predictor.add_box_prompt(state, [5, 5, 30, 30])
    assert model.grounding[-1][0]["language_features"].flatten()[0] == len("visual")
    assert model.grounding[-1][1].boxes.shape == (1, 1, 4)


def test_the_backbone_runs_once_per_photo_and_captions_are_cached():
    model = _fake()
    predictor = Sam3Predictor(model)
    state = predictor.set_image(_photo(40, 40))
    predictor.set_text_prompt(state, "a dog")
    predictor.set_text_prompt(state, "a cat")
    predictor.add_box_prompt(state, [5, 5, 30, 30])
    predictor.set_text_prompt(state, "a dog")
    assert len(model.images) == 1 and len(model.grounding) == 4
    assert model.captions == [["a dog"], ["a cat"]]
    assert sorted(state.image) == ["backbone_fpn"]  # the text is not merged into it in place
    with pytest.raises(ValueError, match="text"):
        predictor.set_text_prompt(state, "  ")


def test_predict_runs_the_heads_once_for_text_and_boxes():
    model = _fake()
    predictor = Sam3Predictor(model)
    state = predictor.set_image(_photo(40, 40))
    predictor.predict(state, "a dog", [[1, 1, 10, 10], [5, 5, 30, 30]], [True, False])
    assert len(model.grounding) == 1 and model.captions == [["a dog"]]
    assert model.grounding[0][1].box_labels.tolist() == [[1], [0]]
    with pytest.raises(ValueError, match="prompt"):
        predictor.predict(state)


def test_autocast_runs_the_model_in_bf16_and_returns_float32():
    model = _fake()
    model.out_dtype = torch.bfloat16
    predictor = Sam3Predictor(model, autocast_dtype=torch.bfloat16)
    det = predictor.set_text_prompt(predictor.set_image(_photo(40, 40)), "a dog")
    assert model.grounding[-1][2]  # autocast was on inside the model
    assert det.boxes.dtype == det.scores.dtype == torch.float32
    assert det.raw["pred_masks"].dtype == torch.float32
    assert not det.scores.requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_everything_stays_on_the_device():
    model = _fake("pad")
    predictor = Sam3Predictor(model, device="cuda")
    det = predictor.set_text_prompt(predictor.set_image(_photo(50, 100)), "a dog")
    assert det.masks.device.type == det.boxes.device.type == "cuda"
    torch.testing.assert_close(det.boxes.cpu(), torch.tensor([[40.0, 30.0, 60.0, 70.0]]))


# A real image model at reduced sizes that follow SAM3's head-count rules (text heads =
# width // 64, detector heads = d_model // 32), so that its sam3.pt-layout file loads back.
def tiny_config():
    from sam3.arch import BackboneConfig, ImageModelConfig
    from sam3.model.heads_config import HeadsConfig
    from sam3.model.text_encoder import TextConfig
    from sam3.model.vit import ViTConfig

    vit = ViTConfig(
        img_size=56,
        patch_size=14,
        embed_dim=32,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
        window_size=2,
        global_blocks=(1,),
        pretrain_img_size=28,
    )
    heads = HeadsConfig(
        d_model=32,
        num_heads=1,
        dim_feedforward=64,
        geometry_layers=1,
        encoder_layers=1,
        decoder_layers=1,
        num_queries=8,
        scoring_hidden=64,
    )
    text = TextConfig(width=64, heads=1, layers=1)
    return ImageModelConfig(backbone=BackboneConfig(vit=vit, text=text, d_model=32), heads=heads)


def write_tiny_checkpoint(path, seed: int = 0):
    """A random tiny model saved in sam3.pt's layout (``{"model": {"detector.*": ...}}``)."""
    from sam3.model_builder import build_sam3_image_model

    torch.manual_seed(seed)
    model = build_sam3_image_model(cfg=tiny_config())
    torch.save({"model": {"detector." + k: v for k, v in model.state_dict().items()}}, path)
    return path


SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from sam3.model_builder import load_image_model

    return load_image_model(write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.pt"))


def test_a_tiny_model_file_records_its_own_input_size(tiny_model):
    assert tiny_model.preprocessing["img_size"] == 56


def test_a_real_tiny_model_end_to_end(tiny_model, monkeypatch):
    monkeypatch.setattr(tiny_model, "preprocessing", _prep("squash", 56))
    photo = Image.open(SAMPLES / "chelsea.jpg").convert("RGB")  # 451 x 300
    predictor = Sam3Predictor(tiny_model, confidence_threshold=0.0)
    state = predictor.set_image(photo)
    det = predictor.set_text_prompt(state, "a cat")
    assert len(det) == 8 and det.masks.shape == (8, 300, 451) and det.masks.dtype == torch.bool
    x = preprocess(photo, predictor.prep)[0]
    with torch.inference_mode():
        out = {**tiny_model.forward_image(x[None]), **tiny_model.forward_text(["a cat"])}
        raw = tiny_model.forward_grounding(out, GeometricPrompt.empty(1))
    torch.testing.assert_close(det.raw["pred_logits"], raw["pred_logits"])
    scale = torch.tensor([451.0, 300.0, 451.0, 300.0])
    torch.testing.assert_close(det.boxes, box_cxcywh_to_xyxy(raw["pred_boxes"][0]) * scale)
    det = predictor.add_box_prompt(state, [100, 50, 300, 250], positive=False)
    assert det.raw["prompt_mask"].shape[1] == 32 + 2  # 32 text tokens, the box and the CLS token
    fp32 = predictor.set_text_prompt(state, "a dog")

    bf16 = Sam3Predictor(tiny_model, confidence_threshold=0.0, autocast_dtype=torch.bfloat16)
    half = bf16.predict(bf16.set_image(photo), "a dog", [[100, 50, 300, 250]], False)
    assert half.scores.dtype == half.boxes.dtype == torch.float32 and len(half) == 8
    torch.testing.assert_close(half.scores, fp32.scores, atol=0.05, rtol=0)


def test_a_real_tiny_model_in_pad_mode(tiny_model, monkeypatch):
    monkeypatch.setattr(tiny_model, "preprocessing", _prep("pad", 56))
    predictor = Sam3Predictor(tiny_model, confidence_threshold=0.0)
    det = predictor.predict(predictor.set_image(_photo(30, 100)), "a cat")
    # 30 x 100 -> 17 x 56 in the square: x scales by 100 / 56, y by 30 / 17
    scale = torch.tensor([100 / 56, 30 / 17, 100 / 56, 30 / 17]) * 56
    expected = box_cxcywh_to_xyxy(det.raw["pred_boxes"][0]) * scale
    torch.testing.assert_close(det.boxes, expected)
    assert det.masks.shape == (8, 30, 100)


@pytest.mark.oracle
def test_the_predictor_equals_metas_processor(oracle):
    """Meta's Sam3Processor and ours on the same seeded model and photo: text + a positive and a
    negative box, every query kept."""
    from sam3.model_builder import build_sam3_image_model

    from seeded_init import seeded_state
    from test_oracle_grounding import CASES, reduced_config, reduced_job

    job = {**reduced_job(), "processor": {"image": 0, "case": 1, "threshold": 0.0}}
    ref = oracle(job, "grounding-reduced-processor")
    model = build_sam3_image_model(cfg=reduced_config())
    seeded_state(model, job["seed"])
    model.preprocessing = _prep("squash", 112)
    photo = Image.open(SAMPLES / "chelsea.jpg").convert("RGB")
    w, h = photo.size
    predictor = Sam3Predictor(model, confidence_threshold=0.0)
    state = predictor.set_image(photo)
    case = CASES[1]
    det = predictor.set_text_prompt(state, case["text"])
    for (cx, cy, bw, bh), label in zip(case["boxes"], case["labels"]):
        box = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
        det = predictor.add_box_prompt(state, box, positive=bool(label))
    assert_matches("predictor scores", det.scores, ref["processor.scores"])
    assert_matches("predictor boxes", det.boxes, ref["processor.boxes"])
    masks = ref["processor.masks"][:, 0]
    assert det.masks.shape == masks.shape
    assert int((det.masks != masks).sum()) <= 16  # of 1.6M; a pixel at a logit of ~0 may flip
