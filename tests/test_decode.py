"""The decode stage end to end: statuses, shards, resumption, timeouts, sharding."""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.decode import DecodeOptions, FrameSpec, decode_videos, read_video, sample_frame_indices
from pipeline.decode.sampling import PADDING, train_view_seed
from pipeline.decode.writer import marker_path, read_marker
from pipeline.encode.reader import FrameStore
from pipeline.errors import VidretError
from pipeline.files import sha256_json
from pipeline.manifest import read_manifest, select_split, write_manifest
from pipeline.schemas import FRAMES_SCHEMA, FRAMES_VIEWS_SCHEMA

from helpers import (
    CODECS,
    decode_with_pyav,
    forget_file_record,
    make_video,
    manifest_records,
    read_video_or_crash,
    read_video_or_hang,
    read_video_when_released,
    reference_frames,
    start_decode,
    tree_hashes,
    without_locks,
)

SPEC = FrameSpec(num_frames=4, size=64)  # small frames keep the tests fast


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, bad_videos) -> tuple[Path, dict[str, str]]:
    """A manifest of 8 good videos in several codecs plus every broken input;
    returns the manifest and the status each video must get."""
    folder = tmp_path_factory.mktemp("corpus")
    expected, lines = {}, []
    kinds = ["h264-mp4", "mpeg4-avi", "vp9-webm", "mjpeg-mkv", "hevc-mkv", "h264-mp4", "h264-mp4", "mpeg4-avi"]
    for number, kind in enumerate(kinds):
        name = f"good{number}.{CODECS[kind][2]}"
        make_video(folder / name, kind, width=160 + 16 * number, height=120, num_frames=20 + number)
        lines.append((f"good{number}", name))
        expected[f"good{number}"] = "ok"
    for name, (path, status) in bad_videos.items():
        lines.insert(len(lines) // 2, (f"bad-{name}", str(path)))  # failures in the middle of the order
        expected[f"bad-{name}"] = status
    manifest = folder / "manifest.jsonl"
    write_manifest(manifest, manifest_records(dict(lines)) + manifest_records({"train0": "good0.mp4"}, "train"))
    return manifest, {vid: expected[vid] for vid, _ in lines}


def options(**overrides) -> DecodeOptions:
    return DecodeOptions(**{"spec": SPEC, "split": "test", "shard_size": 4, "workers": 2, **overrides})


def chunk_count(expected: dict[str, str], shard_size: int) -> int:
    return math.ceil(len(expected) / shard_size)


def read_parts(frames_dir: Path) -> pa.Table:
    """The frame shards, read the way a user would (a glob of part files)."""
    return pa.concat_tables(pq.read_table(part) for part in sorted(frames_dir.glob("part-*.parquet")))


def part_bytes(frames_dir: Path) -> dict[str, bytes]:
    return {part.name: part.read_bytes() for part in sorted(frames_dir.glob("part-*.parquet"))}


def assert_complete(frames_dir: Path, expected: dict[str, str]) -> None:
    """Exactly one status per video, and frames for exactly the ok ones, in manifest order."""
    status = pq.read_table(frames_dir / "status.parquet").to_pydict()
    assert status["video_id"] == list(expected)
    assert dict(zip(status["video_id"], status["status"], strict=True)) == expected
    ok = [vid for vid, s in expected.items() if s == "ok"]
    assert read_parts(frames_dir).column("video_id").to_pylist() == ok
    assert json.loads((frames_dir / "stage.json").read_text())["input"]["videos"] == len(expected)


def test_every_video_gets_one_status_and_ok_videos_get_their_frames(corpus, tmp_path):
    manifest, expected = corpus
    out = tmp_path / "frames"
    summary = decode_videos(manifest, out, options(), progress=False)

    assert_complete(out, expected)
    failures = {vid: s for vid, s in expected.items() if s != "ok"}
    assert summary.counts == {"ok": 8, **{s: list(failures.values()).count(s) for s in set(failures.values())}}
    status = pq.read_table(out / "status.parquet").to_pylist()
    for row in status:
        assert (row["error"] == "") == (row["status"] == "ok"), row
        assert row["seconds"] >= 0
    # Frames are the bytes of read_video's array, with their shape and sampling alongside.
    entries = {json.loads(line)["video_id"]: json.loads(line)["path"] for line in manifest.read_text().splitlines()}
    for row in read_parts(out).to_pylist():
        video = read_video(manifest.parent / entries[row["video_id"]], SPEC)
        frames = np.frombuffer(row["frames"], np.uint8).reshape(row["num_frames"], row["height"], row["width"], 3)
        assert np.array_equal(frames, video.frames)
        assert row["frame_indices"] == video.frame_indices
        assert row["source_num_frames"] == video.source_num_frames and row["fps"] == pytest.approx(30.0)
    # One row group per video, so any one video can be read alone.
    for part in out.glob("part-*.parquet"):
        metadata = pq.ParquetFile(part).metadata
        assert metadata.num_row_groups == metadata.num_rows
    stage = json.loads((out / "stage.json").read_text())
    assert stage["counts"] == dict(summary.counts)
    assert stage["params"] == {
        "num_frames": 4,
        "size": 64,
        "short_side": 73,  # MMAction2 ratio: 64 * 256 / 224 = 73.1
        "sampling": "uniform",
        "decoder": "pyav",
        "split": "test",
        "shard_size": 4,
    }
    assert stage["output"]["parts"] == chunk_count(expected, 4) and stage["throughput"]["videos"] == len(expected)
    assert stage["libraries"]["decord"] == "0.6.0"
    line = summary.line()
    assert line.startswith(f"decode: {len(expected)} videos in ") and ": 8 ok, 1 missing, 1 empty" in line
    assert "videos/s" in line and "frames/s" in line and f"output: {out}" in line


def test_users_read_the_shards_with_duckdb_and_pandas(corpus, tmp_path):
    import duckdb
    import pandas as pd

    manifest, expected = corpus
    out = tmp_path / "frames"
    decode_videos(manifest, out, options(), progress=False)
    parts = str(out / "part-*.parquet")
    one = duckdb.sql(f"SELECT frames, num_frames, height, width FROM '{parts}' WHERE video_id = 'good3'").fetchall()
    assert len(one) == 1
    frames, num_frames, height, width = one[0]
    assert np.frombuffer(frames, np.uint8).reshape(num_frames, height, width, 3).shape == (4, 64, 64, 3)
    counts = dict(duckdb.sql(f"SELECT status, count(*) FROM '{out / 'status.parquet'}' GROUP BY status").fetchall())
    assert counts["ok"] == 8 and sum(counts.values()) == len(expected)
    table = pd.read_parquet(out / "part-00000.parquet")
    assert list(table.columns) == FRAMES_SCHEMA.names
    assert isinstance(table.loc[0, "frames"], bytes)


def test_split_selects_videos(corpus, tmp_path):
    manifest, _ = corpus
    decode_videos(manifest, tmp_path / "frames", options(split="train"), progress=False)
    assert pq.read_table(tmp_path / "frames" / "status.parquet").column("video_id").to_pylist() == ["train0"]


def test_two_runs_write_identical_shards(corpus, tmp_path):
    manifest, _ = corpus
    decode_videos(manifest, tmp_path / "a", options(), progress=False)
    decode_videos(manifest, tmp_path / "b", options(workers=1), progress=False)
    assert part_bytes(tmp_path / "a") == part_bytes(tmp_path / "b")
    assert len(part_bytes(tmp_path / "a")) == chunk_count(corpus[1], 4)


def test_rerun_with_nothing_to_do_is_skipped(corpus, tmp_path):
    manifest, _ = corpus
    out = tmp_path / "frames"
    decode_videos(manifest, out, options(), progress=False)
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*.parquet")}
    summary = decode_videos(manifest, out, options(), progress=False)
    assert summary.chunks_run == 0 and summary.complete
    assert summary.line().startswith("decode: skipped, ") and "is up to date" in summary.line()
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*.parquet")} == before


def test_rerun_redoes_only_uncommitted_and_changed_chunks(corpus, tmp_path):
    manifest, expected = corpus
    work = tmp_path / "work"
    shutil.copytree(manifest.parent, work)
    manifest = work / "manifest.jsonl"
    out = tmp_path / "frames"
    decode_videos(manifest, out, options(), progress=False)
    shards = part_bytes(out)

    # A chunk whose commit marker is gone (a run killed before committing it) is redone...
    (out / "_chunks" / "part-00002.status.parquet").unlink()
    (out / "part-00002.parquet").unlink()
    summary = decode_videos(manifest, out, options(), progress=False)
    assert (summary.chunks_run, summary.chunks_already_committed) == (1, len(shards) - 1)
    assert part_bytes(out) == shards
    assert_complete(out, expected)

    # ...and so is a chunk one of whose videos was replaced.
    make_video(work / "good0.mp4", width=200, height=150, num_frames=30)
    summary = decode_videos(manifest, out, options(), progress=False)
    assert (summary.chunks_run, summary.chunks_already_committed) == (1, len(shards) - 1)
    assert part_bytes(out)["part-00000.parquet"] != shards["part-00000.parquet"]
    assert {name for name, data in part_bytes(out).items() if data != shards[name]} == {"part-00000.parquet"}
    assert_complete(out, expected)


def test_other_parameters_redo_the_frames_and_say_why(corpus, tmp_path):
    manifest, expected = corpus
    out = tmp_path / "frames"
    decode_videos(manifest, out, options(), progress=False)
    summary = decode_videos(manifest, out, options(spec=FrameSpec(num_frames=6, size=64)), progress=False)
    assert "(ran: its parameters changed (num_frames 4 -> 6))" in summary.line()
    assert summary.chunks_run == summary.chunks_total
    assert_complete(out, expected)
    assert set(read_parts(out).column("num_frames").to_pylist()) == {6}


def test_other_parameters_redo_the_chunks_unsharded_and_are_refused_sharded(corpus, tmp_path):
    """Chunks decoded with other parameters (here, markers of a vidret from before --decoder, which lack it)
    are derived output: an unsharded rerun redoes every one of them. A sharded run must not, since they may
    be other shards' work: it refuses, naming the change, and leaves the folder as it was."""
    manifest, expected = corpus
    out = tmp_path / "frames"
    decode_videos(manifest, out, options(spec=replace(SPEC, decoder="decord")), progress=False)
    for marker in (out / "_chunks").glob("*.status.parquet"):
        table = pq.read_table(marker)
        metadata = dict(table.schema.metadata)
        params = json.loads(metadata[b"vidret.params"])
        del params["decoder"]
        metadata[b"vidret.params"] = json.dumps(params).encode()
        pq.write_table(table.replace_schema_metadata(metadata), marker)
    (out / "stage.json").unlink()
    before = tree_hashes(out)
    with pytest.raises(VidretError, match=r"other parameters \(decoder \(not recorded\) -> 'pyav'\).*sharded"):
        decode_videos(manifest, out, options(num_shards=2), progress=False)
    assert without_locks(tree_hashes(out)) == without_locks(before)
    summary = decode_videos(manifest, out, options(), progress=False)
    assert summary.chunks_run == summary.chunks_total and summary.chunks_already_committed == 0
    assert_complete(out, expected)
    assert {read_marker(path).params["decoder"] for path in (out / "_chunks").glob("*.status.parquet")} == {"pyav"}


def test_without_the_new_options_params_chunk_keys_and_schema_are_those_of_earlier_versions(corpus, tmp_path):
    """Frames decoded before --interpolation, --train-views and --seed existed stay up to date."""
    manifest, _ = corpus
    out = tmp_path / "frames"
    decode_videos(manifest, out, options(), progress=False)
    before = {"num_frames": 4, "size": 64, "short_side": 73, "sampling": "uniform", "decoder": "pyav"}
    before |= {"split": "test", "shard_size": 4}
    entries = select_split(read_manifest(manifest), "test", manifest)
    for index, start in enumerate(range(0, len(entries), 4)):
        # The key as earlier versions computed it: the parameters and each video's path, size and mtime.
        inputs = [[entry.video_id, str(entry.path), *file_identity(entry.path)] for entry in entries[start : start + 4]]
        marker = read_marker(marker_path(out, index))
        assert (marker.key, marker.params) == (sha256_json([before, inputs]), before)
    assert json.loads((out / "stage.json").read_text())["params"] == before
    for part in out.glob("part-*.parquet"):
        assert pq.read_schema(part).equals(FRAMES_SCHEMA)
    # The new options at their defaults, spelled out, find nothing to do.
    spelled_out = options(spec=replace(SPEC, interpolation="bilinear"), train_views=0, seed=5)
    assert decode_videos(manifest, out, spelled_out, progress=False).chunks_run == 0


def file_identity(path: Path) -> list[int]:
    try:
        return [path.stat().st_size, path.stat().st_mtime_ns]
    except FileNotFoundError:
        return [-1, -1]


def test_a_hanging_video_is_killed_at_the_timeout_and_costs_only_itself(tmp_path):
    for name in ["a.mp4", "hang.mp4", "b.mp4", "c.mp4"]:
        make_video(tmp_path / name, num_frames=12)
    manifest = tmp_path / "manifest.jsonl"
    ids = ["hang", "a", "b", "c"]  # the hanging video first: the others finish before it and must wait
    write_manifest(manifest, manifest_records({vid: f"{vid}.mp4" for vid in ids}))
    start = time.monotonic()
    summary = decode_videos(
        manifest, tmp_path / "frames", options(timeout=2.0), reader=read_video_or_hang, progress=False
    )
    assert time.monotonic() - start < 30
    assert summary.counts == {"ok": 3, "timeout": 1}
    assert_complete(tmp_path / "frames", {"hang": "timeout", "a": "ok", "b": "ok", "c": "ok"})
    row = pq.read_table(tmp_path / "frames" / "status.parquet").to_pylist()[0]
    assert "no result within 2 s" in row["error"] and row["seconds"] >= 2.0


def test_a_crashing_decoder_costs_only_its_video(tmp_path):
    for name in ["a.mp4", "crash.mp4", "b.mp4"]:
        make_video(tmp_path / name, num_frames=12)
    manifest = tmp_path / "manifest.jsonl"
    write_manifest(manifest, manifest_records({vid: f"{vid}.mp4" for vid in ["a", "crash", "b"]}))
    summary = decode_videos(
        manifest, tmp_path / "frames", options(workers=1), reader=read_video_or_crash, progress=False
    )
    assert summary.counts == {"ok": 2, "crashed": 1}
    assert_complete(tmp_path / "frames", {"a": "ok", "crash": "crashed", "b": "ok"})
    assert "SIGSEGV" in pq.read_table(tmp_path / "frames" / "status.parquet").to_pylist()[1]["error"]


def test_kill_9_then_rerun_completes_without_duplicates(corpus, tmp_path):
    manifest, expected = corpus
    out = tmp_path / "frames"
    child_options = "DecodeOptions(spec=FrameSpec(num_frames=4, size=64), split='test', shard_size=2, workers=1)"
    process = start_decode(manifest, out, child_options, "read_video_slowly")
    deadline = time.monotonic() + 60
    while len(list((out / "_chunks").glob("*.parquet"))) < 2:  # let it commit some chunks, then kill it
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    process.kill()
    assert process.wait() == -9
    assert "finished" not in json.loads((out / "stage.json").read_text()) and not (out / "status.parquet").exists()

    summary = decode_videos(manifest, out, options(shard_size=2), progress=False)
    assert summary.chunks_already_committed >= 2
    assert summary.chunks_run + summary.chunks_already_committed == chunk_count(expected, 2)
    assert_complete(out, expected)
    assert not [path for path in out.rglob(".*") if path.is_file() and path.suffix != ".lock"], "temporaries left"


def test_shards_merge_into_the_single_run_result(corpus, tmp_path):
    manifest, expected = corpus
    decode_videos(manifest, tmp_path / "single", options(), progress=False)

    # Two machines sharing one directory: the first leaves it incomplete, the second completes it.
    shared = tmp_path / "shared"
    first = decode_videos(manifest, shared, options(num_shards=2, shard_index=0), progress=False)
    assert not first.complete and "finished" not in json.loads((shared / "stage.json").read_text())
    total = chunk_count(expected, 4)
    assert f"{(total + 1) // 2} of {total} chunks of the split are committed" in first.line()  # shard 0: even chunks
    second = decode_videos(manifest, shared, options(num_shards=2, shard_index=1), progress=False)
    assert second.complete
    assert_complete(shared, expected)
    assert part_bytes(shared) == part_bytes(tmp_path / "single")

    # Two machines with their own directories, copied together afterwards: no name clashes,
    # and any rerun over the union writes the merged status without decoding again.
    for index in (0, 1):
        decode_videos(manifest, tmp_path / f"machine{index}", options(num_shards=2, shard_index=index), progress=False)
    names = [
        {str(p.relative_to(tmp_path / f"machine{i}")) for p in (tmp_path / f"machine{i}").rglob("*.parquet")}
        for i in (0, 1)
    ]
    assert not names[0] & names[1]
    merged = tmp_path / "merged"
    for index in (0, 1):
        shutil.copytree(tmp_path / f"machine{index}", merged, dirs_exist_ok=True)
    summary = decode_videos(manifest, merged, options(), progress=False)
    assert summary.chunks_run == 0 and summary.complete
    assert_complete(merged, expected)
    assert part_bytes(merged) == part_bytes(tmp_path / "single")


def test_shards_running_at_the_same_time_leave_a_complete_directory(tmp_path):
    """Shard 1 plans its work, shard 0 then runs to the end; shard 1, finishing
    last, must see shard 0's chunks and write the merged status."""
    ids = [f"v{number}" for number in range(8)]
    for video_id in ids:
        make_video(tmp_path / f"{video_id}.mp4", num_frames=8)
    manifest = tmp_path / "manifest.jsonl"
    write_manifest(manifest, manifest_records({vid: f"{vid}.mp4" for vid in ids}))
    out = tmp_path / "frames"
    results = {}
    held = threading.Thread(
        target=lambda: results.update(
            late=decode_videos(
                manifest, out, options(shard_size=2, num_shards=2, shard_index=1), read_video_when_released, False
            )
        )
    )
    held.start()
    deadline = time.monotonic() + 60
    while not (tmp_path / "waiting").exists():
        assert time.monotonic() < deadline and held.is_alive()
        time.sleep(0.01)
    early = decode_videos(manifest, out, options(shard_size=2, num_shards=2, shard_index=0), progress=False)
    assert not early.complete
    (tmp_path / "release").touch()
    held.join(timeout=60)
    assert results["late"].complete
    assert_complete(out, dict.fromkeys(ids, "ok"))


def test_bad_options_are_errors(corpus, tmp_path):
    manifest, _ = corpus
    with pytest.raises(VidretError, match="--shard-index must be in"):
        options(num_shards=2, shard_index=2)
    with pytest.raises(VidretError, match="--shard-size must be at least 1"):
        options(shard_size=0)
    with pytest.raises(VidretError, match="--workers must be at least 1"):
        options(workers=0)
    with pytest.raises(VidretError, match="--timeout must be positive"):
        options(timeout=0)
    with pytest.raises(VidretError, match="short side 100 is smaller than the crop size 224"):
        FrameSpec(short_side=100)
    with pytest.raises(VidretError, match="--train-views needs --sampling uniform .*got 'linspace'"):
        options(spec=replace(SPEC, sampling="linspace"), train_views=2)
    with pytest.raises(VidretError, match="--train-views must be at least 0, got -1"):
        options(train_views=-1)
    with pytest.raises(VidretError, match="--seed must be at least 0, got -3"):
        options(train_views=2, seed=-3)
    with pytest.raises(VidretError, match="--interpolation bicubic needs --decoder pyav"):
        FrameSpec(interpolation="bicubic", decoder="decord")
    with pytest.raises(VidretError, match="unknown interpolation 'nearest'"):
        FrameSpec(interpolation="nearest")
    with pytest.raises(VidretError, match="no such manifest file"):
        decode_videos(tmp_path / "none.jsonl", tmp_path / "frames", options(), progress=False)
    with pytest.raises(VidretError, match="no videos in split 'val'"):
        decode_videos(manifest, tmp_path / "frames", options(split="val"), progress=False)


# -- train views and CLIP4Clip's padding ------------------------------------------------------


@pytest.fixture(scope="module")
def split_corpus(tmp_path_factory) -> tuple[Path, dict[str, Path], dict[str, str]]:
    """Train, val and test videos in mixed order, one train video of 3 frames and one missing:
    the manifest, each decodable video's path, and every video's split."""
    folder = tmp_path_factory.mktemp("splits")
    lengths = {"t0": 20, "s0": 30, "t1": 33, "v0": 25, "t2": 48, "s1": 40, "t3": 3}
    paths = {vid: make_video(folder / f"{vid}.mp4", width=96, height=72, num_frames=n) for vid, n in lengths.items()}
    splits = {vid: {"t": "train", "v": "val", "s": "test"}[vid[0]] for vid in [*lengths, "t-lost"]}
    records = [record for vid, split in splits.items() for record in manifest_records({vid: f"{vid}.mp4"}, split)]
    manifest = folder / "manifest.jsonl"
    write_manifest(manifest, records)
    return manifest, paths, splits


def views_options(**overrides) -> DecodeOptions:
    return options(**{"split": "all", "shard_size": 3, "train_views": 3, "seed": 7, **overrides})


def frames_of(row: dict) -> np.ndarray:
    return np.frombuffer(row["frames"], np.uint8).reshape(row["num_frames"], row["height"], row["width"], 3)


def test_train_views_store_k_draws_of_each_train_video_and_one_row_of_the_others(split_corpus, tmp_path):
    manifest, paths, splits = split_corpus
    out = tmp_path / "frames"
    summary = decode_videos(manifest, out, views_options(), progress=False)
    assert summary.counts == {"ok": 7, "missing": 1}
    table = read_parts(out)
    assert table.schema.equals(FRAMES_VIEWS_SCHEMA)
    # Manifest order, a video's views consecutive, one row group per row.
    views = {vid: 3 if split == "train" else 1 for vid, split in splits.items() if vid in paths}
    expected_rows = [(vid, view) for vid, count in views.items() for view in range(count)]
    assert list(zip(table["video_id"].to_pylist(), table["view"].to_pylist(), strict=True)) == expected_rows
    for part in out.glob("part-*.parquet"):
        metadata = pq.ParquetFile(part).metadata
        assert metadata.num_row_groups == metadata.num_rows
    # Train views are the seeded train-mode draws, the others test mode; the frames are those of a
    # full PyAV decode at those indices.
    for row in table.to_pylist():
        video_id, view = row["video_id"], row["view"]
        rng = np.random.default_rng(train_view_seed(7, video_id, view)) if splits[video_id] == "train" else None
        assert row["frame_indices"] == sample_frame_indices(row["source_num_frames"], 4, rng=rng)
        reference = reference_frames(decode_with_pyav(paths[video_id]), row["frame_indices"], SPEC)
        np.testing.assert_array_equal(frames_of(row), reference)
    for video_id in ("t0", "t1", "t2"):
        draws = [tuple(row["frame_indices"]) for row in table.to_pylist() if row["video_id"] == video_id]
        test_mode = tuple(sample_frame_indices(len(decode_with_pyav(paths[video_id])), 4))
        assert len(set(draws)) == 3 and test_mode not in draws, (video_id, draws)
    stage = json.loads((out / "stage.json").read_text())
    assert stage["params"]["train_views"] == 3 and stage["params"]["seed"] == 7


def test_users_and_the_frame_store_read_the_views(split_corpus, tmp_path):
    import duckdb
    import pandas as pd

    manifest, _, _ = split_corpus
    out = tmp_path / "frames"
    decode_videos(manifest, out, views_options(), progress=False)
    parts = str(out / "part-*.parquet")
    counts = dict(duckdb.sql(f"SELECT video_id, count(*) FROM '{parts}' GROUP BY video_id").fetchall())
    assert counts == {"t0": 3, "t1": 3, "t2": 3, "t3": 3, "v0": 1, "s0": 1, "s1": 1}
    frame = pd.read_parquet(out / "part-00000.parquet")
    assert list(frame.columns) == FRAMES_VIEWS_SCHEMA.names
    assert list(frame["video_id"]) == ["t0"] * 3 + ["s0"] + ["t1"] * 3 and list(frame["view"]) == [0, 1, 2, 0, 0, 1, 2]

    store = FrameStore(out)
    for row in read_parts(out).to_pylist():
        np.testing.assert_array_equal(store.read(row["video_id"], row["view"]), frames_of(row))
    assert store.num_views("t1") == 3 and store.num_views("s0") == 1
    assert store.shared_num_views(["t0", "t1", "t2", "t3"]) == 3
    with pytest.raises(VidretError, match=r"different numbers of views \(4 × 3 views, 1 × 1 views\).*--train-views"):
        store.shared_num_views(["t0", "t1", "t2", "t3", "s0"])
    assert {location.real_frames for views in store.locations.values() for location in views.values()} == {4}

    shutil.copy(out / "part-00000.parquet", out / "part-00099.parquet")  # the same rows twice
    forget_file_record(out)  # as another tool's frames: the part files are what is there
    with pytest.raises(VidretError, match=r"part-00099.parquet: video 't0' view 0 is also in part-00000.parquet"):
        FrameStore(out)


def test_the_frame_store_refuses_views_with_gaps_and_padding_before_frames(split_corpus, tmp_path):
    """Part files written by other tools: several rows per row group are fine, these are not."""
    manifest, _, _ = split_corpus
    out = tmp_path / "frames"
    decode_videos(manifest, out, views_options(), progress=False)
    part = out / "part-00000.parquet"
    table = pq.read_table(part)
    views = table["view"].to_pylist()
    pq.write_table(table.set_column(1, "view", pa.array([*views[:2], 5, *views[3:]], pa.int32())), part)
    forget_file_record(out)
    with pytest.raises(VidretError, match=r"video 't0' has views \[0, 1, 5\]; expected 0 to 2"):
        FrameStore(out)
    indices = table["frame_indices"].to_pylist()
    column = table.schema.get_field_index("frame_indices")
    padded = pa.array([[PADDING, 1, 2, 3], *indices[1:]], pa.list_(pa.int32()))
    pq.write_table(table.set_column(column, "frame_indices", padded), part)
    with pytest.raises(VidretError, match=r"part-00000.parquet: video 't0' has padding \(-1\) before sampled frames"):
        FrameStore(out)


def test_train_views_do_not_depend_on_sharding_manifest_order_or_reruns(split_corpus, tmp_path):
    manifest, _, _ = split_corpus
    decode_videos(manifest, tmp_path / "a", views_options(), progress=False)
    decode_videos(manifest, tmp_path / "b", views_options(workers=1), progress=False)
    assert part_bytes(tmp_path / "a") == part_bytes(tmp_path / "b")
    for index in (0, 1):
        decode_videos(manifest, tmp_path / "sharded", views_options(num_shards=2, shard_index=index), progress=False)
    assert part_bytes(tmp_path / "sharded") == part_bytes(tmp_path / "a")
    assert decode_videos(manifest, tmp_path / "a", views_options(), progress=False).chunks_run == 0

    reversed_manifest = tmp_path / "reversed.jsonl"
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    write_manifest(reversed_manifest, [{**r, "path": str(manifest.parent / r["path"])} for r in reversed(records)])
    decode_videos(reversed_manifest, tmp_path / "c", views_options(), progress=False)

    def rows(out: Path) -> dict:
        return {(r["video_id"], r["view"]): (r["frame_indices"], r["frames"]) for r in read_parts(out).to_pylist()}

    assert rows(tmp_path / "c") == rows(tmp_path / "a")
    decode_videos(manifest, tmp_path / "d", views_options(seed=8), progress=False)
    other_seed, first = rows(tmp_path / "d"), rows(tmp_path / "a")
    changed = {video_id for video_id, view in first if other_seed[video_id, view] != first[video_id, view]}
    assert {"t0", "t1", "t2"} <= changed <= {"t0", "t1", "t2", "t3"}  # train views only


def test_a_video_moved_into_the_train_split_is_decoded_again(split_corpus, tmp_path):
    manifest, _, _ = split_corpus
    out = tmp_path / "frames"
    decode_videos(manifest, out, views_options(), progress=False)
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    moved = tmp_path / "moved.jsonl"
    write_manifest(
        moved,
        [{**r, "path": str(manifest.parent / r["path"]), "split": "train" if r["video_id"] == "s0" else r["split"]}
         for r in records],
    )  # fmt: skip
    summary = decode_videos(moved, out, views_options(), progress=False)
    assert summary.chunks_run == 1  # s0's chunk: its rows are now three draws
    assert FrameStore(out).num_views("s0") == 3


def test_clip4clip_padding_is_stored_as_minus_one_and_zero_frames(split_corpus, tmp_path):
    """30 fps clips of 20 to 48 frames hold one or two one-per-second frames: the rest of the 4
    are padding, at the end, which FrameStore counts out."""
    manifest, paths, _ = split_corpus
    out = tmp_path / "frames"
    decode_videos(manifest, out, options(spec=replace(SPEC, sampling="clip4clip"), split="all"), progress=False)
    table = read_parts(out)
    assert table.schema.equals(FRAMES_SCHEMA)
    store = FrameStore(out)
    for row in table.to_pylist():
        real = [0, 30][: len(range(0, row["source_num_frames"], 30))]
        assert row["frame_indices"] == real + [PADDING] * (4 - len(real))
        frames = frames_of(row)
        assert not frames[len(real) :].any() and frames[: len(real)].any(axis=(1, 2, 3)).all()
        reference = reference_frames(decode_with_pyav(paths[row["video_id"]]), row["frame_indices"], SPEC)
        np.testing.assert_array_equal(frames, reference)
        assert store.locations[row["video_id"]][0].real_frames == len(real)
