"""What a store holds: its constants, :class:`StoreSpec` (one record's layout and meta), the
store's errors, the :func:`source_digest` record header and how two specs are compared."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stage1.common.errors import UserError

FORMAT_NAME = "efficientsam3-embedding-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ENCODINGS = ("float16", "int8")
LEGACY_HEADER_BYTES = 4
DIGEST_BYTES = 8  # header bytes of a record that carries its source digest
SOURCE_DIGEST = "source-sha256-64"  # meta["record_header"]: the header is source_digest(text)
FP16_MAX = 65504.0
# must agree on re-creation ("teacher" by its identity fields: see teacher_identity)
MATCHED_META = ("teacher", "preprocessing", "context_length", "record_header")
TEACHER_IDENTITY = ("kind", "arch", "checkpoint_sha256", "precision")
EXPECTED_META = ("preprocessing", "context_length")  # checked by readers given `expected`


def source_digest(text: str) -> bytes:
    """The first :data:`DIGEST_BYTES` bytes of the SHA-256 of ``text`` in UTF-8: the record
    header of a :data:`SOURCE_DIGEST` store."""
    return hashlib.sha256(text.encode("utf-8")).digest()[:DIGEST_BYTES]


class StoreError(UserError):
    """The store cannot be used as asked (missing manifest, closed writer, ...)."""


class StoreMismatchError(StoreError):
    """A store's spec disagrees with the one expected (shape, encoding, preprocessing, ...)."""


class StoreCorruptError(StoreError):
    """The files on disk are inconsistent (duplicate keys, unreadable manifest, ...)."""


class InsufficientDiskError(StoreError):
    """The filesystem has less free space than the export needs."""


class Float16OverflowError(StoreError, OverflowError):
    """Values outside the float16 range were given to a float16 store."""


class DuplicateKeyError(StoreError, ValueError):
    """A key is written twice."""


@dataclass(frozen=True)
class StoreSpec:
    """What one record holds: ``shape`` (e.g. (1024, 72, 72) or (32, 256)), ``encoding``
    ("float16" or "int8"), ``header_bytes`` before each payload and free-form ``meta``
    (teacher checkpoint + sha256, arch, preprocessing, context_length, export precision)."""

    shape: tuple[int, ...]
    encoding: str = "float16"
    header_bytes: int = 0
    meta: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if not shape or min(shape) < 1:
            raise ValueError(
                f"record shape {shape} has no sizes or a size below 1 — give positive sizes, "
                "e.g. (1024, 72, 72) or (32, 256)"
            )
        if self.encoding not in ENCODINGS:
            raise ValueError(
                f"store encoding {self.encoding!r} is unknown — choose one of {ENCODINGS}"
            )
        if int(self.header_bytes) < 0:
            raise ValueError(f"header_bytes {self.header_bytes} is negative — give 0 or more")
        try:  # canonical JSON form, so that a spec equals itself after a manifest round trip
            meta = json.loads(json.dumps(dict(self.meta), sort_keys=True))
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"StoreSpec.meta is not JSON-serialisable ({err}) — use dicts, lists, "
                "strings and numbers"
            ) from err
        if meta.get("record_header") == SOURCE_DIGEST and int(self.header_bytes) != DIGEST_BYTES:
            raise ValueError(
                f"meta['record_header'] is {SOURCE_DIGEST!r} but header_bytes is "
                f"{self.header_bytes} — a source digest needs header_bytes={DIGEST_BYTES}"
            )
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "header_bytes", int(self.header_bytes))
        object.__setattr__(self, "meta", meta)

    @property
    def numel(self) -> int:
        """Values per record."""
        return int(np.prod(self.shape))

    @property
    def record_bytes(self) -> int:
        """Bytes per record on disk, header included."""
        if self.encoding == "int8":
            return self.header_bytes + 4 * self.shape[0] + self.numel
        return self.header_bytes + 2 * self.numel

    @property
    def dtype(self) -> np.dtype:
        """The dtype a read returns: float16 for float16 stores, float32 for int8."""
        return np.dtype(np.float16 if self.encoding == "float16" else np.float32)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``from_json`` inverts it)."""
        return {
            "shape": list(self.shape),
            "encoding": self.encoding,
            "header_bytes": self.header_bytes,
            "record_bytes": self.record_bytes,
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoreSpec:
        """Rebuild a spec from :meth:`to_json`'s dict."""
        return cls(
            shape=tuple(data["shape"]),
            encoding=data["encoding"],
            header_bytes=data.get("header_bytes", 0),
            meta=data.get("meta", {}),
        )


def legacy_spec(shape: Sequence[int]) -> StoreSpec:
    """The record layout of a public EfficientSAM3 store of ``shape``: float16 after a
    :data:`LEGACY_HEADER_BYTES`-byte header (an unused int32), no recorded meta."""
    return StoreSpec(
        shape=tuple(shape),
        encoding="float16",
        header_bytes=LEGACY_HEADER_BYTES,
        meta={"legacy": "public EfficientSAM3 store (no manifest, int32 header per record)"},
    )


def teacher_identity(teacher: Any) -> Any:
    """What names a teacher: with a recorded checkpoint hash, the :data:`TEACHER_IDENTITY`
    fields (not the path the checkpoint was read from); otherwise the whole record."""
    if isinstance(teacher, dict) and "checkpoint_sha256" in teacher:
        return {name: teacher.get(name) for name in TEACHER_IDENTITY}
    return teacher


def creation_differences(store: StoreSpec, other: StoreSpec) -> list[str]:
    """What ``other`` (an export's spec) disagrees with ``store`` on: shape, encoding, header
    bytes and the :data:`MATCHED_META` fields ("teacher" by :func:`teacher_identity`)."""
    diffs = []
    for name in ("shape", "encoding", "header_bytes"):
        if getattr(store, name) != getattr(other, name):
            diffs.append(
                f"{name}: store has {getattr(store, name)!r}, got {getattr(other, name)!r}"
            )
    for name in MATCHED_META:
        have, got = store.meta.get(name), other.meta.get(name)
        if name == "teacher":
            have, got = teacher_identity(have), teacher_identity(got)
        if have == got:
            continue
        if name == "teacher" and isinstance(have, dict) and isinstance(got, dict):
            diffs += [
                f"meta['teacher'][{k!r}]: store has {have.get(k)!r}, got {got.get(k)!r}"
                for k in sorted({*have, *got})
                if have.get(k) != got.get(k)
            ]
        else:
            diffs.append(f"meta[{name!r}]: store has {have!r}, got {got!r}")
    return diffs


def expected_differences(store: StoreSpec, expected: StoreSpec, legacy: bool) -> list[str]:
    """What a reader's ``expected`` spec disagrees on. Meta fields are compared when
    ``expected`` names them; legacy stores record no meta, so only shape/encoding count."""
    fields = [] if legacy else [f for f in EXPECTED_META if f in expected.meta]
    diffs = []
    for name in ("shape", "encoding"):
        if getattr(store, name) != getattr(expected, name):
            diffs.append(
                f"{name}: store has {getattr(store, name)!r}, expected {getattr(expected, name)!r}"
            )
    for name in fields:
        if store.meta.get(name) != expected.meta.get(name):
            diffs.append(
                f"meta[{name!r}]: store has {store.meta.get(name)!r}, expected "
                f"{expected.meta.get(name)!r}"
            )
    return diffs
