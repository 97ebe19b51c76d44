"""Parameter (and latency) report: SAM3's image model, the students, the merged models.

    PYTHONPATH=sam3 python stage1/compare_models.py --student all [--json]
        [--latency [--latency-repeats N] [--img-size S] [--no-teacher-latency] [--device D]]

Every count comes from built modules (on the ``meta`` device: nothing is allocated; counting in
:mod:`stage1.report.params` and :mod:`stage1.report.students`, tables in
:mod:`stage1.report.tables`). For SAM3 (its image model with interactivity: both necks, the
detector heads, the SAM heads) it prints the spec's figures (vision, language, "decoder/heads",
total) each as the sum of its parts, the one part not built (the tracker's video-only tensors)
stated as such, and its image model part by part. For each student: the backbone, the head
(vision: the 1024-d conv head; text: the 256-d projector) and the total, the spec's published
figure, the same figure recomputed with the rule the spec used (students.md §1-§4), and
"% smaller" both as the spec computed it and for the whole student against the teacher part it
replaces; where our count and the published one differ it prints both and the reason. Then every
merged model (the students in SAM3's place, SAM3's neck convs and detector heads kept) with its
total, and what interactivity adds to it.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stage1.report.compare import main  # noqa: E402

if __name__ == "__main__":
    main()
