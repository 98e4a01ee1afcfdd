"""The built-in synthetic dataset: captioned clips of one shape moving over a background.

Each clip has five attributes: colour, shape, size, background and direction
of motion, and its captions name all five. Two properties make it a useful
retrieval benchmark:

* every test caption matches exactly one test video (test clips have
  distinct attribute combinations);
* the direction can only be read from the order of frames: a clip moving left
  over a segment is the time reverse of one moving right over the same
  segment, and segments are drawn independently of direction, so the set of
  frames (all that mean pooling sees) carries no information about direction.
  A temporal head can beat mean pooling on these captions.

With ``twins`` the clips come in pairs that tell that apart: a clip and its
twin share every attribute but the direction, which is the opposite one on
the same axis, and the twin's frames are the clip's in reverse order. Both
are in one split, and share a manifest ``group``, so training draws them into
the same batches as one another's hard negatives. On such a test split mean
pooling of per-frame features (each frame encoded alone, as with 2d patches)
sees the same frames for a caption's video and its twin, and its
text-to-video R@1 is at most half the test clips, in expectation
(``MEAN_POOLING_CEILING``), whatever it learns.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.errors import VidretError, check_number
from pipeline.files import sha256_json
from pipeline.manifest import SPLITS, write_manifest
from pipeline.stage import Stage, begin, commit, decide, library_versions, locked, ran_because, skip_line

COLOURS = {
    "red": (220, 45, 45),
    "green": (40, 175, 70),
    "blue": (50, 90, 230),
    "yellow": (235, 205, 40),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = {"small": 0.09, "large": 0.16}  # circumradius as a fraction of the frame height
BACKGROUNDS = {"black": (25, 25, 25), "gray": (120, 120, 120), "purple": (85, 45, 115), "teal": (25, 105, 105)}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
CAPTION_TEMPLATES = (
    "a {size} {colour} {shape} moves {direction} on a {background} background",
    "a {colour} {shape}, {size}, slides {direction} across a {background} background",
    "on a {background} background a {size} {colour} {shape} travels {direction}",
)
SPLIT_FRACTIONS = {"test": 0.2, "val": 0.1}  # the rest is train
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
# With twins, a test caption's video and its twin look alike to mean pooling of per-frame features: it picks
# the right one at best half the time (the twins' frames differ only by the codec's rounding). A tower that
# sees several frames at once (--linear-patch 3d) has no such ceiling, whatever its head.
MEAN_POOLING_CEILING = 0.5
TRAIN_CAPTIONS = 3  # captions per training video; val and test videos get one, as MSR-VTT 1k-A


@dataclass(frozen=True)
class ClipAttributes:
    colour: str
    shape: str
    size: str
    background: str
    direction: str

    def caption(self, template: str) -> str:
        return template.format(**asdict(self))


ALL_ATTRIBUTES = [
    ClipAttributes(*combo) for combo in itertools.product(COLOURS, SHAPES, SIZES, BACKGROUNDS, DIRECTIONS)
]


@dataclass(frozen=True)
class ClipMotion:
    start: tuple[float, float]  # centre (x, y) in pixels at the first frame
    end: tuple[float, float]  # and at the last frame
    num_frames: int


@dataclass(frozen=True)
class SynthOptions:
    videos: int = 200
    seed: int = 0
    width: int = 320
    height: int = 240
    fps: int = 30
    min_frames: int = 60
    max_frames: int = 120
    twins: bool = False  # clips in pairs, the second the first played backwards (opposite direction)

    def __post_init__(self) -> None:
        if self.videos < 1:
            raise VidretError(f"--videos must be at least 1, got {self.videos}")
        if self.twins and self.videos % 2:
            raise VidretError(f"--twins makes clips in pairs: --videos must be even, got {self.videos}")
        if self.width % 2 or self.height % 2 or min(self.width, self.height) < 32:
            raise VidretError(f"frame size must be even and at least 32, got {self.width}x{self.height}")
        if not 2 <= self.min_frames <= self.max_frames:
            raise VidretError(f"need 2 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}")
        held_out = sum(self.split_counts()[name] for name in SPLIT_FRACTIONS)
        if held_out > len(ALL_ATTRIBUTES):
            raise VidretError(
                f"--videos {self.videos} needs {held_out} distinct val and test clips,"
                f" but there are only {len(ALL_ATTRIBUTES)} attribute combinations"
            )

    def split_counts(self) -> dict[str, int]:
        """Videos per split (with twins, even: a pair is in one split)."""
        unit = 2 if self.twins else 1
        counts = {name: unit * round(fraction * self.videos / unit) for name, fraction in SPLIT_FRACTIONS.items()}
        return {"train": self.videos - sum(counts.values()), **counts}

    def params(self) -> dict:
        """The options as the stage records them: ``twins`` only when set, so earlier datasets stay up to date."""
        params = asdict(self)
        if not self.twins:
            del params["twins"]
        return params


def draw_motion(
    rng: np.random.Generator, direction: str, radius: float, num_frames: int, width: int, height: int
) -> ClipMotion:
    """A straight path over at least 40% of the free span, in ``direction``.

    The segment is drawn the same way for every direction and only then
    oriented, so left/right (and up/down) clips cover the same positions.
    """
    dx, dy = DIRECTIONS[direction]
    along, across = (width, height) if dx else (height, width)
    free = along - 2 * radius
    length = rng.uniform(0.4, 0.75) * free
    low = radius + rng.uniform(0, free - length)
    high = low + length
    side = rng.uniform(radius, across - radius)
    first, last = (low, high) if dx + dy > 0 else (high, low)
    if dx:
        return ClipMotion((first, side), (last, side), num_frames)
    return ClipMotion((side, first), (side, last), num_frames)


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    if shape == "circle":
        return np.hypot(dx, dy) - radius
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - radius * 0.75
    if shape == "diamond":
        return (np.abs(dx) + np.abs(dy) - radius) / np.sqrt(2)
    if shape == "triangle":  # pointing up; distance to the farthest edge line
        normals = [(np.cos(angle), np.sin(angle)) for angle in np.radians([90, 210, 330])]
        return np.max([nx * dx + ny * dy for nx, ny in normals], axis=0) - radius / 2
    raise ValueError(f"unknown shape {shape!r}")


def render_frames(attributes: ClipAttributes, motion: ClipMotion, width: int, height: int) -> Iterator[np.ndarray]:
    """The clip's frames, each height x width x 3 uint8, with an anti-aliased shape.

    Every frame is drawn into the same buffer (fresh arrays would page-fault
    more than drawing costs): copy a frame to keep it past the next one.
    """
    radius = SIZES[attributes.size] * height
    shade = np.linspace(0.85, 1.15, height)[:, None, None]  # a vertical gradient, so the background is not flat
    background = np.clip(np.array(BACKGROUNDS[attributes.background]) * shade, 0, 255)
    background = np.broadcast_to(background, (height, width, 3)).astype(np.float32)
    empty = np.rint(background).astype(np.uint8)
    colour = np.array(COLOURS[attributes.colour], np.float32)
    frame = np.empty_like(empty)
    for t in np.linspace(0.0, 1.0, motion.num_frames):
        cx = motion.start[0] + t * (motion.end[0] - motion.start[0])
        cy = motion.start[1] + t * (motion.end[1] - motion.start[1])
        x0, x1 = max(int(cx - radius) - 2, 0), min(int(cx + radius) + 3, width)
        y0, y1 = max(int(cy - radius) - 2, 0), min(int(cy + radius) + 3, height)
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        coverage = np.clip(0.5 - _signed_distance(attributes.shape, xs + 0.5 - cx, ys + 0.5 - cy, radius), 0, 1)
        patch = background[y0:y1, x0:x1]
        frame[:] = empty
        frame[y0:y1, x0:x1] = np.rint(patch + coverage[..., None] * (colour - patch))
        yield frame


DEFAULT_H264_OPTIONS = {"preset": "veryfast", "crf": "20", "x264-params": "mbtree=0"}


def write_video(
    path: Path,
    frames: Iterable[np.ndarray],
    fps: int,
    codec: str = "h264",
    pix_fmt: str = "yuv420p",
    codec_options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
) -> None:
    """Encode RGB frames with PyAV; the container follows the file extension.

    The encoder runs single-threaded and, for x264, without macroblock-tree rate control, so the
    same frames give the same bytes: with it, the libx264 in PyAV 18's FFmpeg gave different bytes for the
    same frames in pool workers.
    """
    import av

    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream(codec, rate=fps)
                stream.height, stream.width = frame.shape[:2]
                stream.pix_fmt = pix_fmt
                stream.codec_context.thread_count = 1
                stream.options = DEFAULT_H264_OPTIONS if codec_options is None else codec_options
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)


def _write_clip(job: tuple[Path, ClipAttributes, ClipMotion, SynthOptions]) -> None:
    path, attributes, motion, options = job
    write_video(path, render_frames(attributes, motion, options.width, options.height), options.fps)


@dataclass(frozen=True)
class VideoSegment:
    attributes: ClipAttributes
    caption: str
    start_s: float  # seconds from the start of the video
    end_s: float  # exclusive


def write_segmented_video(
    path: Path, segments: Sequence[ClipAttributes], segment_seconds: float, options: SynthOptions | None = None,
    seed: int = 0,
) -> list[VideoSegment]:  # fmt: skip
    """One long video of synthetic clips back to back, one per ``segments``, each ``segment_seconds`` long
    (hard cuts between them), at ``options``' frame size and rate; each segment with its true time range and
    its caption. Moments in a long video are found by such ranges: a search hit's clip should overlap its own."""
    options = options or SynthOptions()
    if not segments:
        raise VidretError("a segmented video needs at least one segment")
    check_number("segment_seconds", segment_seconds, above=0)
    frames_per_segment = round(segment_seconds * options.fps)
    if frames_per_segment < 2:
        raise VidretError(f"segment_seconds {segment_seconds:g} is under two frames at {options.fps} fps")
    rng = np.random.default_rng(seed)
    placed, clips = [], []
    for number, attributes in enumerate(segments):
        radius = SIZES[attributes.size] * options.height
        motion = draw_motion(rng, attributes.direction, radius, frames_per_segment, options.width, options.height)
        clips.append(render_frames(attributes, motion, options.width, options.height))
        first = number * frames_per_segment
        end = first + frames_per_segment
        caption = attributes.caption(CAPTION_TEMPLATES[0])
        placed.append(VideoSegment(attributes, caption, first / options.fps, end / options.fps))
    write_video(path, itertools.chain.from_iterable(clips), options.fps)
    return placed


