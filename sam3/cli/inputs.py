"""The inputs of ``python -m sam3.predict`` that are not the prompt: the photo, the checkpoint,
the device and the mask encoder (pycocotools), each checked before the model loads. A mistake
raises :class:`PredictError`, whose text is ``<what is wrong> — <what to do>``."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..checkpoint import CheckpointError

EXIT_USER_ERROR = 1  # the exit status of a user's mistake


class PredictError(Exception):
    """A mistake in the command line, reported as one ``error:`` line."""


def open_image(path: Path) -> Image.Image:
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


def check_checkpoint(path: Path) -> None:
    """That ``path`` is a file (whether it is SAM3's is found when it loads)."""
    if not path.is_file():
        raise PredictError(
            f"checkpoint {path} {'is not a file' if path.exists() else 'does not exist'} — "
            "pass sam3.pt (https://huggingface.co/facebook/sam3) or a merged EfficientSAM3 file"
        )


def resolve_device(name: str | None) -> torch.device:
    """The ``--device`` to run on (CUDA when available if none is named)."""
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


def require_pycocotools() -> None:
    """That the COCO RLE encoder the JSON file needs is installed."""
    try:
        import pycocotools.mask  # noqa: F401
    except ImportError:
        raise PredictError(
            "pycocotools is not installed (the JSON stores masks as COCO RLE) — "
            "pip install pycocotools"
        ) from None


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
