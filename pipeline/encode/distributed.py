"""Process-group setup for ``torchrun``: NCCL on GPUs, gloo on the CPU.

A plain ``python``/``vidret`` run is a world of one and never touches
torch.distributed, so the single-process path has no extra moving parts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipeline.errors import VidretError

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    if device not in DEVICES:
        raise VidretError(f"--device {device!r}: choose one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise VidretError("--device cuda: no CUDA device is available (use --device cpu)")
    if device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def init_world(device: str = "auto") -> World:
    """The world torchrun describes in the environment, or a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    target = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    return World(rank=rank, size=size, device=target)


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def gather_to_all(world: World, item):
    """Every rank's ``item``, in rank order (a list of one outside torchrun)."""
    if not world.distributed:
        return [item]
    items = [None] * world.size
    dist.all_gather_object(items, item)
    return items


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
