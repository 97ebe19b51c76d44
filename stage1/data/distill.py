"""Training datasets: an input (image or caption tokens) paired with its stored teacher output,
and the check that captions are the text a store's records were computed from."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from sam3.model.tokenizer import Sam3Tokenizer
from stage1.common.errors import UserError
from stage1.data.sa1b import SA1BItem, load_rgb
from stage1.data.transforms import ImageTransform, build_valid_mask
from stage1.store import DIGEST_BYTES, EmbeddingStore, source_digest

_DIGEST_CHUNK = 1 << 16  # captions whose digests are compared at a time (bounded memory)


class TrainDataError(UserError, ValueError):
    """Training data that does not go with its teacher store."""


def check_source_digests(
    pairs: Sequence[tuple[str, str]], store: EmbeddingStore, source: str = ""
) -> str | None:
    """Check that every ``(key, caption)`` is the text the store's record of ``key`` was
    computed from: its :func:`source_digest` equals the record's header. Raise
    :class:`TrainDataError` (how many differ, one example key) if not; return a warning for a
    store that records no digests, else ``None``. ``source``: where the captions are from."""
    if not store.has_source_digests:
        return (
            f"the text store {store.root} records no source digests (it was exported before "
            "they existed), so nothing checks that these captions are the ones its records were "
            "computed from — to have them checked, export a new store from them (another "
            "DISTILL.TEACHER_EMBED_PATH)"
        )
    bad, example = 0, None
    for start in range(0, len(pairs), _DIGEST_CHUNK):
        chunk = pairs[start : start + _DIGEST_CHUNK]
        stored = b"".join(store.get_headers([key for key, _ in chunk]))
        computed = b"".join(source_digest(caption) for _, caption in chunk)
        rows = len(chunk), DIGEST_BYTES
        differ = np.flatnonzero(
            (
                np.frombuffer(stored, np.uint8).reshape(rows)
                != np.frombuffer(computed, np.uint8).reshape(rows)
            ).any(axis=1)
        )
        bad += len(differ)
        if example is None and len(differ):
            example = chunk[differ[0]][0]
    if bad:
        where = f" under {source}" if source else ""
        raise TrainDataError(
            f"{bad} of {len(pairs)} captions{where} are not the text the store {store.root} was "
            f"exported from (their source digests differ, e.g. key {example!r}) — point "
            "DATA.DATA_PATH at the caption files the store was exported from, or re-export "
            "these captions into a new store (another DISTILL.TEACHER_EMBED_PATH: an export "
            "into this one skips the keys it holds)"
        )
    return None


class ImageDistillDataset(Dataset):
    """``{"image" [3,S,S], "valid" bool [G,G], "teacher" fp16 [C,G,G]}`` per SA-1B item."""

    def __init__(
        self, items: Sequence[SA1BItem], store: EmbeddingStore, transform: ImageTransform
    ) -> None:
        self.items = list(items)
        self.store = store
        self.transform = transform
        self.grid = store.spec.shape[-1]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.items[index]
        try:
            image, (h, w) = self.transform(load_rgb(item.image_path))
        except Exception as err:
            raise TrainDataError(
                f"cannot read training image {item.image_path} ({type(err).__name__}: {err}), "
                "although the export read it — restore it from the dataset, or move it out of "
                "DATA.DATA_PATH and start the run afresh"
            ) from err
        return {
            "image": image,
            "valid": build_valid_mask(h, w, self.transform.img_size, self.grid),
            "teacher": self.store.get_torch(item.key),
        }


class TextDistillDataset(Dataset):
    """``{"tokens" int64 [L], "valid" bool [L], "teacher" fp16 [L, 256]}`` per caption."""

    def __init__(
        self, pairs: Sequence[tuple[str, str]], store: EmbeddingStore, context_length: int
    ) -> None:
        self.pairs = list(pairs)
        self.store = store
        self.tokenizer = Sam3Tokenizer(context_length)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        key, caption = self.pairs[index]
        tokens = self.tokenizer(caption)[0]
        return {"tokens": tokens, "valid": tokens != 0, "teacher": self.store.get_torch(key)}
