"""What the export's tests share: the spec's teacher configs, an entry point's command line, a
store's values by key, and a stand-in that refuses to hash or build the teacher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import stage1.export.loop
from stage1.store import EmbeddingStore

IMAGE_CFG = "stage1/configs/teacher/sam_vit_huge_sa1b.yaml"
TEXT_CFG = "stage1/configs/teacher/sam_text_teacher.yaml"


def export_argv(cfg: str, data: Path, out: Path, *opts: str) -> list[str]:
    """An export entry point's arguments: ``cfg`` on ``data`` into ``out``, then ``--opts``."""
    return ["--cfg", cfg, "--data-path", str(data), "--output", str(out), "--opts", *opts]


def store_values(root: Path) -> dict[str, bytes]:
    """key -> the bytes of its stored values (the record without its header)."""
    store = EmbeddingStore(root)
    keys = store.keys()
    return {k: np.ascontiguousarray(store.get(k)).tobytes() for k in keys}


class TeacherLoaded(Exception):
    """Raised by the stand-ins of the teacher's hashing and loading."""


def no_teacher(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make hashing the teacher checkpoint or building the teacher raise :class:`TeacherLoaded`
    (patched where the export loop looks them up)."""

    def refuse(*args, **kwargs):
        raise TeacherLoaded

    monkeypatch.setattr(stage1.export.loop, "Teacher", refuse)
    monkeypatch.setattr(stage1.export.loop, "file_sha256", refuse)
