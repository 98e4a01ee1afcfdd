"""Helpers for the tests: videos written with PyAV, small manifests, and readers
with injected faults (module-level, so decode worker processes can import them)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.decode.reader import TEST_MODE, DecodedVideo, FrameSpec, ViewSeeds, read_views
from pipeline.decode.sampling import PADDING
from pipeline.synth import write_video

# (codec, pixel format, extension): the codecs and containers a decode must handle.
CODECS = {
    "h264-mp4": ("h264", "yuv420p", "mp4"),
    "mpeg4-avi": ("mpeg4", "yuv420p", "avi"),
    "vp9-webm": ("libvpx-vp9", "yuv420p", "webm"),
    "mjpeg-mkv": ("mjpeg", "yuvj420p", "mkv"),
    "hevc-mkv": ("libx265", "yuv420p", "mkv"),
}
QUALITY = {
    "h264": {"crf": "12"},
    "libx265": {"crf": "12", "x265-params": "log-level=error"},
    "libvpx-vp9": {"crf": "10", "b": "0"},
}


def pattern_frames(num_frames: int, width: int, height: int) -> np.ndarray:
    """Smooth gradients (so resampling differences stay small) plus a bar that
    moves 4 px a frame and a per-frame brightness ramp (so that neighbouring
    frames differ clearly)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        red = 255 * xs / width
        green = 255 * ys / height
        blue = np.full_like(xs, (t * 9) % 256)
        frame = np.stack([red, green, blue], -1)
        bar = slice((t * 4) % max(width - 24, 1), (t * 4) % max(width - 24, 1) + 24)
        frame[:, bar] = 255 - frame[:, bar]
        frames[t] = frame
    return frames


def make_video(path: Path, kind: str = "h264-mp4", width: int = 320, height: int = 240, num_frames: int = 48) -> Path:
    codec, pix_fmt, _ = CODECS[kind]
    write_video(path, pattern_frames(num_frames, width, height), 30, codec, pix_fmt, QUALITY.get(codec, {}))
    return path


def scramble_mp4_data(data: bytes, start: float = 0.0) -> bytes:
    """An MP4's bytes with its media data (the ``mdat`` payload) random from ``start`` (a fraction
    of the payload) on: the container and its frame index stay intact."""
    scrambled = bytearray(data)
    mdat = scrambled.index(b"mdat") - 4
    size = int.from_bytes(scrambled[mdat : mdat + 4], "big")
    cut = mdat + 8 + int((size - 8) * start)
    scrambled[cut : mdat + size] = np.random.default_rng(0).bytes(mdat + size - cut)
    return bytes(scrambled)


