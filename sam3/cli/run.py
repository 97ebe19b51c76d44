"""One command line of ``python -m sam3.predict``, start to end: every input checked, then the
model loaded, the prompt run and the results written."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..checkpoint import CheckpointError
from ..predictor import Sam3Predictor
from .detect import detect
from .inputs import (
    EXIT_USER_ERROR,
    PredictError,
    check_checkpoint,
    error_line,
    open_image,
    require_pycocotools,
    resolve_device,
)
from .interactive import segment
from .outputs import check_output, print_summary, write_results
from .prompts import DEFAULT_THRESHOLD, InstPrompt, check_prompt


def predict(args: argparse.Namespace) -> None:
    """Check everything, load the model, run the prompt, write the overlay and the JSON."""
    image_path, ckpt = Path(args.image), Path(args.checkpoint)
    image = open_image(image_path)
    prompt = check_prompt(args, *image.size)
    interactive = isinstance(prompt, InstPrompt)
    check_checkpoint(ckpt)
    device = resolve_device(args.device)
    require_pycocotools()
    overlay_path, json_path = check_output(Path(args.output), image_path.stem, args.overwrite)

    from ..model_builder import load_image_model
    from ..visualize import draw_detections

    model = load_image_model(ckpt, device=device, enable_inst_interactivity=interactive)
    threshold = DEFAULT_THRESHOLD if interactive else prompt.threshold
    predictor = Sam3Predictor(model, threshold, device, torch.bfloat16 if args.bf16 else None)
    state = predictor.set_image(image)
    run = segment(predictor, state, prompt) if interactive else detect(predictor, state, prompt)
    report = {
        "image": str(args.image),
        "image_size": {"width": image.width, "height": image.height},
        "exif_orientation_applied": True,
        "checkpoint": str(args.checkpoint),
        "prompt": run.prompt,
        **run.header,
        "preprocessing": dict(model.preprocessing),
        "detections": run.entries,
    }
    write_results(overlay_path, json_path, draw_detections(image, **run.overlay), report)
    print_summary(run, image_path, image.size, [overlay_path, json_path])


def run(args: argparse.Namespace) -> int:
    """:func:`predict`; a user's mistake is one ``error:`` line on stderr and exit status 1
    (``--debug`` raises it instead)."""
    try:
        predict(args)
    except (PredictError, CheckpointError, OSError) as err:
        if args.debug:
            raise
        print(error_line(err), file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    return 0
