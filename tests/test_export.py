"""Phase 1 end to end: the spec's export commands on synthetic data, resume, faults, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

import stage1.export
from stage1.data.keys import decode_key
from stage1.data.sa1b import list_sa1b
from stage1.embedding_store import (
    EmbeddingStore,
    StoreError,
    StoreMismatchError,
    StoreSpec,
    create_store,
    verify,
)
from stage1.errors import UserError
from stage1.teachers import file_sha256

from conftest import TINY_TEACHER, make_recap, make_sa1b

ROOT = Path(__file__).resolve().parents[1]
IMAGE_CFG = "stage1/configs/teacher/sam_vit_huge_sa1b.yaml"
TEXT_CFG = "stage1/configs/teacher/sam_text_teacher.yaml"


def _image_main(argv):
    sys.path.insert(0, str(ROOT / "stage1"))
    from save_embedding_image_stage1 import main

    return main(argv)


def _text_main(argv):
    sys.path.insert(0, str(ROOT / "stage1"))
    from save_embedding_text_stage1 import main

    return main(argv)


def _argv(cfg: str, data: Path, out: Path, *opts: str) -> list[str]:
    return ["--cfg", cfg, "--data-path", str(data), "--output", str(out), "--opts", *opts]


class _TeacherLoaded(Exception):
    """Raised by the stand-ins of the teacher's hashing and loading."""


def _no_teacher(monkeypatch) -> None:
    """Make hashing or building the teacher raise :class:`_TeacherLoaded`."""

    def refuse(*args, **kwargs):
        raise _TeacherLoaded

    monkeypatch.setattr(stage1.export, "Teacher", refuse)
    monkeypatch.setattr(stage1.export, "file_sha256", refuse)


def _store_bytes(root: Path) -> dict[str, bytes]:
    store = EmbeddingStore(root)
    keys = store.keys()
    return {k: np.ascontiguousarray(store.get(k)).tobytes() for k in keys}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_image_export_main_resume_and_check(tmp_path, capsys):
    data = make_sa1b(tmp_path / "sa1b")
    out = tmp_path / "out"
    argv = [
        "--cfg",
        IMAGE_CFG,
        "--data-path",
        str(data),
        "--output",
        str(out),
        "--batch-size",
        "3",
        "--opts",
        *TINY_TEACHER,
    ]
    first = _image_main(argv)
    assert (first.written, first.failed, first.already_stored) == (7, 1, 0)
    assert (out / "config.json").is_file() and (out / "log_rank0.txt").is_file()
    assert json.loads((out / "config.json").read_text())["DATA"]["DATA_PATH"] == str(data)
    store = EmbeddingStore(out / "embeddings")
    assert len(store) == 7 and "sa_corrupt" not in store and "sa_val001" in store
    assert store.get("sa_train000").shape == (64, 8, 8)
    manifest = json.loads((out / "embeddings" / "manifest.json").read_text())
    assert manifest["spec"]["meta"]["teacher"]["checkpoint"] == "random"
    assert "corrupt.jpg" in (out / "log_rank0.txt").read_text()
    again = _image_main(argv)
    assert (again.written, again.already_stored) == (0, 7)
    capsys.readouterr()
    _image_main([*argv, "--check-saved-embed"])  # recomputes records with the teacher
    bar = capsys.readouterr().err
    assert "verify" in bar and "rec/s" in bar  # a progress bar over the records read


def test_text_export_main_skips_bad_captions(tmp_path):
    data = make_recap(tmp_path / "recap")
    out = tmp_path / "out"
    summary = _text_main(
        [
            "--cfg",
            TEXT_CFG,
            "--data-path",
            str(data),
            "--output",
            str(out),
            "--batch-size",
            "4",
            "--opts",
            *TINY_TEACHER,
        ]
    )
    assert summary.written == 10 and summary.failed == 3  # null, blank, duplicate key
    store = EmbeddingStore(out / "embeddings")
    assert store.get("k0003").shape == (32, 256)
    assert verify(out / "embeddings").ok


