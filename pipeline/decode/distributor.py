"""The decode stage: plan chunks, skip committed ones, decode the rest, merge.

The selected split is cut, in manifest order, into chunks of ``shard_size``
videos; chunk k becomes ``part-k.parquet``. ``--num-shards N --shard-index i``
takes the chunks with ``k % N == i``, so N machines can share one output
directory (or merge theirs by copying) without conflicting names. Whichever
run finds every chunk committed writes ``status.parquet`` and ``stage.json``.

A chunk's key digests the parameters and the identity (path, size, mtime) of
each of its videos, so a rerun skips what is committed and unchanged and
redoes the rest, including chunks whose videos were replaced since.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from pipeline.decode.reader import TEST_MODE, FrameSpec, ViewSeeds, check_video_file, read_views, stat_or_none
from pipeline.decode.sampling import train_view_seed
from pipeline.decode.worker import DecodePool, DecodeResult, DecodeTask, Reader
from pipeline.decode.writer import (
    CHUNKS_DIR,
    FRAMES_PARQUET_OPTIONS,
    LOGS_DIR,
    STATUS_FILE,
    Chunk,
    ChunkWriter,
    marker_path,
    merge_status,
    part_path,
    read_marker_metadata,
)
from pipeline.errors import VidretError
from pipeline.files import remove_temporaries, sha256_file, sha256_json
from pipeline.manifest import ManifestEntry, read_manifest, select_split
from pipeline.schemas import DECODE_STATUSES, FRAMES_SCHEMA, FRAMES_VIEWS_SCHEMA
from pipeline.stage import describe_changes, library_versions, read_stage, remove_stage, write_stage

# Decoded videos that may wait in memory for a slower one ahead of them
# (results are written in manifest order). Past this, dispatch pauses.
REORDER_BUDGET_BYTES = 1 << 30


def default_workers() -> int:
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class DecodeOptions:
    spec: FrameSpec = field(default_factory=FrameSpec)
    split: str = "all"
    shard_size: int = 100  # videos per part file
    workers: int = field(default_factory=default_workers)
    timeout: float = 60.0  # seconds per video, enforced by killing the worker
    num_shards: int = 1
    shard_index: int = 0
    video_root: Path | None = None
    force: bool = False
    train_views: int = 0  # train-mode draws per train video (0: one test-mode row, as val and test)
    seed: int = 0  # of the train-mode draws

    def __post_init__(self) -> None:
        from pipeline.errors import check_number
        from pipeline.manifest import parse_splits

        parse_splits(self.split)  # before the manifest is read
        check_number("--shard-size", self.shard_size, integer=True, at_least=1)
        check_number("--workers", self.workers, integer=True, at_least=1)
        check_number("--timeout", self.timeout, above=0)  # NaN and infinity included
        # The wait for a decoder's result takes the timeout in milliseconds in a C int (24 days at most).
        check_number("--timeout", self.timeout, at_most=1_000_000)
        check_number("--num-shards", self.num_shards, integer=True, at_least=1)
        check_number("--shard-index", self.shard_index, integer=True)
        check_number("--train-views", self.train_views, integer=True, at_least=0)
        check_number("--seed", self.seed, integer=True, at_least=0)
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise VidretError(
                f"--shard-index must be in [0, {self.num_shards}) with --num-shards {self.num_shards},"
                f" got {self.shard_index}"
            )
        if self.train_views and self.spec.sampling != "uniform":
            raise VidretError(
                f"--train-views needs --sampling uniform (MMAction2's train mode), got {self.spec.sampling!r},"
                " which has no train mode"
            )

    def output_params(self) -> dict:
        """The options that determine the output: a change means different frames.

        Options added since the first frames were decoded are recorded only away from their
        defaults, which those frames were decoded with, so that their chunk keys still match.
        """
        params = {**self.spec.to_dict(), "split": self.split, "shard_size": self.shard_size}
        if params["interpolation"] == "bilinear":
            del params["interpolation"]
        if self.train_views:
            params.update(train_views=self.train_views, seed=self.seed)
        return params

    def views(self, entry: ManifestEntry) -> ViewSeeds:
        """What decode writes of a video: its train-mode draws, or one test-mode row."""
        if self.train_views and entry.split == "train":
            return tuple(train_view_seed(self.seed, entry.video_id, view) for view in range(self.train_views))
        return TEST_MODE


@dataclass
class DecodeSummary:
    out_dir: Path
    counts: Counter  # this run's videos by status
    frames: int  # frames written by this run
    seconds: float
    chunks_run: int  # decoded by this run
    chunks_already_committed: int  # of this shard's chunks, found committed and skipped
    chunks_committed: int  # of the whole split, after this run
    chunks_total: int  # of the whole split
    videos_total: int  # of the whole split
    shard: tuple[int, int]  # (index, count)

    @property
    def complete(self) -> bool:
        """Every chunk of the split is committed, so status.parquet and stage.json are written."""
        return self.chunks_committed == self.chunks_total

    @property
    def videos(self) -> int:
        return sum(self.counts.values())

    def line(self) -> str:
        waiting = (
            f"{self.chunks_committed} of {self.chunks_total} chunks of the split are committed;"
            " status.parquet and stage.json come with the last"
        )
        if not self.chunks_run:
            if self.complete:
                return (
                    f"decode: nothing to do, {self.out_dir} already holds all {self.videos_total} videos"
                    " decoded with these parameters (--force redoes them)"
                )
            return f"decode: nothing to do for shard {self.shard[0]} of {self.shard[1]}; {waiting}"
        ok = self.counts.get("ok", 0)
        failed = ", ".join(f"{self.counts[s]} {s}" for s in DECODE_STATUSES[1:] if self.counts.get(s))
        parts = [
            f"decode: {self.videos} videos in {self.seconds:.1f} s: {ok} ok" + (f", {failed}" if failed else ""),
            f"{self.videos / self.seconds:.1f} videos/s, {self.frames / self.seconds:.0f} frames/s",
            f"output: {self.out_dir}",
        ]
        if self.chunks_already_committed:
            parts.append(f"resumed: {self.chunks_already_committed} chunks were already committed")
        if not self.complete:
            parts.append(waiting)
        return " | ".join(parts)


def plan_chunks(
    entries: list[ManifestEntry], stats: dict[str, os.stat_result | None], params: dict, shard_size: int
) -> list[Chunk]:
    """Cut ``entries`` into chunks keyed by ``params`` and their files' ``stats`` (by video_id)."""
    chunks = []
    for index, start in enumerate(range(0, len(entries), shard_size)):
        members = tuple(entries[start : start + shard_size])
        inputs = [_video_identity(entry, stats[entry.video_id], params) for entry in members]
        chunks.append(Chunk(index, members, sha256_json([params, inputs])))
    return chunks


