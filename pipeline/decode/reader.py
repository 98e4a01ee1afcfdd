"""Read one video: sample T frames, resize the short side, centre-crop.

With clip options (``--clip-seconds``, ``--clip-shots``; pipeline/decode/clips.py)
each clip is sampled as a video of its own frames, and one pass decodes the
frames of every clip, as it does those of every train view.

Two decoders give the same frames (within resampling differences):

- ``pyav`` (the default) demuxes the stream to number its frames (keeping the
  packets in memory unless the video is long), then decodes only what the
  sampled frames need: packets before the keyframe the next sampled frame
  depends on are skipped, and so are frames that nothing refers to unless
  they are sampled. Only the sampled frames are converted to RGB, resizing in
  the same swscale call. On x264 clips about half the frames are never
  decoded, which puts it at or under the cost of decoding every frame up to
  the last sampled one (``make bench``).
- ``decord`` resizes inside its FFmpeg filter graph. It is kept for runs that
  must match frames decoded with it.

The resize and crop follow MMAction2 (mmcv's ``Resize`` rounding and
``CenterCrop`` offsets ``(W - size) // 2``, ``(H - size) // 2``) with the
default bilinear filter, and CLIP4Clip (torchvision's ``Resize``, which
truncates the long side, and ``CenterCrop``, which rounds its offsets) with
bicubic, CLIP4Clip's filter. Both apply them to the frame as a player shows it:
non-square pixels stretched to width x sample aspect ratio, and turned (and
mirrored) as the display matrix says, as ffplay's autorotate does; a phone's
portrait recording comes out upright.

decord and av are imported where they are used: the planning process never
decodes, and a rerun with nothing to do should not pay for loading them.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.decode.clips import DEFAULT_SHOT_SECONDS, Window, clip_windows, shorter_than_a_window, shot_windows
from pipeline.decode.sampling import PADDING, SAMPLINGS, sample_frame_indices
from pipeline.errors import VidretError, check_number
from pipeline.schemas import FRAME_FORMATS

DECODERS = ("pyav", "decord")
INTERPOLATIONS = ("bilinear", "bicubic")

# A video's views: for each, the seed of a train-mode draw, or None for test mode.
ViewSeeds = tuple[np.random.SeedSequence | None, ...]
TEST_MODE: ViewSeeds = (None,)


@dataclass(frozen=True)
class FrameSpec:
    """What every decoded video becomes: ``num_frames`` x size x size x 3, uint8 RGB."""

    num_frames: int = 12
    size: int = 224
    # The short side is resized to this before the centre crop. None: MMAction2's
    # ratio, 256 for a 224 crop. CLIP4Clip resizes it to the crop size itself.
    short_side: int | None = None
    sampling: str = "uniform"
    decoder: str = "pyav"
    # The resize filter; bicubic also brings torchvision's rounding (see resized_size, crop_offsets).
    interpolation: str = "bilinear"
    # How a part file stores the frames: raw arrays, or one JPEG per frame (pipeline/frames_codec.py).
    frame_format: str = "raw"
    jpeg_quality: int = 90
    # Clips (pipeline/decode/clips.py): windows of clip_seconds every clip_stride seconds (default:
    # clip_seconds), or with clip_shots the video's shots, those over clip_seconds cut into windows.
    clip_seconds: float | None = None
    clip_stride: float | None = None
    clip_shots: bool = False

    def __post_init__(self) -> None:
        check_number("--frames", self.num_frames, integer=True, at_least=1)
        check_number("--size", self.size, integer=True, at_least=1)
        if self.short_side is None:
            object.__setattr__(self, "short_side", round(self.size * 256 / 224))
        check_number("--short-side", self.short_side, integer=True)
        if self.short_side < self.size:
            raise VidretError(f"short side {self.short_side} is smaller than the crop size {self.size}")
        if self.frame_bytes >= 2**31:  # a video's frames are one Parquet binary value, under 2 GiB
            raise VidretError(
                f"--frames {self.num_frames} of {self.size}x{self.size} make {self.frame_bytes / 2**30:.1f} GiB a"
                " video, over the 2 GiB Parquet stores in one value; use fewer frames or a smaller --size"
            )
        if self.sampling not in SAMPLINGS:
            raise VidretError(f"unknown sampling {self.sampling!r} (expected one of {', '.join(SAMPLINGS)})")
        if self.decoder not in DECODERS:
            raise VidretError(f"unknown decoder {self.decoder!r} (expected one of {', '.join(DECODERS)})")
        if self.interpolation not in INTERPOLATIONS:
            raise VidretError(
                f"unknown interpolation {self.interpolation!r} (expected one of {', '.join(INTERPOLATIONS)})"
            )
        if self.interpolation == "bicubic" and self.decoder == "decord":
            raise VidretError("--interpolation bicubic needs --decoder pyav: decord resizes with its own filter only")
        if self.frame_format not in FRAME_FORMATS:
            raise VidretError(
                f"unknown frame format {self.frame_format!r} (expected one of {', '.join(FRAME_FORMATS)})"
            )
        check_number("--jpeg-quality", self.jpeg_quality, integer=True, at_least=1, at_most=100)
        self._check_clips()

    def _check_clips(self) -> None:
        if self.clip_stride is not None and self.clip_shots:
            raise VidretError("--clip-stride spaces --clip-seconds windows; --clip-shots cuts at shots instead")
        if self.clip_stride is not None and self.clip_seconds is None:
            raise VidretError("--clip-stride needs --clip-seconds, the windows it spaces")
        if self.clip_shots and self.clip_seconds is None:
            object.__setattr__(self, "clip_seconds", DEFAULT_SHOT_SECONDS)
        if self.clip_seconds is None:
            return
        check_number("--clip-seconds", self.clip_seconds, above=0)
        if not self.clip_shots and self.clip_stride is None:
            object.__setattr__(self, "clip_stride", self.clip_seconds)
        if self.clip_stride is not None:
            check_number("--clip-stride", self.clip_stride, above=0)
        # As floats: 10 and 10.0 are one option, and must give one chunk key.
        object.__setattr__(self, "clip_seconds", float(self.clip_seconds))
        if self.clip_stride is not None:
            object.__setattr__(self, "clip_stride", float(self.clip_stride))

    @property
    def clips(self) -> bool:
        """Whether a video is cut into clips, rather than being one."""
        return self.clip_seconds is not None

    @property
    def frame_bytes(self) -> int:
        return self.num_frames * self.size * self.size * 3

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DecodedVideo:
    frames: np.ndarray  # num_frames x size x size x 3, uint8, RGB (a JpegFrames once a worker encodes them)
    frame_indices: list[int]  # PADDING (-1) for a zero frame
    source_num_frames: int
    fps: float
    note: str = ""  # why the result differs from what the container promised or the options asked, if it does
    clip_index: int = 0  # which clip of the video, in time order (a whole video is clip 0)
    start_s: float = 0.0  # the clip's first frame, in seconds from the start of the video
    end_s: float | None = None  # its end (exclusive); None: the end of the video, source_num_frames / fps

    def __post_init__(self) -> None:
        if self.end_s is None and self.fps > 0:  # without a frame rate the duration is unknown: null
            self.end_s = self.source_num_frames / self.fps


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


def resized_size(width: int, height: int, short_side: int, interpolation: str = "bilinear") -> tuple[int, int]:
    """(width, height) with the short side scaled to ``short_side``: rounded as mmcv does for
    bilinear; for bicubic, the long side truncated as torchvision's ``Resize`` does (CLIP4Clip)."""
    if interpolation == "bicubic":
        short, long = sorted((width, height))
        resized_long = int(short_side * long / short)
        return (short_side, resized_long) if width <= height else (resized_long, short_side)
    scale = short_side / min(width, height)
    return int(width * scale + 0.5), int(height * scale + 0.5)


