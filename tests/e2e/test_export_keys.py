"""Phase 1's keys and logs: names a store cannot hold are stored under reversible keys, text
records carry their caption's digest, and each log line and progress bar shows once."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sam3.files import file_sha256
from stage1 import save_embedding_image_stage1 as export_image
from stage1 import save_embedding_text_stage1 as export_text
from stage1.data.keys import decode_key
from stage1.data.sa1b import list_sa1b
from stage1.store import EmbeddingStore, StoreSpec, create_store

from helpers.data import TINY_TEACHER, make_recap, make_sa1b
from helpers.export import IMAGE_CFG, TEXT_CFG, export_argv


def test_image_names_a_store_cannot_hold_export_under_reversible_keys(tmp_path):
    data = make_sa1b(tmp_path / "sa1b", n_train=1, n_val=0, corrupt=False)
    folder = data / "images" / "train"
    jpeg = (folder / "sa_train000.jpg").read_bytes()
    (folder / "my photo.jpg").write_bytes(jpeg)
    with open(os.fsencode(folder) + b"/caf\xe9.jpg", "wb") as f:  # not UTF-8
        f.write(jpeg)
    with open(os.fsencode(folder) + b"/bad\xff.jpg", "wb") as f:  # not UTF-8, not a JPEG
        f.write(b"broken")
    out = tmp_path / "out"
    summary = export_image.main(export_argv(IMAGE_CFG, data, out, *TINY_TEACHER))
    assert (summary.written, summary.failed) == (3, 1)
    assert "skipped bad%FF: " in (out / "log_rank0.txt").read_text()  # the log can name it
    store = EmbeddingStore(out / "embeddings")
    keys = store.keys()
    assert sorted(keys) == ["caf%E9", "my%20photo", "sa_train000"]
    names = {os.fsencode(decode_key(key)) for key in keys}
    assert names == {b"caf\xe9", b"my photo", b"sa_train000"}
    same = store.get("sa_train000").astype(np.float32)
    for key in ("caf%E9", "my%20photo"):  # the same pixels (one float16 step apart at most)
        assert np.allclose(store.get(key).astype(np.float32), same, rtol=2.0**-9, atol=1e-6)
    assert {item.key for item in list_sa1b(data, ("train", "val"))} == {*keys, "bad%FF"}


def test_text_export_encodes_keys_and_stores_caption_digests(tmp_path):
    data = tmp_path / "recap"
    data.mkdir()
    captions = ["one cat", "two dogs", "three birds"]
    table = pa.table({"key": ["a b", "plain", "tab\tkey"], "re_caption": captions})
    pq.write_table(table, data / "part.parquet")
    out = tmp_path / "out"
    assert export_text.main(export_argv(TEXT_CFG, data, out, *TINY_TEACHER)).written == 3
    store = EmbeddingStore(out / "embeddings")
    keys = ["a%20b", "plain", "tab%09key"]
    assert sorted(store.keys()) == keys and store.has_source_digests
    assert store.get_headers(keys) == [hashlib.sha256(c.encode()).digest()[:8] for c in captions]


def test_text_store_without_digests_is_resumed_in_its_layout(tmp_path):
    data = make_recap(tmp_path / "recap")
    out = tmp_path / "out"
    teacher = {
        "kind": "text",
        "arch": "sam3_tiny",
        "checkpoint": "random",
        "checkpoint_sha256": "random",
        "precision": "fp32",
    }
    old = StoreSpec((32, 256), meta={"teacher": teacher, "tag": "x", "context_length": 32})
    create_store(out / "embeddings", old, 1)  # as the export wrote text stores before digests
    assert export_text.main(export_argv(TEXT_CFG, data, out, *TINY_TEACHER)).written == 10
    store = EmbeddingStore(out / "embeddings")
    assert store.spec.header_bytes == 0 and not store.has_source_digests and len(store) == 10
    assert "digest of their caption" in (out / "log_rank0.txt").read_text()


# ----------------------------------------------------------------------------- logs, progress


def test_console_shows_each_log_line_once(tmp_path, capsys):
    data = make_recap(tmp_path / "recap")
    out = tmp_path / "out"
    opts = [*TINY_TEACHER, "LOG_EVERY", "1", "DATA.BATCH_SIZE", "4"]
    export_text.main(export_argv(TEXT_CFG, data, out, *opts))
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).splitlines()
    for text in ("step 0: ", "step 1: ", "export done"):
        assert sum(text in line for line in lines) == 1, text
    log_lines = (out / "log_rank0.txt").read_text().splitlines()
    assert sum("step 0: " in line for line in log_lines) == 1


def test_checkpoint_hash_shows_progress_in_bytes(tmp_path, capsys):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"x" * 3000)
    assert file_sha256(path, chunk=1000, progress=True) == hashlib.sha256(b"x" * 3000).hexdigest()
    err = capsys.readouterr().err
    assert "sha256 weights.pt" in err and "100%" in err
