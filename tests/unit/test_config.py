"""The YACS config tree and the shared command line."""

from __future__ import annotations

import json

import pytest
import torch

from stage1.common.cli import build_parser, config_from_args
from stage1.common.config import (
    ConfigError,
    dump_json,
    get_default_config,
    load_config,
    resolve_dataset,
    to_dict,
)
from stage1.common.defaults import DATASET_KINDS
from stage1.train.data import DATASETS

IMAGE_CFG = "stage1/configs/teacher/sam_vit_huge_sa1b.yaml"
TEXT_CFG = "stage1/configs/teacher/sam_text_teacher.yaml"


def test_teacher_configs_inherit_the_base():
    cfg = load_config(IMAGE_CFG)
    assert (cfg.DATA.DATASET, cfg.DATA.DATA_PATH, cfg.OUTPUT) == (
        "sa1b",
        "data/sa-1b",
        "output/stage1_teacher",
    )
    assert (cfg.DISTILL.EMBED_DIM, cfg.DISTILL.EMBED_SIZE) == (1024, 72)  # from the base
    assert cfg.DISTILL.TEACHER_EMBED_PATH == "output/stage1_teacher/embeddings"
    text = load_config(TEXT_CFG, ["DATA.DATASET", "recap_datacomp"])
    assert text.DATA.DATASET == "recap_datacomp" and text.DISTILL.CONTEXT_LENGTH == 32
    assert cfg.is_frozen()


def test_the_dataset_is_the_entry_points_own_unless_named():
    entries = {"image": "train_image.py", "text": "train_text.py"}
    assert get_default_config().DATA.DATASET == ""
    assert set(DATASETS) == set(DATASET_KINDS)  # training builds every dataset the key names
    for kind, own in (("image", "sa1b"), ("text", "recap_datacomp")):
        assert resolve_dataset(load_config(None, ["DATA.DATASET", ""]), kind, entries) == own
        assert resolve_dataset(load_config(None, ["DATA.DATASET", own]), kind, entries) == own
    captions = load_config(TEXT_CFG)  # names recap_datacomp
    with pytest.raises(ConfigError, match=r"^DATA.DATASET recap_datacomp holds text data, but "):
        resolve_dataset(captions, "image", entries)
    with pytest.raises(ConfigError, match=r" — set DATA.DATASET sa1b .*run stage1/train_text.py"):
        resolve_dataset(captions, "image", entries)
    with pytest.raises(ConfigError, match=r"— set DATA.DATASET recap_datacomp .*train_image.py"):
        resolve_dataset(load_config(IMAGE_CFG), "text", entries)
    with pytest.raises(ConfigError, match=r"DATA.DATASET = 'coco' is not a known choice"):
        load_config(IMAGE_CFG, ["DATA.DATASET", "coco"])


def test_cli_flags_and_opts_override_the_yaml(tmp_path):
    parser = build_parser("x")
    args = parser.parse_args(
        [
            "--cfg",
            IMAGE_CFG,
            "--data-path",
            "d",
            "--output",
            str(tmp_path / "run"),
            "--batch-size",
            "3",
            "--local-rank",
            "1",
            "--opts",
            "DATA.NUM_WORKERS",
            "0",
            "TAG",
            "t",
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.DATA.DATA_PATH, cfg.DATA.BATCH_SIZE, cfg.DATA.NUM_WORKERS, cfg.TAG) == (
        "d",
        3,
        0,
        "t",
    )
    assert cfg.DISTILL.TEACHER_EMBED_PATH == str(tmp_path / "run" / "embeddings")
    assert parser.parse_args(["--cfg", IMAGE_CFG, "--local_rank=0"]).local_rank == 0


def test_unknown_keys_are_named(tmp_path):
    with pytest.raises(ConfigError, match="DATA.BATCHSIZE"):
        load_config(IMAGE_CFG, ["DATA.BATCHSIZE", "4"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"BASE: ['{(tmp_path / '..').resolve()}/nope.yaml']\n")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("DISTILL:\n  EMBED_DIMS: 3\n")
    with pytest.raises(ConfigError, match="EMBED_DIMS"):
        load_config(typo)


def test_bad_values_and_cycles(tmp_path):
    with pytest.raises(ConfigError, match="choose one of"):
        load_config(IMAGE_CFG, ["DATA.RESIZE_MODE", "stretch"])
    with pytest.raises(ConfigError, match="KEY VALUE"):
        load_config(IMAGE_CFG, ["DATA.RESIZE_MODE"])
    with pytest.raises(ConfigError, match="CONTEXT_LENGTH"):
        load_config(TEXT_CFG, ["DISTILL.CONTEXT_LENGTH", "77"])
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("BASE: ['b.yaml']\n")
    b.write_text("BASE: ['a.yaml']\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(a)


def test_config_json_is_real_json(tmp_path):
    cfg = load_config(IMAGE_CFG, ["OUTPUT", str(tmp_path)])
    dump_json(cfg, tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text()) == to_dict(cfg)


def test_unknown_keys_get_a_did_you_mean(tmp_path):
    with pytest.raises(ConfigError, match=r"TRAIN\.EPOCH\b.*did you mean TRAIN\.EPOCHS"):
        load_config(IMAGE_CFG, ["TRAIN.EPOCH", "3"])
    typo = tmp_path / "typo.yaml"
    typo.write_text("DISTILL:\n  EMBED_DIMS: 3\n")
    with pytest.raises(ConfigError, match=r"did you mean DISTILL\.EMBED_DIM\b"):
        load_config(typo)


def test_bad_types_and_ranges_say_what_to_give():
    with pytest.raises(ConfigError, match=r"TRAIN\.EPOCHS.*'abc'.*— give an integer"):
        load_config(IMAGE_CFG, ["TRAIN.EPOCHS", "abc"])
    for key, value in (("TRAIN.EPOCHS", "0"), ("DATA.NUM_SAMPLES", "-1"), ("TRAIN.BASE_LR", "-1")):
        with pytest.raises(ConfigError, match=rf"{key}.* — "):
            load_config(IMAGE_CFG, [key, value])


def test_broken_yaml_and_groups_given_a_value_are_one_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("DATA:\n  BATCH_SIZE: [1\n")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line \d+.*— fix the file"):
        load_config(broken)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("TAG: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text — "):
        load_config(latin)
    with pytest.raises(ConfigError, match=r"^DATA is a group of keys, not a value — ") as err:
        load_config(IMAGE_CFG, ["DATA", "3"])
    assert "\n" not in str(err.value)


def test_bad_devices_are_user_errors():
    from stage1.common.distributed import resolve_device
    from stage1.common.errors import UserError

    with pytest.raises(UserError, match=r"DEVICE 'gpu' is not a device — give cuda, cuda:N, cpu"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match=r"CUDA is not available here — set DEVICE cpu"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
