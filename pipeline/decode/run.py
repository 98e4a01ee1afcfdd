"""The decode stage: plan chunks, skip committed ones, decode the rest, merge.

The selected split is cut, in manifest order, into chunks of ``shard_size``
videos; chunk k becomes ``part-k.parquet``. ``--num-shards N --shard-index i``
takes the chunks with ``k % N == i``, so N machines can share one output
directory (or merge theirs by copying) without conflicting names. Whichever
run finds every chunk committed writes ``status.parquet`` and ``stage.json``.

A chunk's key digests the parameters and the identity (path, size, mtime) of
each of its videos, so a rerun skips what is committed and unchanged and
redoes the rest, including chunks whose videos were replaced since. Within an
uncommitted chunk it keeps the pieces a killed run's workers finished whose key
(the parameters and the video's identity) still matches: a kill -9 costs at
most the videos being decoded at the time.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

from tqdm import tqdm

from pipeline.decode.reader import TEST_MODE, FrameSpec, ViewSeeds, check_video_file, read_views, stat_or_none
from pipeline.decode.sampling import train_view_seed
from pipeline.decode.worker import DecodePool, DecodeResult, DecodeTask, Reader
from pipeline.decode.writer import (
    CHUNKS_DIR,
    FRAMES_PARQUET_OPTIONS,
    LOGS_DIR,
    Chunk,
    ChunkWriter,
    Marker,
    marker_path,
    merge_status,
    part_path,
    piece_path,
    pieces_dir,
    read_marker,
    read_piece,
)
from pipeline.errors import VidretError, check_number
from pipeline.files import sha256_file, sha256_json
from pipeline.manifest import ManifestEntry, parse_splits, read_manifest, select_split
from pipeline.schemas import DECODE_STATUSES, STATUS_FILE, frames_schema
from pipeline.stage import (
    LOCK_FILE,
    STAGE_FILE,
    Stage,
    begin,
    check_file,
    commit,
    decide,
    describe_changes,
    file_record,
    library_versions,
    locked,
    ran_because,
    skip_line,
)

# FrameSpec's options added since the first frames were decoded: at their defaults (bilinear, a video is one
# clip, raw frames) they are left out of the parameters, so that those frames' chunk keys still match.
ADDED_SPEC_OPTIONS = ("interpolation", "clip_seconds", "clip_stride", "clip_shots", "frame_format")

# Decoded videos whose pieces may wait on disk for a slower one ahead of them
# (part files are assembled in manifest order). Past this, dispatch pauses.
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
        if self.train_views and self.spec.clips:
            raise VidretError(
                "--train-views with --clip-seconds or --clip-shots: train views are draws over a whole video;"
                " decode clips without --train-views"
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
        spec_defaults = {spec_field.name: spec_field.default for spec_field in fields(FrameSpec)}
        for name in ADDED_SPEC_OPTIONS:
            if params[name] == spec_defaults[name]:
                del params[name]
        if "frame_format" not in params:  # the quality shapes JPEG frames only
            del params["jpeg_quality"]
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
    videos_resumed: int  # found decoded in pieces a killed run left, and kept
    chunks_run: int  # decoded by this run
    chunks_already_committed: int  # of this shard's chunks, found committed and skipped
    chunks_committed: int  # of the whole split, after this run
    chunks_total: int  # of the whole split
    videos_total: int  # of the whole split
    shard: tuple[int, int]  # (index, count)
    skip_reason: str | None = None  # why nothing was done
    ran_because: str = ""  # why earlier frames were redone, as the line says it

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
        if self.skip_reason:
            return skip_line("decode", self.out_dir)
        if not self.chunks_run:
            if self.complete:
                return (
                    f"decode: every chunk was already committed; wrote {STATUS_FILE} and {STAGE_FILE}"
                    f" in {self.out_dir}{self.ran_because}"
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
        if self.videos_resumed:
            parts.append(f"kept {self.videos_resumed} videos a killed run had decoded")
        if not self.complete:
            parts.append(waiting)
        return " | ".join(parts) + self.ran_because


def plan_chunks(
    entries: list[ManifestEntry], stats: dict[str, os.stat_result | None], params: dict, shard_size: int
) -> list[Chunk]:
    """Cut ``entries`` into chunks keyed by ``params`` and their files' ``stats`` (by video_id)."""
    chunks = []
    for index, start in enumerate(range(0, len(entries), shard_size)):
        members = tuple(entries[start : start + shard_size])
        inputs = [_video_identity(entry, stats[entry.video_id], params) for entry in members]
        piece_keys = tuple(sha256_json([params, identity]) for identity in inputs)
        chunks.append(Chunk(index, members, sha256_json([params, inputs]), piece_keys))
    return chunks


