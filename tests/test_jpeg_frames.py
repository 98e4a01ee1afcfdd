"""decode --frame-format jpeg: one JPEG per frame, and what encode makes of them against raw frames."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from pipeline.decode import DecodeOptions, FrameSpec, decode_videos
from pipeline.encode.embed import EmbedOptions, embed
from pipeline.encode.reader import FrameStore, prefetch_batches
from pipeline.errors import VidretError
from pipeline.synth import SynthOptions, make_synthetic_dataset

# vidret-tiny's input: 4 frames of 112 x 112. The synthetic clips (flat colours, moving shapes) at
# JPEG quality 90 with 4:2:0 chroma differ from their raw frames by about 0.5 grey levels on average
# (at most 1 a video), mostly where the chroma is halved at colour edges: 2 grey levels leaves a
# margin without hiding a frame decoded wrong (a shifted or mis-ordered frame differs by tens).
SPEC = FrameSpec(num_frames=4, size=112)
MAX_MEAN_ABS_DIFF = 2.0
# A randomly initialised tower maps every video near one point (the videos' embeddings have cosines
# above 0.999 among themselves), so a cosine near 1 alone would prove nothing: each JPEG embedding
# must also be nearer its own video's raw embedding than any other video's, by a wide margin.
MIN_COSINE = 0.99


@pytest.fixture(scope="module")
def decoded(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("jpeg")
    synth = SynthOptions(videos=10, seed=4, width=160, height=120, min_frames=12, max_frames=20)
    manifest = make_synthetic_dataset(root / "data", synth, progress=False).manifest
    for name, spec in {"raw": SPEC, "jpeg": FrameSpec(num_frames=4, size=112, frame_format="jpeg")}.items():
        decode_videos(manifest, root / name, DecodeOptions(spec=spec, workers=1), progress=False)
    return {"manifest": manifest, "raw": root / "raw", "jpeg": root / "jpeg", "root": root}


def part_rows(frames_dir: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(part) for part in sorted(frames_dir.glob("part-*.parquet")))


def test_jpeg_parts_hold_one_valid_jpeg_per_frame(decoded):
    table = part_rows(decoded["jpeg"])
    assert table.schema.field("frames").type == pa.list_(pa.binary())
    assert table.num_rows == 10
    for row in table.to_pylist():
        assert len(row["frames"]) == row["num_frames"] == 4
        for data in row["frames"]:
            assert data[:2] == b"\xff\xd8"  # a JPEG's start-of-image marker
            with Image.open(io.BytesIO(data)) as image:
                assert image.format == "JPEG" and image.size == (row["width"], row["height"]) == (112, 112)
    assert part_rows(decoded["raw"]).schema.field("frames").type == pa.binary()


def test_the_format_enters_the_recorded_parameters_only_when_jpeg(decoded):
    jpeg = json.loads((decoded["jpeg"] / "stage.json").read_text())["params"]
    raw = json.loads((decoded["raw"] / "stage.json").read_text())["params"]
    assert (jpeg["frame_format"], jpeg["jpeg_quality"]) == ("jpeg", 90)
    assert "frame_format" not in raw and "jpeg_quality" not in raw  # raw frames decoded before stay up to date
    assert {key: value for key, value in jpeg.items() if key not in ("frame_format", "jpeg_quality")} == raw


def test_jpeg_frames_reach_the_model_as_raw_ones_do(decoded):
    raw, jpeg = FrameStore(decoded["raw"]), FrameStore(decoded["jpeg"])
    ids = sorted(raw.locations)
    batches = [[(video_id, 0) for video_id in ids[:4]], [(video_id, 0) for video_id in ids[4:]]]
    for from_raw, from_jpeg in zip(
        prefetch_batches(raw, batches, threads=2), prefetch_batches(jpeg, batches, threads=2), strict=True
    ):
        assert from_jpeg.frames.dtype == from_raw.frames.dtype == torch.uint8
        assert from_jpeg.frames.shape == from_raw.frames.shape == (len(from_raw.frames), 4, 112, 112, 3)
        assert from_jpeg.frames.is_contiguous()
        difference = (from_jpeg.frames.int() - from_raw.frames.int()).abs().float()
        assert 0 < difference.mean() < MAX_MEAN_ABS_DIFF  # not the raw frames by mistake, and close to them
        assert difference.flatten(1).mean(1).max() < MAX_MEAN_ABS_DIFF


def test_embedding_jpeg_frames_matches_raw_frames(decoded, tmp_path):
    torch.manual_seed(0)
    torch.save(open_clip.create_model("vidret-tiny").state_dict(), tmp_path / "weights.pt")
    embeddings = {}
    for name in ("raw", "jpeg"):
        embed(
            EmbedOptions(
                frames_dir=decoded[name], manifest=decoded["manifest"], out=tmp_path / name, model="vidret-tiny",
                pretrained=str(tmp_path / "weights.pt"), head="meanP", split="all", device="cpu", progress=False,
            )
        )  # fmt: skip
        table = pq.read_table(tmp_path / name / "videos.parquet")
        embeddings[name] = (table.column("video_id").to_pylist(), np.stack(table.column("embedding").to_pylist()))
    (raw_ids, raw), (jpeg_ids, jpeg) = embeddings["raw"], embeddings["jpeg"]
    assert raw_ids == jpeg_ids and len(raw_ids) == 10
    assert (raw * jpeg).sum(axis=1).min() > MIN_COSINE
    own = np.linalg.norm(raw - jpeg, axis=1)
    distances = np.linalg.norm(raw[:, None] - raw[None], axis=-1) + np.diag(np.full(len(raw), np.inf))
    assert (own < distances.min(axis=1) / 4).all()  # JPEG moves a video far less than to its nearest other


def test_padding_frames_are_jpegs_of_zeros(tmp_path):
    """CLIP4Clip's one-frame-a-second sampling pads a 2-second clip to 4 frames with zero frames."""
    synth = SynthOptions(videos=5, seed=2, width=64, height=48, fps=6, min_frames=12, max_frames=12)
    manifest = make_synthetic_dataset(tmp_path / "data", synth, progress=False).manifest
    spec = FrameSpec(num_frames=4, size=32, sampling="clip4clip", frame_format="jpeg", jpeg_quality=75)
    decode_videos(manifest, tmp_path / "frames", DecodeOptions(spec=spec, workers=1), progress=False)
    row = part_rows(tmp_path / "frames").to_pylist()[0]
    assert row["frame_indices"][-2:] == [-1, -1] and len(row["frames"]) == 4
    frames = FrameStore(tmp_path / "frames").read(row["video_id"])
    assert frames.shape == (4, 32, 32, 3) and not frames[-2:].any() and frames[0].any()


