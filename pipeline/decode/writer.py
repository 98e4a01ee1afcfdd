"""Write decode results as Parquet shards, one shard per chunk of the manifest.

Layout of ``RUN/frames/``::

    part-00000.parquet                frames of the chunk's decoded videos
    _chunks/part-00000.status.parquet the chunk's statuses: its commit marker
    status.parquet                    every video's status (when all chunks are in)
    stage.json                        parameters, fingerprint, counts, throughput
    _logs/decode-workers.log          what the decoders printed

A chunk is committed by its status marker, which is written after its part
file is in place; both are written atomically. A killed run therefore leaves
whole chunks or nothing, and a rerun redoes exactly the uncommitted chunks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.decode.worker import DecodeResult
from pipeline.files import PARQUET_CHECKSUMS, commit_file, read_parquet, temporary_path, write_parquet
from pipeline.manifest import ManifestEntry
from pipeline.schemas import FRAMES_SCHEMA, STATUS_FILE, STATUS_SCHEMA
from pipeline.stage import file_record

CHUNKS_DIR = "_chunks"
LOGS_DIR = "_logs"
CHUNK_KEY = b"vidret.chunk_key"
PARAMS_KEY = b"vidret.params"
PART_KEY = b"vidret.part"  # the part file's size and SHA-256, as committed

# One row group per row (a video, or one view of it): a reader can fetch any
# single video (shuffled training, DuckDB ``WHERE video_id = ...``) without
# reading its neighbours.
# Statistics only on video_id, which makes that filter skip row groups; min/max
# of megabyte-sized frame blobs would be useless. See docs/performance.md.
# Page checksums: a flipped byte is an error when the frames are read, never other frames.
FRAMES_PARQUET_OPTIONS = dict(
    compression="lz4", use_dictionary=False, write_statistics=["video_id"], **PARQUET_CHECKSUMS
)


@dataclass(frozen=True)
class Chunk:
    index: int
    entries: tuple[ManifestEntry, ...]
    key: str  # digest of the parameters and of every input file's identity


def part_path(out_dir: Path, chunk_index: int) -> Path:
    return out_dir / f"part-{chunk_index:05d}.parquet"


def marker_path(out_dir: Path, chunk_index: int) -> Path:
    return out_dir / CHUNKS_DIR / f"part-{chunk_index:05d}.status.parquet"


@dataclass(frozen=True)
class Marker:
    """A chunk's commit marker: its key, the parameters it was decoded with, and its part file's record."""

    path: Path
    key: str
    params: dict
    part: dict | None  # {"bytes", "sha256"}; None in markers of an earlier vidret

    def statuses(self) -> tuple[list[str], list[str]]:
        """(video ids, statuses) of the chunk's videos."""
        table = read_parquet(self.path, columns=["video_id", "status"])
        return table.column("video_id").to_pylist(), table.column("status").to_pylist()


def read_marker(path: Path) -> Marker | None:
    """The marker at ``path``, or None if there is none or it is damaged (its chunk is then redone)."""
    try:
        metadata = pq.read_schema(path).metadata or {}
        part = json.loads(metadata[PART_KEY]) if PART_KEY in metadata else None
        return Marker(path, metadata.get(CHUNK_KEY, b"").decode(), json.loads(metadata.get(PARAMS_KEY, b"{}")), part)
    except (OSError, pa.ArrowException, ValueError):
        return None


def frames_table(result: DecodeResult, schema: pa.Schema = FRAMES_SCHEMA) -> pa.Table:
    """One row per view of a decoded video, views in order; the view column only if ``schema`` has it."""
    views = result.views
    columns = {
        "video_id": [result.video_id] * len(views),
        "view": list(range(len(views))),
        "frames": [video.frames.tobytes() for video in views],
        "num_frames": [video.frames.shape[0] for video in views],
        "height": [video.frames.shape[1] for video in views],
        "width": [video.frames.shape[2] for video in views],
        "frame_indices": [video.frame_indices for video in views],
        "source_num_frames": [video.source_num_frames for video in views],
        "fps": [video.fps for video in views],
    }
    return pa.table({name: columns[name] for name in schema.names}, schema=schema)


def status_table(results: list[DecodeResult], metadata: dict[bytes, bytes]) -> pa.Table:
    columns = {
        "video_id": [result.video_id for result in results],
        "status": [result.status for result in results],
        "error": [result.error for result in results],
        "seconds": [result.seconds for result in results],
    }
    return pa.table(columns, schema=STATUS_SCHEMA.with_metadata(metadata))


class ChunkWriter:
    """Writes one run's results, in work order, as one committed shard per chunk.

    Workers finish in any order; results wait here until every earlier one has
    arrived, so each part file holds its videos in manifest order and a rerun
    writes byte-identical files. ``next_seq`` tells the caller how far writing
    has got, so that it can bound how many results wait in memory.
    """

    def __init__(self, out_dir: Path, chunks: list[Chunk], params: dict, schema: pa.Schema) -> None:
        self.out_dir = out_dir
        self._chunks = chunks
        self._schema = schema
        self._params_json = json.dumps(params, sort_keys=True).encode()
        self._pending: dict[int, DecodeResult] = {}
        self.next_seq = 0
        self._chunk_position = 0  # index into chunks of the chunk being written
        self._chunk_results: list[DecodeResult] = []
        self._writer: pq.ParquetWriter | None = None
        self._temporary: Path | None = None
        (out_dir / CHUNKS_DIR).mkdir(parents=True, exist_ok=True)

    def add(self, result: DecodeResult) -> None:
        """Accept one result; write it and every result it was holding up."""
        self._pending[result.seq] = result
        while self.next_seq in self._pending:
            self._write(self._pending.pop(self.next_seq))
            self.next_seq += 1

    def _write(self, result: DecodeResult) -> None:
        chunk = self._chunks[self._chunk_position]
        if self._writer is None:
            path = part_path(self.out_dir, chunk.index)
            self._temporary = temporary_path(path)
            schema = self._schema.with_metadata({PARAMS_KEY: self._params_json})
            self._writer = pq.ParquetWriter(self._temporary, schema, **FRAMES_PARQUET_OPTIONS)
        if result.status == "ok":
            self._writer.write_table(frames_table(result, self._schema), row_group_size=1)
        self._chunk_results.append(replace(result, views=[]))  # the frames are on disk now
        if len(self._chunk_results) < len(chunk.entries):
            return
        self._writer.close()
        self._writer = None
        part = part_path(self.out_dir, chunk.index)
        commit_file(self._temporary, part)
        metadata = {
            CHUNK_KEY: chunk.key.encode(),
            PARAMS_KEY: self._params_json,
            PART_KEY: json.dumps(file_record(part)).encode(),
        }
        write_parquet(marker_path(self.out_dir, chunk.index), status_table(self._chunk_results, metadata))
        self._chunk_results = []
        self._chunk_position += 1

    def abort(self) -> None:
        """Drop the chunk being written (its videos are redone on the next run)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._temporary is not None:
            self._temporary.unlink(missing_ok=True)


def merge_status(out_dir: Path, chunks: list[Chunk]) -> pa.Table:
    """Concatenate every chunk's statuses (manifest order) into status.parquet."""
    tables = [read_parquet(marker_path(out_dir, chunk.index)) for chunk in chunks]
    merged = pa.concat_tables(tables).replace_schema_metadata(None)
    write_parquet(out_dir / STATUS_FILE, merged)
    return merged
