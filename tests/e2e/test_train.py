"""Phase 2 end to end on tiny synthetic stores: training, DDP, resume after SIGKILL, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from stage1 import (
    save_embedding_image_stage1,
    save_embedding_text_stage1,
    train_image_encoder_stage1,
    train_text_encoder_stage1,
)
from stage1.common.config import ConfigError
from stage1.store import StoreMismatchError
from stage1.train.checkpointing import TrainCheckpointError, list_checkpoints

from helpers.data import TINY_GEOMETRY, TINY_TEACHER, make_recap, make_sa1b
from helpers.training import free_port, lr_of

ROOT = Path(__file__).resolve().parents[2]
TEACHER_IMAGE_CFG = "stage1/configs/teacher/sam_vit_huge_sa1b.yaml"
TEACHER_TEXT_CFG = "stage1/configs/teacher/sam_text_teacher.yaml"
# a short, fast run at the tiny teacher's geometry: absolute lr, no warm-up, no lr scaling, fp32
# (bf16 autocast, and lr scaling, are exercised by the two-process test)
SHORT = [
    *TINY_GEOMETRY,
    "TRAIN.LR_SCALE_BATCH",
    "0",
    "TRAIN.WARMUP_EPOCHS",
    "0",
    "TRAIN.MIN_LR",
    "1e-4",
    "TRAIN.AMP",
    "off",
]


def _export(main, cfg: str, data: Path, base: Path) -> tuple[Path, Path]:
    """Run a phase-1 entry point with the tiny random teacher; ``(data, the store it wrote)``."""
    out = base / "teacher"
    main(
        [
            *("--cfg", cfg),
            *("--data-path", str(data)),
            *("--output", str(out)),
            *("--opts", *TINY_TEACHER),
        ]
    )
    return data, out / "embeddings"


@pytest.fixture(scope="module")
def image_store(tmp_path_factory):
    """SA-1B-like images and their (tiny, random-teacher) trunk embeddings."""
    base = tmp_path_factory.mktemp("image_store")
    data = make_sa1b(base / "sa1b", n_train=24, n_val=4, corrupt=False)
    return _export(save_embedding_image_stage1.main, TEACHER_IMAGE_CFG, data, base)


@pytest.fixture(scope="module")
def text_store(tmp_path_factory):
    """Recap-like captions and their (tiny, random-teacher) text embeddings."""
    base = tmp_path_factory.mktemp("text_store")
    data = make_recap(base / "recap", n=24)
    return _export(save_embedding_text_stage1.main, TEACHER_TEXT_CFG, data, base)


def _image_args(store, out: Path, *opts: str) -> list[str]:
    data, embeddings = store
    return [
        "--cfg",
        "stage1/configs/es_ev_s.yaml",
        "--data-path",
        str(data),
        "--output",
        str(out),
        "--batch-size",
        "4",
        "--opts",
        *SHORT,
        "DISTILL.TEACHER_EMBED_PATH",
        str(embeddings),
        *opts,
    ]


def test_image_student_loss_falls_and_checkpoints_appear(image_store, tmp_path):
    out = tmp_path / "es_ev_s"
    fixed = (
        "DATA.NUM_SAMPLES",
        "4",
        "TRAIN.EPOCHS",
        "15",
        "TRAIN.BASE_LR",
        "3e-3",
        "TRAIN.MIN_LR",
        "3e-3",
    )  # one batch of 4 images, 15 steps at a constant lr
    result = train_image_encoder_stage1.main(_image_args(image_store, out, *fixed))
    assert result.epochs_run == 15
    assert result.train_loss[-1] <= 0.5 * result.train_loss[0], result.train_loss
    assert len(result.val_loss) == 15
    assert [e for e, _ in list_checkpoints(out)] == list(range(15))
    assert (out / "config.json").is_file() and (out / "log_rank0.txt").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    state = torch.load(out / "ckpt_epoch_11.pth", weights_only=True)
    assert state["student"] == "efficientvit_b0" and state["epoch"] == 11
    again = train_image_encoder_stage1.main(_image_args(image_store, out, *fixed))
    assert again.epochs_run == 0  # a finished run resumes to nothing


def test_text_student_trains(text_store, tmp_path):
    data, embeddings = text_store
    out = tmp_path / "es_mc_s"
    result = train_text_encoder_stage1.main(
        [
            "--cfg",
            "stage1/configs/es_mc_s.yaml",
            "--data-path",
            str(data),
            "--output",
            str(out),
            "--batch-size",
            "4",
            "--opts",
            *SHORT,
            "DISTILL.TEACHER_EMBED_PATH",
            str(embeddings),
            "TRAIN.EPOCHS",
            "6",
            "TRAIN.BASE_LR",
            "1e-3",
            "TRAIN.ACCUMULATION_STEPS",
            "2",
            "DATA.VAL_FRACTION",
            "0.2",
        ]
    )
    assert result.train_loss[-1] < result.train_loss[0]
    assert len(result.val_cos) == 6
    assert (out / "ckpt_epoch_5.pth").is_file()


def _train_cmd(store, out: Path, *opts: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "stage1" / "train_image_encoder_stage1.py"),
        *_image_args(store, out, *opts),
    ]


def test_two_process_training_with_the_launcher(image_store, tmp_path):
    data, embeddings = image_store
    out = tmp_path / "ddp"
    cmd = [
        "bash",
        "stage1/scripts/train_image_student.sh",
        "CFG=stage1/configs/es_ev_s.yaml",
        f"DATA_PATH={data}",
        f"OUTPUT={out}",
        "BATCH_SIZE=2",
        "GPUS=2",
        f"MASTER_PORT={free_port()}",
        f"PYTHON={sys.executable}",
        "--opts",
        *SHORT,
        "DISTILL.TEACHER_EMBED_PATH",
        str(embeddings),
        "TRAIN.EPOCHS",
        "2",
        "TRAIN.AMP",
        "bf16",  # the CPU autocast path (slow on CPUs without native bf16, so only here)
        *("TRAIN.LR_SCALE_BATCH", "8", "TRAIN.BASE_LR", "1e-3"),  # MIN_LR 1e-4 (SHORT)
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [e for e, _ in list_checkpoints(out)] == [0, 1]
    assert (out / "log_rank1.txt").is_file()
    assert "x2:" in (out / "log_rank0.txt").read_text()  # trained with world size 2
    # README: each lr x BATCH_SIZE x processes x ACCUMULATION_STEPS / LR_SCALE_BATCH
    peak, low = (rate * 2 * 2 * 1 / 8 for rate in (1e-3, 1e-4))
    # 24 images / (2 x 2) = 6 updates an epoch: epoch 0 ends half-way through the cosine
    assert lr_of(out, 0) == pytest.approx(low + (peak - low) / 2, rel=1e-9)


def test_killed_training_resumes_to_the_same_weights(image_store, tmp_path):
    """SIGKILL in the middle of epoch 2 (of 4), restart: same final weights as no kill."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    opts = ("TRAIN.EPOCHS", "4", "DATA.BATCH_SIZE", "1")
    straight = tmp_path / "straight"
    subprocess.run(
        _train_cmd(image_store, straight, *opts),
        env=env,
        check=True,
        capture_output=True,
        timeout=900,
    )

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(image_store, killed, *opts),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stamps = {}
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and len(stamps) < 2:
        for epoch in (0, 1):
            if epoch not in stamps and (killed / f"ckpt_epoch_{epoch}.pth").is_file():
                stamps[epoch] = time.time()
        time.sleep(0.01)
    time.sleep((stamps[1] - stamps[0]) / 2)  # about half-way through epoch 2
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "ckpt_epoch_2.pth").exists()
    subprocess.run(
        _train_cmd(image_store, killed, *opts),
        env=env,
        check=True,
        capture_output=True,
        timeout=900,
    )
    a = torch.load(straight / "ckpt_epoch_3.pth", weights_only=True)
    b = torch.load(killed / "ckpt_epoch_3.pth", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert "resumed from" in (killed / "log_rank0.txt").read_text()


# ----------------------------------------------------------------------------- bad input


def test_store_of_the_wrong_shape_is_refused(image_store, tmp_path):
    with pytest.raises(StoreMismatchError, match="shape"):
        train_image_encoder_stage1.main(
            _image_args(image_store, tmp_path / "o", "DISTILL.EMBED_DIM", "1024")
        )
    assert not (tmp_path / "o").exists()  # checked before the run folder is made


def test_unknown_student_lists_the_known_ones(image_store, tmp_path):
    with pytest.raises(ConfigError, match="MODEL.BACKBONE: .*efficientvit_b0"):
        train_image_encoder_stage1.main(
            _image_args(image_store, tmp_path / "o", "MODEL.BACKBONE", "efficientvit_b9")
        )


def test_text_student_in_the_image_trainer_is_refused(image_store, tmp_path):
    with pytest.raises(ConfigError, match="text student, .*train_text_encoder_stage1.py"):
        train_image_encoder_stage1.main(
            _image_args(image_store, tmp_path / "o", "MODEL.BACKBONE", "MobileCLIP-S0")
        )


def test_corrupt_checkpoint_in_the_output_folder(image_store, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "ckpt_epoch_3.pth").write_bytes(b"truncated")
    with pytest.raises(TrainCheckpointError, match="ckpt_epoch_3.pth"):
        train_image_encoder_stage1.main(_image_args(image_store, out, "TRAIN.EPOCHS", "1"))


def test_checkpoint_of_another_student_is_refused(image_store, tmp_path):
    out = tmp_path / "o"
    train_image_encoder_stage1.main(_image_args(image_store, out, "TRAIN.EPOCHS", "1"))
    with pytest.raises(TrainCheckpointError, match="own OUTPUT folder"):
        train_image_encoder_stage1.main(
            _image_args(image_store, out, "TRAIN.EPOCHS", "2", "MODEL.BACKBONE", "repvit_m0_9")
        )


def test_pretrained_file_that_does_not_fit(image_store, tmp_path):
    bogus = tmp_path / "bogus.pth"
    torch.save({"state_dict": {"conv.weight": torch.zeros(3, 3)}}, bogus)
    with pytest.raises(ConfigError, match=r"^MODEL.PRETRAINED .*bogus.pth.* — give a weight file"):
        train_image_encoder_stage1.main(
            _image_args(image_store, tmp_path / "o", "MODEL.PRETRAINED", str(bogus))
        )