def _video_identity(entry: ManifestEntry, file_stat: os.stat_result | None, params: dict) -> list:
    identity = [entry.video_id, str(entry.path), *_file_identity(file_stat)]
    if "train_views" in params:  # a video's split then decides its rows
        identity.append(entry.split)
    return identity


def _file_identity(file_stat: os.stat_result | None) -> tuple[int, int]:
    return (file_stat.st_size, file_stat.st_mtime_ns) if file_stat else (-1, -1)


def _read_markers(out_dir: Path) -> dict[int, Marker]:
    """Chunk index -> the commit marker of every chunk in ``out_dir`` (a damaged marker counts as none)."""
    markers = {}
    for path in (out_dir / CHUNKS_DIR).glob("part-*.status.parquet"):
        marker = read_marker(path)
        if marker is not None:
            markers[_chunk_index(path)] = marker
    return markers


def _chunk_index(path: Path) -> int:
    """The chunk number in a part file's or a marker's name."""
    return int(path.name.split(".")[0].removeprefix("part-"))


def _committed(out_dir: Path, chunks: list[Chunk], markers: dict[int, Marker], deep: bool = True) -> set[int]:
    """Chunks whose marker holds their current key and whose part file is the one the marker recorded
    (its size, and its hash if ``deep``)."""
    return {
        chunk.index
        for chunk in chunks
        if chunk.index in markers
        and markers[chunk.index].key == chunk.key
        and _part_intact(part_path(out_dir, chunk.index), markers[chunk.index].part, deep)
    }


def _part_intact(path: Path, recorded: dict | None, deep: bool) -> bool:
    if recorded is None:  # a marker of an earlier vidret, which recorded no hash
        return path.is_file()
    return check_file(path, recorded, deep) is None


def _refuse_other_parameters(out_dir: Path, markers: dict[int, Marker], params: dict) -> None:
    """Sharded runs share ``out_dir``: redoing chunks decoded with other parameters would destroy other
    shards' work, so that is the user's call."""
    for marker in markers.values():
        if marker.params != params:
            raise VidretError(
                f"{out_dir} holds chunks decoded with other parameters ({describe_changes(marker.params, params)}),"
                " which sharded runs must not replace; clear it, decode it again without --num-shards,"
                " or choose another --out"
            )


def _refuse_losing_decoded(out_dir: Path, chunks: list[Chunk], markers: dict[int, Marker], stats: dict) -> None:
    """Never replace frames decoded ``ok`` by ``missing`` rows without --force: a mistyped --video-root
    would otherwise wipe a finished decode."""
    lost = []
    for chunk in chunks:
        if chunk.index not in markers:
            continue
        statuses = dict(zip(*markers[chunk.index].statuses(), strict=True))
        lost += [
            entry for entry in chunk.entries if statuses.get(entry.video_id) == "ok" and stats[entry.video_id] is None
        ]
    if lost:
        raise VidretError(
            f"{out_dir}: {len(lost)} videos decoded ok here are missing now (e.g. {lost[0].path});"
            " check the manifest's paths and --video-root, or pass --force to replace their frames with 'missing'"
        )


def _refuse_no_video(entries: list[ManifestEntry], stats: dict, manifest: Path, video_root: Path | None) -> None:
    if any(stat is not None for stat in stats.values()):
        return
    where = f" under --video-root {video_root}" if video_root else ""
    raise VidretError(
        f"{manifest}: none of the {len(entries)} videos to decode exists{where} (e.g. {entries[0].path});"
        " check the paths" + (" and --video-root" if video_root else "")
    )