def _launch(script: str, args: list[str], gpus: int) -> None:
    cmd = [
        "bash",
        f"stage1/scripts/{script}",
        *args,
        f"GPUS={gpus}",
        f"PYTHON={sys.executable}",
        f"MASTER_PORT={_free_port()}",
        "--opts",
        *TINY_TEACHER,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("kind", ["image", "text"])
def test_spec_commands_with_one_and_two_processes_agree(tmp_path, kind):
    """The spec's launcher commands, as written, with GPUS=1 and GPUS=2 (CPU processes)."""
    if kind == "image":
        data = make_sa1b(tmp_path / "sa-1b")
        script, cfg, extra = "save_image_embeddings.sh", IMAGE_CFG, []
    else:
        data = make_recap(tmp_path / "recap_subset")
        script, cfg, extra = "save_text_embeddings.sh", TEXT_CFG, []
    stores = {}
    for gpus in (1, 2):
        out = tmp_path / f"out{gpus}"
        _launch(
            script,
            [f"CFG={cfg}", f"DATA_PATH={data}", f"OUTPUT={out}", "BATCH_SIZE=2", *extra],
            gpus,
        )
        assert verify(out / "embeddings").ok
        assert (out / "log_rank0.txt").is_file()
        assert len(list((out / "embeddings").glob("rank*-values.bin"))) == gpus
        stores[gpus] = _store_bytes(out / "embeddings")
    assert stores[1].keys() == stores[2].keys() and len(stores[1]) == (7 if kind == "image" else 10)
    # Same values; a record may differ by one float16 step where a different batch partner
    # changed the float32 summation order inside BLAS.
    for key, raw in stores[1].items():
        a = np.frombuffer(raw, np.float16).astype(np.float32)
        b = np.frombuffer(stores[2][key], np.float16).astype(np.float32)
        assert (np.abs(a - b) <= np.maximum(np.abs(a), np.abs(b)) * 2.0**-10 + 2.0**-24).all(), key


def test_killed_export_resumes_to_the_same_store(tmp_path):
    data = make_sa1b(tmp_path / "sa1b", n_train=40, n_val=0, corrupt=False)
    script = ROOT / "stage1" / "save_embedding_image_stage1.py"

    def argv(out: Path) -> list[str]:
        return [
            sys.executable,
            str(script),
            "--cfg",
            IMAGE_CFG,
            "--data-path",
            str(data),
            "--output",
            str(out),
            "--batch-size",
            "1",
            "--opts",
            *TINY_TEACHER,
        ]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    subprocess.run(argv(reference), env=env, check=True, capture_output=True, timeout=600)

    crashed = tmp_path / "crashed"
    proc = subprocess.Popen(
        argv(crashed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    keys = crashed / "embeddings" / "rank0-keys.txt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if keys.is_file() and keys.read_text().count("\n") >= 5:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the export finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = keys.read_text().count("\n")
    assert 5 <= partial < 40
    subprocess.run(argv(crashed), env=env, check=True, capture_output=True, timeout=600)
    assert _store_bytes(crashed / "embeddings") == _store_bytes(reference / "embeddings")
    assert verify(crashed / "embeddings").ok


def test_full_size_teacher_record_equals_trunk_output(tmp_path):
    """SAM3's real trunk, loaded from a checkpoint in sam3.pt's layout (seeded weights)."""
    from sam3.model_builder import build_sam3_backbone
    from stage1.data.sa1b import load_rgb
    from stage1.data.transforms import ImageTransform

    from seeded_init import seeded_state

    model = build_sam3_backbone(enable_text=False)
    seeded_state(model, 5)
    state = {f"detector.backbone.{k}": v for k, v in model.state_dict().items()}
    state["detector.transformer.decoder.norm.weight"] = torch.ones(256)
    ckpt = tmp_path / "sam3.pt"
    torch.save({"model": state}, ckpt)
    del state
    data = make_sa1b(tmp_path / "sa1b", n_train=1, n_val=0, corrupt=False)
    out = tmp_path / "out"
    _image_main(
        [
            "--cfg",
            IMAGE_CFG,
            "--data-path",
            str(data),
            "--output",
            str(out),
            "--opts",
            "MODEL.RESUME",
            str(ckpt),
            "DATA.NUM_WORKERS",
            "0",
        ]
    )
    stored = EmbeddingStore(out / "embeddings").get("sa_train000").astype(np.float32)
    image, _ = ImageTransform(1008)(load_rgb(data / "images" / "train" / "sa_train000.jpg"))
    trunk = model.vision_backbone.trunk
    assert trunk.pack_for_cpu() == 4 * 32  # as the export's CPU teacher runs it
    with torch.no_grad():
        ref = trunk(image[None])[-1][0]
    assert stored.shape == (1024, 72, 72)
    ref16 = ref.half().float().numpy()
    tol = np.abs(ref.numpy()) * 2.0**-10 + 1e-6  # one float16 step
    assert (np.abs(stored - ref16) <= tol).all()


# ----------------------------------------------------------------------------- bad input


def test_missing_dataset_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="sa1b"):
        _image_main(
            [
                "--cfg",
                IMAGE_CFG,
                "--data-path",
                str(tmp_path / "sa1b"),
                "--output",
                str(tmp_path / "o"),
                "--opts",
                *TINY_TEACHER,
            ]
        )


def test_missing_checkpoint_says_where_to_get_it(tmp_path):
    data = make_sa1b(tmp_path / "sa1b")
    with pytest.raises(FileNotFoundError, match="huggingface.co/facebook/sam3"):
        _image_main(
            [
                "--cfg",
                IMAGE_CFG,
                "--data-path",
                str(data),
                "--output",
                str(tmp_path / "o"),
                "--opts",
                "MODEL.RESUME",
                str(tmp_path / "sam3.pt"),
            ]
        )


def test_random_teacher_needs_an_explicit_opt_in(tmp_path):
    data = make_sa1b(tmp_path / "sa1b")
    with pytest.raises(ValueError, match="ALLOW_RANDOM_TEACHER"):
        _image_main(
            [
                "--cfg",
                IMAGE_CFG,
                "--data-path",
                str(data),
                "--output",
                str(tmp_path / "o"),
                "--opts",
                "MODEL.RESUME",
                "",
            ]
        )


def test_wrong_caption_column_and_empty_parquet(tmp_path):
    data = make_recap(tmp_path / "recap")
    argv = [
        "--cfg",
        TEXT_CFG,
        "--data-path",
        str(data),
        "--output",
        str(tmp_path / "o"),
        "--opts",
        *TINY_TEACHER,
    ]
    with pytest.raises(Exception, match="caption"):
        _text_main([*argv, "DATA.CAPTION_COLUMN", "recaption"])
    import pyarrow as pa
    import pyarrow.parquet as pq

    empty = tmp_path / "empty"
    empty.mkdir()
    pq.write_table(
        pa.table({"key": pa.array([], pa.string()), "re_caption": pa.array([], pa.string())}),
        empty / "a.parquet",
    )
    with pytest.raises(ValueError, match="no usable caption"):
        _text_main(
            [
                "--cfg",
                TEXT_CFG,
                "--data-path",
                str(empty),
                "--output",
                str(tmp_path / "o2"),
                "--opts",
                *TINY_TEACHER,
            ]
        )


def test_store_of_another_shape_or_teacher_is_refused(tmp_path, monkeypatch):
    data = make_sa1b(tmp_path / "sa1b")
    out = tmp_path / "out"
    argv = [
        "--cfg",
        IMAGE_CFG,
        "--data-path",
        str(data),
        "--output",
        str(out),
        "--opts",
        *TINY_TEACHER,
    ]
    _image_main(argv)
    store = out / "embeddings"
    saved = _store_bytes(store)
    with monkeypatch.context() as patch:  # every refusal comes before the teacher is loaded
        _no_teacher(patch)
        with pytest.raises(StoreMismatchError, match="preprocessing"):
            _image_main([*argv, "DATA.RESIZE_MODE", "squash"])
        weights = tmp_path / "sam3.pt"
        weights.write_bytes(b"another teacher")
        with pytest.raises(StoreMismatchError, match="the store's is random"):
            _image_main([*argv, "MODEL.RESUME", str(weights)])
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["spec"]["meta"]["teacher"]["checkpoint_sha256"] = "0" * 64
    (store / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(stage1.export, "Teacher", lambda *a, **k: pytest.fail("teacher built"))
    with pytest.raises(StoreMismatchError, match="checkpoint_sha256: store has '0000"):
        _image_main([*argv, "MODEL.RESUME", str(weights)])  # hashed, then refused
    with pytest.raises(StoreMismatchError, match="shape"):
        EmbeddingStore(store, expected=StoreSpec(shape=(1024, 72, 72)))
    assert _store_bytes(store) == saved  # nothing lost
    shards = {p.name: p.read_bytes() for p in store.glob("rank*")}
    (store / "manifest.json").unlink()  # shards without a manifest are never written to
    with pytest.raises(StoreError, match="but no manifest.json"):
        _image_main([*argv, "DISTILL.STORE_DTYPE", "int8"])
    assert {p.name: p.read_bytes() for p in store.glob("*")} == shards


def test_teacher_and_store_shape_must_agree(tmp_path):
    data = make_sa1b(tmp_path / "sa1b")
    with pytest.raises(ValueError, match="DISTILL.EMBED_DIM 64"):
        _image_main(
            [
                "--cfg",
                IMAGE_CFG,
                "--data-path",
                str(data),
                "--output",
                str(tmp_path / "o"),
                "--opts",
                *TINY_TEACHER,
                "DISTILL.EMBED_DIM",
                "1024",
            ]
        )


# ----------------------------------------------------------------------------- keys


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
    summary = _image_main(_argv(IMAGE_CFG, data, out, *TINY_TEACHER))
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
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "recap"
    data.mkdir()
    captions = ["one cat", "two dogs", "three birds"]
    table = pa.table({"key": ["a b", "plain", "tab\tkey"], "re_caption": captions})
    pq.write_table(table, data / "part.parquet")
    out = tmp_path / "out"
    assert _text_main(_argv(TEXT_CFG, data, out, *TINY_TEACHER)).written == 3
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
    assert _text_main(_argv(TEXT_CFG, data, out, *TINY_TEACHER)).written == 10
    store = EmbeddingStore(out / "embeddings")
    assert store.spec.header_bytes == 0 and not store.has_source_digests and len(store) == 10
    assert "digest of their caption" in (out / "log_rank0.txt").read_text()


# ----------------------------------------------------------------------------- logs, progress


def test_console_shows_each_log_line_once(tmp_path, capsys):
    data = make_recap(tmp_path / "recap")
    out = tmp_path / "out"
    _text_main(_argv(TEXT_CFG, data, out, *TINY_TEACHER, "LOG_EVERY", "1", "DATA.BATCH_SIZE", "4"))
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


# ----------------------------------------------------------------------------- checks first


def _bad_output(tmp_path: Path) -> dict:
    (tmp_path / "out").write_text("a file")
    return {"match": "is a file, not a folder"}


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


def _full_disk(tmp_path: Path, monkeypatch) -> dict:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    return {"match": "DISTILL.FORCE True"}


CASES = [_bad_output, _bad_data, _no_parquet, _bad_shape, _bad_size, _shards_without_manifest]


@pytest.mark.parametrize("case", [*CASES, _full_disk])
def test_failed_checks_leave_nothing_and_load_no_teacher(tmp_path, monkeypatch, case):
    """Each mistake is found before the checkpoint is hashed and the teacher built, and the
    run leaves no folder, log, config.json or store behind."""
    weights = tmp_path / "sam3.pt"
    weights.write_bytes(b"not hashed")
    args = case(tmp_path, monkeypatch) if case is _full_disk else case(tmp_path)
    kind = args.get("kind", "image")
    data = args.get("data") or (
        make_recap(tmp_path / "recap") if kind == "text" else make_sa1b(tmp_path / "sa1b")
    )
    before = sorted((str(p), p.stat().st_size) for p in tmp_path.rglob("*"))
    _no_teacher(monkeypatch)
    opts = [*TINY_TEACHER, "MODEL.RESUME", str(weights), *args.get("opts", [])]
    main, cfg = (_image_main, IMAGE_CFG) if kind == "image" else (_text_main, TEXT_CFG)
    with pytest.raises(UserError, match=args["match"]):
        main(_argv(cfg, data, tmp_path / "out", *opts))
    assert sorted((str(p), p.stat().st_size) for p in tmp_path.rglob("*")) == before


def test_hints_lead_to_a_working_export(tmp_path, monkeypatch):
    data = make_sa1b(tmp_path / "sa1b", n_train=2, n_val=0, corrupt=False)
    # DATA.IMG_SIZE 30 -> "set DATA.IMG_SIZE 28 (and ... DISTILL.EMBED_SIZE 2)"
    tiny = [*TINY_TEACHER, "DATA.IMG_SIZE", "28", "DISTILL.EMBED_SIZE", "2"]
    assert _image_main(_argv(IMAGE_CFG, data, tmp_path / "a", *tiny)).written == 2
    # a full disk -> "or set DISTILL.FORCE True to export anyway"
    usage = namedtuple("usage", "total used free")
    with monkeypatch.context() as patch:
        patch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
        forced = [*TINY_TEACHER, "DISTILL.FORCE", "True"]
        assert _image_main(_argv(IMAGE_CFG, data, tmp_path / "b", *forced)).written == 2
    assert "continuing: forced" in (tmp_path / "b" / "log_rank0.txt").read_text()
    # no checkpoint -> "opt in to random weights with --opts MODEL.ALLOW_RANDOM_TEACHER True":
    # every check passes (the full-size random teacher itself is too slow for a test)
    _no_teacher(monkeypatch)
    random = ["MODEL.RESUME", "", "MODEL.ALLOW_RANDOM_TEACHER", "True"]
    with pytest.raises(_TeacherLoaded):
        _image_main(_argv(IMAGE_CFG, data, tmp_path / "c", *random))
