"""From a resolved config to its student: the name, the build arguments, the weights, and the
config a checkpoint recorded read back."""

from __future__ import annotations

import pytest
import torch

from stage1.common.config import ConfigError, load_config
from stage1.common.students import (
    build_configured_student,
    config_from_yaml,
    student_build_args,
    student_name,
)

IMAGE_CFG = "stage1/configs/es_ev_s.yaml"
TEXT_CFG = "stage1/configs/es_mc_s.yaml"
GEOMETRY = ["DATA.IMG_SIZE", "112", "DISTILL.EMBED_DIM", "64", "DISTILL.EMBED_SIZE", "8"]


def test_the_student_is_named_canonically_and_of_its_kind():
    assert student_name(load_config(IMAGE_CFG, ["MODEL.BACKBONE", "ES-EV-S"]), "image") == (
        "efficientvit_b0"
    )
    with pytest.raises(ConfigError, match=r"^MODEL.BACKBONE: .*efficientvit_b0.* — set "):
        student_name(load_config(IMAGE_CFG, ["MODEL.BACKBONE", "efficientvit_b9"]), "image")
    with pytest.raises(ConfigError, match=r"text student.* — train it with stage1/train_text_"):
        student_name(load_config(TEXT_CFG), "image")
    with pytest.raises(ConfigError, match=r"image student.* — train it with stage1/train_image_"):
        student_name(load_config(IMAGE_CFG), "text")


def test_the_build_arguments_are_the_configs_geometry():
    image = load_config(IMAGE_CFG, GEOMETRY)
    assert student_build_args(image, "image") == {"embed_dim": 64, "embed_size": 8, "img_size": 112}
    opts = ["DISTILL.CONTEXT_LENGTH", "16", "DISTILL.TEXT_DIM", "128"]
    text = load_config(TEXT_CFG, [*opts, "DISTILL.MASK_PAD_TOKENS", "False"])
    want = {"context_length": 16, "d_model": 128, "mask_padding": False}
    assert student_build_args(text, "text") == want


def test_the_student_built_has_the_configs_geometry_and_weights(tmp_path):
    missing = str(tmp_path / "missing.pth")
    cfg = load_config(IMAGE_CFG, [*GEOMETRY, "MODEL.PRETRAINED", missing])
    student = build_configured_student(cfg, "image", pretrained=False)  # the file is not read
    with torch.inference_mode():
        assert student(torch.zeros(1, 3, 112, 112)).shape == (1, 64, 8, 8)
    bogus = tmp_path / "bogus.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, bogus)
    cfg = load_config(IMAGE_CFG, [*GEOMETRY, "MODEL.PRETRAINED", str(bogus)])
    with pytest.raises(ConfigError, match=r"^MODEL.PRETRAINED .*bogus.pth does not fit .* — give"):
        build_configured_student(cfg, "image")


def test_a_recorded_config_reads_back_over_the_defaults():
    cfg = load_config(IMAGE_CFG, [*GEOMETRY, "TRAIN.EPOCHS", "7"])
    again = config_from_yaml(cfg.dump())
    assert again == cfg and again.is_frozen()
    older = config_from_yaml("MODEL:\n  BACKBONE: repvit_m0_9\n")  # keys it lacks: today's
    assert older.MODEL.BACKBONE == "repvit_m0_9" and older.TRAIN.EPOCHS == 50
    with pytest.raises(ConfigError, match=r"does not fit this version's keys: .*NO_SUCH_KEY"):
        config_from_yaml("TRAIN:\n  NO_SUCH_KEY: 1\n")
    with pytest.raises(ConfigError, match="not a mapping"):
        config_from_yaml("- a list\n")