def make_audio_only(path: Path) -> Path:
    """An MP4 container holding only an AAC audio stream."""
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        for index in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, index * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_stream_without_frames(path: Path) -> Path:
    """A container with a video stream that never got a frame (a failed recording)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()  # writes the header, with no packet after it
    return path


def decode_with_pyav(path: Path) -> list:
    """Every frame of the video, as PyAV decodes it in full."""
    import av

    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def reference_frames(decoded: list, indices: list[int], spec: FrameSpec) -> np.ndarray:
    """Of every frame PyAV decoded, keep `indices`, resize the short side (mmcv's rounding for
    bilinear, torchvision's for bicubic) and centre-crop, zeros for padding: an independent path to
    the pixels read_video should produce."""
    frames = []
    for index in indices:
        if index == PADDING:
            frames.append(np.zeros((spec.size, spec.size, 3), np.uint8))
            continue
        frame = decoded[index]
        short, long = sorted((frame.width, frame.height))
        if spec.interpolation == "bicubic":
            new_long = int(spec.short_side * long / short)
            width, height = (spec.short_side, new_long) if frame.width <= frame.height else (new_long, spec.short_side)
            top, left = int(round((height - spec.size) / 2.0)), int(round((width - spec.size) / 2.0))
            frame = frame.reformat(format="rgb24")  # an RGB image resized, as CLIP4Clip resizes
        else:
            scale = spec.short_side / short
            width, height = int(frame.width * scale + 0.5), int(frame.height * scale + 0.5)
            top, left = (height - spec.size) // 2, (width - spec.size) // 2
        interpolation = spec.interpolation.upper()
        image = frame.reformat(width=width, height=height, format="rgb24", interpolation=interpolation).to_ndarray()
        frames.append(image[top : top + spec.size, left : left + spec.size])
    return np.stack(frames)


def manifest_records(videos: dict[str, str | Path], split: str = "test") -> list[dict]:
    """Manifest records for ``{video_id: path}``, one caption each (write them with
    pipeline.manifest.write_manifest)."""
    return [
        {"video_id": video_id, "path": str(path), "split": split, "captions": [f"caption of {video_id}"]}
        for video_id, path in videos.items()
    ]


def read_video_or_hang(path: Path, spec: FrameSpec, views: ViewSeeds = TEST_MODE) -> list[DecodedVideo]:
    """read_views, except that a file named *hang* never finishes: a stand-in
    for decord stuck inside FFmpeg."""
    if "hang" in Path(path).name:
        time.sleep(3600)
    return read_views(path, spec, views)


def read_video_or_crash(path: Path, spec: FrameSpec, views: ViewSeeds = TEST_MODE) -> list[DecodedVideo]:
    """read_views, except that a file named *crash* kills its process the way a
    decoder bug would."""
    if "crash" in Path(path).name:
        os.kill(os.getpid(), signal.SIGSEGV)
    return read_views(path, spec, views)


def read_video_slowly(path: Path, spec: FrameSpec, views: ViewSeeds = TEST_MODE) -> list[DecodedVideo]:
    """read_views taking at least 0.1 s, so a test can kill a run midway."""
    time.sleep(0.1)
    return read_views(path, spec, views)


def start_decode(manifest: Path, out: Path, options: str, reader: str) -> subprocess.Popen:
    """``decode_videos`` in a child process, for a test to kill: ``options`` is the source of its DecodeOptions
    (DecodeOptions and FrameSpec in scope), ``reader`` a reader of this module."""
    run = (
        "from pipeline.decode import DecodeOptions, FrameSpec, decode_videos\n"
        f"from helpers import {reader}\n"
        f"decode_videos({str(manifest)!r}, {str(out)!r}, {options}, reader={reader}, progress=False)\n"
    )
    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", run], env=env)


def read_video_stalling_on_v4(path: Path, spec: FrameSpec, views: ViewSeeds = TEST_MODE) -> list[DecodedVideo]:
    """read_views, but a video named v4 takes 30 s: a run is held on it, with what came before done."""
    if path.stem == "v4":
        time.sleep(30)
    return read_views(path, spec, views)


def read_video_when_released(path: Path, spec: FrameSpec, views: ViewSeeds = TEST_MODE) -> list[DecodedVideo]:
    """read_views that first says it is waiting (a file ``waiting`` next to the
    video), then waits for a file ``release`` there: lets a test hold a run
    in the middle of its work."""
    folder = Path(path).parent
    (folder / "waiting").touch()
    while not (folder / "release").exists():
        time.sleep(0.01)
    return read_views(path, spec, views)


# Retrieval test data, and the rank definition computed literally (tests of pipeline.metrics and the index stage).


def unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def random_captions(rng: np.random.Generator, num_videos: int, per_video_max: int) -> np.ndarray:
    """A shuffled text -> video index giving every video 1..per_video_max captions."""
    index = np.repeat(np.arange(num_videos), rng.integers(1, per_video_max + 1, num_videos))
    return rng.permutation(index)


def brute_force_ranks(texts: np.ndarray, videos: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The definition, literally: full matrix, count >= per query; v2t = 1 + other videos' captions
    scoring >= the video's best own caption."""
    sim = texts @ videos.T
    return ranks_from_scores(sim, sim.T, index)


def ranks_from_scores(
    t2v_scores: np.ndarray, v2t_scores: np.ndarray, index: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pessimistic 1-based ranks from full score matrices: ``t2v_scores`` is texts x videos, ``v2t_scores``
    videos x texts; a video's rank is 1 + the number of other videos' captions scoring >= its best own one."""
    t2v = np.array([np.sum(t2v_scores[t] >= t2v_scores[t, index[t]]) for t in range(len(t2v_scores))])
    v2t = np.array(
        [1 + np.sum(v2t_scores[v, index != v] >= v2t_scores[v, index == v].max()) for v in range(len(v2t_scores))]
    )
    return t2v, v2t


def softmax_columns(x: np.ndarray) -> np.ndarray:
    """Softmax down each column (axis 0), in float64."""
    x = np.asarray(x, dtype=np.float64)
    exp = np.exp(x - x.max(axis=0, keepdims=True))
    return exp / exp.sum(axis=0, keepdims=True)


def brute_force_dsl_ranks(
    texts: np.ndarray, videos: np.ndarray, index: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Dual-softmax ranks from the full matrix in float64: t2v scores are sim * softmax over texts (per
    video); v2t scores are sim.T * softmax over videos (per text)."""
    sim = np.asarray(texts, dtype=np.float64) @ np.asarray(videos, dtype=np.float64).T
    return ranks_from_scores(sim * softmax_columns(scale * sim), sim.T * softmax_columns(scale * sim.T), index)


def is_lock(path: Path) -> bool:
    return path.name == ".vidret.lock" or (path.name.startswith(".vidret-shard-") and path.name.endswith(".lock"))


def tree_hashes(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder``, and "folder" for every folder (so that a new,
    empty one shows too). A lock file counts as "lock", whatever it holds: every run that takes the lock writes
    its process there, and a run must hold it to decide whether it may write."""
    hashes = {}
    for path in sorted(Path(folder).rglob("*")):
        name = str(path.relative_to(folder))
        if path.is_dir():
            hashes[name + "/"] = "folder"
        elif is_lock(path):
            hashes[name] = "lock"
        else:
            hashes[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def without_locks(hashes: dict[str, str]) -> dict[str, str]:
    """``tree_hashes`` less the lock files: a refused run may have created its own (a decode shard's)."""
    return {name: digest for name, digest in hashes.items() if digest != "lock"}


def forget_file_record(folder: Path) -> None:
    """Drop the file list from ``folder``'s stage.json, as a record of an earlier vidret (or another tool's
    frames) has none: readers then take the files as they find them."""
    record = json.loads((folder / "stage.json").read_text())
    del record["files"]
    (folder / "stage.json").write_text(json.dumps(record))
