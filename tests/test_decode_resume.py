"""Decode after kill -9: a video's piece (all its clips, or its failure) is kept, and only the videos without one
are decoded again; the result is the bytes of an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cli.main import app
from pipeline.decode import DecodeOptions, FrameSpec, decode_videos
from pipeline.decode.writer import PIECE_STATUS, marker_path, pieces_dir
from pipeline.manifest import write_manifest

from helpers import make_video, manifest_records, start_decode

SPEC = FrameSpec(num_frames=4, size=32, clip_seconds=0.5)  # 60 frames at 30 fps: 4 clips of 15 frames
CLIPS = 4
OPTIONS = DecodeOptions(spec=SPEC, shard_size=3, workers=1)
CLI_OPTIONS = ["--frames", "4", "--size", "32", "--clip-seconds", "0.5", "--shard-size", "3", "--workers", "1"]
IDS = ["v0", "v1", "v2", "bad", "v3", "v4", "v5", "v6"]  # chunks: v0-v2, bad-v4, v5-v6


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """8 videos of 4 clips each, the 4th an unreadable file; the manifest."""
    folder = tmp_path_factory.mktemp("resume")
    for video_id in IDS:
        if video_id == "bad":
            (folder / "bad.mp4").write_bytes(os.urandom(4096))
        else:
            make_video(folder / f"{video_id}.mp4", width=64, height=48, num_frames=60)
    manifest = folder / "manifest.jsonl"
    write_manifest(manifest, manifest_records({video_id: f"{video_id}.mp4" for video_id in IDS}))
    return manifest


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "frames"
    decode_videos(corpus, out, OPTIONS, progress=False)
    return out


@pytest.fixture(scope="module")
def killed(corpus, tmp_path_factory) -> Path:
    """The output of a run killed (SIGKILL) once chunk 0 was committed and chunk 1 had two videos decoded (its
    third, v4, holds the run)."""
    out = tmp_path_factory.mktemp("killed") / "frames"
    options = "DecodeOptions(spec=FrameSpec(num_frames=4, size=32, clip_seconds=0.5), shard_size=3, workers=1)"
    process = start_decode(corpus, out, options, "read_video_stalling_on_v4")
    deadline = time.monotonic() + 60
    while len(pieces(out, 1)) < 2 or not marker_path(out, 0).exists() or pieces_dir(out, 0).exists():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    process.kill()
    assert process.wait() == -9
    return out


def pieces(out: Path, chunk_index: int) -> list[Path]:
    return sorted(pieces_dir(out, chunk_index).glob("v-*.arrow"))


def part_bytes(frames_dir: Path) -> dict[str, bytes]:
    return {part.name: part.read_bytes() for part in sorted(frames_dir.glob("part-*.parquet"))}


def statuses(frames_dir: Path) -> list[tuple[str, str]]:
    table = pq.read_table(frames_dir / "status.parquet")
    return list(zip(table["video_id"].to_pylist(), table["status"].to_pylist(), strict=True))


def copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def rerun(corpus: Path, out: Path) -> str:
    result = CliRunner().invoke(app, ["decode", str(corpus), "--out", str(out), *CLI_OPTIONS, "--no-progress"])
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1]


def assert_same_as(out: Path, uninterrupted: Path) -> None:
    assert part_bytes(out) == part_bytes(uninterrupted)
    assert statuses(out) == statuses(uninterrupted)
    assert not [path for path in (out / "_chunks").iterdir() if path.is_dir()], "pieces left"
    assert not [path for path in out.rglob(".*") if path.is_file() and path.suffix != ".lock"], "temporaries left"


def test_a_killed_run_leaves_committed_chunks_and_whole_videos(killed):
    assert (killed / "part-00000.parquet").exists() and not (killed / "part-00001.parquet").exists()
    assert not pieces(killed, 0), "a committed chunk's pieces are removed"
    assert "finished" not in json.loads((killed / "stage.json").read_text())
    kept = pieces(killed, 1)
    assert 2 <= len(kept) <= 3
    for path in kept:  # every piece holds all of its video's clips, or its failure and no rows
        with pa.memory_map(str(path)) as source:
            reader = ipc.open_file(source)
            status = json.loads(reader.schema.metadata[PIECE_STATUS])
            rows = reader.read_all()
        video_id = IDS[3 + int(path.stem.removeprefix("v-"))]
        if video_id == "bad":
            assert status["status"] == "unreadable" and rows.num_rows == 0
        else:
            assert status["status"] == "ok" and status["frames"] == CLIPS * 4
            assert rows["video_id"].to_pylist() == [video_id] * CLIPS
            assert rows["clip_index"].to_pylist() == list(range(CLIPS))


def test_a_rerun_decodes_only_the_videos_without_a_piece_and_writes_the_same_bytes(
    corpus, killed, uninterrupted, tmp_path
):
    out = copy(killed, tmp_path / "frames")
    kept = len(pieces(out, 1))
    line = rerun(corpus, out)
    # 8 videos: 3 in the committed chunk, `kept` in pieces; the rest are this run's.
    assert line.startswith(f"decode: {8 - 3 - kept} videos in ")
    assert "resumed: 1 chunks were already committed" in line
    assert f"kept {kept} videos a killed run had decoded" in line
    assert json.loads((out / "stage.json").read_text())["throughput"]["videos"] == 8 - 3 - kept
    assert_same_as(out, uninterrupted)


def test_a_damaged_or_half_written_piece_is_decoded_again(corpus, killed, uninterrupted, tmp_path):
    out = copy(killed, tmp_path / "frames")
    first, second, *rest = pieces(out, 1)
    data = first.read_bytes()
    first.write_bytes(data[: len(data) // 2])  # half a file, as a copy interrupted midway leaves
    second.write_bytes(b"\0" * len(second.read_bytes()))  # zeros, as a crash of the machine may leave
    summary = decode_videos(corpus, out, OPTIONS, progress=False)
    assert summary.videos_resumed == len(rest) and summary.videos == 8 - 3 - len(rest)
    assert_same_as(out, uninterrupted)


def test_a_piece_of_a_video_changed_since_is_decoded_again(corpus, killed, uninterrupted, tmp_path):
    out = copy(killed, tmp_path / "frames")
    kept = pieces(out, 1)
    video = corpus.parent / "v3.mp4"  # the piece v-00001 of chunk 1
    assert pieces_dir(out, 1) / "v-00001.arrow" in kept
    stat = video.stat()
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched: a new identity
    try:
        summary = decode_videos(corpus, out, OPTIONS, progress=False)
    finally:
        os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert summary.videos_resumed == len(kept) - 1
    assert part_bytes(out) == part_bytes(uninterrupted)


def test_force_removes_the_pieces(corpus, killed, uninterrupted, tmp_path):
    out = copy(killed, tmp_path / "frames")
    summary = decode_videos(corpus, out, DecodeOptions(spec=SPEC, shard_size=3, workers=1, force=True), progress=False)
    assert summary.videos_resumed == 0 and summary.videos == 8
    assert_same_as(out, uninterrupted)
