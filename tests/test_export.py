"""Phase 1 end to end: the spec's export commands on synthetic data, resume, faults, bad input."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from stage1.embedding_store import EmbeddingStore, StoreMismatchError, StoreSpec, verify

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


def _store_bytes(root: Path) -> dict[str, bytes]:
    store = EmbeddingStore(root)
    keys = store.keys()
    return {k: np.ascontiguousarray(store.get(k)).tobytes() for k in keys}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_image_export_main_resume_and_check(tmp_path):
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
    import json

    assert json.loads((out / "config.json").read_text())["DATA"]["DATA_PATH"] == str(data)
    store = EmbeddingStore(out / "embeddings")
    assert len(store) == 7 and "sa_corrupt" not in store and "sa_val001" in store
    assert store.get("sa_train000").shape == (64, 8, 8)
    manifest = json.loads((out / "embeddings" / "manifest.json").read_text())
    assert manifest["spec"]["meta"]["teacher"]["checkpoint"] == "random"
    assert "corrupt.jpg" in (out / "log_rank0.txt").read_text()
    again = _image_main(argv)
    assert (again.written, again.already_stored) == (0, 7)
    _image_main([*argv, "--check-saved-embed"])  # recomputes records with the teacher


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


def test_store_of_another_shape_or_teacher_is_refused(tmp_path):
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
    with pytest.raises(StoreMismatchError, match="preprocessing"):
        _image_main([*argv, "DATA.RESIZE_MODE", "squash"])
    with pytest.raises(StoreMismatchError, match="shape"):
        EmbeddingStore(out / "embeddings", expected=StoreSpec(shape=(1024, 72, 72)))
    assert len(EmbeddingStore(out / "embeddings")) == 7  # nothing lost


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