def crop_offsets(height: int, width: int, size: int, interpolation: str = "bilinear") -> tuple[int, int]:
    """(top, left) of the centre crop: floored as mmcv does for bilinear, rounded (half to even)
    as torchvision's ``CenterCrop`` does for bicubic (CLIP4Clip)."""
    if interpolation == "bicubic":
        return round((height - size) / 2), round((width - size) / 2)
    return (height - size) // 2, (width - size) // 2


def centre_crop(images: np.ndarray, size: int, interpolation: str = "bilinear") -> np.ndarray:
    """The centre ``size`` x ``size`` of images (..., H, W, C), as a view."""
    top, left = crop_offsets(*images.shape[-3:-1], size, interpolation)
    return images[..., top : top + size, left : left + size, :]


@dataclass(frozen=True)
class Orientation:
    """How a player turns stored frames for display: ``turns`` quarter turns counterclockwise, then a
    left-right mirror if ``mirror``; these eight cover every right-angle display matrix (a phone's 90,
    180 and 270 degrees, and their mirror images)."""

    turns: int = 0
    mirror: bool = False

    @property
    def swaps_sides(self) -> bool:
        return self.turns % 2 == 1

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Images (..., H, W, C) as displayed, as a view."""
        images = np.rot90(images, self.turns, axes=(-3, -2))
        return images[..., ::-1, :] if self.mirror else images

    def after(self, turns: int) -> Orientation:
        """What is left to do to frames already turned ``turns`` quarter turns counterclockwise."""
        return Orientation((self.turns - turns) % 4, self.mirror)


def display_orientation(matrix: np.ndarray | None) -> Orientation:
    """The orientation ffplay's and ffmpeg's autorotate give a display matrix (FFmpeg's nine int32,
    16.16 fixed point): the same tests on its angle and signs. Angles other than right angles, which
    they rotate freely, are left as stored."""
    if matrix is None:
        return Orientation()
    a, b, c, d = (float(value) for value in matrix[[0, 1, 3, 4]])
    clockwise = round(display_turns(matrix) * -90) % 360
    if clockwise == 90:
        return Orientation(3, mirror=c > 0)  # FFmpeg's transpose "clock", or "cclock_flip" (a transpose)
    if clockwise == 270:
        return Orientation(1, mirror=c < 0)  # "cclock", or "clock_flip"
    if clockwise == 180:  # hflip where a < 0, vflip where d < 0; both are a half turn
        hflip, vflip = a < 0, d < 0
        return Orientation(2 if vflip else 0, mirror=hflip != vflip)
    if clockwise == 0 and d < 0:
        return Orientation(2, mirror=True)  # vflip
    return Orientation()


def display_turns(matrix: np.ndarray) -> float:
    """The matrix's rotation in counterclockwise quarter turns, as ``av_display_rotation_get`` measures it
    (which leaves mirroring out); 0 for a degenerate matrix, whose angle FFmpeg gives as NaN."""
    a, b, c, d = (float(value) for value in matrix[[0, 1, 3, 4]])
    scale_x, scale_y = math.hypot(a, c), math.hypot(b, d)
    if not scale_x or not scale_y:
        return 0.0
    return -math.degrees(math.atan2(b / scale_y, a / scale_x)) / 90


def displayed_size(width: int, height: int, sample_aspect_ratio, orientation: Orientation) -> tuple[int, int]:
    """(width, height) of a stored frame as a player shows it: non-square pixels (a sample aspect ratio
    other than 1) stretched to width x ratio, then turned."""
    if sample_aspect_ratio:
        width = max(1, round(width * sample_aspect_ratio))
    return (height, width) if orientation.swaps_sides else (width, height)


def read_video(path: Path | str, spec: FrameSpec) -> DecodedVideo:
    """Decode ``spec.num_frames`` sampled frames of ``path`` with ``spec.decoder``; raise VideoError."""
    return read_views(path, spec)[0]


def read_views(path: Path | str, spec: FrameSpec, views: ViewSeeds = TEST_MODE) -> list[DecodedVideo]:
    """One DecodedVideo per view of ``path``, decoding every frame they sample in one pass;
    raise VideoError."""
    path = Path(path)
    problem = check_video_file(path, stat_or_none(path))
    if problem:
        raise problem
    if spec.decoder == "decord":
        return _read_with_decord(path, spec, views)
    return _read_with_pyav(path, spec, views)


@dataclass(frozen=True)
class _Row:
    """What one output row samples: one view of one clip."""

    indices: list[int]  # source frame numbers, PADDING for a zero frame
    clip_index: int
    window: Window  # the clip's frames, [start, end)


def _sample_views(
    source_num_frames: int, fps: float, spec: FrameSpec, views: ViewSeeds, cuts: list[int]
) -> tuple[list[_Row], str]:
    """Each view of each clip (cut at the shot ``cuts`` with --clip-shots), with its frame indices, and a
    warning where the clips differ from the options'. A clip is sampled as a video of its own frames.
    A train-mode view gets a fresh generator from its seed, so that sampling again over fewer frames
    (a damaged tail) draws as a first sampling would."""
    windows, note = _clip_windows(source_num_frames, fps, spec, cuts)
    rows = []
    for clip_index, (start, end) in enumerate(windows):
        for seed in views:
            indices = sample_frame_indices(
                end - start,
                spec.num_frames,
                spec.sampling,
                fps=fps,
                rng=None if seed is None else np.random.default_rng(seed),
            )
            rows.append(_Row([PADDING if i == PADDING else start + i for i in indices], clip_index, (start, end)))
    return rows, note


def _clip_windows(num_frames: int, fps: float, spec: FrameSpec, cuts: list[int]) -> tuple[list[Window], str]:
    """The clips' frame ranges, and a warning where they are not what the options asked for."""
    if not spec.clips:
        return [(0, num_frames)], ""
    if fps <= 0:
        return [(0, num_frames)], "the video stream has no frame rate to cut clips by: one clip of all of it"
    if spec.clip_shots:
        return shot_windows(cuts, num_frames, fps, spec.clip_seconds), ""
    windows = clip_windows(num_frames, fps, spec.clip_seconds, spec.clip_stride)
    if shorter_than_a_window(num_frames, fps, spec.clip_seconds):
        return windows, (
            f"the video ({num_frames / fps:.2f} s) is shorter than one --clip-seconds {spec.clip_seconds:g} window:"
            " one clip of all of it"
        )
    return windows, ""


