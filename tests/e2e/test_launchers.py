"""stage1/scripts/*.sh: what a launcher passes on (never a default over the config), its argument
checks, and a worker's error line printed last under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.training import free_port

ROOT = Path(__file__).resolve().parents[2]

# launcher -> (its default CFG's OUTPUT, DATA.DATA_PATH, DATA.BATCH_SIZE), as the YAML files say
DEFAULTS = {
    "save_image_embeddings.sh": ("output/stage1_teacher", "data/sa-1b", 8),
    "save_text_embeddings.sh": ("output/stage1_text_teacher", "data/recap_subset", 64),
    "train_image_student.sh": ("output/stage1/es_rv_m", "data/sa-1b", 64),
    "train_text_student.sh": ("output/stage1_text/es_mc_s", "data/recap_subset", 64),
}
# a config of the same phase that each launcher does not default to
OTHER_CFG = {
    "save_image_embeddings.sh": "stage1/configs/teacher/sam_vit_huge_sa1b.yaml",
    "save_text_embeddings.sh": "stage1/configs/teacher/sam_text_teacher.yaml",
    "train_image_student.sh": "stage1/configs/es_tv_s.yaml",
    "train_text_student.sh": "stage1/configs/es_mc_m.yaml",
}


def _env() -> dict[str, str]:
    drop = ("GPUS", "NNODES", "NODE_RANK", "BATCH_SIZE", "STAGE1_DEBUG", "STAGE1_ERROR_DIR")
    return {k: v for k, v in os.environ.items() if k not in drop} | {"OMP_NUM_THREADS": "1"}


def _launch(script: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", f"stage1/scripts/{script}", f"PYTHON={sys.executable}", *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _resolved(script: str, *args: str) -> dict:
    """The config the launcher's entry point resolves (``--print-config``)."""
    proc = _launch(script, *args, "--print-config")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("{\n") :])


def _where(cfg: dict) -> tuple[str, str, int]:
    return cfg["OUTPUT"], cfg["DATA"]["DATA_PATH"], cfg["DATA"]["BATCH_SIZE"]


@pytest.mark.parametrize("script", sorted(DEFAULTS))
def test_without_keys_the_launcher_follows_its_config(script, tmp_path):
    assert _where(_resolved(script)) == DEFAULTS[script]
    # a YAML of one's own: its OUTPUT and DATA_PATH hold, not the launcher's
    own = tmp_path / "own.yaml"
    own.write_text(
        f"BASE: [{ROOT / OTHER_CFG[script]}]\n"
        f"OUTPUT: {tmp_path / 'own_out'}\n"
        f"DATA:\n  DATA_PATH: {tmp_path / 'own_data'}\n  BATCH_SIZE: 5\n"
    )
    assert _where(_resolved(script, f"CFG={own}")) == (
        str(tmp_path / "own_out"),
        str(tmp_path / "own_data"),
        5,
    )


def test_another_student_config_writes_to_its_own_folder():
    cfg = _resolved("train_image_student.sh", "CFG=stage1/configs/es_tv_s.yaml")
    assert cfg["OUTPUT"] == "output/stage1/es_tv_s" and cfg["MODEL"]["BACKBONE"] == "tiny_vit_5m"


@pytest.mark.parametrize("script", sorted(DEFAULTS))
def test_explicit_keys_override_the_config(script, tmp_path):
    cfg = _resolved(
        script,
        f"CFG={OTHER_CFG[script]}",
        f"OUTPUT={tmp_path / 'out'}",
        f"DATA_PATH={tmp_path / 'data'}",
        "BATCH_SIZE=3",
    )
    assert _where(cfg) == (str(tmp_path / "out"), str(tmp_path / "data"), 3)
    if script.startswith("save_"):  # the export writes its store into OUTPUT
        assert cfg["DISTILL"]["TEACHER_EMBED_PATH"] == str(tmp_path / "out" / "embeddings")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["GPUS=0"], "GPUS=0"),
        (["GPUS=abc"], "GPUS=abc"),
        (["NNODES=0"], "NNODES=0"),
        (["NNODES=2", "NODE_RANK=2"], "NODE_RANK=2"),
        (["BATCH_SIZE=0"], "BATCH_SIZE=0"),
        (["BATCH_SIZE=1.5"], "BATCH_SIZE=1.5"),
        (["MASTER_PORT=http"], "MASTER_PORT=http"),
        (["GPU=1"], "did you mean GPUS"),
        (["OUPUT=somewhere"], "did you mean OUTPUT"),
        (["DATA.NUM_WORKERS=0"], "--opts DATA.NUM_WORKERS 0"),
        (["CFG=stage1/configs/es_rv_mm.yaml"], "stage1/configs/es_rv_mm.yaml does not exist"),
        (["PYTHON=/no/such/python"], "PYTHON=/no/such/python"),
    ],
)
def test_bad_launcher_arguments_are_one_line_before_anything_starts(args, fragment):
    proc = subprocess.run(
        ["bash", "stage1/scripts/train_image_student.sh", *args],
        cwd=ROOT,
        env=_env() | {"PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""  # nothing was launched
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and " — " in lines[0], proc.stderr
    assert fragment in lines[0]


def test_a_worker_error_under_torchrun_comes_last_once(tmp_path):
    out = tmp_path / "run"
    proc = _launch(
        "train_text_student.sh",
        "GPUS=2",
        f"MASTER_PORT={free_port()}",
        f"OUTPUT={out}",
        "--opts",
        "TRAIN.AMP",
        "maybe",
    )
    both = proc.stdout + proc.stderr
    assert proc.returncode == 1, both[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: TRAIN.AMP = 'maybe'"), both[-3000:]
    assert both.count(last) == 1  # two ranks, one line
    assert not out.exists()
