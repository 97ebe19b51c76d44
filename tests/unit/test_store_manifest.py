"""A store folder and its manifest: the manifest's bytes, re-creation with another spec, the
teacher compared by identity, folders that must not be written, record counts, disk space."""

from __future__ import annotations

import json
import os
from collections import namedtuple

import pytest

import stage1.store.manifest as store_manifest
from stage1.common.preflight import PreflightError
from stage1.store import (
    FORMAT_NAME,
    InsufficientDiskError,
    StoreCorruptError,
    StoreError,
    StoreMismatchError,
    StoreSpec,
    StoreWriter,
    check_disk_space,
    check_store_folder,
    create_store,
    finalize_manifest,
    format_bytes,
    load_manifest,
    verify,
)

from helpers.store import META, TXT, batch, folder_bytes, new_store

KEY_BYTES = 64  # disk bytes check_disk_space assumes per key line
usage = namedtuple("usage", "total used free")


def test_manifest_is_sorted_indented_json_with_a_final_newline(tmp_path):
    spec = new_store(tmp_path, world_size=2)
    text = (tmp_path / "manifest.json").read_text()
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"
    assert data["format"] == FORMAT_NAME and data["format_version"] == 1
    assert data["spec"] == {
        "encoding": "float16",
        "header_bytes": 0,
        "meta": json.loads(json.dumps(META)),
        "record_bytes": 72,
        "shape": [4, 3, 3],
    }
    assert data["world_size"] == 2 and data["counts"] is None
    assert load_manifest(tmp_path)["spec"] == spec
    finalize_manifest(tmp_path)
    text = (tmp_path / "manifest.json").read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]  # no temporary left


