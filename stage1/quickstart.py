"""Quickstart: every Stage-1 phase end to end on a tiny dataset, in a few minutes on a CPU.

    python stage1/quickstart.py [--output output/quickstart] [--sam3-ckpt sam3_checkpoints/sam3.pt]
        [--image-epochs N] [--text-epochs N] [--device cpu|cuda]

It builds a small SA-1B-style folder from the photographs in data/samples/ (crops and flips for
training; astronaut.jpg held out) and a Recap-DataComp-style captions parquet, then: exports the
teacher's image and text embeddings, trains ES-EV-S (EfficientViT-B0) and ES-MC-S (MobileCLIP-S0)
briefly, merges both into a SAM3 checkpoint, segments the held-out photo from a caption and from
a box (detector heads) and from the same box with the interactive SAM heads, with the teacher and
with the merged model, prints the parameter report, and draws the segmentations, the teacher's
and students' feature maps (PCA colours) and the training curves. With
sam3_checkpoints/sam3.pt it uses SAM3 itself (1008 px: slow on a CPU); without it, a reduced,
randomly initialised teacher (small backbone and detector heads, SAM3-sized SAM heads), and
says so.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stage1.demo.run import main  # noqa: E402

if __name__ == "__main__":
    main()
