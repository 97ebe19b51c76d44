"""Phase 2 run folders: starting afresh over an earlier run, resuming with a changed config, the
learning-rate horizon of a longer run, the batch scaling of the learning rates, and what a
checkpoint records about its teacher."""

from __future__ import annotations

import math
import re

import pytest
import torch

from stage1.common.config import ConfigError
from stage1.train.checkpointing import TrainCheckpointError, list_checkpoints

from helpers.training import TEACHER, inputs, lr_of, one_thread, train  # noqa: F401 (fixtures)


def test_fresh_start_over_checkpoints_is_refused_unless_moved_or_deleted(inputs, tmp_path):  # noqa: F811
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
    torn = ".ckpt_epoch_2.pth.999.tmp.pth"  # what a save killed half-way leaves (sam3.files)
    (out / torn).write_bytes(b"torn")

    assert train(inputs, out, "TRAIN.AUTO_RESUME", "False", "TRAIN.FRESH_START", "move").epochs_run
    (old,) = out.glob("previous_run_*")
    assert re.fullmatch(r"previous_run_\d{8}T\d{6}Z(-\d+)?", old.name)
    assert [e for e, _ in list_checkpoints(old)] == [0, 1] and (old / torn).is_file()
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


def test_a_changed_run_defining_key_is_refused_with_the_differences(inputs, tmp_path):  # noqa: F811
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


def test_a_longer_run_continues_the_cosine_to_the_new_horizon(inputs, tmp_path):  # noqa: F811
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


def test_the_learning_rates_are_scaled_by_the_total_batch(inputs, tmp_path):  # noqa: F811
    """README: BASE_LR, WARMUP_LR and MIN_LR are each multiplied by
    BATCH_SIZE x processes x ACCUMULATION_STEPS / LR_SCALE_BATCH."""
    out = tmp_path / "run"
    batch = ("DATA.BATCH_SIZE", "2", "TRAIN.ACCUMULATION_STEPS", "2")  # 4 images: 1 update/epoch
    rates = ("TRAIN.BASE_LR", "1e-3", "TRAIN.WARMUP_LR", "4e-4", "TRAIN.MIN_LR", "1e-4")
    schedule = ("TRAIN.EPOCHS", "4", "TRAIN.WARMUP_EPOCHS", "2", "TRAIN.LR_SCALE_BATCH", "32")
    assert train(inputs, out, *batch, *rates, *schedule).epochs_run == 4
    factor = 2 * 1 * 2 / 32  # one process
    peak, warmup, low = 1e-3 * factor, 4e-4 * factor, 1e-4 * factor
    # update 1 of a 2-update linear warm-up from WARMUP_LR to BASE_LR
    assert lr_of(out, 0) == pytest.approx(warmup + (peak - warmup) / 2, rel=1e-9)
    # update 2 of a 4-update cosine from BASE_LR to MIN_LR: half-way
    assert lr_of(out, 1) == pytest.approx(low + (peak - low) / 2, rel=1e-9)
    assert lr_of(out, 3) == pytest.approx(low, rel=1e-9)  # the end
    line = "lr 0.000125 (warm-up from 5e-05, cosine to 1.25e-05)"
    assert line in (out / "log_rank0.txt").read_text()