def assign_splits(rng: np.random.Generator, options: SynthOptions) -> list[str]:
    unit = 2 if options.twins else 1  # a pair of twins is in one split
    splits = [name for name, count in options.split_counts().items() for _ in range(count // unit)]
    return [splits[i] for i in rng.permutation(options.videos // unit)]


def plan_dataset(options: SynthOptions) -> list[tuple[str, ClipAttributes, ClipMotion, list[str]]]:
    """(split, attributes, motion, captions) for every video; deterministic for the seed. With twins, each
    clip is followed by its twin."""
    rng = np.random.default_rng(options.seed)
    splits = assign_splits(rng, options)
    # Val and test clips take distinct combinations, so each of their captions
    # names exactly one clip; train clips draw freely. A twin's combination differs from its clip's in
    # direction alone: pairs take distinct combinations of the other attributes and the axis.
    combinations = ALL_ATTRIBUTES[::2] if options.twins else ALL_ATTRIBUTES  # one direction per axis
    distinct = iter(rng.permutation(len(combinations)))
    plan = []
    for split in splits:
        if split == "train":
            attributes = combinations[rng.integers(len(combinations))]
            templates = CAPTION_TEMPLATES[:TRAIN_CAPTIONS]
        else:
            attributes = combinations[next(distinct)]
            templates = [CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]]
        num_frames = int(rng.integers(options.min_frames, options.max_frames + 1))
        radius = SIZES[attributes.size] * options.height
        motion = draw_motion(rng, attributes.direction, radius, num_frames, options.width, options.height)
        plan.append((split, attributes, motion, [attributes.caption(t) for t in templates]))
        if options.twins:
            twin = replace(attributes, direction=OPPOSITE[attributes.direction])
            backwards = ClipMotion(motion.end, motion.start, motion.num_frames)
            plan.append((split, twin, backwards, [twin.caption(t) for t in templates]))
    return plan


@dataclass
class SynthSummary:
    manifest: Path
    splits: dict[str, int]
    seconds: float
    skip_reason: str | None = None  # why nothing was written
    ran_because: str = ""  # why an earlier dataset was replaced, as the line says it

    def line(self) -> str:
        if self.skip_reason:
            return skip_line("synth", self.manifest.parent)
        videos = sum(self.splits.values())
        splits = ", ".join(f"{self.splits[name]} {name}" for name in SPLITS if self.splits.get(name))
        return (
            f"synth: {videos} videos ({splits}) in {self.seconds:.1f} s, {videos / self.seconds:.1f} videos/s"
            f" | manifest: {self.manifest}{self.ran_because}"
        )


MANIFEST_FILE = "manifest.jsonl"
VIDEOS_DIR = "videos"
EARLIER_RECORD = "synth.json"  # what vidret 0.1.0 wrote before stage.json: replaced by the next run


def make_synthetic_dataset(
    out_dir: Path | str, options: SynthOptions | None = None, force: bool = False, progress: bool = True
) -> SynthSummary:
    """Write ``out_dir/videos/*.mp4`` and ``out_dir/manifest.jsonl``, then commit ``out_dir/stage.json``.

    Through the stage contract: a dataset made with the same options is kept; one made with other
    options, or damaged, is written again.
    """
    options = options or SynthOptions()
    out_dir = Path(out_dir)
    manifest = out_dir / MANIFEST_FILE
    owns = (VIDEOS_DIR, MANIFEST_FILE, EARLIER_RECORD)
    stage = Stage("synth", out_dir, sha256_json(options.params()), options.params(), owns=owns)
    with locked(stage):
        decision = decide(stage, force)
        if not decision.run:
            return SynthSummary(manifest, decision.previous["splits"], 0.0, skip_reason=decision.reason)
        begin(stage)
        (out_dir / EARLIER_RECORD).unlink(missing_ok=True)
        shutil.rmtree(out_dir / VIDEOS_DIR, ignore_errors=True)
        (out_dir / VIDEOS_DIR).mkdir(parents=True)
        start = time.perf_counter()
        records, jobs = [], []
        for number, (split, attributes, motion, captions) in enumerate(plan_dataset(options)):
            video_id = f"synth{number:05d}"
            relative = f"{VIDEOS_DIR}/{video_id}.mp4"
            group = {"group": f"twins{number // 2:05d}"} if options.twins else {}
            records.append(
                {"video_id": video_id, "path": relative, "split": split, "captions": captions,
                 **asdict(attributes), **group}
            )  # fmt: skip
            jobs.append((out_dir / relative, attributes, motion, options))
        # One encoder per core; each clip's bytes depend only on its own job.
        context = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(len(os.sched_getaffinity(0)), mp_context=context) as pool:
            done = pool.map(_write_clip, jobs, chunksize=4)
            for _ in tqdm(done, total=len(jobs), desc="synth", unit="video", disable=not progress):
                pass
        write_manifest(manifest, records)
        seconds = time.perf_counter() - start
        splits = {name: sum(record["split"] == name for record in records) for name in SPLITS}
        record = {"splits": splits, "seconds": round(seconds, 2), "libraries": library_versions("av", "numpy")}
        commit(stage, record, [MANIFEST_FILE, *(entry["path"] for entry in records)])
    return SynthSummary(manifest, splits, seconds, ran_because=ran_because(decision))
