"""Phase 1's checks: each mistake is one clear error that says what to do, found before the
teacher is hashed or built, and a run that fails them leaves nothing behind."""

from __future__ import annotations

import json
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

import stage1.export.loop
from stage1 import save_embedding_image_stage1 as export_image
from stage1 import save_embedding_text_stage1 as export_text
from stage1.common.config import ConfigError
from stage1.common.errors import UserError
from stage1.data.errors import DataError, DataNotFoundError
from stage1.export.checks import ExportConfigError
from stage1.export.teachers import TeacherCheckpointError, TeacherError
from stage1.store import EmbeddingStore, StoreError, StoreMismatchError, StoreSpec

from helpers.data import TINY_TEACHER, make_recap, make_sa1b
from helpers.export import (
    IMAGE_CFG,
    TEXT_CFG,
    TeacherLoaded,
    export_argv,
    no_teacher,
    store_values,
)

Usage = namedtuple("Usage", "total used free")  # what shutil.disk_usage returns


def _full_disk(path: str) -> Usage:
    return Usage(10**6, 10**6 - 1000, 1000)


def test_missing_dataset_folder_is_a_clear_error(tmp_path):
    argv = export_argv(IMAGE_CFG, tmp_path / "sa1b", tmp_path / "o", *TINY_TEACHER)
    with pytest.raises(DataNotFoundError, match="sa1b"):
        export_image.main(argv)


def test_missing_checkpoint_says_where_to_get_it(tmp_path):
    data = make_sa1b(tmp_path / "sa1b")
    argv = export_argv(IMAGE_CFG, data, tmp_path / "o", "MODEL.RESUME", str(tmp_path / "sam3.pt"))
    with pytest.raises(TeacherCheckpointError, match="huggingface.co/facebook/sam3"):
        export_image.main(argv)


def test_random_teacher_needs_an_explicit_opt_in(tmp_path):
    data = make_sa1b(tmp_path / "sa1b")
    with pytest.raises(TeacherError, match="ALLOW_RANDOM_TEACHER"):
        export_image.main(export_argv(IMAGE_CFG, data, tmp_path / "o", "MODEL.RESUME", ""))


def test_wrong_caption_column_and_empty_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = make_recap(tmp_path / "recap")
    argv = export_argv(TEXT_CFG, data, tmp_path / "o", *TINY_TEACHER)
    with pytest.raises(DataError, match="no caption column 'recaption'"):
        export_text.main([*argv, "DATA.CAPTION_COLUMN", "recaption"])
    empty = tmp_path / "empty"
    empty.mkdir()
    pq.write_table(
        pa.table({"key": pa.array([], pa.string()), "re_caption": pa.array([], pa.string())}),
        empty / "a.parquet",
    )
    with pytest.raises(DataNotFoundError, match="no usable caption"):
        export_text.main(export_argv(TEXT_CFG, empty, tmp_path / "o2", *TINY_TEACHER))