def _shot_cuts(path: Path, fps: float, spec: FrameSpec) -> list[int]:
    """With --clip-shots, the frames that start a shot (pipeline/decode/shots.py), among those that
    decode before any damage; a pass over every frame, before the sampled frames are decoded."""
    if not (spec.clip_shots and fps > 0):
        return []
    from pipeline.decode.shots import shot_cuts

    container, stream = _open_stream(path)
    with container:
        return shot_cuts(_frames_until_damage(container, stream), fps)


def _frames_until_damage(container, stream) -> Iterator:
    """The stream's frames, in presentation order, up to the end or the first error."""
    import av

    try:
        yield from container.decode(stream)
    except av.FFmpegError:
        return


def _wanted(rows: list[_Row]) -> set[int]:
    """The source frames the rows need: every index of any row but padding."""
    return {number for row in rows for number in row.indices if number != PADDING}


def _decoded_views(
    frames: dict[int, np.ndarray], rows: list[_Row], claimed: int, fps: float, note: str
) -> list[DecodedVideo]:
    """Each row's frames from the decoded ``frames`` (by source frame number), zeros for padding."""
    padding = np.zeros_like(next(iter(frames.values())))
    return [
        DecodedVideo(
            np.stack([padding if number == PADDING else frames[number] for number in row.indices]),
            row.indices,
            claimed,
            fps,
            note,
            clip_index=row.clip_index,
            start_s=row.window[0] / fps if fps > 0 else 0.0,
            end_s=row.window[1] / fps if fps > 0 else None,
        )
        for row in rows
    ]


