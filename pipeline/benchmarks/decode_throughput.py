"""Decode throughput against a floor and the loaders people use, per worker process.

Every method takes the same 12 uniformly sampled frames of each clip to 224² RGB
(short side to 256, centre crop, as vidret's default), except the floor:

- floor: PyAV decodes every frame up to the last sampled one, without colour
  conversion. Sampling from a clip with ~2 keyframes cannot cost less.
- vidret: ``pipeline.decode.read_video`` with its default decoder, PyAV, which
  decodes only what the sampled frames depend on (so it may beat the floor).
- vidret-decord: the same with ``decoder="decord"`` (resizing in its filter graph).
- pyav-all: PyAV decodes and converts every frame, then keeps 12 (the naive loader).
- opencv-seek: OpenCV seeks to each sampled frame and reads it (CLIP4Clip's loader).
- opencv-grab: OpenCV grabs every frame and retrieves only the 12 (clip-video-encode).
- vidret-stage: the whole ``vidret decode`` stage (``decode_videos``: its worker
  processes, unpinned, writing pieces; the Parquet shards assembled from them) over
  the clips listed --stage-copies times, against ``read_video`` alone over the same
  listing with as many pinned workers: the two take turns in every repeat, and the
  figure is the median of the repeats' time ratios.

A long video (--long-minutes, 30: 640x360 at 25 fps, H.264 with keyframes every
250 frames, scenes of 8-20 s each panning across a texture of its own) is cut into
10 s clips of 12 frames each (``decode --clip-seconds 10``), against its own floor:

- clips-floor: PyAV decodes, without colour conversion, the packets that vidret's
  skip plan for every clip's sampled frames decodes, from a plan made beforehand
  (vidret pays for its demuxing pass to make it).
- vidret-clips: ``read_views`` with ``clip_seconds=10``: every clip's frames in one pass.

Each worker process is pinned to one core and every decoder is single-threaded,
so videos/s per worker is a per-core figure. The CPU time each worker spends per
video (all its threads) is reported beside the wall time: on a shared machine it
is the steadier of the two. The corpus (MSR-VTT-like clips: 15 s,
30 fps, 320x240, H.264 with x264's default keyframe interval, panning 1/f-noise
texture; and a few 1080p clips) is written once to --cache.

    .venv/bin/pip install -e '.[bench]'   # opencv-python-headless, for the OpenCV baselines
    .venv/bin/python -m pipeline.benchmarks.decode_throughput [--clips 24] [--hd-clips 3] [--workers 1 2]
        [--long-minutes 30] [--out FILE]
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# Single-threaded decoders: set before cv2 and the FFmpeg libraries are loaded anywhere.
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "threads;1")

from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402

from pipeline.decode.clips import clip_windows  # noqa: E402
from pipeline.decode.reader import FrameSpec, index_stream, read_video, read_views, resized_size, skip_plan  # noqa: E402
from pipeline.decode.sampling import sample_frame_indices  # noqa: E402
from pipeline.manifest import write_manifest  # noqa: E402
from pipeline.stage import read_stage  # noqa: E402
from pipeline.synth import write_video  # noqa: E402

SPEC = FrameSpec(num_frames=12, size=224)
SECONDS, FPS = 15, 30
CLIPS_SPEC = replace(SPEC, clip_seconds=10.0)
LONG_SIZE, LONG_FPS = (640, 360), 25


def pink_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """An RGB texture with natural images' 1/f amplitude spectrum."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / max(height, width))
    channels = []
    for _ in range(3):
        phase = rng.uniform(0, 2 * np.pi, amplitude.shape)
        image = np.fft.irfft2(amplitude * np.exp(1j * phase), s=(height, width))
        channels.append((image - image.mean()) / image.std())
    return np.clip(np.stack(channels, -1) * 45 + 128, 0, 255).astype(np.uint8)


