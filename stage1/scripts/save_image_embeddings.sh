#!/usr/bin/env bash
# Phase 1, images: export SAM3 trunk embeddings of SA-1B. KEY=VALUE overrides, see _launch.sh.
#   bash stage1/scripts/save_image_embeddings.sh CFG=... DATA_PATH=data/sa-1b GPUS=8
set -euo pipefail
ENTRY=stage1/save_embedding_image_stage1.py
CFG=stage1/configs/teacher/sam_vit_huge_sa1b.yaml
MASTER_PORT=${MASTER_PORT:-29501}
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" "$@"
