"""Read one video: sample T frames with decord, resize the short side, centre-crop.

The resize happens inside decord's FFmpeg filter graph, during the YUV to RGB
conversion, so only ``short_side``-sized RGB frames are ever materialised. The
crop follows MMAction2's ``CenterCrop``: offsets ``(W - size) // 2`` and
``(H - size) // 2``.

decord and av are imported where they are used: the planning process never
decodes, and a rerun with nothing to do should not pay for loading them.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.decode.sampling import SAMPLINGS, sample_frame_indices
from pipeline.errors import VidretError


@dataclass(frozen=True)
class FrameSpec:
    """What every decoded video becomes: ``num_frames`` x size x size x 3, uint8 RGB."""

    num_frames: int = 12
    size: int = 224
    # The short side is resized to this before the centre crop. None: MMAction2's
    # ratio, 256 for a 224 crop. CLIP4Clip resizes it to the crop size itself.
    short_side: int | None = None
    sampling: str = "uniform"

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise VidretError(f"frames per video must be at least 1, got {self.num_frames}")
        if self.size < 1:
            raise VidretError(f"size must be at least 1, got {self.size}")
        if self.short_side is None:
            object.__setattr__(self, "short_side", round(self.size * 256 / 224))
        if self.short_side < self.size:
            raise VidretError(f"short side {self.short_side} is smaller than the crop size {self.size}")
        if self.sampling not in SAMPLINGS:
            raise VidretError(f"unknown sampling {self.sampling!r} (expected one of {', '.join(SAMPLINGS)})")

    @property
    def frame_bytes(self) -> int:
        return self.num_frames * self.size * self.size * 3

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DecodedVideo:
    frames: np.ndarray  # num_frames x size x size x 3, uint8, RGB
    frame_indices: list[int]
    source_num_frames: int
    fps: float
    note: str = ""  # why the result differs from what the container promised, if it does


class VideoError(Exception):
    """A video that cannot be decoded; ``status`` is its class in status.parquet."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_video_file(path: Path, file_stat: os.stat_result | None) -> VideoError | None:
    """Classify the failures visible from ``stat`` alone (None: go and decode it)."""
    if file_stat is None:
        return VideoError("missing", f"no such file: {path}")
    if not stat.S_ISREG(file_stat.st_mode):
        return VideoError("unreadable", f"not a regular file: {path}")
    if file_stat.st_size == 0:
        return VideoError("empty", f"file is empty (0 bytes): {path}")
    return None


def stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side scaled to ``short_side``, rounded as mmcv does."""
    scale = short_side / min(width, height)
    return int(width * scale + 0.5), int(height * scale + 0.5)


def probe_video_size(path: Path) -> tuple[int, int]:
    """The first video stream's (width, height), read from the container header."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                kinds = ", ".join(sorted({stream.type for stream in container.streams})) or "none"
                raise VideoError("no_video", f"no video stream (streams: {kinds}): {path}")
            codec = container.streams.video[0].codec_context
            width, height = codec.width, codec.height
    except av.FFmpegError as error:
        raise VideoError("unreadable", f"not a readable media file ({error.strerror}): {path}") from None
    if width <= 0 or height <= 0:
        raise VideoError("unreadable", f"video stream has no frame size: {path}")
    return width, height


def _open_reader(path: Path, width: int, height: int):
    import decord

    # One decoder thread: parallelism comes from one worker process per core.
    return decord.VideoReader(str(path), width=width, height=height, num_threads=1)


def _decodes(path: Path, width: int, height: int, index: int) -> bool:
    import decord

    try:
        _open_reader(path, width, height).get_batch([index])
        return True
    except decord.DECORDError:
        return False


def _decodable_prefix(path: Path, width: int, height: int, claimed: int) -> int:
    """How many leading frames really decode (binary search; a fresh reader per probe,
    since a decord reader is unusable after an error)."""
    if not _decodes(path, width, height, 0):
        return 0
    low, high = 0, claimed - 1  # frame `low` decodes; the last decodable frame is in [low, high]
    while low < high:
        middle = (low + high + 1) // 2
        if _decodes(path, width, height, middle):
            low = middle
        else:
            high = middle - 1
    return low + 1


def read_video(path: Path | str, spec: FrameSpec) -> DecodedVideo:
    """Decode ``spec.num_frames`` uniformly sampled frames of ``path``; raise VideoError."""
    import decord

    path = Path(path)
    problem = check_video_file(path, stat_or_none(path))
    if problem:
        raise problem
    width, height = resized_size(*probe_video_size(path), spec.short_side)
    try:
        reader = _open_reader(path, width, height)
    except (decord.DECORDError, RuntimeError) as error:
        if not _has_video_packets(path):
            raise _no_frames(path) from None
        raise VideoError("unreadable", f"decord cannot open it ({_decord_message(error)}): {path}") from None
    claimed = len(reader)
    if claimed == 0:
        raise _no_frames(path)
    fps = float(reader.get_avg_fps())
    indices = sample_frame_indices(claimed, spec.num_frames, spec.sampling)
    note = ""
    try:
        batch = reader.get_batch(indices).asnumpy()
    except decord.DECORDError:
        # The container promises frames that do not decode (a damaged tail, say):
        # sample again over the frames that do, rather than fail the video.
        decodable = _decodable_prefix(path, width, height, claimed)
        if decodable == 0:
            raise VideoError("unreadable", f"no frame decodes: {path}") from None
        indices = sample_frame_indices(decodable, spec.num_frames, spec.sampling)
        batch = _open_reader(path, width, height).get_batch(indices).asnumpy()
        note = f"the container lists {claimed} frames but only the first {decodable} decode; sampled those"
    top = (height - spec.size) // 2
    left = (width - spec.size) // 2
    frames = np.ascontiguousarray(batch[:, top : top + spec.size, left : left + spec.size])
    return DecodedVideo(frames, indices, claimed, fps, note)


def _no_frames(path: Path) -> VideoError:
    return VideoError("too_short", f"the video stream has no frames: {path}")


def _has_video_packets(path: Path) -> bool:
    import av

    with av.open(str(path)) as container:
        return any(packet.size for packet in container.demux(video=0))


def _decord_message(error: Exception) -> str:
    """decord's last message line, without its "[time] source.cc:line: " prefix."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return re.sub(r"^(\[[\d:]+\] \S+:\d+: )+", "", lines[-1].strip())
