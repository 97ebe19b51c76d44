#!/usr/bin/env bash
# Phase 2, image: train a student on the stored trunk embeddings. KEY=VALUE overrides, see
# _launch.sh.   bash stage1/scripts/train_image_student.sh CFG=stage1/configs/es_rv_m.yaml GPUS=8
set -euo pipefail
ENTRY=stage1/train_image_encoder_stage1.py
CFG=stage1/configs/es_rv_m.yaml
MASTER_PORT=${MASTER_PORT:-29503}
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" "$@"
