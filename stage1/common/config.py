"""Loading the Stage-1 configuration (YACS), shared by every phase, and checking its values.

The defaults, one comment per key, are in :mod:`stage1.common.defaults`; experiment YAML files
hold only their changes and may name parents with ``BASE: [...]`` (paths relative to the file).
Command-line ``--opts KEY VALUE`` pairs come last. Unknown keys are errors that name the key.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml
from yacs.config import CfgNode as CN

from stage1.common.defaults import CHOICES, DATASET_KINDS, RANGES, get_default_config
from stage1.common.errors import UserError

__all__ = [
    "ConfigError",
    "dump_json",
    "get_default_config",
    "load_config",
    "resolve_dataset",
    "to_dict",
    "validate",
]


class ConfigError(UserError, ValueError):
    """A configuration that cannot be used (unknown key, bad value, missing file)."""


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
    defaults = get_default_config()
    if m := _UNKNOWN.search(text):
        key = m.group(1)
        close = difflib.get_close_matches(key, _dotted_keys(defaults), n=1, cutoff=0.6)
        hint = (
            f"did you mean {close[0]}?" if close else "see stage1/common/defaults.py for every key"
        )
        return ConfigError(f"{where}unknown config key {key} — {hint}")
    if m := _GROUP.search(text):
        group = m.group(1)
        return ConfigError(
            f"{where}{group} is a group of keys, not a value — set one of its keys, e.g. "
            f"{_dotted_keys(_lookup(defaults, group), group + '.')[0]}"
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
    """Write the resolved config as JSON, atomically (its folder is created if need be)."""
    from sam3.files import write_json_atomic  # imports torch: only when a file is written

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, to_dict(cfg), sort_keys=True)


def resolve_dataset(cfg: CN, kind: str, entry_points: dict[str, str]) -> str:
    """The dataset ``DATA.DATASET`` names for a run of a ``kind`` ("image" or "text") entry
    point; ``""`` is the kind's own. :class:`ConfigError` when it is a dataset of the other kind
    (``entry_points`` maps each kind to the entry point that works on its datasets, for the hint).
    """
    own = next(name for name, of in DATASET_KINDS.items() if of == kind)
    name = cfg.DATA.DATASET or own
    other = DATASET_KINDS[name]
    if other != kind:
        raise ConfigError(
            f"DATA.DATASET {name} holds {other} data, but this entry point works on {kind} data "
            f'— set DATA.DATASET {own} (or "" for this entry point\'s own), or run '
            f"stage1/{entry_points[other]} on {name}"
        )
    return name
