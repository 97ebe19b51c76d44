"""What a merge checks about the SAM3 checkpoint it writes into, before anything is written.

- :func:`check_parts`: the checkpoint is SAM3's and holds the part each student replaces;
- :func:`check_fits`: each student's output has the shape that checkpoint's neck (vision: the
  channels of the first layer of every pyramid level, the token grid its trunk makes) or its
  heads (text: the feature width, the positions of its text encoder) take.

Every shape is read from the state dict's tensor headers (the file is memory-mapped), never from
the values.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from sam3.schema import (
    BACKBONE_PREFIX,
    DETECTOR_PREFIX,
    GEOMETRY_FROM_CONFIG,
    TEXT_PREFIX,
    VISION_STUDENT_PREFIX,
)
from sam3.schema import VISION_TRUNK_PREFIX as TRUNK
from stage1.common.errors import UserError

log = logging.getLogger("stage1.merge")

TARGET_PREFIX = {"image": VISION_STUDENT_PREFIX, "text": TEXT_PREFIX}  # where students go
REPLACE_PREFIX = {"image": TRUNK, "text": TEXT_PREFIX}  # teacher keys removed
NECKS = [BACKBONE_PREFIX + f"vision_backbone.{n}." for n in ("convs", "sam2_convs")]
# the first layer of a neck level, and the weight dimension that is its input channels
FIRST_LAYERS = (("dconv_2x2_0", 0), ("dconv_2x2", 0), ("conv_1x1", 1))
# tensors whose shape fixes the width the heads take from the text side, most direct first:
# SAM3's own resizer (its output), the encoder's attention over the prompt, the neck's output
TEXT_WIDTH_KEYS = (
    (TEXT_PREFIX + "resizer.weight", 0),
    ("detector.transformer.encoder.layers.0.cross_attn_image.in_proj_weight", 1),
    (NECKS[0] + "2.conv_1x1.weight", 0),
)
SAM3_TEXT_KEY = TEXT_PREFIX + "resizer.weight"  # present while the text encoder is SAM3's own
POSITIONS_KEY = TEXT_PREFIX + "encoder.positional_embedding"  # SAM3's [context, width] table
PATCH_KEY = TRUNK + "patch_embed.proj.weight"  # [width, 3, patch, patch]


class MergeError(UserError, ValueError):
    """Inputs that cannot be merged (wrong student, a checkpoint without the teacher part...)."""


def check_parts(sam3_state: Mapping[str, Tensor], kinds: Sequence[str], source: str) -> None:
    """Fail unless ``sam3_state`` is a SAM3 checkpoint holding the part each student replaces."""
    if not any(k.startswith(DETECTOR_PREFIX) for k in sam3_state):
        raise MergeError(
            f"{source} has no 'detector.*' keys, so it is not a SAM3 checkpoint — pass sam3.pt "
            "(or a file merged from it)"
        )
    for kind in kinds:
        part = REPLACE_PREFIX[kind]
        if not any(k.startswith(part) for k in sam3_state):
            raise MergeError(
                f"{source} has no keys under '{part}': the {kind} teacher part is missing, so "
                "the student would replace nothing — pass the full sam3.pt (or a merged file)"
            )


def neck_inputs(state: Mapping[str, Tensor]) -> list[tuple[str, tuple[int, ...], int]]:
    """``(key, shape, input channels)`` of the first layer of every neck level in ``state``."""
    levels: dict[str, dict[str, str]] = {}
    for key in state:
        neck = next((n for n in NECKS if key.startswith(n)), None)
        if neck and key.endswith(".weight"):
            level, _, layer = key[len(neck) : -len(".weight")].partition(".")
            levels.setdefault(neck + level, {})[layer] = key
    found = []
    for _, layers in sorted(levels.items()):
        for layer, dim in FIRST_LAYERS:
            if layer in layers:
                shape = tuple(state[layers[layer]].shape)
                found.append((layers[layer], shape, shape[dim]))
                break
    return found


def trunk_grid(
    state: Mapping[str, Tensor], previous_image: dict | None
) -> tuple[int, int | None, str] | None:
    """``(side, pixels, how it is known)`` of the token map the checkpoint's trunk makes;
    ``None`` when it cannot be told. A SAM3 trunk's largest RoPE table covers its whole
    ``side x side`` map (its patch size gives the pixels); a merged file's earlier vision student
    says its ``embed_size`` and ``img_size``."""
    tables = [k for k in state if k.startswith(TRUNK + "blocks.") and k.endswith(".freqs_cis")]
    if tables:
        key = max(tables, key=lambda k: state[k].shape[0])
        rows = state[key].shape[0]
        side = math.isqrt(rows)
        if side * side == rows:
            pixels = side * state[PATCH_KEY].shape[-1] if PATCH_KEY in state else None
            at = f" ({pixels} px)" if pixels else ""
            return side, pixels, f"makes {side} x {side} maps{at} ({key}: {list(state[key].shape)})"
    if previous_image and previous_image.get("embed_size"):
        side, pixels = int(previous_image["embed_size"]), previous_image.get("img_size")
        at = f" ({pixels} px)" if pixels else ""
        name = previous_image.get("name")
        return side, pixels, f"holds the {name} student, which makes {side} x {side} maps{at}"
    return None


def _student_says(record: dict[str, Any], what: str) -> str:
    """``"<checkpoint> (<name>, <what>)"``, noting when the geometry is assumed."""
    known = record["geometry_from"] == GEOMETRY_FROM_CONFIG
    assumed = "" if known else ", assumed: no training config"
    return f"{record['checkpoint']} ({record['name']}, {what}{assumed})"


def _check_vision(state: Mapping[str, Tensor], record: dict, source: str, previous: dict) -> None:
    dim, size = record["embed_dim"], record["embed_size"]
    inputs = neck_inputs(state)
    if not inputs:
        raise MergeError(
            f"{source} has no neck weights under '{NECKS[0]}', so the merged model could not be "
            "built — pass the full sam3.pt (or a file merged from it)"
        )
    student = _student_says(record, f"DISTILL.EMBED_DIM {dim}, DISTILL.EMBED_SIZE {size}")
    for key, shape, channels in inputs:
        if channels != dim:
            raise MergeError(
                f"{student} makes [{dim}, {size}, {size}] maps, but the neck of {source} takes "
                f"{channels} channels ({key}: {list(shape)}) — distil the student with "
                f"DISTILL.EMBED_DIM {channels} from this checkpoint's embeddings, or merge into "
                "the SAM3 checkpoint it was distilled from"
            )
    grid = trunk_grid(state, previous.get("image"))
    if grid and grid[0] != size:
        side, pixels, how = grid
        keys = f"DISTILL.EMBED_SIZE {side}" + (f", DATA.IMG_SIZE {pixels}" if pixels else "")
        raise MergeError(
            f"{student} makes [{dim}, {size}, {size}] maps, but {source} {how} — distil the "
            f"student with {keys} from this checkpoint's embeddings, or merge into the SAM3 "
            "checkpoint it was distilled from"
        )


def _check_text(state: Mapping[str, Tensor], record: dict, source: str) -> None:
    width, context = record["d_model"], record["context_length"]
    own_text = SAM3_TEXT_KEY in state  # else a student sits there; its tensors say nothing
    for key, dim in TEXT_WIDTH_KEYS:
        if key not in state or (key.startswith(TEXT_PREFIX) and not own_text):
            continue
        shape = list(state[key].shape)
        if shape[dim] != width:
            student = _student_says(record, f"DISTILL.TEXT_DIM {width}")
            raise MergeError(
                f"{student} gives {width}-wide text features, but the heads of {source} take "
                f"{shape[dim]}-wide features ({key}: {shape}) — distil the student with "
                f"DISTILL.TEXT_DIM {shape[dim]} from this checkpoint's embeddings, or merge into "
                "the SAM3 checkpoint it was distilled from"
            )
        break
    if not own_text or POSITIONS_KEY not in state:
        return
    shape = list(state[POSITIONS_KEY].shape)
    if context > shape[0]:
        student = _student_says(record, f"DISTILL.CONTEXT_LENGTH {context}")
        raise MergeError(
            f"{student} encodes {context} tokens per caption, but the text encoder of {source} "
            f"holds {shape[0]} positions ({POSITIONS_KEY}: {shape}), so it cannot have been its "
            f"teacher — merge into the SAM3 checkpoint the student was distilled from, or "
            f"distil with DISTILL.CONTEXT_LENGTH {shape[0]} from this checkpoint's embeddings"
        )
    if context < shape[0]:
        log.warning(
            "%s reads %d tokens per caption where SAM3's text encoder reads %d: longer captions "
            "are cut after %d tokens in the merged model",
            record["name"],
            context,
            shape[0],
            context,
        )


def check_fits(
    sam3_state: Mapping[str, Tensor],
    kind: str,
    record: dict[str, Any],
    source: str,
    previous: dict[str, dict],
) -> None:
    """Fail unless a ``kind`` student (``record``: its geometry, as meta records it) fits what
    the neck or the heads of ``sam3_state`` take. ``previous``: the student records of a merged
    checkpoint (``{}`` for a plain one).

    Raises:
        MergeError: naming the student's shape, the checkpoint's (the key and its shape) and
            what to do.
    """
    if kind == "image":
        _check_vision(sam3_state, record, source, previous)
    else:
        _check_text(sam3_state, record, source)