def panning_clip(rng: np.random.Generator, width: int, height: int, frames: int):
    """A camera panning across a texture 1.5x the frame, at a speed that stays inside it."""
    texture = pink_noise(rng, height * 3 // 2, width * 3 // 2)
    margin_y, margin_x = texture.shape[0] - height, texture.shape[1] - width
    for t in range(frames):
        y, x = round(margin_y * t / frames), round(margin_x * t / frames)
        yield np.ascontiguousarray(texture[y : y + height, x : x + width])


def make_corpus(cache: Path, clips: int, hd_clips: int) -> dict[str, list[Path]]:
    """The clips, written on first use (x264 veryfast, crf 23, default keyint 250: 2 keyframes per clip)."""
    cache.mkdir(parents=True, exist_ok=True)
    corpus = {"msrvtt-like 320x240": [], "1080p": []}
    for name, count, (width, height) in (("msrvtt-like 320x240", clips, (320, 240)), ("1080p", hd_clips, (1920, 1080))):
        for number in range(count):
            path = cache / f"{width}x{height}-{number:03d}.mp4"
            if not path.exists():
                rng = np.random.default_rng(number)
                frames = panning_clip(rng, width, height, SECONDS * FPS)
                write_video(path, frames, FPS, codec_options={"preset": "veryfast", "crf": "23"})
            corpus[name].append(path)
    return corpus


def long_video(cache: Path, minutes: float) -> Path:
    """The long video, written on first use: scenes of 8-20 s, each a pan across a texture of its own
    (x264 veryfast, crf 23, default keyint 250: a keyframe every 10 s and at scene cuts)."""
    width, height = LONG_SIZE
    path = cache / f"long-{width}x{height}-{minutes:g}min.mp4"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)

    def scenes():
        remaining, scene = round(minutes * 60 * LONG_FPS), 0
        while remaining > 0:
            rng = np.random.default_rng(1000 + scene)
            frames = min(remaining, int(rng.integers(8, 21)) * LONG_FPS)
            yield from panning_clip(rng, width, height, frames)
            remaining, scene = remaining - frames, scene + 1

    partial = path.with_name(f".{path.name}.partial.mp4")  # a killed write is no cached video
    write_video(partial, scenes(), LONG_FPS, codec_options={"preset": "veryfast", "crf": "23"})
    partial.rename(path)
    return path


@functools.cache
def clips_plan(path: Path) -> tuple[int, list[str]]:
    """(clips, skip_frame setting per packet) of vidret's pass over every clip's sampled frames."""
    import av

    index = index_stream(path)
    with av.open(str(path)) as container:
        fps = float(container.streams.video[0].average_rate)
    windows = clip_windows(len(index.pts), fps, CLIPS_SPEC.clip_seconds, CLIPS_SPEC.clip_stride)
    wanted = {start + i for start, end in windows for i in sample_frame_indices(end - start, SPEC.num_frames)}
    return len(windows), skip_plan(index, index.presentation_numbers(), wanted)


def clips_floor(path: Path) -> int:
    """Decode what the plan decodes, converting nothing; the frames decoded."""
    import av

    _, plan = clips_plan(path)
    decoded = 0
    with av.open(str(path)) as container:
        stream = pyav_stream(container)
        codec = stream.codec_context
        packets = (packet for packet in container.demux(stream) if packet.size)
        for position, packet in zip(range(len(plan)), packets, strict=False):
            codec.skip_frame = plan[position]
            decoded += len(codec.decode(packet))
        decoded += len(codec.decode(None))
    return decoded


def vidret_clips(path: Path) -> list:
    return read_views(path, CLIPS_SPEC)


def sampled(num_frames: int) -> list[int]:
    return sample_frame_indices(num_frames, SPEC.num_frames, SPEC.sampling)


def resize_and_crop(frames: list[np.ndarray]) -> np.ndarray:
    """The baselines' 12 full-size RGB frames to vidret's output: short side 256 (bilinear), centre 224."""
    import cv2

    height, width = frames[0].shape[:2]
    new_width, new_height = resized_size(width, height, SPEC.short_side)
    top, left = (new_height - SPEC.size) // 2, (new_width - SPEC.size) // 2
    out = [cv2.resize(frame, (new_width, new_height), interpolation=cv2.INTER_LINEAR) for frame in frames]
    return np.stack([frame[top : top + SPEC.size, left : left + SPEC.size] for frame in out])


def pyav_stream(container):
    stream = container.streams.video[0]
    stream.thread_type = "NONE"  # one thread, as every method here
    stream.codec_context.thread_count = 1
    return stream


