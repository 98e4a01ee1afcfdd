"""Process-group setup for ``torchrun``: NCCL on GPUs, gloo on the CPU.

A plain ``python``/``vidret`` run is a world of one and never touches
torch.distributed, so the single-process path has no extra moving parts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipeline.device import resolve_device
from pipeline.errors import VidretError


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


def broadcast_decision(world: World, decide):
    """Rank 0's ``decide()`` on every rank: only rank 0 reads and writes the output folder.

    A refusal on rank 0 is raised on every rank, so that all of them stop."""
    if not world.distributed:
        return decide()
    outcome = [None]
    if world.is_main:
        try:
            outcome = [("ok", decide())]
        except VidretError as error:
            outcome = [("refused", str(error))]
    dist.broadcast_object_list(outcome, src=0)
    kind, value = outcome[0]
    if kind == "refused":
        raise VidretError(value)
    return value