def clear_outputs(out_dir: Path) -> None:
    """Remove what decode wrote in ``out_dir`` (and nothing else)."""
    for part in out_dir.glob("part-*.parquet"):
        part.unlink()
    shutil.rmtree(out_dir / CHUNKS_DIR, ignore_errors=True)
    (out_dir / STATUS_FILE).unlink(missing_ok=True)
    (out_dir / STAGE_FILE).unlink(missing_ok=True)


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
    _refuse_no_video(entries, stats, manifest, options.video_root)
    chunks = plan_chunks(entries, stats, params, options.shard_size)
    shard = (options.shard_index, options.num_shards)
    sharded = options.num_shards > 1
    if options.force and sharded:
        raise VidretError(
            "--force with --num-shards: it would delete the other shards' chunks; clear --out yourself,"
            " or decode without --num-shards"
        )
    stage = Stage(
        "decode", out_dir, sha256_json([chunk.key for chunk in chunks]), params,
        owns=("part-*.parquet", STATUS_FILE, CHUNKS_DIR, LOGS_DIR),
    )  # fmt: skip
    # Shards of one decode share out_dir; two runs of the same shard (or two unsharded runs) may not.
    lock = f".vidret-shard-{shard[0]}-of-{shard[1]}.lock" if sharded else LOCK_FILE
    with locked(stage, lock):
        decision = decide(stage, options.force)
        if not decision.run:
            return DecodeSummary(
                out_dir, Counter(), 0, 0.0, 0, 0, 0, len(chunks), len(chunks), len(entries), shard,
                skip_reason=decision.reason,
            )  # fmt: skip
        markers = _read_markers(out_dir)
        if sharded:
            _refuse_other_parameters(out_dir, markers, params)
        mine = [chunk for chunk in chunks if chunk.index % options.num_shards == options.shard_index]
        if options.force:  # before hashing the part files it replaces
            clear_outputs(out_dir)
            markers, already_committed, todo = {}, set(), mine
        else:
            already_committed = _committed(out_dir, mine, markers)
            todo = [chunk for chunk in mine if chunk.index not in already_committed]
            _refuse_losing_decoded(out_dir, todo, markers, stats)
        counts, frames, seconds, resumed = Counter(), 0, 0.0, 0
        if todo:
            begin(stage)  # the folder is about to change: it is no longer the one stage.json described
            (out_dir / STATUS_FILE).unlink(missing_ok=True)
            counts, frames, seconds, resumed = _decode_chunks(todo, stats, out_dir, options, params, reader, progress)
            # Look again: runs of other shards may have committed chunks meanwhile, and
            # the last run to finish must see them all to write the merged status.
            markers = _read_markers(out_dir)
        summary = DecodeSummary(
            out_dir=out_dir,
            counts=counts,
            frames=frames,
            seconds=seconds,
            videos_resumed=resumed,
            chunks_run=len(todo),
            chunks_already_committed=len(already_committed),
            # This shard's chunks were just hashed or written; a size check is enough to count the split's.
            chunks_committed=len(_committed(out_dir, chunks, markers, deep=False)),
            chunks_total=len(chunks),
            videos_total=len(entries),
            shard=shard,
            ran_because=ran_because(decision),
        )
        if summary.complete:
            _finish(stage, chunks, markers, manifest, options, summary)
    return summary


