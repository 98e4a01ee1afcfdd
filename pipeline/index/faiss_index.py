"""The FAISS inner-product index over video embeddings, and its id map.

``videos.faiss`` is an ``IndexIDMap2`` over an exact ``IndexFlatIP``; FAISS ids
are the rows of ``video_ids.parquet``, which maps them back to ``video_id`` (and
to the video file, where the run knows it). Searches run on a GPU when this
FAISS build has GPU support and sees one; the file on disk is always the CPU
form, so ``faiss.read_index`` loads it anywhere.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

from pipeline.errors import VidretError, first_line
from pipeline.files import commit_file, read_parquet, temporary_path, write_parquet
from pipeline.schemas import ID_MAP_FILE, ID_MAP_SCHEMA, INDEX_FILE


def faiss_gpus() -> int:
    """GPUs this FAISS build can use (0 for faiss-cpu)."""
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def build_index(embeddings: np.ndarray) -> faiss.Index:
    """An exact inner-product index over ``embeddings`` (float32, rows x dim), ids 0..rows-1."""
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(embeddings.shape[1]))
    index.add_with_ids(np.ascontiguousarray(embeddings, dtype=np.float32), np.arange(len(embeddings), dtype=np.int64))
    return index


def on_search_device(index: faiss.Index) -> faiss.Index:
    """``index`` on every visible GPU when FAISS can use one, else unchanged."""
    return faiss.index_cpu_to_all_gpus(index) if faiss_gpus() else index


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the top ``min(k, ntotal)`` entries for every query row, best first."""
    k = min(k, index.ntotal)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def write_index(directory: Path, index: faiss.Index, video_ids: list[str], paths: list[str | None]) -> None:
    """Write ``videos.faiss`` and ``video_ids.parquet`` atomically."""
    temporary = temporary_path(directory / INDEX_FILE)
    try:
        faiss.write_index(index, str(temporary))
        commit_file(temporary, directory / INDEX_FILE)
    finally:
        temporary.unlink(missing_ok=True)
    ids = pa.table(
        {"faiss_id": np.arange(len(video_ids), dtype=np.int64), "video_id": video_ids, "path": paths},
        schema=ID_MAP_SCHEMA,
    )
    write_parquet(directory / ID_MAP_FILE, ids)


def read_index(directory: Path) -> tuple[faiss.Index, pa.Table]:
    """The index in ``directory`` and its id map (faiss_id, video_id, path)."""
    index_path, ids_path = directory / INDEX_FILE, directory / ID_MAP_FILE
    for path in (index_path, ids_path):
        if not path.is_file():
            raise VidretError(f"{path}: no such file; build the index with `vidret index`")
    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as error:  # FAISS reports a damaged file as a RuntimeError with a C++ trace
        raise VidretError(
            f"{index_path}: not a readable FAISS index ({first_line(error)}); rebuild it with `vidret index --force`"
        ) from None
    ids = read_parquet(ids_path)
    if ids.num_rows != index.ntotal:
        raise VidretError(f"{ids_path}: {ids.num_rows} ids for the {index.ntotal} vectors of {index_path}")
    return index, ids
