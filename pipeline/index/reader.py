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
from pipeline.schemas import CLIP_COLUMNS, TEXTS_FILE, VIDEOS_FILE

SHOWN = 5  # offending rows named in an error message


@dataclass
class Embeddings:
    video_ids: list[str]  # one per video, in file order
    videos: np.ndarray  # float32, clips x dim, unit rows: a video's clips in consecutive rows
    text_video_ids: list[str]  # each caption's ground-truth video
    captions: list[str]
    texts: np.ndarray  # float32, captions x dim, unit rows (none for a caption-free collection)
    text_video_index: np.ndarray  # int64: each caption's video, an index into ``video_ids``
    clips_per_video: np.ndarray  # int64, per video (1: a whole video)
    clip_index: np.ndarray  # int32, per row of ``videos``: its clip within the video
    start_s: np.ndarray  # float64, per row
    end_s: np.ndarray  # float64, per row; NaN where unknown (whole-video rows of files without the clip columns)

    @property
    def dim(self) -> int:
        return self.videos.shape[1]

    @property
    def num_clips(self) -> int:
        return len(self.videos)

    @property
    def row_video_ids(self) -> list[str]:
        """The video of each row of ``videos``."""
        return [
            video_id for video_id, count in zip(self.video_ids, self.clips_per_video, strict=True) for _ in range(count)
        ]

    @property
    def first_rows(self) -> np.ndarray:
        """Each video's first row in ``videos``."""
        return np.concatenate(([0], np.cumsum(self.clips_per_video)[:-1]))

    @property
    def captioned(self) -> np.ndarray:
        """Whether each video has a caption (v2t queries only those; the others are t2v distractors)."""
        return np.bincount(self.text_video_index, minlength=len(self.video_ids)) > 0


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


def _read_table(path: Path, columns: list[str], rows_needed: bool = True) -> pa.Table:
    if not path.is_file():
        raise VidretError(f"{path}: no such file")
    table = read_parquet(path)
    missing = [name for name in columns if name not in table.column_names]
    if missing:
        raise VidretError(f"{path}: missing column(s) {', '.join(missing)}; has {', '.join(table.column_names)}")
    if rows_needed and table.num_rows == 0:
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
    """The videos (their clips) and captions of an embeddings directory, checked against each other."""
    directory = Path(directory)
    videos_path, texts_path = directory / VIDEOS_FILE, directory / TEXTS_FILE
    video_table = _read_table(videos_path, ["video_id", "embedding"])
    # A caption-free collection has no caption rows: it is indexed and searched, never scored.
    text_table = _read_table(texts_path, ["video_id", "caption", "embedding"], rows_needed=False)
    row_video_ids = video_table.column("video_id").to_pylist()
    clip_index, start_s, end_s = _clip_columns(video_table, videos_path)
    video_ids, clips_per_video = _videos_of_rows(row_video_ids, clip_index, videos_path)
    text_video_ids = text_table.column("video_id").to_pylist()
    captions = text_table.column("caption").to_pylist()

    row_of = {video_id: row for row, video_id in enumerate(video_ids)}
    orphans = [f"row {row} ({video_id})" for row, video_id in enumerate(text_video_ids) if video_id not in row_of]
    if orphans:
        raise VidretError(
            f"{texts_path}: {len(orphans)} caption(s) name a video_id with no row in {VIDEOS_FILE}: {_shown(orphans)}"
        )
    index = np.array([row_of[video_id] for video_id in text_video_ids], dtype=np.int64)

    videos = embedding_matrix(video_table, videos_path, _clip_labels(row_video_ids, clip_index))
    if text_table.num_rows:
        texts = embedding_matrix(text_table, texts_path, [f"caption of {video_id}" for video_id in text_video_ids])
    else:
        texts = np.zeros((0, videos.shape[1]), dtype=np.float32)
    if videos.shape[1] != texts.shape[1]:
        raise VidretError(
            f"{directory}: video embeddings have {videos.shape[1]} dimensions but caption embeddings have"
            f" {texts.shape[1]}; both files must come from one model"
        )
    return Embeddings(
        video_ids, videos, text_video_ids, captions, texts, index, clips_per_video, clip_index, start_s, end_s
    )


def _clip_columns(table: pa.Table, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's clip_index, start_s and end_s (NaN where unknown); a file without the clip columns (an
    earlier vidret's, or a user's) holds whole videos: clip 0 from 0 s, end unknown."""
    present = [name for name in CLIP_COLUMNS if name in table.column_names]
    if not present:
        rows = table.num_rows
        return np.zeros(rows, np.int32), np.zeros(rows, np.float64), np.full(rows, np.nan)
    if len(present) != len(CLIP_COLUMNS):
        missing = ", ".join(name for name in CLIP_COLUMNS if name not in present)
        raise VidretError(f"{path}: has {', '.join(present)} but not {missing}; give all clip columns or none")
    columns = {}
    for name in CLIP_COLUMNS:
        kind = table.schema.field(name).type
        expected = pa.types.is_integer if name == "clip_index" else pa.types.is_floating
        # pyarrow types a column of nothing but nulls as null: ends all unknown.
        if not (expected(kind) or (name == "end_s" and pa.types.is_null(kind))):
            wanted = "integers" if name == "clip_index" else "floats (seconds)"
            raise VidretError(f"{path}: column {name} must be {wanted}, got {kind}")
        column = table.column(name)
        if name != "end_s" and column.null_count:
            raise VidretError(f"{path}: column {name} has {column.null_count} null value(s)")
        columns[name] = column.to_numpy(zero_copy_only=False)
    end_s = columns["end_s"].astype(np.float64)  # null (unknown end) reads as NaN
    return columns["clip_index"].astype(np.int32), columns["start_s"].astype(np.float64), end_s


def _videos_of_rows(row_video_ids: list[str], clip_index: np.ndarray, path: Path) -> tuple[list[str], np.ndarray]:
    """The videos in row order and their number of clips: a video's clips must be consecutive rows, clip_index
    0, 1, ... in order (a whole video: one row, clip 0)."""
    video_ids, counts, seen, duplicated = [], [], set(), []
    for row, video_id in enumerate(row_video_ids):
        if video_ids and video_id == video_ids[-1] and clip_index[row] != 0:
            counts[-1] += 1  # the video's next clip
        elif video_id in seen:
            duplicated.append(video_id)
            continue
        else:
            seen.add(video_id)
            video_ids.append(video_id)
            counts.append(1)
        if clip_index[row] != counts[-1] - 1:
            raise VidretError(
                f"{path}: row {row} ({video_id}) is clip {clip_index[row]}, expected {counts[-1] - 1}: a video's"
                " clips must be consecutive rows with clip_index 0, 1, ... in order"
            )
    if duplicated:
        raise VidretError(
            f"{path}: {len(duplicated)} duplicated video_id(s): {_shown(duplicated)}; a video has one row, or its"
            " clips in consecutive rows with clip_index 0, 1, ..."
        )
    return video_ids, np.array(counts, dtype=np.int64)


def _clip_labels(row_video_ids: list[str], clip_index: np.ndarray) -> list[str]:
    """How errors name each row: the video, and its clip when it has several."""
    return [
        video_id if not clip else f"{video_id} clip {clip}"
        for video_id, clip in zip(row_video_ids, clip_index, strict=True)
    ]