def _video_identity(entry: ManifestEntry, file_stat: os.stat_result | None, params: dict) -> list:
    identity = [entry.video_id, str(entry.path), *_file_identity(file_stat)]
    if "train_views" in params:  # a video's split then decides its rows
        identity.append(entry.split)
    return identity


def _file_identity(file_stat: os.stat_result | None) -> tuple[int, int]:
    return (file_stat.st_size, file_stat.st_mtime_ns) if file_stat else (-1, -1)


def _read_markers(out_dir: Path) -> dict[int, tuple[str, dict]]:
    """Chunk index -> (key, parameters) of every commit marker in ``out_dir``."""
    markers = {}
    for path in (out_dir / CHUNKS_DIR).glob("part-*.status.parquet"):
        metadata = read_marker_metadata(path)
        if metadata is not None:
            key, params = metadata
            # Chunks from before the --decoder option were decoded with decord, not today's
            # default, so it is filled in. Options added since are recorded only away from their
            # defaults (DecodeOptions.output_params): nothing to fill in for them.
            markers[_chunk_index(path)] = key, {"decoder": "decord", **params} if params else params
    return markers


def _chunk_index(path: Path) -> int:
    """The chunk number in a part file's or a marker's name."""
    return int(path.name.split(".")[0].removeprefix("part-"))


