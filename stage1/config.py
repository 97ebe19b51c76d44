"""The Stage-1 configuration tree (YACS), shared by every phase.

Defaults live here, one comment per key; experiment YAML files hold only their changes and may
name parents with ``BASE: [...]`` (paths relative to the file). Command-line ``--opts KEY VALUE``
pairs come last. Unknown keys are errors that name the key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from yacs.config import CfgNode as CN

from .errors import UserError

_C = CN()
_C.BASE = [""]  # parent YAML files, merged first (paths relative to the YAML)

# ----------------------------------------------------------------------------- data
_C.DATA = CN()
_C.DATA.DATA_PATH = "data/sa-1b"  # dataset root (SA-1B layout, or a folder of parquet files)
_C.DATA.DATASET = "sa1b"  # which dataset: "sa1b" (images) or "recap_datacomp" (captions)
_C.DATA.SPLITS = ["train", "val"]  # SA-1B splits to export (training validates on "val")
_C.DATA.NUM_SAMPLES = 0  # use only the first N items of each split in sorted order (0 = all)
_C.DATA.BATCH_SIZE = 8  # images / captions per step and per process
_C.DATA.NUM_WORKERS = 4  # DataLoader worker processes per rank
_C.DATA.PIN_MEMORY = True  # page-locked host batches (only used with CUDA)
_C.DATA.IMG_SIZE = 1008  # network input side in pixels (SAM3: 1008)
_C.DATA.RESIZE_MODE = "pad"  # "pad": longest side to IMG_SIZE + pad; "squash": both sides
_C.DATA.PIXEL_MEAN = [0.5, 0.5, 0.5]  # normalisation mean on [0, 1] RGB (SAM3's)
_C.DATA.PIXEL_STD = [0.5, 0.5, 0.5]  # normalisation std on [0, 1] RGB (SAM3's)
_C.DATA.CAPTION_COLUMN = "re_caption"  # Recap-DataComp column holding the caption
_C.DATA.KEY_COLUMN = "key"  # column holding a unique id (missing: a hash of the caption)
_C.DATA.PARQUET_BATCH_ROWS = 8192  # rows read from parquet at a time (bounded memory)
_C.DATA.TRAIN_SPLIT = "train"  # SA-1B split a vision student trains on
_C.DATA.VAL_SPLIT = "val"  # SA-1B split validated on each epoch ("" = no validation)
_C.DATA.VAL_FRACTION = 0.01  # captions held out for validation, chosen by a hash of the key

# ----------------------------------------------------------------------------- model
_C.MODEL = CN()
_C.MODEL.RESUME = "sam3_checkpoints/sam3.pt"  # SAM3 checkpoint the teacher is loaded from
_C.MODEL.TEACHER_ARCH = "sam3"  # teacher architecture: "sam3" or "sam3_tiny" (smoke runs)
_C.MODEL.ALLOW_RANDOM_TEACHER = False  # opt-in: random teacher weights when RESUME is empty
_C.MODEL.BACKBONE = ""  # student name (phase 2)
_C.MODEL.PRETRAINED = ""  # local weight file to initialise the student from (phase 2)

# ----------------------------------------------------------------------------- distillation
_C.DISTILL = CN()
_C.DISTILL.TEACHER_EMBED_PATH = ""  # embedding store folder ("" = OUTPUT/embeddings)
# True: train on a public EfficientSAM3 store (no manifest): record shape from EMBED_DIM/EMBED_SIZE
# or CONTEXT_LENGTH/TEXT_DIM; setting it confirms the store was made with this config's DATA.*
_C.DISTILL.ACCEPT_LEGACY_STORE = False
_C.DISTILL.EMBED_DIM = 1024  # channels of a stored image embedding (trunk width)
_C.DISTILL.EMBED_SIZE = 72  # side of a stored image embedding (IMG_SIZE / 14)
_C.DISTILL.TEXT_DIM = 256  # width of a stored text embedding (after SAM3's resizer)
_C.DISTILL.CONTEXT_LENGTH = 32  # tokens per caption in the text store (SAM3: 32)
_C.DISTILL.STORE_DTYPE = "float16"  # store encoding: "float16" or "int8" (per-channel scale)
_C.DISTILL.EXPORT_PRECISION = "fp32"  # teacher precision during export: "fp32" or "bf16"
_C.DISTILL.FORCE = False  # export even when the disk looks too small for the store
_C.DISTILL.VERIFY_SAMPLES = 8  # records recomputed with the teacher by --check-saved-embed
_C.DISTILL.PIXEL_WISE = 1.0  # weight of the masked MSE term of the loss
_C.DISTILL.COSINE = 1.0  # weight of the masked (1 - cosine) term of the loss
_C.DISTILL.MSE_REDUCTION = "sum_channels"  # MSE per cell: "sum_channels" (published) or "mean"
_C.DISTILL.MASK_PAD_TOKENS = True  # text: padding tokens ignored by the loss and attention

# ----------------------------------------------------------------------------- training
_C.TRAIN = CN()
_C.TRAIN.EPOCHS = 50  # passes over the training split
_C.TRAIN.WARMUP_EPOCHS = 5  # linear warm-up length (per optimizer step, in epochs)
_C.TRAIN.BASE_LR = 1e-3  # peak learning rate at the reference batch LR_SCALE_BATCH
_C.TRAIN.LR_SCALE_BATCH = 512  # lr = BASE_LR * BATCH_SIZE * world * ACCUMULATION / this (0: off)
_C.TRAIN.WARMUP_LR = 1e-6  # learning rate at the first step
_C.TRAIN.MIN_LR = 1e-5  # learning rate at the end of the cosine decay
_C.TRAIN.WEIGHT_DECAY = 0.01  # AdamW weight decay (never on norms, biases, embeddings' 1-D)
_C.TRAIN.LAYER_DECAY = 1.0  # layer-wise lr decay factor for timm students (1.0 = off)
_C.TRAIN.CLIP_GRAD = 5.0  # gradient-norm clip (0 = off)
_C.TRAIN.ACCUMULATION_STEPS = 1  # micro-batches per optimizer step
_C.TRAIN.AMP = "auto"  # "auto" (bf16 on CPU, fp16 + scaler on CUDA), "bf16", "fp16", "off"
_C.TRAIN.AUTO_RESUME = True  # continue from the newest ckpt_epoch_N.pth in OUTPUT
_C.TRAIN.FRESH_START = (
    ""  # AUTO_RESUME off, OUTPUT holds checkpoints: "move", "delete" ("" refuses)
)
_C.TRAIN.SAVE_FREQ = 1  # epochs between checkpoints (the last epoch is always saved)
_C.TRAIN.MAX_STEPS_PER_EPOCH = 0  # cap on steps per epoch, for smoke runs (0 = full epoch)

# ----------------------------------------------------------------------------- misc
_C.OUTPUT = "output"  # run folder: config.json, logs, embeddings, checkpoints
_C.TAG = "default"  # free-form run name, recorded in config.json and logs
_C.SEED = 0  # base random seed (each rank adds its rank)
_C.DEVICE = ""  # "cuda", "cpu", "cuda:1"...; "" = cuda when available, else cpu
_C.LOG_EVERY = 20  # steps between progress lines in the log file

CHOICES = {
    "DATA.DATASET": ("sa1b", "recap_datacomp"),
    "DATA.RESIZE_MODE": ("pad", "squash"),
    "MODEL.TEACHER_ARCH": ("sam3", "sam3_tiny"),
    "DISTILL.STORE_DTYPE": ("float16", "int8"),
    "DISTILL.EXPORT_PRECISION": ("fp32", "bf16"),
    "DISTILL.MSE_REDUCTION": ("sum_channels", "mean"),
    "TRAIN.AMP": ("auto", "bf16", "fp16", "off"),
    "TRAIN.FRESH_START": ("", "move", "delete"),
}


class ConfigError(UserError, ValueError):
    """A configuration that cannot be used (unknown key, bad value, missing file)."""


def get_default_config() -> CN:
    """A fresh, mutable copy of the defaults."""
    return _C.clone()


def _merge_yaml(cfg: CN, path: Path, seen: tuple[Path, ...] = ()) -> None:
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path in seen:
        raise ConfigError(f"BASE cycle: {' -> '.join(str(p) for p in (*seen, path))}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys")
    for base in data.pop("BASE", None) or []:
        if base:
            _merge_yaml(cfg, path.parent / base, (*seen, path))
    try:
        cfg.merge_from_other_cfg(CN(data))
    except KeyError as err:
        raise ConfigError(f"{path}: {err.args[0]}") from err


def _lookup(cfg: CN, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def validate(cfg: CN) -> None:
    """Check values that YACS' type check cannot; raise :class:`ConfigError`."""
    for key, allowed in CHOICES.items():
        if _lookup(cfg, key) not in allowed:
            raise ConfigError(f"{key} = {_lookup(cfg, key)!r}; choose one of {list(allowed)}")
    if cfg.DATA.BATCH_SIZE < 1 or cfg.DATA.NUM_WORKERS < 0:
        raise ConfigError("DATA.BATCH_SIZE must be >= 1 and DATA.NUM_WORKERS >= 0")
    if len(cfg.DATA.PIXEL_MEAN) != 3 or len(cfg.DATA.PIXEL_STD) != 3:
        raise ConfigError("DATA.PIXEL_MEAN and DATA.PIXEL_STD need 3 values (RGB)")
    if cfg.TRAIN.ACCUMULATION_STEPS < 1 or cfg.TRAIN.WARMUP_EPOCHS > cfg.TRAIN.EPOCHS:
        raise ConfigError("TRAIN.ACCUMULATION_STEPS must be >= 1 and WARMUP_EPOCHS <= EPOCHS")
    if not 2 <= cfg.DISTILL.CONTEXT_LENGTH <= 32:
        raise ConfigError(
            f"DISTILL.CONTEXT_LENGTH = {cfg.DISTILL.CONTEXT_LENGTH}; SAM3's text encoder holds "
            "2..32 positions"
        )


