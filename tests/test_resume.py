"""Phase 2 run folders: starting afresh over an earlier run, resuming with a changed config, the
learning-rate horizon of a longer run, and what a checkpoint records about its teacher."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from stage1.checkpointing import TrainCheckpointError, list_checkpoints
from stage1.config import ConfigError, load_config
from stage1.data.transforms import ImageTransform, preprocessing_record
from stage1.embedding_store import StoreSpec, StoreWriter, create_store, finalize_manifest
from stage1.engine import run_training

from conftest import TINY_GEOMETRY, make_sa1b

ROOT = Path(__file__).resolve().parents[1]
TEACHER = {
    "kind": "image",
    "arch": "sam3_tiny",
    "checkpoint": "random",
    "checkpoint_sha256": "random",
    "precision": "fp32",
}
# 4 training images in one batch: 1 optimizer step per epoch, fp32, absolute lr, no warm-up
FAST = [
    *TINY_GEOMETRY,
    "DATA.BATCH_SIZE",
    "4",
    "DATA.VAL_SPLIT",
    "",
    "TRAIN.LR_SCALE_BATCH",
    "0",
    "TRAIN.WARMUP_EPOCHS",
    "0",
    "TRAIN.AMP",
    "off",
    "TRAIN.EPOCHS",
    "1",
]


def image_keys(n_train: int, n_val: int) -> list[str]:
    """The keys ``make_sa1b`` gives its images."""
    return [f"sa_train{i:03d}" for i in range(n_train)] + [f"sa_val{i:03d}" for i in range(n_val)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These runs are tiny: one intra-op thread is fastest, and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    """Four training and two validation images and a store of random "teacher" records for
    them, written directly (no teacher runs)."""
    base = tmp_path_factory.mktemp("run_inputs")
    data = make_sa1b(base / "sa1b", n_train=4, n_val=2, corrupt=False)
    store = base / "store"
    prep = preprocessing_record(ImageTransform(112, "pad", (0.5,) * 3, (0.5,) * 3))
    spec = StoreSpec((64, 8, 8), meta={"teacher": TEACHER, "preprocessing": prep, "tag": "t"})
    create_store(store, spec, world_size=1)
    keys = image_keys(4, 2)
    values = np.random.default_rng(0).standard_normal((len(keys), 64, 8, 8)).astype(np.float32)
    with StoreWriter(store, 0) as writer:
        writer.write(keys, values)
    finalize_manifest(store)
    return data, store


def train(inputs, out: Path, *opts: str):
    """Train ES-EV-S on ``inputs`` into ``out``; ``opts`` override :data:`FAST`."""
    data, store = inputs
    paths = ["DATA.DATA_PATH", str(data), "OUTPUT", str(out), "DISTILL.TEACHER_EMBED_PATH"]
    cfg = load_config(ROOT / "stage1/configs/es_ev_s.yaml", [*FAST, *paths, str(store), *opts])
    return run_training(cfg, "vision")


def lr_of(out: Path, epoch: int) -> float:
    """The learning rate the optimizer held when epoch ``epoch``'s checkpoint was written."""
    state = torch.load(out / f"ckpt_epoch_{epoch}.pth", weights_only=True)
    rates = {g["lr"] for g in state["optimizer"]["param_groups"]}
    assert len(rates) == 1  # LAYER_DECAY 1: every group at the same rate
    return rates.pop()


