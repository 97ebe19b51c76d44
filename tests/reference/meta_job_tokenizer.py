"""Oracle job ``tokenizer``: Meta's ``SimpleTokenizer`` on texts.

Job parameters: ``texts, context_lengths`` (and the optional ``bpe_path``). Returns
``tokens.{ctx}`` per context length.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from meta_oracle import require, resolve_bpe_path

PARAMS = ("texts", "context_lengths")


def run(meta: SimpleNamespace, job: dict[str, Any]) -> dict[str, Any]:
    """Tokenize ``texts`` with Meta's SimpleTokenizer at each of ``context_lengths``."""
    require(job, PARAMS)
    tokenizer = meta.SimpleTokenizer(bpe_path=resolve_bpe_path(job))
    texts = [str(t) for t in job["texts"]]
    return {
        f"tokens.{int(ctx)}": tokenizer(texts, context_length=int(ctx))
        for ctx in job["context_lengths"]
    }