def _notes(*notes: str) -> str:
    return "; ".join(note for note in notes if note)


def _prefix_note(claimed: int, decodable: int) -> str:
    return f"the container lists {claimed} frames but only the first {decodable} decode; sampled those"


def _no_frames(path: Path) -> VideoError:
    return VideoError("too_short", f"the video stream has no frames: {path}")


def _no_frame_decodes(path: Path) -> VideoError:
    return VideoError("unreadable", f"no frame decodes: {path}")


# PyAV -------------------------------------------------------------------------------------


# A video's packets up to this size are kept from the indexing pass and decoded from memory;
# a longer video is demuxed a second time rather than held.
KEPT_PACKET_BYTES = 64 << 20


@dataclass(frozen=True)
class StreamIndex:
    """What demuxing learns of the video stream: a pts and keyframe flag per packet that
    carries data, in decode order."""

    pts: list[int | None]
    keyframes: list[bool]

    def presentation_numbers(self) -> dict[int, int] | None:
        """Each pts's frame number in presentation order; None when pts are missing or repeat,
        so that frames can only be numbered in the order they leave the decoder."""
        if None in self.pts or len(set(self.pts)) != len(self.pts):
            return None
        return {pts: number for number, pts in enumerate(sorted(self.pts))}


def _open_stream(path: Path):
    """(container, its first video stream) set up for single-threaded decoding."""
    import av

    try:
        container = av.open(str(path))
    except av.FFmpegError as error:
        raise VideoError("unreadable", f"not a readable media file ({error.strerror}): {path}") from None
    if not container.streams.video:
        kinds = ", ".join(sorted({stream.type for stream in container.streams})) or "none"
        container.close()
        raise VideoError("no_video", f"no video stream (streams: {kinds}): {path}")
    stream = container.streams.video[0]
    # One thread: parallelism comes from one worker process per core, and the
    # per-packet skip settings below need packets decoded one after another.
    stream.thread_type = "NONE"
    stream.codec_context.thread_count = 1
    return container, stream