def _decode_chunks(
    chunks: list[Chunk],
    stats: dict[str, os.stat_result | None],
    out_dir: Path,
    options: DecodeOptions,
    params: dict,
    reader: Reader,
    progress: bool,
) -> tuple[Counter, int, float, int]:
    """Decode ``chunks`` and commit them; (this run's videos by status, frames, seconds, videos kept from
    pieces)."""
    start = time.perf_counter()
    tasks = []
    for chunk in chunks:
        pieces_dir(out_dir, chunk.index).mkdir(parents=True, exist_ok=True)
        for position, (entry, key) in enumerate(zip(chunk.entries, chunk.piece_keys, strict=True)):
            piece = piece_path(out_dir, chunk.index, position)
            tasks.append(DecodeTask(len(tasks), entry.video_id, entry.path, piece, key, options.views(entry)))
    # Failures that stat alone reveals (missing, empty) need no worker; videos whose piece is
    # there, with their key, were decoded by a killed run.
    problems = [check_video_file(task.path, stats[task.video_id]) for task in tasks]
    kept = {}
    for task, problem in zip(tasks, problems, strict=True):
        piece = read_piece(task.piece) if problem is None else None
        if piece is not None and piece.key == task.key:
            kept[task.seq] = DecodeResult(task.seq, task.video_id, piece.status, piece.error, piece.seconds)
    to_decode = sum(problem is None for problem in problems) - len(kept)
    # The raw frames' size, which bounds JPEG frames' too: 4:2:0 chroma keeps half the samples.
    video_bytes = options.spec.frame_bytes * max(options.train_views, 1)
    window = max(4 * options.workers, REORDER_BUDGET_BYTES // video_bytes)
    (out_dir / LOGS_DIR).mkdir(exist_ok=True)
    counts, frames = Counter(), 0
    bar = tqdm(
        total=len(tasks), initial=len(kept), unit="video", desc="decode", disable=not progress, dynamic_ncols=True
    )

    def accept(result: DecodeResult) -> None:
        nonlocal frames
        if result.write_error:
            raise VidretError(f"cannot write a decoded video's piece: {result.write_error}")
        counts[result.status] += 1
        frames += result.frames
        writer.add(result)
        bar.update(1)
        bar.set_postfix_str(f"ok {counts['ok']}, failed {counts.total() - counts['ok']}", refresh=False)

    schema = frames_schema(options.spec.frame_format, bool(options.train_views))
    writer = ChunkWriter(out_dir, chunks, params, schema)
    pool = None
    try:
        if to_decode:
            log_path = out_dir / LOGS_DIR / "decode-workers.log"
            workers = min(options.workers, to_decode)
            pool = DecodePool(workers, options.spec, schema, options.timeout, log_path, reader)
        dispatched = 0

        def dispatch() -> None:
            nonlocal dispatched
            while dispatched < len(tasks) and dispatched < writer.next_seq + window:
                task, problem = tasks[dispatched], problems[dispatched]
                if problem is not None:
                    accept(DecodeResult(task.seq, task.video_id, problem.status, str(problem), 0.0))
                elif task.seq in kept:
                    writer.add(kept[task.seq])
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
    return counts, frames, time.perf_counter() - start, len(kept)


def _finish(
    stage: Stage,
    chunks: list[Chunk],
    markers: dict[int, Marker],
    manifest: Path,
    options: DecodeOptions,
    summary: DecodeSummary,
) -> None:
    """Every chunk is committed: write status.parquet and commit stage.json."""
    out_dir = stage.out
    status = merge_status(out_dir, chunks)
    written = [*out_dir.glob("part-*.parquet"), *(out_dir / CHUNKS_DIR).glob("part-*.parquet")]
    for index in {_chunk_index(path) for path in written} - {chunk.index for chunk in chunks}:
        part_path(out_dir, index).unlink(missing_ok=True)  # a chunk of an earlier, longer manifest
        marker_path(out_dir, index).unlink(missing_ok=True)
    for pieces in (out_dir / CHUNKS_DIR).glob("part-*"):
        if pieces.is_dir():  # of a chunk whose run was killed between its marker and removing its pieces
            shutil.rmtree(pieces)
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
    files = {
        part_path(out_dir, chunk.index).name: markers[chunk.index].part or file_record(part_path(out_dir, chunk.index))
        for chunk in chunks
    }
    files[STATUS_FILE] = file_record(out_dir / STATUS_FILE)
    record = {
        "input": {
            "manifest": str(manifest.absolute()),
            "manifest_sha256": sha256_file(manifest),
            "video_root": str(options.video_root) if options.video_root else None,
            "videos": status.num_rows,
        },
        "counts": {name: counts[name] for name in DECODE_STATUSES if counts[name]},
        "output": {
            "parts": len(chunks),
            "bytes": sum(files[part_path(out_dir, chunk.index).name]["bytes"] for chunk in chunks),
            "parquet": FRAMES_PARQUET_OPTIONS,
        },
        "timeout_seconds": options.timeout,
        "decoder_seconds": round(sum(status.column("seconds").to_pylist()), 3),
        "throughput": throughput,
        "libraries": library_versions("decord", "av", "pyarrow", "numpy"),
    }
    commit(stage, record, files)
