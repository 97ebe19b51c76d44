"""Training datasets: an input (image or caption tokens) paired with its stored teacher output."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from sam3.model.tokenizer import Sam3Tokenizer

from ..embedding_store import EmbeddingStore
from .sa1b import SA1BItem, load_rgb
from .transforms import ImageTransform, build_valid_mask


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
            raise RuntimeError(f"cannot read training image {item.image_path}: {err}") from err
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