def floor(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        stream = pyav_stream(container)
        last = max(sampled(stream.frames))
        for number, _ in enumerate(container.decode(stream)):
            if number == last:
                return number + 1
    raise RuntimeError(f"{path}: fewer frames than the container lists")


def pyav_all(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        stream = pyav_stream(container)
        wanted = sampled(stream.frames)
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    return resize_and_crop([frames[index] for index in wanted])


def opencv_capture(path: Path):
    import cv2

    cv2.setNumThreads(1)
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    return capture, sampled(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))


def opencv_seek(path: Path) -> np.ndarray:
    import cv2

    capture, wanted = opencv_capture(path)
    frames = []
    for index in wanted:
        capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        _, frame = capture.read()
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return resize_and_crop(frames)


def opencv_grab(path: Path) -> np.ndarray:
    import cv2

    capture, wanted = opencv_capture(path)
    retrieved = {}
    for index in range(max(wanted) + 1):
        capture.grab()
        if index in wanted:
            _, frame = capture.retrieve()
            retrieved[index] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    capture.release()
    return resize_and_crop([retrieved[index] for index in wanted])


def vidret(path: Path) -> np.ndarray:
    return read_video(path, SPEC).frames


def vidret_decord(path: Path) -> np.ndarray:
    return read_video(path, replace(SPEC, decoder="decord")).frames


METHODS = {
    "floor": floor,
    "vidret": vidret,
    "vidret-decord": vidret_decord,
    "pyav-all": pyav_all,
    "opencv-seek": opencv_seek,
    "opencv-grab": opencv_grab,
}
# The long video's: its floor first.
CLIPS_METHODS = {"clips-floor": clips_floor, "vidret-clips": vidret_clips}


def pin_to_core(cores) -> None:
    """Pool initializer: each worker process takes a core of its own from the queue."""
    os.sched_setaffinity(0, {cores.get()})


def run(method: str, path: Path) -> float:
    """CPU seconds of this process (every thread) for one video: unlike wall time, what other tenants of
    a shared machine do barely moves it."""
    started = time.process_time()
    {**METHODS, **CLIPS_METHODS}[method](path)
    return time.process_time() - started


def paired_ratio(times: list[float], floor_times: list[float]) -> float:
    """The median over repeats of time / the floor's time in the same repeat: a slow spell on a
    shared machine slows both sides of a pair, so it cancels."""
    return round(float(np.median(np.array(times) / np.array(floor_times))), 3)


def measure(
    paths: list[Path], workers: int, repeats: int, methods: tuple[str, ...] = tuple(METHODS), floor: str = "floor"
) -> list[dict]:
    """Each method's best wall time over the corpus, with ``workers`` pinned processes, and its ratios
    to ``floor``, one of them. The methods take turns within every repeat."""
    cores = multiprocessing.Queue()
    for core in sorted(os.sched_getaffinity(0))[:workers]:
        cores.put(core)
    walls: dict[str, list[float]] = {method: [] for method in methods}
    cpu: dict[str, list[float]] = {method: [] for method in methods}
    with ProcessPoolExecutor(workers, initializer=pin_to_core, initargs=(cores,)) as pool:
        for method in methods:  # warm up: imports and the first open, in every worker
            list(pool.map(run, [method] * workers, paths[:workers]))
        for _ in range(repeats):
            for method in methods:
                started = time.perf_counter()
                cpu[method].append(sum(pool.map(run, [method] * len(paths), paths)))
                walls[method].append(time.perf_counter() - started)
    rows = []
    for method, times in walls.items():
        wall = min(times)
        rows.append(
            {
                "method": method,
                "workers": workers,
                "videos": len(paths),
                "seconds": round(wall, 4),
                "median_seconds": round(float(np.median(times)), 4),
                "videos_per_s": round(len(paths) / wall, 2),
                "videos_per_s_per_worker": round(len(paths) / wall / workers, 2),
                "frames_per_s": round(len(paths) * SPEC.num_frames / wall, 1),
                "time_to_floor": paired_ratio(times, walls[floor]),
                "cpu_s_per_video": round(min(cpu[method]) / len(paths), 4),
                "cpu_to_floor": paired_ratio(cpu[method], cpu[floor]),
            }
        )
    return rows


# One run of the stage in a process of its own, as ``vidret decode`` runs: its decoder processes start
# cold. The time is decode_videos's, from planning to stage.json; the interpreter's start is not in it.
STAGE_RUN = """
import sys, time
from pathlib import Path
from pipeline.benchmarks.decode_throughput import SPEC
from pipeline.decode import DecodeOptions, decode_videos
if __name__ == "__main__":
    started = time.perf_counter()
    options = DecodeOptions(spec=SPEC, workers=int(sys.argv[3]), force=True)
    decode_videos(sys.argv[1], sys.argv[2], options, progress=False)
    print(time.perf_counter() - started)
"""


def measure_stage(paths: list[Path], workers: int, copies: int, rows: list[dict], repeats: int = 1) -> dict:
    """The whole decode stage (``decode_videos``: planning, worker processes, pieces, Parquet shards,
    status and stage files, in a process of its own) over ``copies`` listings of each clip, paired in
    every repeat with read_video over the same listing in ``workers`` pinned processes (which goes
    first alternates)."""
    listing = [path for _ in range(copies) for path in paths]
    cores = multiprocessing.Queue()
    for core in sorted(os.sched_getaffinity(0))[:workers]:
        cores.put(core)
    stage_walls, read_walls, outside = [], [], []
    with (
        tempfile.TemporaryDirectory(prefix="vidret-bench-") as scratch,
        ProcessPoolExecutor(workers, initializer=pin_to_core, initargs=(cores,)) as pool,
    ):
        manifest = Path(scratch) / "manifest.jsonl"
        records = [
            {"video_id": f"{path.stem}-{copy}", "path": str(path.resolve()), "split": "test", "captions": ["a clip"]}
            for copy in range(copies)
            for path in paths
        ]
        write_manifest(manifest, records)
        list(pool.map(run, ["vidret"] * workers, paths[:workers]))  # warm up: imports and the first open

        def read_videos() -> None:
            started = time.perf_counter()
            list(pool.map(run, ["vidret"] * len(listing), listing))
            read_walls.append(time.perf_counter() - started)

        def stage() -> None:
            command = [sys.executable, "-c", STAGE_RUN, str(manifest), str(Path(scratch) / "frames"), str(workers)]
            stage_walls.append(float(subprocess.run(command, check=True, capture_output=True, text=True).stdout))
            # The time the workers spent in read_video, from the stage's own record.
            decoder_seconds = read_stage(Path(scratch) / "frames")["decoder_seconds"]
            outside.append(stage_walls[-1] - decoder_seconds / workers)

        for repeat in range(repeats):
            for step in (read_videos, stage) if repeat % 2 == 0 else (stage, read_videos):
                step()
    ratios = np.array(stage_walls) / np.array(read_walls)
    floor_row = next(row for row in rows if row["method"] == "floor" and row["workers"] == workers)
    wall, videos = float(np.median(stage_walls)), len(listing)
    return {
        "method": "vidret-stage",
        "workers": workers,
        "videos": videos,
        "repeats": repeats,
        "seconds": round(wall, 4),
        "videos_per_s": round(videos / wall, 2),
        "videos_per_s_per_worker": round(videos / wall / workers, 2),
        "frames_per_s": round(videos * SPEC.num_frames / wall, 1),
        # Against the floor's median repeat, measured before: not paired.
        "time_to_floor": round(wall / videos / (floor_row["median_seconds"] / floor_row["videos"]), 3),
        "time_to_read_video": round(float(np.median(ratios)), 3),  # paired: a slow spell slows both
        "time_to_read_video_range": [round(float(ratios.min()), 3), round(float(ratios.max()), 3)],
        "read_video_seconds": round(float(np.median(read_walls)), 4),
        # What the stage adds to its workers' decoding (start-up, pieces, Parquet, status files):
        # a measure that does not move with the machine's speed between the stage and read_video.
        "seconds_outside_decoders": round(float(np.median(outside)), 3),
        "cpu_s_per_video": None,  # spread over worker processes: wall time only
        "cpu_to_floor": None,
    }


def measure_clips(path: Path, repeats: int) -> list[dict]:
    """vidret-clips against clips-floor on the long video, one pinned worker, taking turns in every repeat."""
    clips, _ = clips_plan(path)
    rows = measure([path], workers=1, repeats=repeats, methods=tuple(CLIPS_METHODS), floor="clips-floor")
    for row in rows:
        row.update(clips=clips, clips_per_s=round(clips / row["seconds"], 2))
        row["frames_per_s"] = round(clips * SPEC.num_frames / row["seconds"], 1)
    return rows


def check_same_frames(paths: list[Path]) -> dict[str, float]:
    """Every method must return the same 12 frames: mean absolute difference to vidret's, in grey levels."""
    reference = vidret(paths[0]).astype(np.int16)
    return {
        method: round(float(np.abs(METHODS[method](paths[0]).astype(np.int16) - reference).mean()), 2)
        for method in ("vidret-decord", "pyav-all", "opencv-seek", "opencv-grab")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path("data/bench/decode"), help="where the clips are kept")
    parser.add_argument("--clips", type=int, default=24, help="MSR-VTT-like 320x240 clips")
    parser.add_argument("--hd-clips", type=int, default=3, help="1080p clips (one worker only)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--stage-copies", type=int, default=4, help="the decode stage runs over the clips listed this many times"
    )
    parser.add_argument(
        "--long-minutes", type=float, default=30, help="minutes of the long video cut into 10 s clips (0: none)"
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    corpus = make_corpus(args.cache, args.clips, args.hd_clips)
    results = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cores": os.cpu_count()},
        "spec": SPEC.to_dict(),
        "frame_difference_to_vidret": check_same_frames(corpus["msrvtt-like 320x240"]),
        "runs": {},
    }
    for name, paths in corpus.items():
        if not paths:
            continue
        rows = []
        for workers in args.workers if name != "1080p" else [1]:
            measured = measure(paths, workers, args.repeats)
            rows += measured
            if name != "1080p" and args.stage_copies:
                rows.append(measure_stage(paths, workers, args.stage_copies, measured, args.repeats))
        results["runs"][name] = rows
        print(f"\n{name}: {len(paths)} clips of {SECONDS} s at {FPS} fps, 12 frames to {SPEC.size}² each")
        print(
            f"{'method':13} {'workers':>7} {'videos/s':>9} {'per worker':>10} {'frames/s':>9} {'time / floor':>12}"
            f" {'CPU ms/video':>12} {'CPU / floor':>11}"
        )
        for row in rows:
            cpu = "" if row["cpu_s_per_video"] is None else f"{row['cpu_s_per_video'] * 1000:>12.1f}"
            print(
                f"{row['method']:13} {row['workers']:>7} {row['videos_per_s']:>9.2f}"
                f" {row['videos_per_s_per_worker']:>10.2f} {row['frames_per_s']:>9.1f}"
                f" {row['time_to_floor']:>12.2f} {cpu} {row['cpu_to_floor'] or '':>11}"
            )
        for row in rows:
            if row["method"] == "vidret-stage":
                low, high = row["time_to_read_video_range"]
                print(
                    f"vidret-stage, {row['workers']} worker(s): {row['time_to_read_video']:.2f}x read_video's time"
                    f" (median of {row['repeats']} paired repeats, {low:.2f}-{high:.2f});"
                    f" {row['seconds_outside_decoders']:.2f} s of its {row['seconds']:.2f} s outside read_video,"
                    f" {row['videos']} videos"
                )
    if args.long_minutes:
        path = long_video(args.cache, args.long_minutes)
        name = f"{args.long_minutes:g}-minute {LONG_SIZE[0]}x{LONG_SIZE[1]}, 10 s clips"
        rows = results["runs"][name] = measure_clips(path, args.repeats)
        print(f"\n{name}: {rows[0]['clips']} clips of {SPEC.num_frames} frames to {SPEC.size}² from one video")
        print(f"{'method':13} {'seconds':>8} {'clips/s':>8} {'frames/s':>9} {'time / floor':>12} {'CPU / floor':>11}")
        for row in rows:
            print(
                f"{row['method']:13} {row['seconds']:>8.2f} {row['clips_per_s']:>8.2f} {row['frames_per_s']:>9.1f}"
                f" {row['time_to_floor']:>12.2f} {row['cpu_to_floor']:>11}"
            )
    print(f"\nmean |difference| to vidret's frames, grey levels: {results['frame_difference_to_vidret']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