def _frame_size(stream, path: Path) -> tuple[int, int]:
    width, height = stream.codec_context.width, stream.codec_context.height
    if width <= 0 or height <= 0:
        raise VideoError("unreadable", f"video stream has no frame size: {path}")
    return width, height


def _display_matrix(frame) -> np.ndarray | None:
    """The frame's display matrix: the decoder attaches the container's (an MP4 track's) to every
    frame. PyAV 18 reads it from frames only, not from the stream."""
    from av.sidedata.sidedata import Type

    side_data = frame.side_data.get(Type.DISPLAYMATRIX)
    return None if side_data is None else np.frombuffer(bytes(side_data), np.int32)


def _first_display_matrix(container, stream) -> np.ndarray | None:
    """The display matrix of the stream's first frame (None if none decodes)."""
    import av

    try:
        frame = next(container.decode(stream), None)
    except av.FFmpegError:
        return None
    return None if frame is None else _display_matrix(frame)


def _packets(container, stream) -> Iterator:
    """The stream's packets that carry data, in decode order, up to the end or the damage."""
    import av

    try:
        for packet in container.demux(stream):
            if packet.size:
                yield packet
    except av.FFmpegError:
        return  # damaged: the packets before the damage are what the file has


def _index_packets(packets: Iterable, keep_bytes: int) -> tuple[StreamIndex, list | None]:
    """The index of ``packets``, and the packets themselves unless they pass ``keep_bytes``."""
    pts, keyframes, kept, kept_bytes = [], [], [], 0
    for packet in packets:
        pts.append(packet.pts)
        keyframes.append(packet.is_keyframe)
        if kept is not None:
            kept.append(packet)
            kept_bytes += packet.size
            kept = kept if kept_bytes <= keep_bytes else None
    return StreamIndex(pts, keyframes), kept


def index_stream(path: Path | str) -> StreamIndex:
    """The index of the video stream of ``path``."""
    container, stream = _open_stream(Path(path))
    with container:
        return _index_packets(_packets(container, stream), keep_bytes=0)[0]