def test_a_damaged_jpeg_frame_is_one_line_naming_the_part(decoded, tmp_path):
    """A JPEG image cut short (by a tool that rewrote the part file) is an error naming the file and the video."""
    store = FrameStore(shutil.copytree(decoded["jpeg"], tmp_path / "frames"))
    video_id = sorted(store.locations)[0]
    location = store.locations[video_id][0]
    table = pq.read_table(location.part)
    frames = table.column("frames").to_pylist()
    row = table.column("video_id").to_pylist().index(video_id)
    frames[row] = [frames[row][0][:200], *frames[row][1:]]
    column = pa.array(frames, table.schema.field("frames").type)
    pq.write_table(table.set_column(table.schema.get_field_index("frames"), "frames", column), location.part)
    with pytest.raises(VidretError, match=rf"{location.part}: bad JPEG frames of video '{video_id}'"):
        store.read(video_id)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("--frame-format", "jpeg", "--jpeg-quality", "0"), "--jpeg-quality must be in [1, 100], got 0"),
        (("--frame-format", "jpeg", "--jpeg-quality", "101"), "--jpeg-quality must be in [1, 100], got 101"),
        (("--frame-format", "png"), "unknown frame format 'png' (expected one of raw, jpeg)"),
    ],
)
def test_bad_frame_options_are_one_line_and_exit_non_zero(tmp_path, arguments, message):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"video_id": "a", "path": "a.mp4", "split": "test", "captions": ["x"]}\n')
    result = CliRunner().invoke(app, ["decode", str(manifest), "--out", str(tmp_path / "frames"), *arguments])
    assert result.exit_code != 0 and result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {message}"]
    assert not (tmp_path / "frames").exists()