def load_config(
    cfg_file: str | os.PathLike | None = None,
    opts: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> CN:
    """Defaults <- ``cfg_file`` (with its BASE chain) <- ``overrides`` <- ``opts``; frozen.

    ``overrides`` maps dotted keys to values (from named CLI flags); ``opts`` is the flat
    ``KEY VALUE ...`` list of ``--opts``. ``DISTILL.TEACHER_EMBED_PATH`` defaults to
    ``OUTPUT/embeddings``.
    """
    cfg = get_default_config()
    if cfg_file:
        _merge_yaml(cfg, Path(cfg_file))
    pairs: list[Any] = []
    for key, value in (overrides or {}).items():
        if value is not None:
            pairs += [key, value]
    opts = list(opts or [])
    if len(opts) % 2:
        raise ConfigError(f"--opts needs KEY VALUE pairs; got an odd list: {opts}")
    try:
        cfg.merge_from_list(pairs)
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError, ValueError) as err:
        raise ConfigError(f"bad override: {err}") from err
    if not cfg.DISTILL.TEACHER_EMBED_PATH:
        cfg.DISTILL.TEACHER_EMBED_PATH = str(Path(cfg.OUTPUT) / "embeddings")
    validate(cfg)
    cfg.freeze()
    return cfg


def to_dict(cfg: CN) -> dict[str, Any]:
    """The config as plain Python containers (for JSON)."""
    if isinstance(cfg, CN):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def dump_json(cfg: CN, path: str | os.PathLike) -> None:
    """Write the resolved config as JSON (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
