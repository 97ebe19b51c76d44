"""What ``python -m sam3.predict`` writes: ``<stem>.json`` (the photo, the prompt, the
preprocessing and one entry per mask, masks as COCO RLE) and ``<stem>_overlay.png`` in the
output folder, each through a temporary name and a rename, and a summary on stdout."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..files import atomic_path, write_json_atomic
from .inputs import PredictError


@dataclass
class PromptRun:
    """One prompt's results, as the outputs need them."""

    prompt: dict[str, Any]  # the prompt as the JSON file records it
    header: dict[str, Any]  # further top-level JSON fields (the detector's threshold)
    entries: list[dict[str, Any]]  # one per mask: box_xyxy, score, area, mask (RLE), ...
    overlay: dict[str, Any]  # the keyword arguments of sam3.visualize.draw_detections
    kind: str  # what the summary counts: "detection(s)" or "mask(s)"
    what: str  # the summary's wording after the count


def rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO RLE of bool masks ``[N, H, W]``, counts as text."""
    from pycocotools import mask as mask_utils

    encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": list(r["size"]), "counts": r["counts"].decode("ascii")} for r in encoded]


def check_output(folder: Path, stem: str, overwrite: bool) -> tuple[Path, Path]:
    """Create ``folder`` and prove it is writable; refuse to replace results unless asked.
    Returns the overlay's and the JSON file's paths."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise PredictError(
            f"cannot write to the output folder {folder} ({err.strerror or err}) — choose "
            "another --output"
        ) from None
    overlay, report = folder / f"{stem}_overlay.png", folder / f"{stem}.json"
    existing = [str(t) for t in (overlay, report) if t.exists()]
    if existing and not overwrite:
        raise PredictError(
            f"{', '.join(existing)} already exists — pass --overwrite to replace it, or choose "
            "another --output"
        )
    return overlay, report


def write_results(
    overlay_path: Path, json_path: Path, overlay: Image.Image, report: dict[str, Any]
) -> None:
    """The overlay as PNG, then the JSON report (one-space indent, a final newline)."""
    with atomic_path(overlay_path) as tmp:
        overlay.save(tmp, format="PNG")
    write_json_atomic(json_path, report, indent=1)


def print_summary(run: PromptRun, photo: Path, size: tuple[int, int], paths: list[Path]) -> None:
    """One line per mask, then the count, the photo and where the results went."""
    for i, d in enumerate(run.entries):
        box = "none" if d["box_xyxy"] is None else ", ".join(f"{v:.1f}" for v in d["box_xyxy"])
        which = f"  set {d['prompt']} token {d['mask_index']}" if "mask_index" in d else ""
        print(f"{i:3d}{which}  score {d['score']:.3f}  box [{box}]  area {d['area']} px")
    print(
        f"{len(run.entries)} {run.kind} {run.what} in {photo} ({size[0]}x{size[1]}) -> "
        f"{', '.join(str(p) for p in paths)}"
    )
