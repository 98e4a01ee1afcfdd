"""``vidret collection``: a folder of one's own videos scanned, decoded into clips, embedded and indexed,
so that a sentence finds the moment of a long video it describes; and the long synthetic videos that test it."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.collection import CollectionOptions, make_collection
from pipeline.decode import DecodeOptions, FrameSpec, decode_videos
from pipeline.encode.train import TrainOptions, make_recipe, train
from pipeline.errors import VidretError
from pipeline.synth import BACKGROUNDS, ClipAttributes, SynthOptions, make_synthetic_dataset, write_segmented_video

from helpers import decode_with_pyav

VIDRET = Path(sys.executable).parent / "vidret"
ROOT = Path(__file__).resolve().parents[1]
MODEL = "vidret-micro"  # 32x32 frames
FPS = 6
SEGMENT_SECONDS = 2.0  # 12 frames at 6 fps: the clips of --clip-seconds 2 are the segments exactly
FRAME_OPTIONS = SynthOptions(width=64, height=48, fps=FPS)
# The long video's segments differ in colour, shape and background (what mean pooling sees), the short
# videos beside it share some of each with them.
SEGMENTS = [
    ClipAttributes("red", "circle", "large", "black", "left"),
    ClipAttributes("green", "square", "large", "gray", "right"),
    ClipAttributes("blue", "triangle", "large", "purple", "up"),
    ClipAttributes("yellow", "diamond", "large", "teal", "down"),
]
SHORT = [
    ClipAttributes("white", "circle", "small", "gray", "up"),
    ClipAttributes("red", "square", "small", "teal", "right"),
    ClipAttributes("blue", "diamond", "small", "black", "left"),
]


def vidret(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(VIDRET), *map(str, args)], capture_output=True, text=True, timeout=600)


def test_a_segmented_video_holds_each_segment_in_its_time_range(tmp_path):
    path = tmp_path / "long.mp4"
    segments = write_segmented_video(path, SEGMENTS[:3], SEGMENT_SECONDS, FRAME_OPTIONS, seed=1)
    assert [(segment.start_s, segment.end_s) for segment in segments] == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0)]
    assert segments[1].caption == "a large green square moves right on a gray background"
    frames = np.stack([frame.to_ndarray(format="rgb24") for frame in decode_with_pyav(path)])
    assert len(frames) == 3 * SEGMENT_SECONDS * FPS
    for segment in segments:
        # The shape covers a corner at most: a corner's median colour is the segment's background (its gradient
        # darkens the top rows by up to 15%).
        first, end = round(segment.start_s * FPS), round(segment.end_s * FPS)
        corner = np.median(frames[first:end, :4, :4].reshape(-1, 3), axis=0)
        np.testing.assert_allclose(corner, np.array(BACKGROUNDS[segment.attributes.background]) * 0.86, atol=12)
    with pytest.raises(VidretError, match="segment_seconds 0.1 is under two frames at 6 fps"):
        write_segmented_video(path, SEGMENTS, 0.1, FRAME_OPTIONS)


@pytest.fixture(scope="module")
def trained_micro(tmp_path_factory) -> Path:
    """vidret-micro with mean pooling, trained briefly on synthetic clips of the long video's frame size and rate:
    its best.pt."""
    root = tmp_path_factory.mktemp("trained")
    options = SynthOptions(videos=120, seed=7, width=64, height=48, fps=FPS, min_frames=12, max_frames=18)
    data = make_synthetic_dataset(root / "data", options, progress=False)
    decode_videos(data.manifest, root / "frames", DecodeOptions(spec=FrameSpec(num_frames=4, size=32)), progress=False)
    recipe = make_recipe("demo", epochs=10, batch_size=16)
    train(
        TrainOptions(
            frames_dir=root / "frames", manifest=data.manifest, out=root / "model", model=MODEL, pretrained="none",
            head="meanP", recipe=recipe, device="cpu", progress=False,
        )
    )  # fmt: skip
    return root / "model" / "best.pt"


def overlaps(hit: dict, start_s: float, end_s: float) -> bool:
    return hit["start_s"] < end_s and start_s < hit["end_s"]


def search_hits(run: Path, queries: list[str], k: int) -> dict[str, list[dict]]:
    """``vidret search RUN QUERY... --json``: each query's hits, best first."""
    searched = vidret("search", run, *queries, "--k", k, "--json", "--device", "cpu")
    assert searched.returncode == 0, searched.stderr
    hits = {query: [] for query in queries}
    for line in searched.stdout.splitlines():
        hit = json.loads(line)
        hits[hit["query"]].append(hit)
    return hits


