"""``python -m sam3.predict``: one photo and a text and/or box prompt in; an overlay PNG and a JSON
file (boxes, scores, masks as COCO RLE) out.

Every input is checked before the model is loaded. A mistake (a missing or unreadable photo or
checkpoint, a checkpoint that is not SAM3's or lacks the heads, no prompt, a bad box, an
unwritable output folder) ends as one ``error: <what is wrong> — <what to do>`` line on stderr
and exit status 1, without a traceback (``--debug`` shows it). A box reaching outside the photo
is clipped to it (with a warning); one entirely outside is an error.
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
from .predictor import Detections, Sam3Predictor, clip_box

EXIT_USER_ERROR = 1


class PredictError(Exception):
    """A mistake in the command line, reported as one ``error:`` line."""


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m sam3.predict``."""
    p = argparse.ArgumentParser(
        prog="python -m sam3.predict",
        description="Detect and segment what a text and/or boxes name on one photo.",
    )
    p.add_argument("--checkpoint", required=True, help="sam3.pt or a merged EfficientSAM3 file")
    p.add_argument("--image", required=True, help="the photo (any format Pillow reads)")
    p.add_argument("--text", help='what to find, e.g. "a dog"')
    box = {"nargs": 4, "type": float, "metavar": ("X0", "Y0", "X1", "Y1"), "action": "append"}
    p.add_argument("--box", default=[], help="a positive example box, pixels (repeatable)", **box)
    p.add_argument("--negative-box", default=[], help="a negative example box (repeatable)", **box)
    p.add_argument("--threshold", type=float, default=0.5, help="keep scores above it (0.5)")
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
) -> list[tuple[list[float], bool]]:
    """The prompt boxes, clipped to the photo, with their positive flags."""
    if args.text is not None and not args.text.strip():
        raise PredictError('the --text prompt is empty — give a phrase such as --text "a dog"')
    if args.text is None and not args.box and not args.negative_box:
        raise PredictError(
            'no prompt given — pass --text "a dog", one or more --box X0 Y0 X1 Y1, or both'
        )
    if args.text is None and not args.box:
        raise PredictError(
            "only negative boxes given — add --text or a positive --box to say what to find"
        )
    if not 0.0 <= args.threshold <= 1.0:
        raise PredictError(f"--threshold {args.threshold} is outside [0, 1] — give e.g. 0.5")
    boxes = []
    for raw, positive in [(b, True) for b in args.box] + [(b, False) for b in args.negative_box]:
        flag = "--box" if positive else "--negative-box"
        try:
            clipped = clip_box(raw, width, height)
        except ValueError as err:
            raise PredictError(
                f"{flag} {' '.join(f'{v:g}' for v in raw)}: {err} — give X0 Y0 X1 Y1 in pixels "
                f"of the {width}x{height} photo, x1 > x0 and y1 > y0"
            ) from None
        if clipped != [float(v) for v in raw]:
            print(
                f"warning: {flag} {raw} reaches outside the photo; clipped to {clipped}",
                file=sys.stderr,
            )
        boxes.append((clipped, positive))
    return boxes


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


def _report(
    args: argparse.Namespace,
    size: tuple[int, int],
    boxes: list,
    det: Detections,
    masks: np.ndarray,
    prep: dict,
) -> dict[str, Any]:
    """The JSON record of one run."""
    width, height = size
    rles = _rle(masks) if len(det) else []
    return {
        "image": str(args.image),
        "image_size": {"width": width, "height": height},
        "exif_orientation_applied": True,
        "checkpoint": str(args.checkpoint),
        "prompt": {
            "text": args.text,
            "boxes": [b for b, positive in boxes if positive],
            "negative_boxes": [b for b, positive in boxes if not positive],
        },
        "threshold": args.threshold,
        "preprocessing": prep,
        "detections": [
            {
                "box_xyxy": [round(float(v), 2) for v in box],
                "score": round(float(score), 5),
                "area": int(mask.sum()),
                "mask": rle,
            }
            for box, score, mask, rle in zip(det.boxes.tolist(), det.scores.tolist(), masks, rles)
        ],
    }


def predict(args: argparse.Namespace) -> None:
    """Check everything, load the model, run the prompt, write the overlay and the JSON."""
    image_path, ckpt = Path(args.image), Path(args.checkpoint)
    image = _open_image(image_path)
    boxes = _check_prompt(args, *image.size)
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

    model = load_image_model(ckpt, device=device)
    predictor = Sam3Predictor(model, args.threshold, device, torch.bfloat16 if args.bf16 else None)
    state = predictor.set_image(image)
    det = predictor.predict(
        state, args.text, [b for b, _ in boxes], [positive for _, positive in boxes]
    )
    masks = det.masks.cpu().numpy()
    report = _report(args, image.size, boxes, det, masks, dict(model.preprocessing))
    overlay = draw_detections(image, masks, det.boxes.cpu().numpy(), det.scores.tolist(), boxes)
    _write_atomic(overlay_path, lambda p: overlay.save(p, format="PNG"))
    _write_atomic(json_path, lambda p: p.write_text(json.dumps(report, indent=1) + "\n"))
    for i, d in enumerate(report["detections"]):
        box = ", ".join(f"{v:.1f}" for v in d["box_xyxy"])
        print(f"{i:3d}  score {d['score']:.3f}  box [{box}]  area {d['area']} px")
    what = repr(args.text) if args.text is not None else "the boxes"
    print(
        f"{len(det)} detection(s) above {args.threshold:g} for {what} in {image_path} "
        f"({image.width}x{image.height}) -> {overlay_path}, {json_path}"
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
