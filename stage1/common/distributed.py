"""Process-group setup for torchrun launches (NCCL on CUDA, gloo on CPU) and small helpers.

Ranks come from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); a single
process without them is rank 0 of 1 and needs no process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from stage1.common.errors import UserError


class DeviceError(UserError, ValueError):
    """A DEVICE that this machine does not have."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on global rank 0 (the process that writes shared files and shows progress)."""
        return self.rank == 0


def world_info_from_env() -> DistInfo:
    """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (torchrun); defaults describe one process."""
    env = os.environ
    return DistInfo(
        int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))
    )


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """``""`` -> this rank's GPU when CUDA is available, else CPU; otherwise as requested."""
    if not requested:
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise DeviceError(
            f'DEVICE {requested!r} is not a device — give cuda, cuda:N, cpu, or "" (automatic)'
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"DEVICE {requested!r} asked for, but CUDA is not available here — set DEVICE "
                'cpu, or "" to use CUDA only where it is'
            )
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
        elif device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"DEVICE {requested!r}, but this machine has {torch.cuda.device_count()} CUDA "
                "device(s) — give cuda:0 .. cuda:N-1, or cuda (one per local rank)"
            )
    return device


def init_distributed(device: torch.device, timeout_minutes: int = 60) -> DistInfo:
    """Join the process group when launched with more than one process; return this rank."""
    info = world_info_from_env()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if info.world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, init_method="env://", timeout=timedelta(minutes=timeout_minutes)
        )
    return info


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[int] | list[float]) -> list[float]:
    """Sum numbers over ranks (returns them unchanged in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s ``obj`` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
