"""Defaults written once, for options whose dataclasses live in modules that import torch or open_clip.

This module imports nothing, so the ``vidret`` command line reads these at start-up to show and apply
its defaults without importing the heavy stages. ``ModelSpec`` and ``create_clip4clip``
(pipeline/encode/model.py), ``TrainOptions`` (pipeline/encode/train.py), ``EmbedOptions``
(pipeline/encode/embed.py) and ``IndexOptions`` (pipeline/index/evaluate.py) take their defaults
from here; the light dataclasses (``FrameSpec``, ``DecodeOptions``, ``SynthOptions``) are read by the
CLI directly.
"""

# The model: open_clip's ViT-B/32 with OpenAI's CLIP weights (the reference; downloaded when online, a
# one-line error offline: pass --pretrained none or a local file there) and the parameter-free meanP head.
MODEL = "ViT-B-32"
PRETRAINED = "openai"
HEAD = "meanP"
LINEAR_PATCH = "2d"  # each frame's patches alone; 3d: CLIP4Clip's patches 3 frames deep

# encode train and encode embed
RECIPE = "mmaction2"  # a recipe in pipeline/encode/recipes/ or a .json file: the optimiser's defaults
DEVICE = "auto"  # CUDA when present, else the CPU
READ_WORKERS = 4  # frame-reading threads per process
ACCUM_STEPS = 1  # micro-batches per batch
TRAIN_SEED = 0
SAVE_EVERY = 0  # steps between mid-epoch checkpoints; 0: at epoch ends only
EMBED_SPLIT = "test"
EMBED_BATCH_SIZE = 64  # videos per forward pass, per process

# index (IndexOptions in pipeline/index/evaluate.py)
INDEX_TOP_K = 10  # neighbours per query in the --dump file
INDEX_DSL_SCALE = 100.0  # softmax scale of the dual-softmax prior
INDEX_BLOCK_SIZE = 4096  # queries per block of the similarity matrix
INDEX_TYPE = "flat"  # the exact index; auto chooses by size and --index-memory; else a FAISS index_factory string
INDEX_RECALL = 0.95  # recall@10 against exact search that an approximate index's search is tuned to reach
RERANK_K = 50  # candidates per query a pair head re-scores (vidret index --rerank)
INDEX_SEED = 0  # draws the training and tuning samples of an approximate index

# vidret collection (CollectionOptions in pipeline/collection.py): a folder of one's own videos
COLLECTION_CLIP_SECONDS = 10.0  # each video is cut into windows this long, each one searchable
COLLECTION_INDEX = "auto"  # exact while that is fast, approximate past it

# vidret study (StudyOptions in pipeline/study.py)
STUDY = "clip4clip"  # pipeline/studies/clip4clip.json
STUDY_OUT = "runs/study"

# vidret search and vidret serve
MAX_K = 1000  # results per query
MAX_QUERY_CHARS = 1000  # the text towers read at most 77 tokens; a longer query is a mistake, not a search
SERVE_HOST = "127.0.0.1"  # this machine only; --host 0.0.0.0 shares the page on the network
SERVE_PORT = 8000
SERVE_K = 12  # results on the search page and from /api/search when k is not given
