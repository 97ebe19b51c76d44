"""``python -m sam3.predict``: one photo and a prompt in; an overlay PNG and a JSON file (boxes,
scores, masks as COCO RLE) out.

With ``--text`` the detector finds every instance of it (``--box`` / ``--negative-box`` add
example boxes; boxes alone run it with SAM3's stand-in caption). Without ``--text``, ``--point``
and ``--box`` segment the object they mark through the interactive heads
(:mod:`sam3.predict_inst_cli`); each mask's score is then its predicted IoU.

Every input is checked before the model is loaded. A mistake (a missing or unreadable photo or
checkpoint, a checkpoint that is not SAM3's or lacks the heads it needs, no prompt, a bad box or
point, an unwritable output folder) ends as one ``error: <what is wrong> — <what to do>`` line
on stderr and exit status 1, without a traceback (``--debug`` shows it). A box reaching outside
the photo is clipped to it (with a warning); one entirely outside is an error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .checkpoint import CheckpointError
from .predict_inst_cli import InstPrompt, add_inst_arguments, check_box, check_inst_args, segment
from .predictor import Detections, Sam3Predictor

EXIT_USER_ERROR = 1


class PredictError(Exception):
    """A mistake in the command line, reported as one ``error:`` line."""


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m sam3.predict``."""
    p = argparse.ArgumentParser(
        prog="python -m sam3.predict",
        description="Detect and segment what a text and/or boxes name on one photo, or (no "
        "text) segment the object that clicks and/or a box mark.",
    )
    p.add_argument("--checkpoint", required=True, help="sam3.pt or a merged EfficientSAM3 file")
    p.add_argument("--image", required=True, help="the photo (any format Pillow reads)")
    p.add_argument("--text", help='what to find, e.g. "a dog"')
    box = {"nargs": 4, "type": float, "metavar": ("X0", "Y0", "X1", "Y1"), "action": "append"}
    p.add_argument(
        "--box",
        default=[],
        help="an example box (with --text) or the object's box "
        "(without; one prompt set each), pixels (repeatable)",
        **box,
    )
    p.add_argument("--negative-box", default=[], help="a negative example box (with --text)", **box)
    add_inst_arguments(p)
    p.add_argument("--threshold", type=float, help="keep detection scores above it (0.5; --text)")
    p.add_argument("--output", default="predictions", help="output folder (./predictions)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--bf16", action="store_true", help="run the model under bfloat16 autocast")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def _open_image(path: Path) -> Image.Image:
    """The photo as RGB, EXIF orientation applied (so that pixels are as a viewer shows them)."""
    if not path.exists():
        raise PredictError(f"image {path} does not exist — check the --image path")
    if not path.is_file():
        raise PredictError(f"image {path} is not a file — give a photo with --image")
    try:
        with Image.open(path) as img:
            img.load()
            return ImageOps.exif_transpose(img).convert("RGB")
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
    ) as err:
        raise PredictError(
            f"image {path} could not be read ({err}) — give a JPEG, PNG or other Pillow format"
        ) from None


def _check_prompt(
    args: argparse.Namespace, width: int, height: int
) -> list[tuple[list[float], bool]] | InstPrompt:
    """The detector's prompt boxes (clipped, with their positive flags), or the interactive
    prompt when no text is given."""
    if args.text is not None and not args.text.strip():
        raise PredictError('the --text prompt is empty — give a phrase such as --text "a dog"')
    if args.text is None and not (args.box or args.negative_box or args.point):
        raise PredictError(
            'no prompt given — pass --text "a dog" (with example --box X0 Y0 X1 Y1 if you like), '
            "or --point X Y 1 and/or --box X0 Y0 X1 Y1 to segment one object"
        )
    try:
        if args.text is None:
            return check_inst_args(args, width, height)
        if args.point:
            raise ValueError(
                "--point goes without --text (points prompt the interactive heads, which take "
                "no text) — drop --text to segment what the points mark, or drop --point"
            )
        if args.multimask or args.single_mask:
            raise ValueError(
                f"{'--multimask' if args.multimask else '--single-mask'} applies to --point / "
                "--box without --text — drop it (the detector returns one mask per detection)"
            )
        args.threshold = 0.5 if args.threshold is None else args.threshold
        if not 0.0 <= args.threshold <= 1.0:
            raise ValueError(f"--threshold {args.threshold} is outside [0, 1] — give e.g. 0.5")
        boxes = [(check_box("--box", b, width, height), True) for b in args.box]
        negative = [
            (check_box("--negative-box", b, width, height), False) for b in args.negative_box
        ]
        return boxes + negative
    except ValueError as err:
        raise PredictError(str(err)) from None


def _resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PredictError(f"--device {name!r} is not a device — use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PredictError(f"--device {name}: CUDA is not available here — use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise PredictError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s) — "
            "use cuda or cuda:N with a smaller N"
        )
    if device.type not in ("cpu", "cuda"):
        raise PredictError(f"--device {name}: only cpu and cuda are supported — use one of them")
    return device