def test_an_unreadable_manifest_is_named(tmp_path):
    new_store(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(StoreCorruptError, match="not a valid store manifest"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other", "spec": {}}))
    with pytest.raises(StoreCorruptError, match="shape"):
        load_manifest(tmp_path)


def test_create_store_rejects_a_different_spec(tmp_path):
    new_store(tmp_path)
    new_store(tmp_path)  # the same spec: fine
    with pytest.raises(StoreMismatchError, match=r"shape.*\(4, 3, 3\).*\(4, 4, 4\).*delete"):
        new_store(tmp_path, (4, 4, 4))
    with pytest.raises(StoreMismatchError, match="preprocessing.*squash"):
        new_store(tmp_path, preprocessing={"resize": "squash"})
    with pytest.raises(StoreMismatchError, match="teacher"):
        new_store(tmp_path, teacher={"checkpoint": "sam3.pt", "sha256": "ab12"})
    with pytest.raises(StoreMismatchError, match="encoding"):
        new_store(tmp_path, encoding="int8")


def test_create_store_compares_the_teacher_by_identity_not_by_path(tmp_path):
    teacher = {
        "kind": "image",
        "arch": "sam3",
        "checkpoint": "sam3_checkpoints/sam3.pt",
        "checkpoint_sha256": "ab" * 32,
        "precision": "fp32",
    }
    new_store(tmp_path, teacher=teacher)
    moved = {**teacher, "checkpoint": "/data/models/sam3.pt"}  # the same file, named otherwise
    new_store(tmp_path, teacher=moved, world_size=2)
    manifest = load_manifest(tmp_path)
    assert manifest["spec"].meta["teacher"] == teacher and manifest["world_size"] == 2
    changes = {"checkpoint_sha256": "cd" * 32, "precision": "bf16", "arch": "sam3_tiny"}
    for name, value in changes.items():
        with pytest.raises(StoreMismatchError, match=rf"teacher.*{name}.*{value}") as err:
            new_store(tmp_path, teacher={**moved, name: value})
        assert "checkpoint'" not in str(err.value) and " — " in str(err.value)
    random = {**teacher, "checkpoint": "random", "checkpoint_sha256": "random"}
    with pytest.raises(StoreMismatchError, match="checkpoint_sha256.*random"):
        new_store(tmp_path, teacher=random)


def test_shards_without_a_manifest_are_never_adopted(tmp_path):
    new_store(tmp_path, world_size=2)
    keys, values = batch(range(3))
    with StoreWriter(tmp_path, 0) as w:
        w.write(keys, values)
    (tmp_path / "manifest.json").unlink()
    before = folder_bytes(tmp_path)
    for change in ({"encoding": "int8"}, {"preprocessing": {"resize": "squash"}}, {}):
        with pytest.raises(
            StoreError, match=r"no manifest.json.*info\|verify .*--legacy-shape.*TEACHER_EMBED_PATH"
        ) as err:
            new_store(tmp_path, **change)
        assert " — " in str(err.value)
    for rank in (0, 1):  # rank 1 has no shard yet: none is created
        with pytest.raises(StoreError, match="no manifest.json"):
            StoreWriter(tmp_path, rank)
    with pytest.raises(StoreError, match="no manifest.json"):
        check_store_folder(tmp_path)
    assert folder_bytes(tmp_path) == before


def test_refusals_create_nothing_and_check_store_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    for root in (tmp_path / "file", tmp_path / "file" / "store"):
        with pytest.raises(PreflightError, match="TEACHER_EMBED_PATH.*file"):
            new_store(root)
    assert check_store_folder(tmp_path / "new" / "store") is None
    assert check_store_folder(tmp_path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    spec = new_store(tmp_path / "new")
    assert check_store_folder(tmp_path / "new") == spec
    with pytest.raises(StoreError, match="create_store"):
        StoreWriter(tmp_path, 0)  # an empty folder: not a store
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "new"]


def test_finalize_manifest_counts(tmp_path):
    new_store(tmp_path, world_size=2)
    keys, values = batch(range(5))
    with StoreWriter(tmp_path, 0) as w0, StoreWriter(tmp_path, 1) as w1:
        w0.write(keys[:3], values[:3])
        w1.write(keys[3:], values[3:])
    assert finalize_manifest(tmp_path) == {0: 3, 1: 2}
    manifest = load_manifest(tmp_path)
    assert manifest["records"] == 5 and manifest["counts"] == {"0": 3, "1": 2}
    os.truncate(tmp_path / "rank1-values.bin", manifest["spec"].record_bytes)
    with StoreWriter(tmp_path, 1):  # repairs: rank 1 now holds 1 record
        pass
    assert any("records were lost" in p for p in verify(tmp_path).problems)


def test_disk_space_refusal(tmp_path, monkeypatch):
    spec = StoreSpec((1024, 72, 72))
    need = 1000 * (2 * 1024 * 72 * 72 + KEY_BYTES)
    monkeypatch.setattr(
        store_manifest.shutil, "disk_usage", lambda p: usage(2**40, 2**40 - 2**30, 2**30)
    )
    with pytest.raises(InsufficientDiskError, match=r"9\.89 GiB.*1\.00 GiB.*int8.*FORCE"):
        check_disk_space(tmp_path / "new" / "store", 1000, spec)
    with pytest.warns(UserWarning, match="forced"):
        assert check_disk_space(tmp_path, 1000, spec, force=True) == need
    assert check_disk_space(tmp_path, 10, spec) == need // 100
    create_store(tmp_path / "old", spec, 1)  # an existing float16 store cannot become int8
    with pytest.raises(InsufficientDiskError, match="FORCE") as err:
        check_disk_space(tmp_path / "old", 1000, spec)
    assert "int8" not in str(err.value)


def test_sizes_are_given_at_their_scale(tmp_path, monkeypatch):
    assert [format_bytes(n) for n in (0, 1023, 1536, 5 << 20, 3 << 40)] == [
        "0 bytes",
        "1023 bytes",
        "1.50 KiB",
        "5.00 MiB",
        "3.00 TiB",
    ]
    monkeypatch.setattr(store_manifest.shutil, "disk_usage", lambda p: usage(2**40, 2**40, 300))
    with pytest.raises(InsufficientDiskError, match=r"needs about 3\.75 KiB.*only 300 bytes"):
        check_disk_space(tmp_path, 12, StoreSpec(TXT))  # 12 x (256 + 64) bytes
    spec = StoreSpec((1024, 72, 72))
    need = 1000 * (spec.record_bytes + KEY_BYTES)
    monkeypatch.setattr(store_manifest.shutil, "disk_usage", lambda p: usage(2**40, 0, need - 1000))
    with pytest.raises(InsufficientDiskError, match="bytes") as err:  # both round to 9.89 GiB
        check_disk_space(tmp_path, 1000, spec)
    assert f"{need:,} bytes" in str(err.value) and f"{need - 1000:,} bytes" in str(err.value)
    assert " — " in str(err.value)
