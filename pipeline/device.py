"""Where tensors go: ``--device auto|cpu|cuda``, shared by training, embedding, ranking and search."""

from __future__ import annotations

import torch

from pipeline.errors import VidretError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """The torch device for a ``--device`` value: auto is CUDA when present (this process's GPU under torchrun)."""
    if device not in DEVICES:
        raise VidretError(f"--device {device!r}: choose one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise VidretError("--device cuda: no CUDA device is available (use --device cpu)")
    if device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)