@pytest.mark.slow
def test_a_sentence_finds_its_moment_in_a_long_video_and_a_second_run_skips_every_stage(trained_micro, tmp_path):
    videos, run = tmp_path / "my videos", tmp_path / "run"
    (videos / "films").mkdir(parents=True)
    for number, attributes in enumerate(SHORT):
        write_segmented_video(videos / f"short-{number}.mp4", [attributes], SEGMENT_SECONDS, FRAME_OPTIONS, number)
    segments = write_segmented_video(videos / "films" / "long.mkv", SEGMENTS, SEGMENT_SECONDS, FRAME_OPTIONS, seed=9)
    command = (
        "collection", videos, "--out", run, "--checkpoint", trained_micro, "--clip-seconds", SEGMENT_SECONDS,
        "--frames", 4, "--workers", 1, "--device", "cpu", "--no-progress",
    )  # fmt: skip

    made = vidret(*command)
    assert made.returncode == 0, made.stderr
    lines = made.stdout.splitlines()
    assert lines[0].startswith("manifest scan: 4 videos (4 new, 0 removed since the last scan)")
    assert [line.split(":")[0] for line in lines if line.startswith(("decode:", "embed:", "index:"))] == [
        "decode", "embed", "index"
    ]  # fmt: skip
    assert lines[-2].startswith("collection: 4 videos in 7 searchable clips")
    assert "stages run: decode, embed, index" in lines[-2]
    assert lines[-1] == f'search it: vidret search {shlex.quote(str(run))} "a sentence"'

    # Criterion, for every segment: its caption's best clip of the long video is the one overlapping the segment
    # (the moment is found), and that clip is among the 3 best of all 7 (the short videos share a background or
    # a colour with some segment, which a model trained this briefly may confuse).
    hits = search_hits(run, [segment.caption for segment in segments], 3)
    for segment in segments:
        of_long = [hit for hit in hits[segment.caption] if hit["video_id"] == "films/long.mkv"]
        assert of_long and overlaps(of_long[0], segment.start_s, segment.end_s), (segment, hits[segment.caption])

    manifest = (run / "manifest.jsonl").read_bytes()
    again = vidret(*command)
    assert again.returncode == 0, again.stderr
    for stage, folder in (("decode", "frames"), ("embed", "embeddings"), ("index", "index")):
        assert f"{stage}: skipped, {run / folder} is up to date" in again.stdout
    assert "stages run: none; up to date, skipped: decode, embed, index" in again.stdout
    assert (run / "manifest.jsonl").read_bytes() == manifest

    # A video added later is found once the collection is made again.
    write_segmented_video(videos / "new.MOV", [SEGMENTS[0]], SEGMENT_SECONDS, FRAME_OPTIONS, seed=4)
    added = vidret(*command)
    assert added.returncode == 0, added.stderr
    assert "manifest scan: 5 videos (1 new, 0 removed since the last scan)" in added.stdout
    assert "collection: 5 videos in 8 searchable clips" in added.stdout
    assert "new.MOV" in {hit["video_id"] for hit in search_hits(run, [segments[0].caption], 3)[segments[0].caption]}


def test_bad_options_stop_before_anything_is_written(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_segmented_video(videos / "a.mp4", [SHORT[0]], 1.0, FRAME_OPTIONS)
    run = tmp_path / "run"
    with pytest.raises(VidretError, match="--clip-seconds"):
        make_collection(videos, run, CollectionOptions(clip_seconds=0.0, model=MODEL, pretrained="none"))
    with pytest.raises(VidretError, match="unknown model|--model"):
        make_collection(videos, run, CollectionOptions(model="no-such-model", pretrained="none"))
    with pytest.raises(VidretError, match=r"--size 64: vidret-micro embeds 32x32 frames \(leave --size out\)"):
        make_collection(videos, run, CollectionOptions(size=64, model=MODEL, pretrained="none"))
    with pytest.raises(VidretError, match="gone.pt: no such checkpoint"):
        make_collection(videos, run, CollectionOptions(checkpoint=tmp_path / "gone.pt"))
    assert not run.exists()
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"")
    with pytest.raises(VidretError, match="the checkpoint .* fixes the model"):
        CollectionOptions(checkpoint=checkpoint, model=MODEL)
    empty = tmp_path / "empty"
    empty.mkdir()
    failed = vidret("collection", empty, "--out", run, "--model", MODEL, "--pretrained", "none")
    assert failed.returncode == 1 and failed.stderr.startswith(f"error: {empty}: no video files found")
    assert failed.stderr.count("\n") == 1


def planned_collection(*args: str) -> str:
    made = subprocess.run(
        ["make", "-n", "--no-print-directory", "collection", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    (command,) = [line for line in made.stdout.replace("\\\n", " ").splitlines() if "vidret collection" in line]
    return " ".join(command.split())


def test_make_collection_passes_only_the_variables_given():
    """The Makefile's CPU defaults (MODEL=vidret-tiny, PRETRAINED=none, SIZE=112) are the demo's: a collection gets
    vidret's defaults unless the command line names them."""
    assert planned_collection("VIDEO_DIR=~/Videos", "RUN=runs/home").endswith(
        "vidret collection ~/Videos --out runs/home"
    )
    assert planned_collection(
        "VIDEO_DIR=v", "RUN=r", "CHECKPOINT=runs/demo/model/best.pt", "CLIP_SECONDS=5", "SIZE=112", "INDEX=flat",
        "COLLECTION_ARGS=--workers 2",
    ).endswith(
        "vidret collection v --out r --clip-seconds 5 --size 112 --checkpoint runs/demo/model/best.pt --index flat"
        " --workers 2"
    )  # fmt: skip
    assert planned_collection("VIDEO_DIR=v", "RUN=r", "MODEL=vidret-tiny", "PRETRAINED=none").endswith(
        "vidret collection v --out r --model vidret-tiny --pretrained none"
    )
    # Without RUN= the run folder would be the demo's, whose stages a collection would replace.
    made = subprocess.run(["make", "-n", "collection", "VIDEO_DIR=v"], cwd=ROOT, capture_output=True, text=True)
    assert made.returncode != 0 and "make collection needs RUN=" in made.stderr and "vidret" not in made.stdout
