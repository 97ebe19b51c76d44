"""Phase-2 runs the tests share: tiny inputs written directly (no teacher runs), one fast
training call over them, and a free port for multi-process launches.

The fixtures work where they are imported: ``from helpers.training import inputs, one_thread,
train  # noqa: F401`` (``one_thread`` is autouse for the importing module).
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from stage1.common.config import load_config
from stage1.data.transforms import ImageTransform, preprocessing_record
from stage1.store import StoreSpec, StoreWriter, create_store, finalize_manifest
from stage1.train.loop import TrainResult, run_training

from helpers.data import TINY_GEOMETRY, make_sa1b

ROOT = Path(__file__).resolve().parents[2]
# the teacher record of the store :func:`inputs` writes
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


def train(inputs: tuple[Path, Path], out: Path, *opts: str) -> TrainResult:
    """Train ES-EV-S on ``inputs`` into ``out``; ``opts`` override :data:`FAST`."""
    data, store = inputs
    paths = ["DATA.DATA_PATH", str(data), "OUTPUT", str(out), "DISTILL.TEACHER_EMBED_PATH"]
    cfg = load_config(ROOT / "stage1/configs/es_ev_s.yaml", [*FAST, *paths, str(store), *opts])
    return run_training(cfg, "image")


def lr_of(out: Path, epoch: int) -> float:
    """The learning rate the optimizer held when epoch ``epoch``'s checkpoint in ``out`` was
    written (after that epoch's last update); every group must hold the same (LAYER_DECAY 1)."""
    state = torch.load(out / f"ckpt_epoch_{epoch}.pth", weights_only=True)
    rates = {g["lr"] for g in state["optimizer"]["param_groups"]}
    assert len(rates) == 1, rates
    return rates.pop()


def free_port() -> int:
    """A TCP port nothing listens on now (for ``MASTER_PORT``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
