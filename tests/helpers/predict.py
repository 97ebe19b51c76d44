"""What the prediction tests share: a fake image model whose outputs are known, a real tiny
image model in ``sam3.pt``'s layout, and the running of ``python -m sam3.predict`` (in-process
and from the shell) with its fixtures.

A test module that uses the fixtures ``tiny_ckpt`` and ``no_model_load`` imports
``tiny_ckpt_fixture`` and ``no_model_load_fixture`` (with ``# noqa: F401``): pytest finds them
under their fixture names.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from helpers.models import SAMPLES

ROOT = Path(__file__).resolve().parents[2]
PHOTO = SAMPLES / "chelsea.jpg"  # 451 x 300


# ---------------------------------------------------------------- a fake model


def prep_record(mode: str, size: int = 56) -> dict:
    """A ``model.preprocessing`` record: ``size`` square, ``mode`` resize, mean = std = 0.5."""
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


def fake_model(
    mode="squash", logits=(3.0,), boxes=((0.5, 0.5, 0.2, 0.4),), masks=None, size=56, **kw
) -> FakeModel:
    """A :class:`FakeModel` of ``size`` input; masks default to +5 logits everywhere."""
    h = size // 14 * 4
    masks = torch.full((len(logits), h, h), 5.0) if masks is None else masks
    return FakeModel(prep_record(mode, size), list(logits), [list(b) for b in boxes], masks, **kw)


def random_photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A random ``h x w x 3`` uint8 photo."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- a real tiny model


def tiny_config():
    """A real image model at reduced sizes that follow SAM3's head-count rules (text heads =
    width // 64, detector heads = d_model // 32), so that its sam3.pt-layout file loads back."""
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


def write_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random tiny model saved in sam3.pt's layout (``{"model": {"detector.*": ...}}``)."""
    from sam3.model_builder import build_sam3_image_model

    torch.manual_seed(seed)
    model = build_sam3_image_model(cfg=tiny_config())
    torch.save({"model": {"detector." + k: v for k, v in model.state_dict().items()}}, path)
    return path


@pytest.fixture(scope="module", name="tiny_ckpt")
def tiny_ckpt_fixture(tmp_path_factory) -> Path:
    """:func:`write_tiny_checkpoint` once per module, as ``tiny_sam3.pt``."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_sam3.pt")


# ---------------------------------------------------------------- the command line


@pytest.fixture(name="no_model_load")
def no_model_load_fixture(monkeypatch) -> None:
    """Fail the test if the model is loaded (the checks must come first)."""
    import sam3.model_builder

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(sam3.model_builder, "load_image_model", refuse)


def cli_args(ckpt, image=PHOTO, *extra: str, output=None) -> list[str]:
    """The command line of ``python -m sam3.predict`` for ``ckpt``, ``image`` and ``extra``."""
    out = ["--output", str(output)] if output is not None else []
    return ["--checkpoint", str(ckpt), "--image", str(image), *out, *extra]


def expect_error(capsys, argv: list[str], *fragments: str) -> str:
    """Run ``main(argv)`` in-process; assert one ``error:`` line naming every fragment on
    stderr, no traceback and exit 1; return the line."""
    from sam3.predict import EXIT_USER_ERROR, main

    assert main(argv) == EXIT_USER_ERROR
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert " — " in lines[0], lines[0]
    assert "Traceback" not in captured.out + captured.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m sam3.predict ARGS`` from the shell (one OpenMP thread)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sam3.predict", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
