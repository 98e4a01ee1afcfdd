"""Read decoded frames (``RUN/frames``) for the encode stage.

``FrameStore`` gives random access to any video's frames by ``video_id`` (and
view, or clip): decode writes one row group per row, so a shuffled batch reads
only its own videos.
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
from pipeline.frames_codec import decode_jpeg, decode_jpeg_batch_on_gpu
from pipeline.manifest import ManifestEntry, read_manifest
from pipeline.schemas import CLIP_COLUMNS, STATUS_FILE
from pipeline.stage import STAGE_FILE, read_committed, read_stage


@dataclass(frozen=True)
class FrameLocation:
    part: Path
    row_group: int
    row: int  # within the row group; 0 for files written by decode (one row per row group)
    shape: tuple[int, int, int, int]  # T, H, W, 3
    real_frames: int  # the first ones, sampled from the video; the rest of T are padding (all zeros)
    clip_index: int  # 0 for a whole video (and for each of its views)
    start_s: float  # the clip's place in the video, in seconds
    end_s: float | None  # None where unknown (a part file of an earlier vidret whose video lists no frame rate)


class FrameStore:
    """Every decoded video in a frames directory, and every video's decode status.

    A video has rows 0..K-1 (``locations[video_id][k]``, read with ``read(video_id, k)``): its views (the
    ``view`` column: K train-mode draws for a train video decoded with ``--train-views K``), or its clips in
    time order (the ``clip_index`` column: decode ``--clip-seconds``/``--clip-shots``), or just row 0, the
    whole video. Decode never writes views and clips together; part files without the clip columns hold
    whole videos.
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
        self.locations: dict[str, dict[int, FrameLocation]] = {}  # video_id -> view or clip -> location
        for part in parts:
            self._index_part(part)
        for video_id, views in self.locations.items():
            self._check_views(video_id, views)
        self.statuses = read_statuses(self.directory / STATUS_FILE)
        self._local = threading.local()

    def _index_part(self, part: Path) -> None:
        handle = open_parquet(part)
        names = handle.schema_arrow.names
        has_views, has_clips = "view" in names, all(name in names for name in CLIP_COLUMNS)
        columns = ["video_id", "num_frames", "height", "width", "frame_indices", "source_num_frames", "fps"]
        columns += (["view"] if has_views else []) + (list(CLIP_COLUMNS) if has_clips else [])
        table = read_parquet(part, columns=columns)  # a damaged page: one line naming the part file
        ids = table.column("video_id").to_pylist()
        views = table.column("view").to_pylist() if has_views else [0] * len(ids)
        if has_clips:
            clips = zip(*(table.column(name).to_pylist() for name in CLIP_COLUMNS), strict=True)
        else:  # an earlier vidret's part file: whole videos, from 0 s to their duration
            durations = zip(table.column("source_num_frames").to_pylist(), table.column("fps").to_pylist(), strict=True)
            clips = ((0, 0.0, frames / fps if frames is not None and fps else None) for frames, fps in durations)
        shapes = zip(*(table.column(name).to_pylist() for name in ("num_frames", "height", "width")), strict=True)
        indices = table.column("frame_indices").to_pylist()
        row_groups = [
            (group, row)
            for group in range(handle.num_row_groups)
            for row in range(handle.metadata.row_group(group).num_rows)
        ]
        rows = zip(ids, views, clips, shapes, indices, row_groups, strict=True)
        for video_id, view, (clip, start_s, end_s), (frames, height, width), frame_indices, (group, row) in rows:
            if view and clip:
                raise VidretError(
                    f"{part}: video {video_id!r} has view {view} of clip {clip}; views and clips exclude each other"
                )
            key, kind = (clip, "clip") if clip else (view, "view")
            located = self.locations.setdefault(video_id, {})
            if key in located:
                raise VidretError(f"{part}: video {video_id!r} {kind} {key} is also in {located[key].part.name}")
            real = _real_frames(frame_indices, part, video_id)
            located[key] = FrameLocation(part, group, row, (frames, height, width, 3), real, clip, start_s, end_s)

    def _check_views(self, video_id: str, views: dict[int, FrameLocation]) -> None:
        kind = "clips" if any(location.clip_index for location in views.values()) else "views"
        if sorted(views) != list(range(len(views))):
            raise VidretError(
                f"{self.directory}: video {video_id!r} has {kind} {sorted(views)}; expected 0 to {len(views) - 1}"
            )
        if len({location.shape for location in views.values()}) != 1:
            raise VidretError(f"{self.directory}: the {kind} of video {video_id!r} have different frame shapes")

    def __contains__(self, video_id: str) -> bool:
        return video_id in self.locations

    def num_views(self, video_id: str) -> int:
        """The video's rows: K for a train video decoded with ``--train-views K``, K for a video decoded into K
        clips, else 1."""
        return len(self.locations[video_id])

    def clips(self, video_id: str) -> list[FrameLocation]:
        """The video's clips in time order (one, clip 0, for a whole video or a video decoded in views)."""
        located = self.locations[video_id]
        return [located[clip] for clip in range(len(located))] if self.has_clips(video_id) else [located[0]]

    def has_clips(self, video_id: str) -> bool:
        """Whether the video was decoded into several clips (rows 1.. are clips, not views)."""
        located = self.locations[video_id]
        return len(located) > 1 and located[1].clip_index == 1

    def clip_units(self, video_ids: Iterable[str]) -> list[tuple[str, int]]:
        """Every (video_id, clip) of these videos, videos in the given order and each video's clips in time
        order: what embed embeds, one row of videos.parquet each."""
        return [(video_id, location.clip_index) for video_id in video_ids for location in self.clips(video_id)]

    def read(self, video_id: str, view: int = 0) -> np.ndarray:
        """The frames of one view of the video, uint8 ``T×H×W×3``: a read-only view of the Parquet buffer,
        or the JPEG frames (``--frame-format jpeg``) decoded into a new array."""
        location = self.locations[video_id][view]
        value = self._frames_value(location, video_id)
        if isinstance(value, pa.ListScalar):
            frames = np.empty(location.shape, np.uint8)
            try:
                decode_jpeg([image.as_buffer() for image in value.values], frames)
            except (OSError, ValueError) as error:  # Pillow raises OSError on a damaged image
                raise VidretError(
                    f"{location.part}: bad JPEG frames of video {video_id!r} ({first_line(error)}); rerun vidret decode"
                ) from None
            return frames
        buffer = value.as_buffer()
        if buffer.size != np.prod(location.shape):
            raise VidretError(
                f"{location.part}: video {video_id!r} has {buffer.size} frame bytes, "
                f"expected {'x'.join(map(str, location.shape))}"
            )
        return np.frombuffer(buffer, dtype=np.uint8).reshape(location.shape)

    def read_jpeg(self, video_id: str, view: int = 0) -> list[pa.Buffer] | None:
        """The JPEG images of one view of the video, one per frame, still encoded (for a GPU to decode);
        None for raw frames."""
        location = self.locations[video_id][view]
        value = self._frames_value(location, video_id)
        if not isinstance(value, pa.ListScalar):
            return None
        if len(value.values) != location.shape[0]:
            raise VidretError(
                f"{location.part}: video {video_id!r} has {len(value.values)} JPEG frames, expected {location.shape[0]}"
            )
        return [image.as_buffer() for image in value.values]

    def stores_jpeg(self, video_id: str, view: int = 0) -> bool:
        """Whether the video's part file holds JPEG frames (``--frame-format jpeg``) rather than raw ones."""
        return pa.types.is_list(self._handle(self.locations[video_id][view].part).schema_arrow.field("frames").type)

    def _handle(self, part: Path):
        handles = self._local.__dict__.setdefault("handles", {})  # ParquetFile is not shared across threads
        if part not in handles:
            handles[part] = open_parquet(part)
        return handles[part]

    def _frames_value(self, location: FrameLocation, video_id: str) -> pa.Scalar:
        """The ``frames`` value of one row: binary (raw), or a list of JPEG images."""
        try:
            column = self._handle(location.part).read_row_group(location.row_group, columns=["frames"]).column(0)
        except (pa.ArrowException, OSError) as error:
            raise VidretError(
                f"{location.part}: damaged frames of video {video_id!r} ({first_line(error)}); rerun vidret decode"
            ) from None
        return column[location.row]

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
    frames: torch.Tensor  # uint8 B×T×H×W×3; on the GPU already when JPEG frames were decoded there
    frame_mask: torch.Tensor | None  # B×T, True for sampled frames; None when no frame is padding


