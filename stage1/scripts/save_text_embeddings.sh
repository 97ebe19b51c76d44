#!/usr/bin/env bash
# Phase 1, text: export SAM3 text-encoder embeddings of Recap-DataComp captions. KEY=VALUE
# overrides, see _launch.sh.
#   bash stage1/scripts/save_text_embeddings.sh DATA_PATH=data/recap_subset GPUS=1
set -euo pipefail
ENTRY=stage1/save_embedding_text_stage1.py
CFG=stage1/configs/teacher/sam_text_teacher.yaml
MASTER_PORT=${MASTER_PORT:-29502}
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" "$@"