def _committed(out_dir: Path, chunks: list[Chunk], markers: dict[int, tuple[str, dict]]) -> set[int]:
    """Chunks whose marker holds their current key and whose part file is in place."""
    return {
        chunk.index
        for chunk in chunks
        if chunk.index in markers and markers[chunk.index][0] == chunk.key and part_path(out_dir, chunk.index).exists()
    }


def _refuse_other_parameters(out_dir: Path, markers: dict[int, tuple[str, dict]], params: dict) -> None:
    for _, old in markers.values():
        if old != params:
            raise VidretError(
                f"{out_dir} holds frames decoded with other parameters ({describe_changes(old, params)});"
                " pass --force to replace them, or choose another --out"
            )


def clear_outputs(out_dir: Path) -> None:
    """Remove what decode wrote in ``out_dir`` (and nothing else)."""
    for part in out_dir.glob("part-*.parquet"):
        part.unlink()
    shutil.rmtree(out_dir / CHUNKS_DIR, ignore_errors=True)
    (out_dir / STATUS_FILE).unlink(missing_ok=True)
    remove_stage(out_dir)


def decode_videos(
    manifest: Path | str,
    out_dir: Path | str,
    options: DecodeOptions | None = None,
    reader: Reader = read_views,
    progress: bool = True,
) -> DecodeSummary:
    """Decode the videos of ``manifest`` into Parquet frame shards under ``out_dir``.

    ``reader`` turns (path, FrameSpec, view seeds) into one DecodedVideo per
    view; it runs in the worker processes, so it must be a module-level function.
    """
    options = options or DecodeOptions()
    manifest, out_dir = Path(manifest), Path(out_dir)
    entries = select_split(read_manifest(manifest, options.video_root), options.split, manifest)
    params = options.output_params()
    stats = {entry.video_id: stat_or_none(entry.path) for entry in entries}
    chunks = plan_chunks(entries, stats, params, options.shard_size)
    fingerprint = sha256_json([chunk.key for chunk in chunks])
    shard = (options.shard_index, options.num_shards)
    out_dir.mkdir(parents=True, exist_ok=True)
    if options.force:
        clear_outputs(out_dir)
    markers = _read_markers(out_dir)
    _refuse_other_parameters(out_dir, markers, params)

    mine = [chunk for chunk in chunks if chunk.index % options.num_shards == options.shard_index]
    already_committed = _committed(out_dir, mine, markers)
    todo = [chunk for chunk in mine if chunk.index not in already_committed]
    counts, frames, seconds = Counter(), 0, 0.0
    if todo:
        # The directory is about to change: it is no longer the one stage.json describes.
        remove_stage(out_dir)
        (out_dir / STATUS_FILE).unlink(missing_ok=True)
        counts, frames, seconds = _decode_chunks(todo, stats, out_dir, options, params, reader, progress)
        # Look again: runs of other shards may have committed chunks meanwhile, and
        # the last run to finish must see them all to write the merged status.
        markers = _read_markers(out_dir)
    summary = DecodeSummary(
        out_dir=out_dir,
        counts=counts,
        frames=frames,
        seconds=seconds,
        chunks_run=len(todo),
        chunks_already_committed=len(already_committed),
        chunks_committed=len(_committed(out_dir, chunks, markers)),
        chunks_total=len(chunks),
        videos_total=len(entries),
        shard=shard,
    )
    stage = read_stage(out_dir)
    if summary.complete and (stage is None or stage["input"]["fingerprint"] != fingerprint):
        _finish(out_dir, chunks, manifest, options, params, fingerprint, summary)
    return summary


