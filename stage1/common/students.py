"""From a resolved config to the student it describes: its canonical name and the arguments
:func:`sam3.backbones.build_student` takes. Training, the merge and the quickstart build
students only through here, so the three always agree on a student's geometry.
"""

from __future__ import annotations

from typing import Any

import yaml
from torch import nn
from yacs.config import CfgNode

from sam3.backbones import UnknownStudentError, WeightFileError, build_student, get_student
from stage1.common.config import ConfigError, get_default_config

# the entry point that trains each kind of student
TRAIN_ENTRY = {"image": "train_image_encoder_stage1.py", "text": "train_text_encoder_stage1.py"}


def student_name(cfg: CfgNode, kind: str) -> str:
    """The canonical name of the student ``MODEL.BACKBONE`` names; :class:`ConfigError` if it
    names none, or a student of the other kind (``kind``: ``"image"`` or ``"text"``)."""
    name = cfg.MODEL.BACKBONE
    try:
        info = get_student(name)
    except UnknownStudentError as err:
        raise ConfigError(f"MODEL.BACKBONE: {err} — set MODEL.BACKBONE to one of them") from err
    if info.kind != kind:
        raise ConfigError(
            f"MODEL.BACKBONE {name!r} is a {info.kind} student, but this entry point trains "
            f"{kind} students — train it with stage1/{TRAIN_ENTRY[info.kind]}, or name "
            f"{'an' if kind == 'image' else 'a'} {kind} student"
        )
    return info.name


def student_build_args(cfg: CfgNode, kind: str) -> dict[str, Any]:
    """The geometry arguments of :func:`~sam3.backbones.build_student` for a ``kind`` student
    trained with ``cfg`` (no pretrained weights: see :func:`build_configured_student`)."""
    if kind == "image":
        return {
            "embed_dim": int(cfg.DISTILL.EMBED_DIM),
            "embed_size": int(cfg.DISTILL.EMBED_SIZE),
            "img_size": int(cfg.DATA.IMG_SIZE),
        }
    return {
        "context_length": int(cfg.DISTILL.CONTEXT_LENGTH),
        "d_model": int(cfg.DISTILL.TEXT_DIM),
        "mask_padding": bool(cfg.DISTILL.MASK_PAD_TOKENS),
    }


def build_configured_student(cfg: CfgNode, kind: str, pretrained: bool = True) -> nn.Module:
    """The student ``cfg`` names, on the CPU, from ``MODEL.PRETRAINED`` when ``pretrained``
    (else, and when it is ``""``, with random weights); :class:`ConfigError` for a weight file
    that does not fit the student."""
    name = student_name(cfg, kind)
    path = cfg.MODEL.PRETRAINED if pretrained else ""
    try:
        return build_student(name, **student_build_args(cfg, kind), pretrained_path=path)
    except WeightFileError as err:
        raise ConfigError(
            f'MODEL.PRETRAINED {err} — give a weight file of the {name} student, or "" to '
            "start from random weights"
        ) from err


def config_from_yaml(text: str) -> CfgNode:
    """The config a checkpoint recorded (``cfg.dump()``), over today's defaults, frozen; keys
    this version no longer knows are an error that names them."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"the recorded config is not YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError("the recorded config is not a mapping of config keys")
    cfg = get_default_config()
    try:
        cfg.merge_from_other_cfg(CfgNode(data))
    except (KeyError, AssertionError, ValueError) as err:
        raise ConfigError(f"the recorded config does not fit this version's keys: {err}") from err
    cfg.freeze()
    return cfg
