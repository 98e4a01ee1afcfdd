"""Read and check ``RUN/embeddings/{videos,texts}.parquet``, ours or a user's.

The files may come from any tool that follows the public format (docs/formats.md,
"Embeddings"), so everything is checked, and every problem is reported as one
line naming the file and the rows at fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import VidretError
from pipeline.files import read_parquet
from pipeline.schemas import TEXTS_FILE, VIDEOS_FILE

SHOWN = 5  # offending rows named in an error message


@dataclass
class Embeddings:
    video_ids: list[str]
    videos: np.ndarray  # float32, videos x dim, unit rows
    text_video_ids: list[str]  # each caption's ground-truth video
    captions: list[str]
    texts: np.ndarray  # float32, captions x dim, unit rows
    text_video_index: np.ndarray  # int64: each caption's row in ``videos``

    @property
    def dim(self) -> int:
        return self.videos.shape[1]


def _shown(labels: list[str]) -> str:
    return ", ".join(labels[:SHOWN]) + (", ..." if len(labels) > SHOWN else "")


def _at(rows: np.ndarray, labels: list[str]) -> list[str]:
    return [f"row {row} ({labels[row]})" for row in rows]


def _is_string(kind: pa.DataType) -> bool:
    # pandas 3 and polars write large_string; newer writers may use string_view.
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _is_list(kind: pa.DataType) -> bool:
    return any(
        check(kind)
        for check in (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list, pa.types.is_list_view)
    )


def _read_table(path: Path, columns: list[str]) -> pa.Table:
    if not path.is_file():
        raise VidretError(f"{path}: no such file")
    table = read_parquet(path)
    missing = [name for name in columns if name not in table.column_names]
    if missing:
        raise VidretError(f"{path}: missing column(s) {', '.join(missing)}; has {', '.join(table.column_names)}")
    if table.num_rows == 0:
        raise VidretError(f"{path}: no rows")
    for name in columns:
        if name != "embedding" and not _is_string(table.schema.field(name).type):
            raise VidretError(f"{path}: column {name} must be strings, got {table.schema.field(name).type}")
        if table.column(name).null_count:
            raise VidretError(f"{path}: column {name} has {table.column(name).null_count} null value(s)")
    return table


def embedding_matrix(table: pa.Table, path: Path, row_labels: list[str]) -> np.ndarray:
    """The ``embedding`` column as a float32 matrix with unit rows; ``row_labels`` name rows in errors."""
    column = table.column("embedding").combine_chunks()
    if not (_is_list(column.type) and pa.types.is_floating(column.type.value_type)):
        raise VidretError(f"{path}: column embedding must be a list of floats, got {column.type}")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if lengths[0] == 0 or (lengths != lengths[0]).any():
        odd = np.flatnonzero(lengths != lengths[0]) if lengths[0] else np.arange(len(lengths))
        raise VidretError(
            f"{path}: embeddings must all have one non-zero length; first row has {lengths[0]},"
            f" but {_shown([f'{row_labels[i]} has {lengths[i]}' for i in odd])}"
        )
    # float64 until normalised, so that norms of very large or very small rows neither overflow nor vanish.
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    matrix = values.astype(np.float64).reshape(len(lengths), int(lengths[0]))
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if bad.size:
        raise VidretError(f"{path}: {bad.size} embedding(s) hold NaN or infinity: {_shown(_at(bad, row_labels))}")
    norms = np.linalg.norm(matrix, axis=1)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise VidretError(f"{path}: {zero.size} embedding(s) are all zeros: {_shown(_at(zero, row_labels))}")
    # The contract asks for unit rows; normalising again makes the inner product a cosine for any input.
    return (matrix / norms[:, None]).astype(np.float32)


def read_embeddings(directory: Path | str) -> Embeddings:
    """The videos and captions of an embeddings directory, checked against each other."""
    directory = Path(directory)
    videos_path, texts_path = directory / VIDEOS_FILE, directory / TEXTS_FILE
    video_table = _read_table(videos_path, ["video_id", "embedding"])
    text_table = _read_table(texts_path, ["video_id", "caption", "embedding"])
    video_ids = video_table.column("video_id").to_pylist()
    text_video_ids = text_table.column("video_id").to_pylist()
    captions = text_table.column("caption").to_pylist()

    row_of = {}
    duplicated = []
    for row, video_id in enumerate(video_ids):
        if video_id in row_of:
            duplicated.append(video_id)
        row_of[video_id] = row
    if duplicated:
        raise VidretError(f"{videos_path}: {len(duplicated)} duplicated video_id(s): {_shown(duplicated)}")
    orphans = [f"row {row} ({video_id})" for row, video_id in enumerate(text_video_ids) if video_id not in row_of]
    if orphans:
        raise VidretError(
            f"{texts_path}: {len(orphans)} caption(s) name a video_id with no row in {VIDEOS_FILE}: {_shown(orphans)}"
        )
    index = np.array([row_of[video_id] for video_id in text_video_ids], dtype=np.int64)
    uncaptioned = sorted(set(row_of) - set(text_video_ids), key=row_of.get)
    if uncaptioned:
        raise VidretError(
            f"{videos_path}: {len(uncaptioned)} video(s) have no caption in {TEXTS_FILE}, so video-to-text"
            f" has no ground truth for them: {_shown(uncaptioned)}"
        )

    videos = embedding_matrix(video_table, videos_path, video_ids)
    texts = embedding_matrix(text_table, texts_path, [f"caption of {video_id}" for video_id in text_video_ids])
    if videos.shape[1] != texts.shape[1]:
        raise VidretError(
            f"{directory}: video embeddings have {videos.shape[1]} dimensions but caption embeddings have"
            f" {texts.shape[1]}; both files must come from one model"
        )
    return Embeddings(video_ids, videos, text_video_ids, captions, texts, index)
