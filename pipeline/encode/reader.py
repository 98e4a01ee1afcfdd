"""Read decoded frames (``RUN/frames``) for the encode stage.

``FrameStore`` gives random access to any video's frames by ``video_id`` (and
view): decode writes one row group per row, so a shuffled batch reads only its
own videos.
``prefetch_batches`` reads batches in background threads, a few batches ahead,
into uint8 arrays (pinned memory when the model is on a GPU), so the device never
waits on Parquet; each batch comes with the mask of its padded frames, if any.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from pipeline.errors import VidretError, check_path, first_line, shown_path
from pipeline.files import open_parquet, read_parquet, sha256_file
from pipeline.manifest import ManifestEntry, read_manifest
from pipeline.schemas import STATUS_FILE
from pipeline.stage import STAGE_FILE, read_committed, read_stage


@dataclass(frozen=True)
class FrameLocation:
    part: Path
    row_group: int
    row: int  # within the row group; 0 for files written by decode (one row per row group)
    shape: tuple[int, int, int, int]  # T, H, W, 3
    real_frames: int  # the first ones, sampled from the video; the rest of T are padding (all zeros)


class FrameStore:
    """Every decoded video in a frames directory, and every video's decode status.

    A video has one row per view (``view`` column; files without it have view 0 only):
    K train-mode draws for a train video decoded with ``--train-views K``, else one.
    """

    def __init__(self, frames_dir: Path | str):
        self.directory = Path(frames_dir)
        if not self.directory.is_dir():
            raise VidretError(f"{self.directory}: no such frames directory (run `vidret decode` first)")
        # Sizes only: a flipped byte is caught by the page checksums as the frames are read.
        record = read_committed(self.directory, "decode", deep=False)
        if record is None:
            raise VidretError(f"{self.directory}: decode has not finished here (no {STAGE_FILE}); rerun vidret decode")
        files = record.get("files")
        parts = (
            sorted(self.directory / name for name in files if name.startswith("part-"))
            if files
            else sorted(self.directory.glob("part-*.parquet"))
        )
        self.locations: dict[str, dict[int, FrameLocation]] = {}  # video_id -> view -> location
        for part in parts:
            self._index_part(part)
        for video_id, views in self.locations.items():
            self._check_views(video_id, views)
        self.statuses = read_statuses(self.directory / STATUS_FILE)
        self._local = threading.local()

    def _index_part(self, part: Path) -> None:
        handle = open_parquet(part)
        has_views = "view" in handle.schema_arrow.names
        columns = ["video_id", "num_frames", "height", "width", "frame_indices"] + (["view"] if has_views else [])
        table = read_parquet(part, columns=columns)  # a damaged page: one line naming the part file
        ids = table.column("video_id").to_pylist()
        views = table.column("view").to_pylist() if has_views else [0] * len(ids)
        shapes = zip(*(table.column(name).to_pylist() for name in ("num_frames", "height", "width")), strict=True)
        indices = table.column("frame_indices").to_pylist()
        row_groups = [
            (group, row)
            for group in range(handle.num_row_groups)
            for row in range(handle.metadata.row_group(group).num_rows)
        ]
        rows = zip(ids, views, shapes, indices, row_groups, strict=True)
        for video_id, view, (frames, height, width), frame_indices, (group, row) in rows:
            located = self.locations.setdefault(video_id, {})
            if view in located:
                raise VidretError(f"{part}: video {video_id!r} view {view} is also in {located[view].part.name}")
            real = _real_frames(frame_indices, part, video_id)
            located[view] = FrameLocation(part, group, row, (frames, height, width, 3), real)

    def _check_views(self, video_id: str, views: dict[int, FrameLocation]) -> None:
        if sorted(views) != list(range(len(views))):
            raise VidretError(
                f"{self.directory}: video {video_id!r} has views {sorted(views)}; expected 0 to {len(views) - 1}"
            )
        if len({location.shape for location in views.values()}) != 1:
            raise VidretError(f"{self.directory}: the views of video {video_id!r} have different frame shapes")

    def __contains__(self, video_id: str) -> bool:
        return video_id in self.locations

    def num_views(self, video_id: str) -> int:
        """The video's rows: K for a train video decoded with ``--train-views K``, else 1."""
        return len(self.locations[video_id])

    def read(self, video_id: str, view: int = 0) -> np.ndarray:
        """The frames of one view of the video, uint8 ``T×H×W×3`` (a read-only view of the Parquet buffer)."""
        location = self.locations[video_id][view]
        handles = self._local.__dict__.setdefault("handles", {})  # ParquetFile is not shared across threads
        if location.part not in handles:
            handles[location.part] = open_parquet(location.part)
        try:
            column = handles[location.part].read_row_group(location.row_group, columns=["frames"]).column(0)
        except (pa.ArrowException, OSError) as error:
            raise VidretError(
                f"{location.part}: damaged frames of video {video_id!r} ({first_line(error)}); rerun vidret decode"
            ) from None
        buffer = column[location.row].as_buffer()
        if buffer.size != np.prod(location.shape):
            raise VidretError(
                f"{location.part}: video {video_id!r} has {buffer.size} frame bytes, "
                f"expected {'x'.join(map(str, location.shape))}"
            )
        return np.frombuffer(buffer, dtype=np.uint8).reshape(location.shape)

    def frame_shape(self, video_ids: Iterable[str]) -> tuple[int, int, int, int]:
        """The one frame shape of these videos; an error if they differ (a batch needs one shape)."""
        shapes = Counter(self.locations[video_id][0].shape for video_id in video_ids)
        if len(shapes) != 1:
            listed = ", ".join(f"{count} × {'x'.join(map(str, shape[:3]))}" for shape, count in shapes.most_common())
            raise VidretError(f"{self.directory}: videos have different frame shapes ({listed}); decode them alike")
        return next(iter(shapes))

    def shared_num_views(self, video_ids: Iterable[str]) -> int:
        """The one number of views of these (training) videos; an error if they differ."""
        counts = Counter(self.num_views(video_id) for video_id in video_ids)
        if len(counts) != 1:
            listed = ", ".join(f"{videos} × {views} views" for views, videos in counts.most_common())
            raise VidretError(
                f"{self.directory}: training videos have different numbers of views ({listed});"
                " decode the train split with one --train-views"
            )
        return next(iter(counts))


