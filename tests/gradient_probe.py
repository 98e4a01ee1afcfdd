"""Run under torchrun (or alone): one training step's gradients, as the Trainer leaves them for the
optimiser, saved by rank 0. ``tests/test_encode.py`` compares them across world sizes.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/gradient_probe.py \
        FRAMES MANIFEST OUT.pt ACCUM [HEAD]
"""

import sys
from pathlib import Path

import torch

from pipeline.encode.distributed import close_world, init_world
from pipeline.encode.train import Trainer, TrainOptions, make_recipe


def step_gradients(frames: Path, manifest: Path, accum_steps: int, head: str) -> dict[str, torch.Tensor] | None:
    world = init_world("cpu")
    try:
        options = TrainOptions(
            frames, manifest, Path("unused"), model="vidret-micro", pretrained="none", head=head,
            recipe=make_recipe("demo", batch_size=8), accum_steps=accum_steps, device="cpu", progress=False,
        )  # fmt: skip
        trainer = Trainer(options, world)
        batches = trainer.epoch_batches()
        trainer.backward([next(batches) for _ in range(accum_steps)])
        batches.close()
        grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
        return grads if world.is_main else None
    finally:
        close_world(world)


if __name__ == "__main__":
    frames, manifest, out, accum, *head = sys.argv[1:]
    gradients = step_gradients(Path(frames), Path(manifest), int(accum), head[0] if head else "seqTransf")
    if gradients is not None:
        torch.save(gradients, out)
