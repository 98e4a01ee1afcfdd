"""Session-wide test videos: good ones in several codecs and containers, and broken ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.decode import DecodeOptions, FrameSpec, decode_videos
from pipeline.encode.embed import EmbedOptions, embed
from pipeline.index import IndexOptions, index_embeddings
from pipeline.manifest import write_manifest
from pipeline.synth import SynthOptions, make_synthetic_dataset

from helpers import CODECS, make_audio_only, make_stream_without_frames, make_video, scramble_mp4_data


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slow: a test that takes tens of seconds or more (torchrun, vidret bench, building and installing the"
        " wheel); `pytest -m 'not slow'` is the quick loop, `make test` runs them all",
    )


@pytest.fixture(scope="session")
def codec_videos(tmp_path_factory) -> dict[str, Path]:
    """One 48-frame 320x240 clip per codec/container."""
    folder = tmp_path_factory.mktemp("codecs")
    return {kind: make_video(folder / f"{kind}.{ext}", kind) for kind, (_, _, ext) in CODECS.items()}


@pytest.fixture(scope="session")
def bad_videos(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """Broken inputs, each with the status decode must give it."""
    folder = tmp_path_factory.mktemp("bad")
    whole = make_video(folder / "whole.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(whole[: len(whole) // 2])  # moov is at the end: cut off
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("this is a text file, not a video\n" * 20)
    (folder / "folder.mp4").mkdir()
    make_audio_only(folder / "audio.mp4")
    (folder / "garbled.mp4").write_bytes(scramble_mp4_data(whole))  # every byte of video data random
    make_stream_without_frames(folder / "no-frames.avi")
    return {
        "missing": (folder / "missing.mp4", "missing"),
        "empty": (folder / "empty.mp4", "empty"),
        "truncated": (folder / "truncated.mp4", "unreadable"),
        "text": (folder / "text.mp4", "unreadable"),
        "folder": (folder / "folder.mp4", "unreadable"),
        "audio": (folder / "audio.mp4", "no_video"),
        "garbled": (folder / "garbled.mp4", "unreadable"),
        "no-frames": (folder / "no-frames.avi", "too_short"),
    }


@pytest.fixture(scope="session")
def decoded_synthetic(tmp_path_factory) -> dict[str, Path]:
    """A small synthetic dataset decoded at vidret-micro's size (4 frames of 32x32).

    Its manifest adds one missing video to the train and to the test split, so the
    encode stage must skip and count them.
    """
    root = tmp_path_factory.mktemp("synthetic")
    summary = make_synthetic_dataset(
        root / "data",
        SynthOptions(videos=40, seed=3, width=64, height=48, min_frames=12, max_frames=20),
        progress=False,
    )
    records = [json.loads(line) for line in summary.manifest.read_text().splitlines()]
    for split in ("train", "test"):
        records.append({"video_id": f"lost-{split}", "path": f"lost-{split}.mp4", "split": split, "captions": ["gone"]})
    manifest = root / "data" / "with-missing.jsonl"
    write_manifest(manifest, records)
    options = DecodeOptions(spec=FrameSpec(num_frames=4, size=32), workers=1, shard_size=16)
    decode_videos(manifest, root / "frames", options, progress=False)
    return {"manifest": manifest, "frames": root / "frames", "root": root}


@pytest.fixture(scope="session")
def decoded_variants(tmp_path_factory) -> dict[str, Path]:
    """Synthetic clips of 2 to 5 seconds (6 fps) decoded two ways at vidret-micro's size: with 3 train views
    (``views``), and with CLIP4Clip's one-frame-per-second sampling (``clip4clip``), which pads the clips
    shorter than 4 seconds."""
    root = tmp_path_factory.mktemp("variants")
    summary = make_synthetic_dataset(
        root / "data", SynthOptions(videos=30, seed=5, width=64, height=48, fps=6, min_frames=12, max_frames=30),
        progress=False,
    )  # fmt: skip
    spec = FrameSpec(num_frames=4, size=32)
    decodes = {
        "views": DecodeOptions(spec=spec, workers=1, train_views=3, seed=1),
        "clip4clip": DecodeOptions(spec=FrameSpec(num_frames=4, size=32, sampling="clip4clip"), workers=1),
    }
    for name, options in decodes.items():
        decode_videos(summary.manifest, root / name, options, progress=False)
    return {"manifest": summary.manifest, "views": root / "views", "clip4clip": root / "clip4clip"}


@pytest.fixture(scope="session")
def served_run(tmp_path_factory) -> Path:
    """A demo-sized run of moments, what the server tests serve: 100 synthetic videos of 2 to 4 s (H.264 MP4,
    320x240) cut into 1.5-second clips, 4 frames of each at 112x112, embedded zero-shot by vidret-tiny
    (random weights, seed 0) and indexed exactly."""
    root = tmp_path_factory.mktemp("served")
    summary = make_synthetic_dataset(root / "data", SynthOptions(videos=100, seed=7), progress=False)
    run = root / "run"
    spec = FrameSpec(num_frames=4, size=112, short_side=112, clip_seconds=1.5)
    decode_videos(summary.manifest, run / "frames", DecodeOptions(spec=spec, workers=2), progress=False)
    options = EmbedOptions(
        run / "frames", summary.manifest, run / "embeddings", model="vidret-tiny", pretrained="none", split="all",
        device="cpu", progress=False,
    )  # fmt: skip
    embed(options)
    index_embeddings(run / "embeddings", run / "index", IndexOptions(progress=False))
    return run
