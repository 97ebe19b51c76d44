#!/usr/bin/env bash
# Phase 2, text: train a text student on the stored text embeddings. KEY=VALUE overrides, see
# _launch.sh.   bash stage1/scripts/train_text_student.sh CFG=stage1/configs/es_mc_s.yaml GPUS=1
set -euo pipefail
ENTRY=stage1/train_text_encoder_stage1.py
CFG=stage1/configs/es_mc_s.yaml
MASTER_PORT=${MASTER_PORT:-29504}
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" "$@"
