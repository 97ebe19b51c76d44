"""Phase 2's inputs: checks that run before anything is built or written, public EfficientSAM3
stores, caption files paired with a text store, and what the console shows."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stage1.common.config import load_config
from stage1.common.errors import UserError
from stage1.data.distill import TrainDataError, check_source_digests
from stage1.data.recap_datacomp import iter_captions
from stage1.store import (
    SOURCE_DIGEST,
    EmbeddingStore,
    StoreSpec,
    StoreWriter,
    create_store,
    finalize_manifest,
    source_digest,
)
from stage1.train.loop import run_training

from helpers.data import make_recap
from helpers.training import image_keys, inputs, one_thread, train  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[2]


def test_a_run_that_fails_validation_leaves_nothing_behind(inputs, tmp_path):  # noqa: F811
    missing = str(tmp_path / "missing")
    cases = [
        (("DATA.DATA_PATH", missing), "DATA.DATA_PATH .*missing does not exist — "),
        (("DISTILL.TEACHER_EMBED_PATH", missing), "TEACHER_EMBED_PATH .*missing does not exist"),
        (("DISTILL.EMBED_DIM", "32"), "does not match the config"),
        (("MODEL.BACKBONE", "efficientvit_b9"), "efficientvit_b0.* — "),
        (("MODEL.BACKBONE", "MobileCLIP-S0"), "text student.* — "),
        (("DATA.DATASET", "recap_datacomp"), "holds text data.* — set DATA.DATASET sa1b"),
        (("MODEL.PRETRAINED", missing), "MODEL.PRETRAINED .*missing does not exist — "),
        (("DEVICE", "cpu", "TRAIN.AMP", "fp16"), "fp16 needs CUDA.* — "),
        (("DATA.BATCH_SIZE", "5"), "no optimizer step .*set DATA.BATCH_SIZE 4 or less"),
    ]
    out = tmp_path / "new" / "run"
    for opts, message in cases:
        with pytest.raises(UserError, match=message):
            train(inputs, out, *opts)
        assert not (tmp_path / "new").exists(), opts
    assert train(inputs, out, "DATA.BATCH_SIZE", "4").epochs_run == 1  # as the hint says
    again = ("TRAIN.EPOCHS", "2", "DATA.DATASET", "")  # "": the image trainer's own, SA-1B
    assert train(inputs, out, *again).epochs_run == 1


def _legacy_store(root: Path, keys: list[str], shape: tuple[int, ...]) -> None:
    """A public EfficientSAM3 store: per record an int32 then float16 values; no manifest."""
    root.mkdir()
    rng = np.random.default_rng(1)
    with open(root / "rank0-values.bin", "wb") as f:
        for i, _ in enumerate(keys):
            f.write(np.int32(i).tobytes())
            f.write(rng.standard_normal(shape).astype("<f2").tobytes())
    (root / "rank0-keys.txt").write_text("".join(f"{k}\n" for k in keys))


def test_a_public_store_trains_once_confirmed(inputs, tmp_path):  # noqa: F811
    legacy = tmp_path / "legacy"
    _legacy_store(legacy, image_keys(4, 2), (64, 8, 8))
    out = tmp_path / "run"
    at = ("DISTILL.TEACHER_EMBED_PATH", str(legacy))
    with pytest.raises(UserError, match="no manifest.json.* — .*DISTILL.ACCEPT_LEGACY_STORE True"):
        train(inputs, out, *at)
    assert not out.exists()
    yes = ("DISTILL.ACCEPT_LEGACY_STORE", "True")
    with pytest.raises(UserError, match="8196-byte records.* — set DISTILL.EMBED_DIM"):
        train(inputs, out, *at, *yes, "DISTILL.EMBED_SIZE", "4")  # the wrong record shape
    assert not out.exists()
    ours = tmp_path / "ours"  # a store of this code that lost its manifest is not a public one
    shutil.copytree(inputs[1], ours)
    (ours / "manifest.json").unlink()
    with pytest.raises(UserError, match="manifest.json was lost — "):
        train(inputs, out, "DISTILL.TEACHER_EMBED_PATH", str(ours), *yes)
    assert train(inputs, out, *at, *yes).epochs_run == 1
    assert "preprocessing is unknown" in (out / "log_rank0.txt").read_text()
    state = torch.load(out / "ckpt_epoch_0.pth", weights_only=True)
    assert state["provenance"]["teacher"] is None
    assert state["provenance"]["store"]["spec"]["header_bytes"] == 4


@pytest.fixture
def captions(tmp_path) -> tuple[Path, list[tuple[str, str]]]:
    data = make_recap(tmp_path / "recap", n=6)
    return data, list(iter_captions(data))


def _text_store(root: Path, keys: list[str], headers: list[bytes] | None) -> EmbeddingStore:
    meta = {"teacher": {"kind": "text"}, "context_length": 8}
    if headers is not None:
        meta["record_header"] = SOURCE_DIGEST
    spec = StoreSpec((8, 16), header_bytes=8 if headers is not None else 0, meta=meta)
    create_store(root, spec, world_size=1)
    with StoreWriter(root, 0) as writer:
        writer.write(keys, np.zeros((len(keys), 8, 16), np.float32), headers=headers)
    finalize_manifest(root)
    return EmbeddingStore(root)


def test_captions_that_are_not_the_stored_ones_are_refused(captions, tmp_path):
    data, pairs = captions
    keys = [k for k, _ in pairs]
    digests = [source_digest(c) for _, c in pairs]
    assert check_source_digests(pairs, _text_store(tmp_path / "good", keys, digests)) is None
    digests[3] = source_digest("another caption")
    store = _text_store(tmp_path / "bad", keys, digests)
    with pytest.raises(TrainDataError, match=f"1 of 6 captions.*'{keys[3]}'.* — "):
        check_source_digests(pairs, store)
    older = _text_store(tmp_path / "old", keys, None)  # exported before digests existed
    assert "digest" in check_source_digests(pairs, older)

    out = tmp_path / "run"
    opts = [
        *("DATA.DATA_PATH", str(data), "OUTPUT", str(out)),
        *("DISTILL.TEACHER_EMBED_PATH", str(tmp_path / "bad")),
        *("DISTILL.CONTEXT_LENGTH", "8", "DISTILL.TEXT_DIM", "16"),
    ]
    cfg = load_config(ROOT / "stage1/configs/es_mc_s.yaml", opts)
    with pytest.raises(TrainDataError, match="re-export"):
        run_training(cfg, "text")
    assert not out.exists()


def test_validation_shows_progress_and_log_lines_appear_once(inputs, tmp_path, capsys):  # noqa: F811
    train(inputs, tmp_path / "run", "DATA.VAL_SPLIT", "val")
    seen = capsys.readouterr()
    assert "validation" in seen.err
    assert (seen.out + seen.err).count("epoch 0: train loss") == 1


def test_a_diverging_run_says_what_to_do(inputs, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"loss is (nan|inf) .* — lower TRAIN.BASE_LR"):
        train(inputs, out, "TRAIN.EPOCHS", "2", "TRAIN.BASE_LR", "1e30", "TRAIN.MIN_LR", "1e30")
    fresh = ("TRAIN.AUTO_RESUME", "False", "TRAIN.FRESH_START", "move")
    assert train(inputs, out, "TRAIN.EPOCHS", "2", *fresh).epochs_run == 2  # as the hint says
