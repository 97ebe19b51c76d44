"""The command line every Stage-1 entry point shares."""

from __future__ import annotations

import argparse

from yacs.config import CfgNode

from .config import load_config


def build_parser(description: str) -> argparse.ArgumentParser:
    """Parser with the common flags; entry points add their own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--cfg", required=True, help="experiment YAML (its BASE files merge first)")
    p.add_argument("--data-path", help="dataset root; overrides DATA.DATA_PATH")
    p.add_argument("--output", help="run folder; overrides OUTPUT")
    p.add_argument("--batch-size", type=int, help="per-process batch; overrides DATA.BATCH_SIZE")
    p.add_argument("--device", help="cuda, cuda:N or cpu; overrides DEVICE (default: auto)")
    p.add_argument(
        "--opts",
        nargs="+",
        default=[],
        metavar="KEY VALUE",
        help="config overrides as KEY VALUE pairs, e.g. --opts DATA.DATASET recap_datacomp",
    )
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK instead (used).
    p.add_argument("--local-rank", "--local_rank", type=int, help=argparse.SUPPRESS)
    return p


def config_from_args(args: argparse.Namespace) -> CfgNode:
    """Resolve the config: YAML <- named flags <- ``--opts``."""
    overrides = {
        "DATA.DATA_PATH": args.data_path,
        "OUTPUT": args.output,
        "DATA.BATCH_SIZE": args.batch_size,
        "DEVICE": args.device,
    }
    return load_config(args.cfg, args.opts, overrides)