def skip_plan(index: StreamIndex, numbers: dict[int, int], wanted: set[int]) -> list[str]:
    """The decoder's ``skip_frame`` setting for each packet up to the last wanted frame's.

    Every frame's references precede it in decode order, so a packet before the
    keyframe that the next wanted frame depends on is not needed ("NONKEY":
    only keyframes decode). From that keyframe on, frames that nothing refers
    to are dropped unless wanted ("NONREF"), and the rest decode ("DEFAULT").
    A wanted frame shown before its keyframe (an open GOP's leading picture)
    depends on the keyframe before.
    """
    keyframe_at, keyframe = [], 0
    for position, is_keyframe in enumerate(index.keyframes):
        keyframe = position if is_keyframe else keyframe
        keyframe_at.append(keyframe)
    targets = [position for position, pts in enumerate(index.pts) if numbers[pts] in wanted]
    needed_from = {}  # packet position of a wanted frame -> the first packet it needs
    for position in targets:
        start = keyframe_at[position]
        if index.pts[position] < index.pts[start] and start > 0:
            start = keyframe_at[start - 1]
        needed_from[position] = start
    plan, next_needed = [], len(index.pts)
    for position in range(max(targets), -1, -1):  # backwards: the next wanted frame's start
        next_needed = min(next_needed, needed_from.get(position, next_needed))
        if position < next_needed:
            plan.append("NONKEY")
        elif position in needed_from:
            plan.append("DEFAULT")
        else:
            plan.append("NONREF")
    return plan[::-1]


def _decode_wanted(
    codec, packets: Iterable, index: StreamIndex | None, wanted: set[int], convert
) -> dict[int, np.ndarray]:
    """``convert(frame)`` for each wanted frame number that decodes before the end or the first
    error. With ``index``, skip what the wanted frames do not need; without, decode every frame
    in turn."""
    import av

    numbers = index.presentation_numbers() if index else None
    plan = skip_plan(index, numbers, wanted) if numbers else None
    frames: dict[int, np.ndarray] = {}
    decoded = 0

    def keep(frame) -> None:
        nonlocal decoded
        number = numbers.get(frame.pts) if numbers else decoded
        decoded += 1
        if number in wanted and number not in frames:
            # A copy of the crop, not a view of the whole resized frame: a long video's clips keep thousands.
            frames[number] = np.ascontiguousarray(convert(frame))

    try:
        for position, packet in enumerate(packets):
            if plan:
                if position == len(plan):
                    break
                codec.skip_frame = plan[position]
            for frame in codec.decode(packet):
                keep(frame)
            if len(frames) == len(wanted):
                return frames
        for frame in codec.decode(None):  # the frames still held for reordering
            keep(frame)
    except av.FFmpegError:
        pass  # damaged: the caller sees which wanted frames are missing
    return frames


def _decode_file(path: Path, index: StreamIndex | None, wanted: set[int], convert) -> dict[int, np.ndarray]:
    """``_decode_wanted`` over a fresh demux of ``path``, with a fresh decoder."""
    container, stream = _open_stream(path)
    with container:
        return _decode_wanted(stream.codec_context, _packets(container, stream), index, wanted, convert)


def _count_decodable(path: Path) -> int:
    """How many leading frames decode before the first error."""
    container, stream = _open_stream(path)
    with container:
        return sum(1 for _ in _frames_until_damage(container, stream))


