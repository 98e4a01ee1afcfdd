"""The encode stage: train the CLIP4Clip video tower on decoded frames and write embeddings.

One module per role: ``model`` (CLIP4Clip on open_clip, the heads, the factory),
``reader`` (frames from Parquet, prefetch), ``optim`` (the references' optimisers,
schedules, weight-decay and freezing rules), ``train`` (recipes, the loop,
checkpoints and resume), ``embed`` (videos.parquet and texts.parquet),
``checkpoint`` and ``distributed`` (torchrun). Recipes are data: ``recipes/*.json``.
"""

from pipeline.encode.embed import EmbedOptions, EmbedSummary, embed
from pipeline.encode.model import CLIP4Clip, ModelSpec, create_clip4clip
from pipeline.encode.train import Recipe, TrainOptions, TrainSummary, available_recipes, load_recipe, make_recipe, train

__all__ = [
    "CLIP4Clip",
    "EmbedOptions",
    "EmbedSummary",
    "ModelSpec",
    "Recipe",
    "TrainOptions",
    "TrainSummary",
    "available_recipes",
    "create_clip4clip",
    "embed",
    "load_recipe",
    "make_recipe",
    "train",
]
