"""sam3.files: atomic writes leave the old file or the new one; weights-only reads."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

from sam3.files import (
    UnreadableFileError,
    atomic_open,
    atomic_path,
    file_sha256,
    load_weights_only,
    torch_save_atomic,
    write_json_atomic,
    write_text_atomic,
)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk gone"), atomic_open(target, "w") as f:
        f.write("half of the new")
        raise RuntimeError("disk gone")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_atomic_path_renames_into_place_and_keeps_the_suffix(tmp_path):
    target = tmp_path / "curves.png"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp != target
        tmp.write_bytes(b"png")
    assert target.read_bytes() == b"png" and not tmp.exists()


def test_json_and_text_are_written_as_asked(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"b": 1, "a": [2]}, sort_keys=True)
    assert (tmp_path / "a.json").read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'
    write_text_atomic(tmp_path / "t.txt", "line\n")
    assert (tmp_path / "t.txt").read_text() == "line\n"
    assert json.loads((tmp_path / "a.json").read_text()) == {"a": [2], "b": 1}


def test_atomic_open_refuses_append(tmp_path):
    refused = pytest.raises(ValueError, match="mode must be 'wb' or 'w'")
    with refused, atomic_open(tmp_path / "x", "a"):
        pass


def test_weights_only_round_trip_and_mmap(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    torch_save_atomic(state, tmp_path / "s.pt")
    for mmap in (False, True):
        loaded = load_weights_only(tmp_path / "s.pt", mmap=mmap)
        assert torch.equal(loaded["w"], state["w"])


def test_weights_only_refuses_pickled_code_and_garbage(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(UnreadableFileError, match=r"evil\.pt could not be read .*weights_only"):
        load_weights_only(tmp_path / "evil.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UnreadableFileError, match=r"junk\.pt"):
        load_weights_only(tmp_path / "junk.pt", mmap=True)


def test_file_sha256_in_chunks(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 3000)
    assert file_sha256(path, chunk=1000) == hashlib.sha256(b"x" * 3000).hexdigest()
