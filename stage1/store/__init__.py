"""The sharded key/value store of teacher embeddings: one fixed-size record per image or caption,
written once by the export and read by key during training.

Layout of a store folder::

    manifest.json          format version, StoreSpec (shape, encoding, header bytes, meta),
                           world size, creation time, record counts (after finalize_manifest)
    rank{R}-keys.txt       one key per line, each "\\n"-terminated, written by rank R only
    rank{R}-values.bin     fixed-size records back to back: record i <-> line i of the keys file

A record is its header (0 bytes for image stores; in text stores whose ``meta["record_header"]``
is :data:`SOURCE_DIGEST`, the :func:`source_digest` of its caption; an unused int32 in public
EfficientSAM3 stores), then its float16 or int8 payload (:mod:`~stage1.store.codec`). A writer
appends a batch's values, then its keys, so a crash leaves at most a torn tail, which the
rank's next :class:`StoreWriter` truncates and every reader ignores. Shard files are only ever
written under a manifest.

Modules: :mod:`~stage1.store.spec` (constants, :class:`StoreSpec`, errors),
:mod:`~stage1.store.codec` (records as bytes), :mod:`~stage1.store.manifest` (the folder),
:mod:`~stage1.store.writer`, :mod:`~stage1.store.reader`, :mod:`~stage1.store.verification`
and :mod:`~stage1.store.report` (checking a store), :mod:`~stage1.store.cli`
(``python -m stage1.store info|verify PATH``, or ``python -m stage1.embedding_store``).
"""

from stage1.store.codec import check_keys, decode_record, encode_records
from stage1.store.manifest import (
    check_disk_space,
    check_store_folder,
    create_store,
    existing_keys,
    finalize_manifest,
    format_bytes,
    load_manifest,
    open_spec,
)
from stage1.store.reader import EmbeddingStore
from stage1.store.report import VerifyReport
from stage1.store.spec import (
    DIGEST_BYTES,
    ENCODINGS,
    FORMAT_NAME,
    FORMAT_VERSION,
    FP16_MAX,
    LEGACY_HEADER_BYTES,
    MANIFEST,
    SOURCE_DIGEST,
    TEACHER_IDENTITY,
    DuplicateKeyError,
    Float16OverflowError,
    InsufficientDiskError,
    StoreCorruptError,
    StoreError,
    StoreMismatchError,
    StoreSpec,
    source_digest,
    teacher_identity,
)
from stage1.store.verification import verify
from stage1.store.writer import StoreWriter

__all__ = [
    "DIGEST_BYTES",
    "ENCODINGS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "FP16_MAX",
    "LEGACY_HEADER_BYTES",
    "MANIFEST",
    "SOURCE_DIGEST",
    "TEACHER_IDENTITY",
    "DuplicateKeyError",
    "EmbeddingStore",
    "Float16OverflowError",
    "InsufficientDiskError",
    "StoreCorruptError",
    "StoreError",
    "StoreMismatchError",
    "StoreSpec",
    "StoreWriter",
    "VerifyReport",
    "check_disk_space",
    "check_keys",
    "check_store_folder",
    "create_store",
    "decode_record",
    "encode_records",
    "existing_keys",
    "finalize_manifest",
    "format_bytes",
    "load_manifest",
    "open_spec",
    "source_digest",
    "teacher_identity",
    "verify",
]
