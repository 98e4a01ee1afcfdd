"""The training losses: symmetric cross-entropy over the global batch, of embeddings or of pair scores.

Both see the whole global batch as negatives, whatever the number of processes and accumulation
micro-batches. A step's micro-batches are ``parts``: the features of each (as the model's forward
returns them), those of the current micro-batch with gradients and the others cached without, so that
accumulation is exact, as in open_clip. A loss is computed once per micro-batch; what does not come
from the features (the logit scale, a pair head's weights) gets its gradient in the last one only.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import nn

from pipeline.encode.distributed import World
from pipeline.encode.model import CLIP4Clip, PairFeatures, score_matrix


class DualLoss:
    """CLIP's symmetric InfoNCE over video and text embeddings: open_clip's ``ClipLoss``, features
    all-gathered with their gradients."""

    def __init__(self, world: World):
        self.clip_loss = ClipLoss(gather_with_grad=True, cache_labels=True, rank=world.rank, world_size=world.size)

    def __call__(self, parts: list[tuple], current: int, last: bool) -> torch.Tensor:
        videos = torch.cat([part[0] for part in parts])
        texts = torch.cat([part[1] for part in parts])
        scale = parts[current][2]
        # Each micro-batch sees the whole loss; the scale's gradient must be counted once.
        return self.clip_loss(videos.float(), texts.float(), (scale if last else scale.detach()).float())


class PairLoss:
    """CLIP4Clip's loss for tightTransf: symmetric cross-entropy over the B×B matrix of pair scores, every
    caption of the global batch against every video, the matching pairs on the diagonal.

    As ``ClipLoss`` without ``local_loss``, every process scores the whole global batch from features
    gathered with their gradients: each rank's features then get the sum of every rank's gradient, which
    DDP's mean over ranks divides back, and the head's identical gradients stay as they are.
    """

    def __init__(self, world: World, head: nn.Module):
        self.world, self.head = world, head

    def __call__(self, parts: list[PairFeatures], current: int, last: bool) -> torch.Tensor:
        features = PairFeatures(*(torch.cat([getattr(part, name) for part in parts]) for name in FIELDS))
        if self.world.distributed:
            features = PairFeatures(*(gather(getattr(features, name), len(parts)) for name in FIELDS))
        scores = score_matrix(self.head if last else detached(self.head), features)
        labels = torch.arange(len(scores), device=scores.device)
        return (F.cross_entropy(scores, labels) + F.cross_entropy(scores.T, labels)) / 2


FIELDS = ("text", "text_mask", "frames", "frame_mask")


def gather(tensor: torch.Tensor, micro_batches: int) -> torch.Tensor:
    """Every rank's ``tensor`` (its ``micro_batches`` micro-batches, concatenated) in the global batch's order,
    by micro-batch then rank; float ones keep their gradients.

    In that order the pair scores are the one-process matrix entry for entry: near initialisation, where the
    scores barely differ, another order's rounding would be much of their gradients."""
    if tensor.dtype == torch.bool:  # masks: no gradient, and gloo gathers bytes, not booleans
        parts = [torch.empty_like(tensor, dtype=torch.uint8) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.to(torch.uint8))
        gathered = torch.stack(parts).bool()
    else:
        gathered = torch.stack(torch.distributed.nn.all_gather(tensor))  # ranks × local rows × ...
    ranks, rows = gathered.shape[:2]
    by_micro_batch = gathered.view(ranks, micro_batches, rows // micro_batches, *gathered.shape[2:]).transpose(0, 1)
    return by_micro_batch.reshape(ranks * rows, *gathered.shape[2:])


def detached(module: nn.Module):
    """``module`` called with its weights detached: its output still passes gradients to its inputs."""
    weights = {name: parameter.detach() for name, parameter in module.named_parameters()}
    return lambda *inputs: torch.func.functional_call(module, weights, inputs)


def make_loss(model: CLIP4Clip, world: World) -> DualLoss | PairLoss:
    """The loss ``model``'s head trains with."""
    return PairLoss(world, model.head) if model.scores_pairs else DualLoss(world)