def test_store_of_another_shape_or_teacher_is_refused(tmp_path, monkeypatch):
    data = make_sa1b(tmp_path / "sa1b")
    out = tmp_path / "out"
    argv = export_argv(IMAGE_CFG, data, out, *TINY_TEACHER)
    export_image.main(argv)
    store = out / "embeddings"
    saved = store_values(store)
    with monkeypatch.context() as patch:  # every refusal comes before the teacher is loaded
        no_teacher(patch)
        with pytest.raises(StoreMismatchError, match="preprocessing"):
            export_image.main([*argv, "DATA.RESIZE_MODE", "squash"])
        weights = tmp_path / "sam3.pt"
        weights.write_bytes(b"another teacher")
        with pytest.raises(StoreMismatchError, match="the store's is random"):
            export_image.main([*argv, "MODEL.RESUME", str(weights)])
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["spec"]["meta"]["teacher"]["checkpoint_sha256"] = "0" * 64
    (store / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(stage1.export.loop, "Teacher", lambda *a, **k: pytest.fail("teacher built"))
    with pytest.raises(StoreMismatchError, match="checkpoint_sha256: store has '0000"):
        export_image.main([*argv, "MODEL.RESUME", str(weights)])  # hashed, then refused
    with pytest.raises(StoreMismatchError, match="shape"):
        EmbeddingStore(store, expected=StoreSpec(shape=(1024, 72, 72)))
    assert store_values(store) == saved  # nothing lost
    shards = {p.name: p.read_bytes() for p in store.glob("rank*")}
    (store / "manifest.json").unlink()  # shards without a manifest are never written to
    with pytest.raises(StoreError, match="but no manifest.json"):
        export_image.main([*argv, "DISTILL.STORE_DTYPE", "int8"])
    assert {p.name: p.read_bytes() for p in store.glob("*")} == shards


def test_teacher_and_store_shape_must_agree(tmp_path):
    data = make_sa1b(tmp_path / "sa1b")
    argv = export_argv(IMAGE_CFG, data, tmp_path / "o", *TINY_TEACHER, "DISTILL.EMBED_DIM", "1024")
    with pytest.raises(ExportConfigError, match="DISTILL.EMBED_DIM 64"):
        export_image.main(argv)


# ----------------------------------------------------------------------------- checks first


def _bad_output(tmp_path: Path) -> dict:
    (tmp_path / "out").write_text("a file")
    return {"match": "is a file, not a folder"}


def _other_dataset(tmp_path: Path) -> dict:
    return {
        "opts": ["DATA.DATASET", "recap_datacomp"],
        "match": "DATA.DATASET recap_datacomp holds text data",
        "error": ConfigError,
    }


def _bad_data(tmp_path: Path) -> dict:
    return {"data": tmp_path / "nowhere", "match": "DATA.DATA_PATH"}


def _no_parquet(tmp_path: Path) -> dict:
    (tmp_path / "recap").mkdir()
    return {"kind": "text", "data": tmp_path / "recap", "match": r"no \*\.parquet"}


def _bad_shape(tmp_path: Path) -> dict:
    return {"opts": ["DISTILL.EMBED_DIM", "1024"], "match": "set DISTILL.EMBED_DIM 64"}


def _bad_size(tmp_path: Path) -> dict:
    return {"opts": ["DATA.IMG_SIZE", "30"], "match": "set DATA.IMG_SIZE 28"}


def _shards_without_manifest(tmp_path: Path) -> dict:
    store = tmp_path / "store"
    store.mkdir()
    (store / "rank0-keys.txt").write_text("sa_1\n")
    (store / "rank0-values.bin").write_bytes(bytes(8196))
    return {"opts": ["DISTILL.TEACHER_EMBED_PATH", str(store)], "match": "--legacy-shape"}


def _no_space(tmp_path: Path, monkeypatch) -> dict:
    monkeypatch.setattr(shutil, "disk_usage", _full_disk)
    return {"match": "DISTILL.FORCE True"}


CASES = [_bad_output, _other_dataset, _bad_data, _no_parquet, _bad_shape, _bad_size]
CASES += [_shards_without_manifest]


@pytest.mark.parametrize("case", [*CASES, _no_space])
def test_failed_checks_leave_nothing_and_load_no_teacher(tmp_path, monkeypatch, case):
    """Each mistake is found before the checkpoint is hashed and the teacher built, and the
    run leaves no folder, log, config.json or store behind."""
    weights = tmp_path / "sam3.pt"
    weights.write_bytes(b"not hashed")
    args = case(tmp_path, monkeypatch) if case is _no_space else case(tmp_path)
    kind = args.get("kind", "image")
    data = args.get("data") or (
        make_recap(tmp_path / "recap") if kind == "text" else make_sa1b(tmp_path / "sa1b")
    )
    before = sorted((str(p), p.stat().st_size) for p in tmp_path.rglob("*"))
    no_teacher(monkeypatch)
    opts = [*TINY_TEACHER, "MODEL.RESUME", str(weights), *args.get("opts", [])]
    main, cfg = (export_image.main, IMAGE_CFG) if kind == "image" else (export_text.main, TEXT_CFG)
    with pytest.raises(args.get("error", UserError), match=args["match"]):
        main(export_argv(cfg, data, tmp_path / "out", *opts))
    assert sorted((str(p), p.stat().st_size) for p in tmp_path.rglob("*")) == before


def test_hints_lead_to_a_working_export(tmp_path, monkeypatch):
    data = make_sa1b(tmp_path / "sa1b", n_train=2, n_val=0, corrupt=False)
    # DATA.IMG_SIZE 30 -> "set DATA.IMG_SIZE 28 (and ... DISTILL.EMBED_SIZE 2)"
    tiny = [*TINY_TEACHER, "DATA.IMG_SIZE", "28", "DISTILL.EMBED_SIZE", "2"]
    assert export_image.main(export_argv(IMAGE_CFG, data, tmp_path / "a", *tiny)).written == 2
    # a full disk -> "or set DISTILL.FORCE True to export anyway"
    with monkeypatch.context() as patch:
        patch.setattr(shutil, "disk_usage", _full_disk)
        forced = [*TINY_TEACHER, "DISTILL.FORCE", "True"]
        assert export_image.main(export_argv(IMAGE_CFG, data, tmp_path / "b", *forced)).written == 2
    assert "continuing: forced" in (tmp_path / "b" / "log_rank0.txt").read_text()
    # DATA.DATASET of the other kind -> 'set DATA.DATASET sa1b (or "" for this entry point's own)'
    mended = [*TINY_TEACHER, "DATA.DATASET", ""]
    assert export_image.main(export_argv(IMAGE_CFG, data, tmp_path / "d", *mended)).written == 2
    # no checkpoint -> "opt in to random weights with --opts MODEL.ALLOW_RANDOM_TEACHER True":
    # every check passes (the full-size random teacher itself is too slow for a test)
    no_teacher(monkeypatch)
    random = ["MODEL.RESUME", "", "MODEL.ALLOW_RANDOM_TEACHER", "True"]
    with pytest.raises(TeacherLoaded):
        export_image.main(export_argv(IMAGE_CFG, data, tmp_path / "c", *random))
