"""The encode stage: train the CLIP4Clip video tower on decoded frames and write embeddings.

One module per role: ``model`` (CLIP4Clip on open_clip, the heads, the factory),
``reader`` (frames from Parquet, prefetch), ``optim`` (the references' optimisers,
schedules, weight-decay and freezing rules), ``train`` (recipes, the loop,
checkpoints and resume), ``embed`` (videos.parquet and texts.parquet),
``checkpoint`` and ``distributed`` (torchrun). Recipes are data: ``recipes/*.json``.

Nothing is imported here, so that reading embeddings (``vidret index``) never loads open_clip:
import from the module, e.g. ``from pipeline.encode.train import TrainOptions, train``.
"""
