"""The index stage: a FAISS index over the video embeddings and retrieval metrics.

One module per role: ``reader`` (embeddings in the public format, checked),
``faiss_index`` (the index and its id map), ``evaluate`` (ranks, metrics,
ranks.parquet, the --dump file and the stage record).
"""

from pipeline.index.evaluate import IndexOptions, IndexSummary, index_embeddings, metrics_table
from pipeline.index.reader import Embeddings, read_embeddings

__all__ = ["Embeddings", "IndexOptions", "IndexSummary", "index_embeddings", "metrics_table", "read_embeddings"]
