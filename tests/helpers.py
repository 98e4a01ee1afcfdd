"""Helpers for the tests: videos written with PyAV, small manifests, and readers
with injected faults (module-level, so decode worker processes can import them)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np

from pipeline.decode.reader import DecodedVideo, FrameSpec, read_video
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


def manifest_records(videos: dict[str, str | Path], split: str = "test") -> list[dict]:
    """Manifest records for ``{video_id: path}``, one caption each (write them with
    pipeline.manifest.write_manifest)."""
    return [
        {"video_id": video_id, "path": str(path), "split": split, "captions": [f"caption of {video_id}"]}
        for video_id, path in videos.items()
    ]


def read_video_or_hang(path: Path, spec: FrameSpec) -> DecodedVideo:
    """read_video, except that a file named *hang* never finishes: a stand-in
    for decord stuck inside FFmpeg."""
    if "hang" in Path(path).name:
        time.sleep(3600)
    return read_video(path, spec)


def read_video_or_crash(path: Path, spec: FrameSpec) -> DecodedVideo:
    """read_video, except that a file named *crash* kills its process the way a
    decoder bug would."""
    if "crash" in Path(path).name:
        os.kill(os.getpid(), signal.SIGSEGV)
    return read_video(path, spec)


def read_video_slowly(path: Path, spec: FrameSpec) -> DecodedVideo:
    """read_video taking at least 0.1 s, so a test can kill a run midway."""
    time.sleep(0.1)
    return read_video(path, spec)


def read_video_when_released(path: Path, spec: FrameSpec) -> DecodedVideo:
    """read_video that first says it is waiting (a file ``waiting`` next to the
    video), then waits for a file ``release`` there: lets a test hold a run
    in the middle of its work."""
    folder = Path(path).parent
    (folder / "waiting").touch()
    while not (folder / "release").exists():
        time.sleep(0.01)
    return read_video(path, spec)
