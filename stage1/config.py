"""The Stage-1 configuration tree (YACS), shared by every phase.

Defaults live here, one comment per key; experiment YAML files hold only their changes and may
name parents with ``BASE: [...]`` (paths relative to the file). Command-line ``--opts KEY VALUE``
pairs come last. Unknown keys are errors that name the key.
"""

from __future__ import annotations

import difflib
import json
import os
import re
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
_C.TRAIN.LR_SCALE_BATCH = 512  # the 3 lr keys x BATCH_SIZE * world * ACCUMULATION / this (0: off)
_C.TRAIN.WARMUP_LR = 1e-6  # learning rate at the first step, at the reference batch
_C.TRAIN.MIN_LR = 1e-5  # learning rate at the end of the cosine decay, at the reference batch
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
        raise ConfigError(f"config file {path} does not exist — check the path given to --cfg/CFG")
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"BASE cycle: {chain} — remove one of these BASE entries")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text — save it as UTF-8") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML ({where}{problem}) — fix the file") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a mapping of config keys — see stage1/configs/")
    for base in data.pop("BASE", None) or []:
        if base:
            _merge_yaml(cfg, path.parent / base, (*seen, path))
    try:
        cfg.merge_from_other_cfg(CN(data))
    except (KeyError, AssertionError, ValueError) as err:
        raise _friendly(err, f"{path}: ") from err


def _lookup(cfg: CN, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


# numeric keys and the range each must lie in: (key, lowest, highest, lowest allowed itself)
RANGES = (
    ("DATA.NUM_SAMPLES", 0, None, True),
    ("DATA.BATCH_SIZE", 1, None, True),
    ("DATA.NUM_WORKERS", 0, None, True),
    ("DATA.IMG_SIZE", 1, None, True),
    ("DATA.PARQUET_BATCH_ROWS", 1, None, True),
    ("DATA.VAL_FRACTION", 0.0, 1.0, True),
    ("DISTILL.EMBED_DIM", 1, None, True),
    ("DISTILL.EMBED_SIZE", 1, None, True),
    ("DISTILL.TEXT_DIM", 1, None, True),
    ("DISTILL.VERIFY_SAMPLES", 0, None, True),
    ("DISTILL.PIXEL_WISE", 0.0, None, True),
    ("DISTILL.COSINE", 0.0, None, True),
    ("TRAIN.EPOCHS", 1, None, True),
    ("TRAIN.WARMUP_EPOCHS", 0, None, True),
    ("TRAIN.BASE_LR", 0.0, None, False),
    ("TRAIN.LR_SCALE_BATCH", 0, None, True),
    ("TRAIN.WARMUP_LR", 0.0, None, True),
    ("TRAIN.MIN_LR", 0.0, None, True),
    ("TRAIN.WEIGHT_DECAY", 0.0, None, True),
    ("TRAIN.LAYER_DECAY", 0.0, 1.0, False),
    ("TRAIN.CLIP_GRAD", 0.0, None, True),
    ("TRAIN.ACCUMULATION_STEPS", 1, None, True),
    ("TRAIN.SAVE_FREQ", 1, None, True),
    ("TRAIN.MAX_STEPS_PER_EPOCH", 0, None, True),
    ("LOG_EVERY", 1, None, True),
)


def _check_range(cfg: CN, key: str, low: float, high: float | None, low_ok: bool) -> None:
    value = _lookup(cfg, key)
    if (value >= low if low_ok else value > low) and (high is None or value <= high):
        return
    above = f">= {low}" if low_ok else f"> {low}"
    wanted = above if high is None else f"{above} and <= {high}"
    raise ConfigError(f"{key} = {value!r} is out of range — give a value {wanted}")


def validate(cfg: CN) -> None:
    """Check values that YACS' type check cannot; raise :class:`ConfigError`."""
    for key, allowed in CHOICES.items():
        if _lookup(cfg, key) not in allowed:
            raise ConfigError(
                f"{key} = {_lookup(cfg, key)!r} is not a known choice — choose one of "
                f"{list(allowed)}"
            )
    for key, low, high, low_ok in RANGES:
        _check_range(cfg, key, low, high, low_ok)
    for key in ("DATA.PIXEL_MEAN", "DATA.PIXEL_STD"):
        if len(_lookup(cfg, key)) != 3:
            raise ConfigError(f"{key} = {_lookup(cfg, key)} — give 3 values (R, G, B)")
    if min(cfg.DATA.PIXEL_STD) <= 0:
        raise ConfigError(f"DATA.PIXEL_STD = {cfg.DATA.PIXEL_STD} — every value must be > 0")
    if cfg.TRAIN.WARMUP_EPOCHS > cfg.TRAIN.EPOCHS:
        raise ConfigError(
            f"TRAIN.WARMUP_EPOCHS {cfg.TRAIN.WARMUP_EPOCHS} exceeds TRAIN.EPOCHS "
            f"{cfg.TRAIN.EPOCHS} — lower WARMUP_EPOCHS or raise EPOCHS"
        )
    if not 2 <= cfg.DISTILL.CONTEXT_LENGTH <= 32:
        raise ConfigError(
            f"DISTILL.CONTEXT_LENGTH = {cfg.DISTILL.CONTEXT_LENGTH}, but SAM3's text encoder "
            "holds 2..32 positions — give a value in that range (SAM3 uses 32)"
        )


def _dotted_keys(node: CN, prefix: str = "") -> list[str]:
    keys = []
    for name, value in node.items():
        dotted = f"{prefix}{name}"
        keys += _dotted_keys(value, dotted + ".") if isinstance(value, CN) else [dotted]
    return keys


_UNKNOWN = re.compile(r"Non-existent (?:config )?key: (\S+)")
_GROUP = re.compile(
    r"^Type mismatch \(<class 'yacs\.config\.CfgNode'>.*for config key: (\S+)$", re.S
)
_MISMATCH = re.compile(
    r"Type mismatch \(<class '(\w+)'> vs\. <class '(\w+)'>\) with values \((.*) vs\. (.*)\) "
    r"for config key: (\S+)"
)


_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "True or False",
    "list": "a list, e.g. [a, b]",
    "tuple": "a list, e.g. [a, b]",
}


def _friendly(err: Exception, where: str) -> ConfigError:
    """A YACS merge error as a one-line :class:`ConfigError` with a way out."""
    text = str(err.args[0] if err.args else err)
    if m := _UNKNOWN.search(text):
        key = m.group(1)
        close = difflib.get_close_matches(key, _dotted_keys(_C), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "see stage1/config.py for every key"
        return ConfigError(f"{where}unknown config key {key} — {hint}")
    if m := _GROUP.search(text):
        group = m.group(1)
        return ConfigError(
            f"{where}{group} is a group of keys, not a value — set one of its keys, e.g. "
            f"{_dotted_keys(_lookup(_C, group), group + '.')[0]}"
        )
    if m := _MISMATCH.search(text):
        want, _, default, value, key = m.groups()
        want = _TYPE_WORDS.get(want, f"a {want}")
        return ConfigError(
            f"{where}{key} = {value!r} has the wrong type — give {want} (default {default})"
        )
    return ConfigError(f"{where}{text}")


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
        raise ConfigError(
            f"--opts needs KEY VALUE pairs, got an odd list {opts} — give a value for every key"
        )
    try:
        cfg.merge_from_list(pairs)
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError, ValueError) as err:
        raise _friendly(err, "") from err
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