def prefetch_batches(
    store: FrameStore,
    batches: Iterable[list[tuple[str, int]]],
    threads: int = 4,
    depth: int = 2,
    pin_memory: bool = False,
) -> Iterator[FrameBatch]:
    """The frames of each batch of (video_id, row) pairs (a row: a video's view or clip), read ``depth``
    batches ahead.

    JPEG frames are decoded in the reading threads, or, with ``pin_memory`` (the model is on a GPU), on
    that GPU, a batch at a time: the threads only read the images."""
    pending: deque = deque()
    # The calling process's GPU: each thread's current CUDA device starts at 0.
    gpu = torch.device("cuda", torch.cuda.current_device()) if pin_memory else None
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vidret-frames") as pool:

        def submit(units: list[tuple[str, int]]) -> None:
            video_ids = [video_id for video_id, _ in units]
            shape = store.frame_shape(video_ids)
            real = torch.tensor([store.locations[video_id][row].real_frames for video_id, row in units])
            mask = torch.arange(shape[0]) < real[:, None] if bool((real < shape[0]).any()) else None
            if gpu is not None and all(store.stores_jpeg(video_id, row) for video_id, row in units):
                reads = [pool.submit(store.read_jpeg, video_id, row) for video_id, row in units]

                def decode_on_gpu() -> torch.Tensor:
                    try:
                        return decode_jpeg_batch_on_gpu([read.result() for read in reads], shape, gpu)
                    except (RuntimeError, ValueError) as error:  # nvJPEG's error on a damaged image
                        raise VidretError(
                            f"{store.directory}: bad JPEG frames in videos {video_ids[0]!r}..{video_ids[-1]!r}"
                            f" ({first_line(error)}); rerun vidret decode"
                        ) from None

                # Queued after its reads, so every read has started by the time it waits on them.
                decoded = pool.submit(decode_on_gpu)
                pending.append((lambda: FrameBatch(decoded.result(), mask), [*reads, decoded]))
                return
            frames = torch.empty((len(video_ids), *shape), dtype=torch.uint8, pin_memory=pin_memory)
            array = frames.numpy()

            def fill(index: int, video_id: str, row: int) -> None:
                array[index] = store.read(video_id, row)

            futures = [pool.submit(fill, i, video_id, row) for i, (video_id, row) in enumerate(units)]
            pending.append((lambda: FrameBatch(frames, mask), futures))

        try:
            for units in batches:
                submit(units)
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
    return batch()
