"""The encode stage: train the CLIP4Clip video tower on decoded frames and write embeddings.

One module per role: ``model`` (CLIP4Clip on open_clip, the heads, the factory),
``reader`` (frames from Parquet, prefetch), ``train`` (recipes, the loop,
checkpoints and resume), ``embed`` (videos.parquet and texts.parquet),
``checkpoint`` and ``distributed`` (torchrun).
"""

from pipeline.encode.embed import EmbedOptions, EmbedSummary, embed
from pipeline.encode.model import CLIP4Clip, ModelSpec, create_clip4clip
from pipeline.encode.train import RECIPES, Recipe, TrainOptions, TrainSummary, make_recipe, train

__all__ = [
    "CLIP4Clip",
    "EmbedOptions",
    "EmbedSummary",
    "ModelSpec",
    "RECIPES",
    "Recipe",
    "TrainOptions",
    "TrainSummary",
    "create_clip4clip",
    "embed",
    "make_recipe",
    "train",
]