def _real_frames(frame_indices: list[int], part: Path, video_id: str) -> int:
    """How many of the frames are sampled ones (index >= 0); padding (-1) must come last."""
    real = sum(number >= 0 for number in frame_indices)
    if min(frame_indices[:real], default=0) < 0:
        raise VidretError(f"{part}: video {video_id!r} has padding (-1) before sampled frames in frame_indices")
    return real


def read_statuses(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise VidretError(f"{path}: missing; the frames directory is incomplete (rerun vidret decode)")
    table = read_parquet(path, columns=["video_id", "status"])
    return dict(zip(table.column("video_id").to_pylist(), table.column("status").to_pylist(), strict=True))


@dataclass
class VideoSelection:
    """The manifest videos of a split that have frames, and why the others have none."""

    entries: list[ManifestEntry]
    skipped: Counter = field(default_factory=Counter)  # decode status → count


def select_videos(
    store: FrameStore, manifest: list[ManifestEntry], split_entries: list[ManifestEntry]
) -> VideoSelection:
    """Match a split's manifest entries to decoded frames; an error where the two disagree.

    A video without frames must have a failed decode status, so that it is counted, never
    silently dropped. Frames of a video the manifest does not list mean the frames came
    from another manifest.
    """
    listed = {entry.video_id for entry in manifest}
    strangers = [video_id for video_id in store.locations if video_id not in listed]
    if strangers:
        raise VidretError(
            f"manifest and frames disagree: {store.directory} has {len(strangers)} videos the manifest does not list "
            f"(e.g. {strangers[0]!r}); were the frames decoded from another manifest?"
        )
    selection = VideoSelection(entries=[])
    never_decoded = []
    for entry in split_entries:
        if entry.video_id in store:
            selection.entries.append(entry)
            continue
        status = store.statuses.get(entry.video_id)
        if status is None:
            never_decoded.append(entry.video_id)
        elif status == "ok":
            raise VidretError(f"{store.directory}: {entry.video_id!r} has status ok but no frames in any part file")
        else:
            selection.skipped[status] += 1
    if never_decoded:
        raise VidretError(
            f"manifest and frames disagree: {len(never_decoded)} videos of the manifest were not decoded into "
            f"{store.directory} (e.g. {never_decoded[0]!r}); decode that split too"
        )
    return selection


def frames_and_manifest(frames_dir: Path | str, manifest: Path | str) -> dict:
    """What a stage reading decoded frames records of its inputs: both paths, the frames' decode
    fingerprint and the manifest's SHA-256."""
    frames_dir, manifest = Path(frames_dir), Path(manifest)
    check_path(frames_dir, "frames directory")  # a NUL byte or a symlink loop: one line, not a traceback
    if not frames_dir.is_dir():
        raise VidretError(f"{shown_path(frames_dir)}: no such frames directory (run `vidret decode` first)")
    read_manifest(manifest)  # refuses a missing, unreadable or malformed manifest in one line before hashing it
    return {
        "frames": str(frames_dir.absolute()),
        "frames_fingerprint": (read_stage(frames_dir) or {}).get("input", {}).get("fingerprint"),
        "manifest": str(manifest.absolute()),
        "manifest_sha256": sha256_file(manifest),
    }


@dataclass
class FrameBatch:
    frames: torch.Tensor  # uint8 B×T×H×W×3
    frame_mask: torch.Tensor | None  # B×T, True for sampled frames; None when no frame is padding


def prefetch_batches(
    store: FrameStore,
    batches: Iterable[list[str]],
    threads: int = 4,
    depth: int = 2,
    pin_memory: bool = False,
    view: int = 0,
) -> Iterator[FrameBatch]:
    """The frames of ``view`` of each batch of video ids, read ``depth`` batches ahead."""
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vidret-frames") as pool:

        def submit(video_ids: list[str]) -> None:
            shape = store.frame_shape(video_ids)
            frames = torch.empty((len(video_ids), *shape), dtype=torch.uint8, pin_memory=pin_memory)
            array = frames.numpy()

            def fill(index: int, video_id: str) -> None:
                array[index] = store.read(video_id, view)

            real = torch.tensor([store.locations[video_id][view].real_frames for video_id in video_ids])
            mask = torch.arange(shape[0]) < real[:, None] if bool((real < shape[0]).any()) else None
            futures = [pool.submit(fill, i, video_id) for i, video_id in enumerate(video_ids)]
            pending.append((FrameBatch(frames, mask), futures))

        try:
            for video_ids in batches:
                submit(video_ids)
                if len(pending) > depth:
                    yield _wait(pending.popleft())
            while pending:
                yield _wait(pending.popleft())
        finally:
            for _, futures in pending:
                for future in futures:
                    future.cancel()


def _wait(item) -> FrameBatch:
    batch, futures = item
    for future in futures:
        future.result()  # re-raises a reader error in the consumer
    return batch
