"""Phase 1 end to end: the spec's export commands on synthetic data, with one and two processes,
resumed after a stop and after a kill, verified, and the full-size teacher's records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from stage1 import save_embedding_image_stage1 as export_image
from stage1 import save_embedding_text_stage1 as export_text
from stage1.store import EmbeddingStore, verify

from helpers.data import TINY_TEACHER, make_recap, make_sa1b
from helpers.export import IMAGE_CFG, TEXT_CFG, export_argv, store_values
from helpers.training import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_image_export_main_resume_and_check(tmp_path, capsys):
    data = make_sa1b(tmp_path / "sa1b")
    out = tmp_path / "out"
    argv = ["--batch-size", "3", *export_argv(IMAGE_CFG, data, out, *TINY_TEACHER)]
    first = export_image.main(argv)
    assert (first.written, first.failed, first.already_stored) == (7, 1, 0)
    assert (out / "config.json").is_file() and (out / "log_rank0.txt").is_file()
    assert json.loads((out / "config.json").read_text())["DATA"]["DATA_PATH"] == str(data)
    store = EmbeddingStore(out / "embeddings")
    assert len(store) == 7 and "sa_corrupt" not in store and "sa_val001" in store
    assert store.get("sa_train000").shape == (64, 8, 8)
    manifest = json.loads((out / "embeddings" / "manifest.json").read_text())
    assert manifest["spec"]["meta"]["teacher"]["checkpoint"] == "random"
    assert "corrupt.jpg" in (out / "log_rank0.txt").read_text()
    again = export_image.main(argv)
    assert (again.written, again.already_stored) == (0, 7)
    capsys.readouterr()
    export_image.main([*argv, "--check-saved-embed"])  # recomputes records with the teacher
    bar = capsys.readouterr().err
    assert "verify" in bar and "rec/s" in bar  # a progress bar over the records read


def test_text_export_main_skips_bad_captions(tmp_path):
    data = make_recap(tmp_path / "recap")
    out = tmp_path / "out"
    summary = export_text.main(
        ["--batch-size", "4", *export_argv(TEXT_CFG, data, out, *TINY_TEACHER)]
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
        f"MASTER_PORT={free_port()}",
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
        script, cfg = "save_image_embeddings.sh", IMAGE_CFG
    else:
        data = make_recap(tmp_path / "recap_subset")
        script, cfg = "save_text_embeddings.sh", TEXT_CFG
    stores = {}
    for gpus in (1, 2):
        out = tmp_path / f"out{gpus}"
        _launch(script, [f"CFG={cfg}", f"DATA_PATH={data}", f"OUTPUT={out}", "BATCH_SIZE=2"], gpus)
        assert verify(out / "embeddings").ok
        assert (out / "log_rank0.txt").is_file()
        assert len(list((out / "embeddings").glob("rank*-values.bin"))) == gpus
        stores[gpus] = store_values(out / "embeddings")
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
        args = export_argv(IMAGE_CFG, data, out, *TINY_TEACHER)
        return [sys.executable, str(script), "--batch-size", "1", *args]

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
    assert store_values(crashed / "embeddings") == store_values(reference / "embeddings")
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
    export_image.main(
        export_argv(IMAGE_CFG, data, out, "MODEL.RESUME", str(ckpt), "DATA.NUM_WORKERS", "0")
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
