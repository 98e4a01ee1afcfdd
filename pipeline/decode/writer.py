"""Write decode results as Parquet shards, one shard per chunk of the manifest.

Layout of ``RUN/frames/``::

    part-00000.parquet                frames of the chunk's decoded videos
    _chunks/part-00000.status.parquet the chunk's statuses: its commit marker
    _chunks/part-00000/v-00003.arrow  one video's rows and status, until its chunk is committed
    status.parquet                    every video's status (when all chunks are in)
    stage.json                        parameters, fingerprint, counts, throughput
    _logs/decode-workers.log          what the decoders printed

Each worker writes the video it decoded as a piece (Arrow IPC: all its views or
clips, and its status in the schema metadata), atomically, and sends the
coordinator only the status. The coordinator copies the pieces, in manifest
order, into the chunk's part file, then writes the chunk's status marker,
atomically too, then removes the pieces. A killed run therefore leaves
committed chunks and whole pieces: a rerun keeps both and decodes only the
videos that have neither.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from pipeline.files import PARQUET_CHECKSUMS, commit_file, read_parquet, temporary_path, write_parquet
from pipeline.frames_codec import stored_frames
from pipeline.manifest import ManifestEntry
from pipeline.schemas import FRAMES_SCHEMA, STATUS_FILE, STATUS_SCHEMA
from pipeline.stage import file_record

if TYPE_CHECKING:  # the workers import this module to write their pieces
    from pipeline.decode.worker import DecodeResult

CHUNKS_DIR = "_chunks"
LOGS_DIR = "_logs"
CHUNK_KEY = b"vidret.chunk_key"
PARAMS_KEY = b"vidret.params"
PART_KEY = b"vidret.part"  # the part file's size and SHA-256, as committed
PIECE_KEY = b"vidret.piece_key"  # a piece's video identity and parameters
PIECE_STATUS = b"vidret.status"  # a piece's status row, and the frames it holds

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
    piece_keys: tuple[str, ...]  # each video's: digest of the parameters and of its file's identity


def part_path(out_dir: Path, chunk_index: int) -> Path:
    return out_dir / f"part-{chunk_index:05d}.parquet"


def marker_path(out_dir: Path, chunk_index: int) -> Path:
    return out_dir / CHUNKS_DIR / f"part-{chunk_index:05d}.status.parquet"


def pieces_dir(out_dir: Path, chunk_index: int) -> Path:
    return out_dir / CHUNKS_DIR / f"part-{chunk_index:05d}"


def piece_path(out_dir: Path, chunk_index: int, position: int) -> Path:
    """The piece of the chunk's video at ``position`` (0-based, manifest order)."""
    return pieces_dir(out_dir, chunk_index) / f"v-{position:05d}.arrow"


@dataclass(frozen=True)
class Piece:
    """What a piece's metadata says: the video's key, status row and number of frames written."""

    key: str
    status: str
    error: str
    seconds: float
    frames: int


def write_piece(path: Path, result: DecodeResult, schema: pa.Schema, key: str) -> None:
    """``result``'s rows (none for a failed video) and status as an Arrow IPC file at ``path``."""
    table = frames_table(result, schema)
    status = {
        "status": result.status,
        "error": result.error,
        "seconds": result.seconds,
        "frames": sum(len(video.frame_indices) for video in result.views),
    }
    metadata = {PIECE_KEY: key.encode(), PIECE_STATUS: json.dumps(status).encode()}
    with ipc.new_file(str(path), schema.with_metadata(metadata)) as writer:
        writer.write_table(table)


def read_piece(path: Path) -> Piece | None:
    """The piece at ``path``, or None if there is none or it does not open cleanly (its video is then
    decoded again). Its rows are checked for structure, not read: Arrow IPC has no checksums."""
    try:
        with pa.memory_map(str(path)) as source:
            reader = ipc.open_file(source)
            metadata = reader.schema.metadata or {}
            status = json.loads(metadata[PIECE_STATUS])
            rows = reader.read_all()
            rows.validate(full=True)
        piece = Piece(metadata[PIECE_KEY].decode(), **status)
    except (OSError, pa.ArrowException, ValueError, KeyError, TypeError):
        return None
    return piece if (rows.num_rows > 0) == (piece.status == "ok") else None


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
    """One row per view or clip of a decoded video, in order; the view column only if ``schema`` has it."""
    views = result.views
    columns = {
        "video_id": [result.video_id] * len(views),
        "view": list(range(len(views))),
        "frames": [stored_frames(video.frames) for video in views],
        "num_frames": [video.frames.shape[0] for video in views],
        "height": [video.frames.shape[1] for video in views],
        "width": [video.frames.shape[2] for video in views],
        "frame_indices": [video.frame_indices for video in views],
        "source_num_frames": [video.source_num_frames for video in views],
        "fps": [video.fps for video in views],
        "clip_index": [video.clip_index for video in views],
        "start_s": [video.start_s for video in views],
        "end_s": [video.end_s for video in views],
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


class _HashingFile:
    """A file that hashes what is written to it: the part file's SHA-256 without reading it back."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "wb")
        self.sha256 = hashlib.sha256()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def write(self, data) -> int:
        self.sha256.update(data)
        return self._file.write(data)

    def tell(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def writable(self) -> bool:
        return True


class ChunkWriter:
    """Assembles one run's pieces, in work order, into one committed shard per chunk.

    Workers finish in any order; results wait here until every earlier one has
    arrived, so each part file holds its videos in manifest order and a rerun
    writes byte-identical files. ``next_seq`` tells the caller how far writing
    has got, so that it can bound how many pieces wait on disk.
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
        self._sink: _HashingFile | None = None
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
            self._temporary = temporary_path(part_path(self.out_dir, chunk.index))
            self._sink = _HashingFile(self._temporary)
            schema = self._schema.with_metadata({PARAMS_KEY: self._params_json})
            self._writer = pq.ParquetWriter(pa.PythonFile(self._sink, mode="w"), schema, **FRAMES_PARQUET_OPTIONS)
        if result.status == "ok":
            piece = piece_path(self.out_dir, chunk.index, len(self._chunk_results))
            with pa.memory_map(str(piece)) as source:
                self._writer.write_table(ipc.open_file(source).read_all(), row_group_size=1)
        self._chunk_results.append(result)
        if len(self._chunk_results) < len(chunk.entries):
            return
        self._writer.close()
        self._writer = None
        self._sink.close()
        part = part_path(self.out_dir, chunk.index)
        commit_file(self._temporary, part)
        metadata = {
            CHUNK_KEY: chunk.key.encode(),
            PARAMS_KEY: self._params_json,
            PART_KEY: json.dumps(file_record(part, self._sink.sha256.hexdigest())).encode(),
        }
        write_parquet(marker_path(self.out_dir, chunk.index), status_table(self._chunk_results, metadata))
        shutil.rmtree(pieces_dir(self.out_dir, chunk.index), ignore_errors=True)  # the part file holds them now
        self._chunk_results = []
        self._chunk_position += 1

    def abort(self) -> None:
        """Drop the part file being assembled; its pieces stay for the next run."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._sink.close()
        if self._temporary is not None:
            self._temporary.unlink(missing_ok=True)


def merge_status(out_dir: Path, chunks: list[Chunk]) -> pa.Table:
    """Concatenate every chunk's statuses (manifest order) into status.parquet."""
    tables = [read_parquet(marker_path(out_dir, chunk.index)) for chunk in chunks]
    merged = pa.concat_tables(tables).replace_schema_metadata(None)
    write_parquet(out_dir / STATUS_FILE, merged)
    return merged