def _read_with_pyav(path: Path, spec: FrameSpec, views: ViewSeeds) -> list[DecodedVideo]:
    container, stream = _open_stream(path)
    with container:
        _frame_size(stream, path)
        sample_aspect_ratio = stream.sample_aspect_ratio
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        index, kept = _index_packets(_packets(container, stream), KEPT_PACKET_BYTES)
        claimed = len(index.pts)
        if claimed == 0:
            raise _no_frames(path)
        # One swscale context for every frame: frame.to_ndarray(width=...) makes one per call, which
        # costs more than the conversion itself (2.6 ms against 1.1 ms a 360p frame).
        from av.video.reformatter import VideoReformatter

        reformatter, to_rgb = VideoReformatter(), VideoReformatter()  # one context each: resize; convert only

        def convert(frame) -> np.ndarray:
            orientation = display_orientation(_display_matrix(frame))
            displayed = displayed_size(frame.width, frame.height, sample_aspect_ratio, orientation)
            width, height = resized_size(*displayed, spec.short_side, spec.interpolation)
            if orientation.swaps_sides:  # the stored frame is resized, then turned
                width, height = height, width
            if spec.interpolation == "bicubic":
                # CLIP4Clip resizes RGB images (OpenCV converts at the source size, PIL resizes).
                # Resizing within the YUV conversion would resample the subsampled chroma instead:
                # 1.3-5.6 grey levels from PIL's result on average, against 0.01-0.4 this way.
                frame = to_rgb.reformat(frame, format="rgb24")
            image = reformatter.reformat(
                frame, width=width, height=height, format="rgb24", interpolation=spec.interpolation.upper()
            ).to_ndarray()
            return centre_crop(orientation.apply(image), spec.size, spec.interpolation)

        cuts = _shot_cuts(path, fps, spec)
        rows, clip_note = _sample_views(claimed, fps, spec, views, cuts)
        wanted = _wanted(rows)  # every clip's frames: one pass decodes them all
        if kept is not None:
            frames = _decode_wanted(stream.codec_context, kept, index, wanted, convert)
    if kept is None:
        frames = _decode_file(path, index, wanted, convert)
    note = ""
    if len(frames) < len(wanted):
        # Frames the container lists did not come out: a damaged stream, or pts that do not
        # number the frames. Decode in turn, sampling over the frames that really decode.
        decodable = min(_count_decodable(path), claimed)
        if decodable == 0:
            raise _no_frame_decodes(path)
        if decodable < claimed:
            rows, clip_note = _sample_views(decodable, fps, spec, views, cuts)
            wanted = _wanted(rows)
            note = _prefix_note(claimed, decodable)
        frames = _decode_file(path, None, wanted, convert)
        if len(frames) < len(wanted):  # decodes differently each time: nothing to trust
            raise VideoError("unreadable", f"frames that decoded once did not decode again: {path}")
    return _decoded_views(frames, rows, claimed, fps, _notes(note, clip_note))


# decord -----------------------------------------------------------------------------------


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


def _read_with_decord(path: Path, spec: FrameSpec, views: ViewSeeds) -> list[DecodedVideo]:
    import decord

    container, stream = _open_stream(path)
    with container:
        size = _frame_size(stream, path)
        matrix = _first_display_matrix(container, stream)
        orientation = display_orientation(matrix)
        width, height = resized_size(*displayed_size(*size, stream.sample_aspect_ratio, orientation), spec.short_side)
    # decord turns the frames by the matrix's angle, at the size asked for, but never mirrors them.
    still_to_do = orientation.after(round(display_turns(matrix)) if matrix is not None else 0)
    try:
        reader = _open_reader(path, width, height)
    except (decord.DECORDError, RuntimeError) as error:
        if not index_stream(path).pts:
            raise _no_frames(path) from None
        raise VideoError("unreadable", f"decord cannot open it ({_decord_message(error)}): {path}") from None
    claimed = len(reader)
    if claimed == 0:
        raise _no_frames(path)
    fps = float(reader.get_avg_fps())
    cuts = _shot_cuts(path, fps, spec)
    rows, clip_note = _sample_views(claimed, fps, spec, views, cuts)
    wanted = sorted(_wanted(rows))
    note = ""
    try:
        batch = reader.get_batch(wanted).asnumpy()
    except decord.DECORDError:
        # The container promises frames that do not decode (a damaged tail, say):
        # sample again over the frames that do, rather than fail the video.
        decodable = _decodable_prefix(path, width, height, claimed)
        if decodable == 0:
            raise _no_frame_decodes(path) from None
        rows, clip_note = _sample_views(decodable, fps, spec, views, cuts)
        wanted = sorted(_wanted(rows))
        batch = _open_reader(path, width, height).get_batch(wanted).asnumpy()
        note = _prefix_note(claimed, decodable)
    frames = dict(zip(wanted, centre_crop(still_to_do.apply(batch), spec.size), strict=True))
    return _decoded_views(frames, rows, claimed, fps, _notes(note, clip_note))


def _decord_message(error: Exception) -> str:
    """decord's last message line, without its "[time] source.cc:line: " prefix."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return re.sub(r"^(\[[\d:]+\] \S+:\d+: )+", "", lines[-1].strip())