def test_fresh_start_over_checkpoints_is_refused_unless_moved_or_deleted(inputs, tmp_path):
    out = tmp_path / "run"
    train(inputs, out, "TRAIN.EPOCHS", "2")
    state = torch.load(out / "ckpt_epoch_1.pth", weights_only=True)
    assert state["world_size"] == 1
    assert state["provenance"]["teacher"] == TEACHER
    assert state["provenance"]["store"]["path"] == str(inputs[1].resolve())
    spec = state["provenance"]["store"]["spec"]
    assert spec["shape"] == [64, 8, 8] and spec["encoding"] == "float16"
    assert spec["meta"]["preprocessing"]["mode"] == "pad"

    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(TrainCheckpointError) as refused:
        train(inputs, out, "TRAIN.AUTO_RESUME", "False")
    text = str(refused.value)
    for part in ("ckpt_epoch_0.pth", "ckpt_epoch_1.pth", "TRAIN.FRESH_START move", "delete", " — "):
        assert part in text, text
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # untouched

    assert train(inputs, out, "TRAIN.AUTO_RESUME", "False", "TRAIN.FRESH_START", "move").epochs_run
    (old,) = out.glob("previous_run_*")
    assert re.fullmatch(r"previous_run_\d{8}T\d{6}Z(-\d+)?", old.name)
    assert [e for e, _ in list_checkpoints(old)] == [0, 1]
    assert list((old / "tensorboard").glob("events.out.tfevents.*"))
    moved = torch.load(old / "ckpt_epoch_1.pth", weights_only=True)["model"]
    assert all(torch.equal(v, moved[k]) for k, v in state["model"].items())
    assert [e for e, _ in list_checkpoints(out)] == [0]  # the new run's only
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert "moved" in (out / "log_rank0.txt").read_text()
    with pytest.raises(ConfigError, match="TRAIN.AUTO_RESUME False to start afresh"):
        train(inputs, out, "TRAIN.FRESH_START", "move")  # AUTO_RESUME is True

    train(inputs, out, "TRAIN.EPOCHS", "2")  # resume the new run to two epochs
    fresh = ("TRAIN.AUTO_RESUME", "False", "TRAIN.FRESH_START")
    assert train(inputs, out, *fresh, "delete").epochs_run
    assert [e for e, _ in list_checkpoints(out)] == [0]  # epoch 1 deleted with the rest
    assert "deleted" in (out / "log_rank0.txt").read_text()
    assert [p.name for p in out.glob("previous_run_*")] == [old.name]  # earlier moves stay


def test_a_changed_run_defining_key_is_refused_with_the_differences(inputs, tmp_path):
    out = tmp_path / "run"
    train(inputs, out, "MODEL.BACKBONE", "ES-EV-S")  # the zoo name of efficientvit_b0
    with pytest.raises(TrainCheckpointError) as refused:
        train(inputs, out, "TRAIN.EPOCHS", "2", "TRAIN.BASE_LR", "2e-3", "DATA.BATCH_SIZE", "2")
    text = str(refused.value)
    for part in ("TRAIN.BASE_LR: 0.001 → 0.002", "DATA.BATCH_SIZE: 4 → 2", "TRAIN.FRESH_START"):
        assert part in text, text
    assert "student" not in text  # ES-EV-S and efficientvit_b0 are one student
    # restoring them resumes; paths and logging keys may change freely
    free = ("TAG", "other", "LOG_EVERY", "1", "TRAIN.SAVE_FREQ", "3", "DEVICE", "cpu")
    assert train(inputs, out, "TRAIN.EPOCHS", "2", *free).epochs_run == 1

    ckpt = out / "ckpt_epoch_1.pth"
    state = torch.load(ckpt, weights_only=True)
    torch.save({**state, "world_size": 2}, ckpt)  # as if trained by two processes
    with pytest.raises(TrainCheckpointError, match="processes: 2 → 1"):
        train(inputs, out, "TRAIN.EPOCHS", "3")


def test_a_longer_run_continues_the_cosine_to_the_new_horizon(inputs, tmp_path):
    out = tmp_path / "run"
    lrs = ("TRAIN.WARMUP_EPOCHS", "1", "TRAIN.BASE_LR", "1e-3", "TRAIN.MIN_LR", "1e-5")
    train(inputs, out, "TRAIN.EPOCHS", "2", *lrs)
    assert lr_of(out, 1) == pytest.approx(1e-5)  # the end of a 2-update schedule
    assert train(inputs, out, "TRAIN.EPOCHS", "4", *lrs).epochs_run == 2

    def fresh(step: int) -> float:  # a 4-update cosine (warm-up over the first update)
        return 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * step / 4))

    assert lr_of(out, 2) == pytest.approx(fresh(3), rel=1e-9)  # not MIN_LR
    log = (out / "log_rank0.txt").read_text()
    assert (
        f"TRAIN.EPOCHS 2 -> 4: the schedule is recomputed for 4 epochs, so at update 2 the "
        f"learning rate goes from 1e-05 (where the 2-epoch schedule was) to {fresh(2):.3g}" in log
    )
    assert lr_of(out, 3) == pytest.approx(fresh(4), rel=1e-9)

    done = train(inputs, out, "TRAIN.EPOCHS", "4", *lrs)
    assert done.epochs_run == 0 and "already complete" in (out / "log_rank0.txt").read_text()
    with pytest.raises(TrainCheckpointError, match=r"4 epochs .*TRAIN\.EPOCHS 3 — "):
        train(inputs, out, "TRAIN.EPOCHS", "3", *lrs)
