"""SAM3's tokenizer: CLIP byte-level BPE, lower-cased, ``[sot] + bpe + [eot]`` zero-padded.

SAM3's ``SimpleTokenizer`` produces the same ids as open_clip's (same BPE file, cleaning and
truncation rule), so this wraps open_clip's with SAM3's context length and names its special
ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import torch
from open_clip.tokenizer import SimpleTokenizer

SOT_TOKEN = 49406  # <start_of_text>
EOT_TOKEN = 49407  # <end_of_text>
PAD_TOKEN = 0  # padding id (also the byte token "!"); the padding mask is ``ids == 0``


@cache
def _bpe_tokenizer() -> SimpleTokenizer:
    return SimpleTokenizer()


class Sam3Tokenizer:
    """Callable ``texts -> LongTensor [N, context_length]``; too-long texts end in ``eot``."""

    def __init__(self, context_length: int = 32):
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (sot + eot), got {context_length}")
        self.context_length = context_length
        self.vocab_size = len(_bpe_tokenizer().encoder)

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None
    ) -> torch.Tensor:
        """Tokenize one string or a list of strings."""
        if isinstance(texts, str):
            texts = [texts]
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"captions must be strings; item {bad[0]} is {type(texts[bad[0]])}")
        return _bpe_tokenizer()(list(texts), context_length=context_length or self.context_length)