def _decode_chunks(
    chunks: list[Chunk],
    stats: dict[str, os.stat_result | None],
    out_dir: Path,
    options: DecodeOptions,
    params: dict,
    reader: Reader,
    progress: bool,
) -> tuple[Counter, int, float]:
    entries = [entry for chunk in chunks for entry in chunk.entries]
    tasks = [DecodeTask(seq, entry.video_id, entry.path, options.views(entry)) for seq, entry in enumerate(entries)]
    # Failures that stat alone reveals (missing, empty) need no worker.
    problems = [check_video_file(task.path, stats[task.video_id]) for task in tasks]
    to_decode = sum(problem is None for problem in problems)
    video_bytes = options.spec.frame_bytes * max(options.train_views, 1)
    window = max(4 * options.workers, REORDER_BUDGET_BYTES // video_bytes)
    for chunk in chunks:
        remove_temporaries(part_path(out_dir, chunk.index))
        remove_temporaries(marker_path(out_dir, chunk.index))
    (out_dir / LOGS_DIR).mkdir(exist_ok=True)
    writer = ChunkWriter(out_dir, chunks, params, FRAMES_VIEWS_SCHEMA if options.train_views else FRAMES_SCHEMA)
    counts, frames = Counter(), 0
    bar = tqdm(total=len(tasks), unit="video", desc="decode", disable=not progress, dynamic_ncols=True)

    def accept(result: DecodeResult) -> None:
        nonlocal frames
        counts[result.status] += 1
        frames += sum(len(video.frame_indices) for video in result.views)
        writer.add(result)
        bar.update(1)
        bar.set_postfix_str(f"ok {counts['ok']}, failed {bar.n - counts['ok']}", refresh=False)

    start = time.perf_counter()
    pool = None
    try:
        if to_decode:
            log_path = out_dir / LOGS_DIR / "decode-workers.log"
            pool = DecodePool(min(options.workers, to_decode), options.spec, options.timeout, log_path, reader)
        dispatched = 0

        def dispatch() -> None:
            nonlocal dispatched
            while dispatched < len(tasks) and dispatched < writer.next_seq + window:
                task, problem = tasks[dispatched], problems[dispatched]
                if problem is not None:
                    accept(DecodeResult(task.seq, task.video_id, problem.status, str(problem), 0.0))
                elif pool.idle:
                    pool.submit(task)
                else:
                    break
                dispatched += 1

        while writer.next_seq < len(tasks):
            dispatch()
            results = pool.collect() if pool else []
            # Hand the finished workers their next videos before writing these results,
            # so that they decode while this process compresses and writes.
            dispatch()
            for result in results:
                accept(result)
    except BaseException:
        writer.abort()
        raise
    finally:
        if pool is not None:
            pool.close()
        bar.close()
    return counts, frames, time.perf_counter() - start


def _finish(
    out_dir: Path,
    chunks: list[Chunk],
    manifest: Path,
    options: DecodeOptions,
    params: dict,
    fingerprint: str,
    summary: DecodeSummary,
) -> None:
    """Every chunk is committed: write status.parquet and, last, stage.json."""
    status = merge_status(out_dir, chunks)
    written = [*out_dir.glob("part-*.parquet"), *(out_dir / CHUNKS_DIR).glob("part-*.parquet")]
    for index in {_chunk_index(path) for path in written} - {chunk.index for chunk in chunks}:
        part_path(out_dir, index).unlink(missing_ok=True)  # a chunk of an earlier, longer manifest
        marker_path(out_dir, index).unlink(missing_ok=True)
    counts = Counter(status.column("status").to_pylist())
    throughput = None
    if summary.chunks_run:
        throughput = {
            "videos": summary.videos,
            "seconds": round(summary.seconds, 3),
            "videos_per_second": round(summary.videos / summary.seconds, 2),
            "frames_per_second": round(summary.frames / summary.seconds, 1),
            "workers": options.workers,
            "shard": list(summary.shard),
        }
    write_stage(
        out_dir,
        {
            "stage": "decode",
            "params": params,
            "input": {
                "manifest": str(manifest.absolute()),
                "manifest_sha256": sha256_file(manifest),
                "video_root": str(options.video_root) if options.video_root else None,
                "videos": status.num_rows,
                "fingerprint": fingerprint,
            },
            "counts": {name: counts[name] for name in DECODE_STATUSES if counts[name]},
            "output": {
                "parts": len(chunks),
                "bytes": sum(part_path(out_dir, chunk.index).stat().st_size for chunk in chunks),
                "parquet": FRAMES_PARQUET_OPTIONS,
            },
            "timeout_seconds": options.timeout,
            "decoder_seconds": round(sum(status.column("seconds").to_pylist()), 3),
            "throughput": throughput,
            "libraries": library_versions("decord", "av", "pyarrow", "numpy"),
        },
    )
