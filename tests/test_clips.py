"""Clips: windows (--clip-seconds, --clip-stride) and shots (--clip-shots) of a video, one row each."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cli.main import app
from pipeline.decode import DecodeOptions, FrameSpec, decode_videos
from pipeline.decode.clips import DEFAULT_SHOT_SECONDS, clip_windows, shorter_than_a_window, shot_windows
from pipeline.decode.reader import DECODERS, read_views
from pipeline.decode.sampling import PADDING, sample_frame_indices
from pipeline.decode.shots import shot_cuts
from pipeline.decode.writer import FRAMES_PARQUET_OPTIONS, PART_KEY, marker_path
from pipeline.errors import VidretError
from pipeline.files import write_json, write_parquet
from pipeline.manifest import write_manifest
from pipeline.schemas import CLIP_COLUMNS, FRAMES_SCHEMA
from pipeline.stage import STAGE_FILE, file_record, read_stage
from pipeline.synth import write_video

from helpers import decode_with_pyav, make_video, manifest_records, pattern_frames, reference_frames, scramble_mp4_data

FPS = 25
SPEC = FrameSpec(num_frames=4, size=32)
NUM_FRAMES = 110  # 4.4 s at 25 fps
SHOTS = (40, 55, 45)  # frames per shot: hard cuts at 40 and 95


# -- the window arithmetic ---------------------------------------------------------------------


def test_windows_tile_the_video_in_exact_frames_and_keep_a_last_window_of_half_a_window():
    assert clip_windows(250, FPS, 4) == [(0, 100), (100, 200), (200, 250)]  # the last: 50 frames, 2 s of 4
    assert clip_windows(249, FPS, 4) == [(0, 100), (100, 200)]  # 49 frames: under half a window, dropped
    assert clip_windows(200, FPS, 4) == [(0, 100), (100, 200)]  # ends at the end: no empty window after
    assert clip_windows(300, FPS, 4, stride=4) == clip_windows(300, FPS, 4)


def test_windows_start_at_rounded_frames_at_ntsc_rates():
    fps = 30000 / 1001
    windows = clip_windows(1800, fps, 10)
    assert [start for start, _ in windows] == [round(k * 10 * fps) for k in range(6)] == [0, 300, 599, 899, 1199, 1499]
    assert [end for _, end in windows] == [300, 599, 899, 1199, 1499, 1798]  # (1798, 1800): 2 frames, dropped


def test_overlapping_strides_stop_at_the_first_window_that_reaches_the_end():
    assert clip_windows(250, FPS, 4, stride=2) == [(0, 100), (50, 150), (100, 200), (150, 250)]
    assert clip_windows(240, FPS, 4, stride=2) == [(0, 100), (50, 150), (100, 200), (150, 240)]
    assert clip_windows(230, FPS, 4, stride=3) == [(0, 100), (75, 175), (150, 230)]  # 80 frames: kept
    assert clip_windows(190, FPS, 4, stride=3) == [(0, 100), (75, 175)]  # (150, 190), 40 frames: dropped
    assert clip_windows(300, FPS, 2, stride=6) == [(0, 50), (150, 200)]  # a stride over the window: gaps


def test_a_video_shorter_than_one_window_is_one_clip_of_all_of_it():
    assert clip_windows(30, FPS, 4) == [(0, 30)] and shorter_than_a_window(30, FPS, 4)
    assert clip_windows(1, FPS, 4, stride=1) == [(0, 1)]
    assert clip_windows(100, FPS, 4) == [(0, 100)] and not shorter_than_a_window(100, FPS, 4)


def test_windows_under_a_frame_hold_one_frame_and_never_start_twice():
    assert clip_windows(3, FPS, 0.01) == [(0, 1), (1, 2), (2, 3)]
    windows = clip_windows(10, FPS, 0.1, stride=0.001)  # 4 ms apart at 40 ms a frame
    assert [start for start, _ in windows] == list(range(9))
    assert all(end - start == 2 for start, end in windows[:-1])  # round(0.1 * 25) = 2 frames each


def test_shots_longer_than_the_limit_are_cut_into_windows():
    assert shot_windows([40, 95], 140, FPS, 10) == [(0, 40), (40, 95), (95, 140)]
    # 1 s windows: (25, 40) is 15 frames, kept; (90, 95), 5 frames, dropped; (120, 140), 20, kept.
    assert shot_windows([40, 95], 140, FPS, 1) == [(0, 25), (25, 40), (40, 65), (65, 90), (95, 120), (120, 140)]
    assert shot_windows([], 140, FPS, 10) == [(0, 140)]  # one shot
    assert shot_windows([0, 3, 140, 200], 140, FPS, 10) == [(0, 3), (3, 140)]  # cuts outside the video ignored


# -- options -----------------------------------------------------------------------------------


def test_clip_options_are_checked_and_normalised():
    assert FrameSpec(clip_seconds=10).clip_stride == 10.0 and isinstance(FrameSpec(clip_seconds=10).clip_seconds, float)
    assert (
        FrameSpec(clip_shots=True).clip_seconds == DEFAULT_SHOT_SECONDS
        and FrameSpec(clip_shots=True).clip_stride is None
    )
    for spec, message in (
        (dict(clip_seconds=0), "--clip-seconds must be positive, got 0"),
        (dict(clip_seconds=float("nan")), "--clip-seconds must be finite and positive, got nan"),
        (dict(clip_seconds=-2.5), "--clip-seconds must be positive, got -2.5"),
        (dict(clip_seconds=4, clip_stride=0), "--clip-stride must be positive, got 0"),
        (dict(clip_stride=2), "--clip-stride needs --clip-seconds"),
        (dict(clip_shots=True, clip_stride=2), "--clip-stride spaces --clip-seconds windows"),
    ):
        with pytest.raises(VidretError, match=message):
            FrameSpec(**spec)
    with pytest.raises(VidretError, match="--train-views with --clip-seconds or --clip-shots"):
        DecodeOptions(spec=FrameSpec(clip_shots=True), train_views=2)


def test_clip_options_enter_the_parameters_only_when_set():
    params = DecodeOptions(spec=SPEC).output_params()
    assert not set(params) & {"clip_seconds", "clip_stride", "clip_shots"}
    windows = DecodeOptions(spec=FrameSpec(num_frames=4, size=32, clip_seconds=2)).output_params()
    assert (windows["clip_seconds"], windows["clip_stride"]) == (2.0, 2.0) and "clip_shots" not in windows
    same = DecodeOptions(spec=FrameSpec(num_frames=4, size=32, clip_seconds=2.0, clip_stride=2)).output_params()
    assert json.dumps(same, sort_keys=True) == json.dumps(windows, sort_keys=True)  # one chunk key
    shots = DecodeOptions(spec=FrameSpec(num_frames=4, size=32, clip_shots=True)).output_params()
    assert (shots["clip_seconds"], shots["clip_shots"]) == (DEFAULT_SHOT_SECONDS, True) and "clip_stride" not in shots


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--clip-seconds", "0"], "--clip-seconds must be positive, got 0"),
        (["--clip-seconds", "nan"], "--clip-seconds must be finite and positive, got nan"),
        (["--clip-seconds", "4", "--clip-stride", "-1"], "--clip-stride must be positive, got -1"),
        (["--clip-stride", "2"], "--clip-stride needs --clip-seconds"),
        (["--clip-shots", "--clip-stride", "2"], "--clip-stride spaces --clip-seconds windows"),
        (["--clip-shots", "--train-views", "2"], "--train-views with --clip-seconds or --clip-shots"),
    ],
)
def test_bad_clip_options_are_one_line_and_exit_1_through_the_cli(tmp_path, flags, message):
    write_manifest(tmp_path / "m.jsonl", manifest_records({"a": "a.mp4"}))
    result = CliRunner().invoke(app, ["decode", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "f"), *flags])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "f").exists()


# -- decoded clips -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clips") / "video.mp4"
    write_video(path, pattern_frames(NUM_FRAMES, 64, 48), FPS)
    return path


def expected_rows(windows: list[tuple[int, int]], spec: FrameSpec) -> list[dict]:
    """The rows a clip decode must write: each window sampled as a video of its own frames."""
    return [
        {
            "clip_index": clip,
            "start_s": start / FPS,
            "end_s": end / FPS,
            "frame_indices": [
                i if i == PADDING else start + i
                for i in sample_frame_indices(end - start, spec.num_frames, spec.sampling)
            ],
        }
        for clip, (start, end) in enumerate(windows)
    ]


@pytest.mark.parametrize("decoder", DECODERS)
def test_each_clip_is_sampled_within_its_window_by_both_decoders(video, decoder):
    spec = FrameSpec(num_frames=4, size=32, decoder=decoder, clip_seconds=2, clip_stride=1.5)
    clips = read_views(video, spec)
    windows = [(0, 50), (38, 88), (75, 110)]  # starts round(0), round(37.5) = 38, round(75); the last reaches the end
    got = [
        {name: getattr(clip, name) for name in ("clip_index", "start_s", "end_s", "frame_indices")} for clip in clips
    ]
    assert got == expected_rows(windows, spec)
    assert {clip.note for clip in clips} == {""} and {clip.source_num_frames for clip in clips} == {NUM_FRAMES}
    decoded = decode_with_pyav(video)
    for clip in clips:  # the frames are those the indices name, not their neighbours (decord resamples its own way)
        own = np.abs(clip.frames.astype(int) - reference_frames(decoded, clip.frame_indices, spec)).mean()
        shifted = reference_frames(decoded, [i + 1 for i in clip.frame_indices], spec)
        assert own < 2.5 and np.abs(clip.frames.astype(int) - shifted).mean() > 3 * own


def test_the_stage_writes_one_row_per_clip_in_time_order(video, tmp_path):
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, manifest_records({"long": video, "whole": video}))
    out = tmp_path / "frames"
    spec = FrameSpec(num_frames=4, size=32, clip_seconds=2)
    summary = decode_videos(manifest, out, DecodeOptions(spec=spec, workers=1), progress=False)
    assert summary.counts == {"ok": 2} and summary.frames == 2 * 2 * 4
    table = pq.read_table(out / "part-00000.parquet")
    assert table.schema.equals(FRAMES_SCHEMA)
    rows = table.select(["video_id", *CLIP_COLUMNS, "frame_indices"]).to_pylist()
    windows = [(0, 50), (50, 100)]  # (100, 110): 10 frames, under half of 2 s, dropped
    assert rows == [
        {"video_id": video_id, **row} for video_id in ("long", "whole") for row in expected_rows(windows, spec)
    ]
    stage = read_stage(out)
    assert (stage["params"]["clip_seconds"], stage["params"]["clip_stride"]) == (2.0, 2.0)


def test_a_whole_video_row_is_clip_0_from_0_to_its_duration(video, tmp_path):
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, manifest_records({"v": video}))
    decode_videos(manifest, tmp_path / "frames", DecodeOptions(spec=SPEC, workers=1), progress=False)
    rows = pq.read_table(tmp_path / "frames" / "part-00000.parquet").select(list(CLIP_COLUMNS)).to_pylist()
    assert rows == [{"clip_index": 0, "start_s": 0.0, "end_s": NUM_FRAMES / FPS}]


def test_a_video_shorter_than_one_window_is_one_clip_with_a_warning(video, tmp_path):
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, manifest_records({"short": video}))
    spec = FrameSpec(num_frames=4, size=32, clip_seconds=10)
    decode_videos(manifest, tmp_path / "frames", DecodeOptions(spec=spec, workers=1), progress=False)
    status = pq.read_table(tmp_path / "frames" / "status.parquet").to_pylist()[0]
    assert status["status"] == "ok"
    assert status["error"] == "the video (4.40 s) is shorter than one --clip-seconds 10 window: one clip of all of it"
    rows = pq.read_table(tmp_path / "frames" / "part-00000.parquet").to_pylist()
    assert [(row["clip_index"], row["start_s"], row["end_s"]) for row in rows] == [(0, 0.0, NUM_FRAMES / FPS)]
    assert rows[0]["frame_indices"] == sample_frame_indices(NUM_FRAMES, 4)


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_damaged_tail_cuts_the_windows_over_the_frames_that_decode(tmp_path, decoder):
    intact = make_video(tmp_path / "intact.mp4", num_frames=90)  # 30 fps
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(scramble_mp4_data(intact.read_bytes(), start=0.6))
    spec = FrameSpec(num_frames=4, size=32, decoder=decoder, clip_seconds=0.5)
    clips = read_views(damaged, spec)
    assert "lists 90 frames but only the first" in clips[0].note
    decodable = int(clips[0].note.split("only the first ")[1].split()[0])
    assert 15 < decodable < 90
    assert [(round(c.start_s * 30), round(c.end_s * 30)) for c in clips] == clip_windows(decodable, 30, 0.5)
    assert max(max(clip.frame_indices) for clip in clips) < decodable


# -- shots -------------------------------------------------------------------------------------


def shot_frames() -> np.ndarray:
    """Three shots of distinct colours, each with a square moving across it."""
    colours = [(200, 40, 40), (30, 60, 190), (40, 170, 60)]
    frames = []
    for length, colour in zip(SHOTS, colours, strict=True):
        for t in range(length):
            frame = np.empty((72, 96, 3), np.uint8)
            frame[:] = colour
            x = 4 + (2 * t) % 70
            frame[20:44, x : x + 20] = 255 - np.array(colour, np.uint8)
            frames.append(frame)
    return np.stack(frames)


@pytest.fixture(scope="module")
def shots_video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("shots") / "shots.mp4"
    write_video(path, shot_frames(), FPS)
    return path


def test_hard_cuts_are_found_within_one_frame(shots_video):
    truth = np.cumsum(SHOTS)[:-1]  # 40, 95
    cuts = shot_cuts(decode_with_pyav(shots_video), FPS)
    assert len(cuts) == len(truth) and np.all(np.abs(np.array(cuts) - truth) <= 1), cuts
    # The moving square alone (one shot) is no cut.
    assert shot_cuts(decode_with_pyav(shots_video)[:40], FPS) == []


@pytest.mark.parametrize("decoder", DECODERS)
def test_clip_shots_rows_are_the_shots_and_long_shots_are_cut(shots_video, decoder):
    clips = read_views(shots_video, FrameSpec(num_frames=4, size=32, decoder=decoder, clip_shots=True))
    starts = [round(clip.start_s * FPS) for clip in clips]
    assert len(clips) == 3 and np.all(np.abs(np.array(starts) - [0, 40, 95]) <= 1), starts
    assert clips[-1].end_s == sum(SHOTS) / FPS and [clip.clip_index for clip in clips] == [0, 1, 2]
    # Every clip's frames lie inside its shot: none shows two colours.
    for clip in clips:
        corners = clip.frames[:, 0, 0].astype(int)
        assert np.abs(corners - corners[0]).max() < 20, corners
    cut = read_views(shots_video, FrameSpec(num_frames=4, size=32, decoder=decoder, clip_shots=True, clip_seconds=1))
    windows = [(round(clip.start_s * FPS), round(clip.end_s * FPS)) for clip in cut]
    assert windows == shot_windows(shot_cuts(decode_with_pyav(shots_video), FPS), sum(SHOTS), FPS, 1)
    assert len(windows) == 6


# -- frames decoded before clips existed -------------------------------------------------------


def test_a_folder_decoded_before_clips_existed_is_up_to_date(video, tmp_path):
    """Part files without the clip columns, with markers and a stage record that knew no clip
    parameters, as the previous vidret wrote them: nothing to do, with or without its stage.json."""
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, manifest_records({"a": video, "b": video, "c": video}))
    out = tmp_path / "frames"
    options = DecodeOptions(spec=SPEC, workers=1, shard_size=2)
    decode_videos(manifest, out, options, progress=False)
    stage = json.loads((out / STAGE_FILE).read_text())
    for index in range(2):  # rewrite the chunks as the earlier version wrote them
        part = out / f"part-{index:05d}.parquet"
        old = pq.read_table(part).drop_columns(list(CLIP_COLUMNS))
        write_parquet(part, old, **FRAMES_PARQUET_OPTIONS)
        marker = pq.read_table(marker_path(out, index))
        metadata = {**marker.schema.metadata, PART_KEY: json.dumps(file_record(part)).encode()}
        write_parquet(marker_path(out, index), marker.replace_schema_metadata(metadata))
        stage["files"][part.name] = file_record(part)
    write_json(out / STAGE_FILE, stage)
    assert not set(CLIP_COLUMNS) & set(pq.read_schema(out / "part-00000.parquet").names)

    again = decode_videos(manifest, out, options, progress=False)
    assert again.skip_reason is not None and again.chunks_run == 0
    (out / STAGE_FILE).unlink()
    resumed = decode_videos(manifest, out, options, progress=False)
    assert resumed.chunks_run == 0 and resumed.chunks_already_committed == 2 and resumed.complete
    assert not set(CLIP_COLUMNS) & set(pq.read_schema(out / "part-00001.parquet").names)
    # With clips, the same folder is decoded again.
    clipped = DecodeOptions(spec=FrameSpec(num_frames=4, size=32, clip_seconds=2), workers=1, shard_size=2)
    assert decode_videos(manifest, out, clipped, progress=False).chunks_run == 2


# -- the benchmark's long-video part -----------------------------------------------------------


@pytest.mark.slow  # a process pool, and 24 s of 360p video to write
def test_the_long_video_benchmark_measures_every_clip_against_its_floor(tmp_path):
    from pipeline.benchmarks import decode_throughput as bench

    path = bench.long_video(tmp_path, minutes=0.4)  # 600 frames: clips (0, 250), (250, 500); 100 left, dropped
    assert bench.long_video(tmp_path, minutes=0.4) == path and not list(tmp_path.glob(".*"))  # cached, whole
    rows = {row["method"]: row for row in bench.measure_clips(path, repeats=1)}
    assert set(rows) == {"clips-floor", "vidret-clips"} and {row["clips"] for row in rows.values()} == {2}
    assert rows["vidret-clips"]["time_to_floor"] == pytest.approx(
        rows["vidret-clips"]["seconds"] / rows["clips-floor"]["seconds"], abs=5e-3
    )
    # The floor decodes at least every sampled frame, and fewer than all of them.
    decoded = bench.clips_floor(path)
    assert 2 * 12 <= decoded < 600