def _check_output(folder: Path, names: list[str], overwrite: bool) -> list[Path]:
    """Create ``folder`` and prove it is writable; refuse to replace results unless asked."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise PredictError(
            f"cannot write to the output folder {folder} ({err.strerror or err}) — choose "
            "another --output"
        ) from None
    targets = [folder / n for n in names]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise PredictError(
            f"{', '.join(existing)} already exists — pass --overwrite to replace it, or choose "
            "another --output"
        )
    return targets


def _write_atomic(target: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary name in the same folder, then rename over ``target``."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO RLE of bool masks ``[N, H, W]``, counts as text."""
    from pycocotools import mask as mask_utils

    encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": list(r["size"]), "counts": r["counts"].decode("ascii")} for r in encoded]


def _detect(predictor: Sam3Predictor, state: Any, args: argparse.Namespace, boxes: list) -> tuple:
    """The detector's run: prompt record, JSON entries, what to draw, the summary's start."""
    det: Detections = predictor.predict(
        state, args.text, [b for b, _ in boxes], [positive for _, positive in boxes]
    )
    masks = det.masks.cpu().numpy()
    record = {
        "text": args.text,
        "boxes": [b for b, positive in boxes if positive],
        "negative_boxes": [b for b, positive in boxes if not positive],
    }
    entries = [
        {
            "box_xyxy": [round(float(v), 2) for v in box],
            "score": round(float(score), 5),
            "area": int(mask.sum()),
            "mask": rle,
        }
        for box, score, mask, rle in zip(
            det.boxes.tolist(), det.scores.tolist(), masks, _rle(masks) if len(det) else []
        )
    ]
    draw = (masks, det.boxes.cpu().numpy(), det.scores.tolist(), boxes, ())
    what = f"above {args.threshold:g} for {args.text!r}"
    return record, {"threshold": args.threshold}, entries, draw, what


def predict(args: argparse.Namespace) -> None:
    """Check everything, load the model, run the prompt, write the overlay and the JSON."""
    image_path, ckpt = Path(args.image), Path(args.checkpoint)
    image = _open_image(image_path)
    prompt = _check_prompt(args, *image.size)
    interactive = isinstance(prompt, InstPrompt)
    if not ckpt.is_file():
        raise PredictError(
            f"checkpoint {ckpt} {'is not a file' if ckpt.exists() else 'does not exist'} — "
            "pass sam3.pt (https://huggingface.co/facebook/sam3) or a merged EfficientSAM3 file"
        )
    device = _resolve_device(args.device)
    try:
        import pycocotools.mask  # noqa: F401
    except ImportError:
        raise PredictError(
            "pycocotools is not installed (the JSON stores masks as COCO RLE) — "
            "pip install pycocotools"
        ) from None
    stem = image_path.stem
    overlay_path, json_path = _check_output(
        Path(args.output), [f"{stem}_overlay.png", f"{stem}.json"], args.overwrite
    )

    from .model_builder import load_image_model
    from .visualize import draw_detections

    model = load_image_model(ckpt, device=device, enable_inst_interactivity=interactive)
    threshold = 0.5 if interactive else args.threshold
    predictor = Sam3Predictor(model, threshold, device, torch.bfloat16 if args.bf16 else None)
    state = predictor.set_image(image)
    run = (
        segment(predictor, state, prompt, _rle)
        if interactive
        else _detect(predictor, state, args, prompt)
    )
    record, extra, entries, draw, what = run
    report = {
        "image": str(args.image),
        "image_size": {"width": image.width, "height": image.height},
        "exif_orientation_applied": True,
        "checkpoint": str(args.checkpoint),
        "prompt": record,
        **extra,
        "preprocessing": dict(model.preprocessing),
        "detections": entries,
    }
    overlay = draw_detections(image, *draw)
    _write_atomic(overlay_path, lambda p: overlay.save(p, format="PNG"))
    _write_atomic(json_path, lambda p: p.write_text(json.dumps(report, indent=1) + "\n"))
    for i, d in enumerate(entries):
        box = "none" if d["box_xyxy"] is None else ", ".join(f"{v:.1f}" for v in d["box_xyxy"])
        which = f"  set {d['prompt']} token {d['mask_index']}" if interactive else ""
        print(f"{i:3d}{which}  score {d['score']:.3f}  box [{box}]  area {d['area']} px")
    kind = "mask(s)" if interactive else "detection(s)"
    print(
        f"{len(entries)} {kind} {what} in {image_path} ({image.width}x{image.height}) -> "
        f"{overlay_path}, {json_path}"
    )


def error_line(err: BaseException) -> str:
    """``error: <what is wrong> — <what to do>`` on one line."""
    if isinstance(err, OSError) and err.strerror:
        where = f"{err.filename}: " if err.filename is not None else ""
        message = f"{where}{err.strerror} — check the path, its permissions and the free space"
    else:
        message = str(err) or type(err).__name__
        if isinstance(err, CheckpointError) and " — " not in message:
            message += (
                " — pass SAM3's sam3.pt or a merged EfficientSAM3 checkpoint (with the heads)"
            )
    return "error: " + re.sub(r"\s*\n\s*", " ", message.strip())


def main(argv: list[str] | None = None) -> int:
    """Run the command line; a user's mistake is one ``error:`` line and exit status 1."""
    args = build_parser().parse_args(argv)
    try:
        predict(args)
    except (PredictError, CheckpointError, OSError) as err:
        if args.debug:
            raise
        print(error_line(err), file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
