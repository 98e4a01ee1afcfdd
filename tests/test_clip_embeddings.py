"""Clips: a video embedded as several moments scores a caption by its best clip, through frames, embed, index,
metrics and search; files written before clips existed still read as whole videos."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.encode.embed import EmbedOptions, embed
from pipeline.encode.reader import FrameStore
from pipeline.encode.train import TrainOptions, make_recipe, train
from pipeline.errors import VidretError
from pipeline.index import IndexOptions, index_embeddings, read_embeddings
from pipeline.manifest import write_manifest
from pipeline.metrics import ground_truth_ranks, retrieval_ranks
from pipeline.schemas import CLIP_COLUMNS, FRAMES_SCHEMA, STATUS_SCHEMA
from pipeline.search import search_videos
from pipeline.stage import Stage, commit

from helpers import softmax_columns, unit_rows

MODEL = "vidret-micro"  # 4 frames of 32x32
REPO = Path(__file__).resolve().parents[1]


# -- the definition, literally ------------------------------------------------------------------------------------


def brute_force_clip_ranks(texts, clips, counts, index, scale=None):
    """Full matrices in float64: a video's score is the max over its clips (then DSL on those, each
    direction's prior over its queries); t2v over all videos, v2t for the captioned videos only."""
    owner = np.repeat(np.arange(len(counts)), counts)
    clip_sim = texts.astype(np.float64) @ clips.astype(np.float64).T
    sim = np.stack([clip_sim[:, owner == video].max(axis=1) for video in range(len(counts))], axis=1)
    queries = np.unique(index)
    t2v_scores, v2t_scores = sim, sim.T[queries]
    if scale is not None:
        t2v_scores = sim * softmax_columns(scale * sim)
        v2t_scores = v2t_scores * softmax_columns(scale * v2t_scores)
    t2v = np.array([np.sum(t2v_scores[t] >= t2v_scores[t, index[t]]) for t in range(len(index))])
    v2t = np.array(
        [1 + np.sum(v2t_scores[q, index != v] >= v2t_scores[q, index == v].max()) for q, v in enumerate(queries)]
    )
    first = np.concatenate(([0], np.cumsum(counts)))
    t2v_clips = np.array([np.argmax(clip_sim[t, first[index[t]] : first[index[t] + 1]]) for t in range(len(index))])
    v2t_clips = []
    for video in queries:
        own = clip_sim[index == video][:, first[video] : first[video + 1]]
        v2t_clips.append(np.argmax(own[np.argmax(own.max(axis=1))]))
    return t2v, v2t, queries, t2v_clips, np.array(v2t_clips)


def clip_data(seed: int, num_videos: int = 25, dim: int = 8, uncaptioned: bool = True):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 5, num_videos)
    clips = unit_rows(rng, int(counts.sum()), dim)
    per_video = rng.integers(0 if uncaptioned else 1, 3, num_videos)
    index = rng.permutation(np.repeat(np.arange(num_videos), per_video))
    texts = unit_rows(rng, len(index), dim)
    return texts, clips, counts, index


@pytest.mark.parametrize("scale", [None, 30.0])
@pytest.mark.parametrize("block_size", [1, 3, 7, 10_000])
def test_clip_ranks_are_the_max_over_clips_computed_literally(block_size, scale):
    texts, clips, counts, index = clip_data(0)
    assert (counts > 1).any() and len(np.unique(index)) < len(counts)  # clips, and uncaptioned videos
    blocks = []
    ranks = ground_truth_ranks(texts, clips, index, block_size, scale, blocks.append, clips_per_video=counts)
    t2v, v2t, queries, t2v_clips, v2t_clips = brute_force_clip_ranks(texts, clips, counts, index, scale)
    np.testing.assert_array_equal(ranks.t2v, t2v)
    np.testing.assert_array_equal(ranks.v2t, v2t)
    np.testing.assert_array_equal(ranks.v2t_videos, queries)
    np.testing.assert_array_equal(ranks.t2v_clips, t2v_clips)
    np.testing.assert_array_equal(ranks.v2t_clips, v2t_clips)
    # The texts (twice with DSL), then the captioned videos; a v2t block holds at most block_size clips.
    assert sum(blocks) == len(index) * (2 if scale else 1) + len(queries)


def test_one_clip_per_video_is_the_whole_video_computation():
    texts, videos, _, index = clip_data(1, uncaptioned=False)
    videos = videos[: index.max() + 1]
    whole = ground_truth_ranks(texts, videos, index, block_size=5)
    ones = ground_truth_ranks(texts, videos, index, block_size=5, clips_per_video=np.ones(len(videos), int))
    for field in ("t2v", "v2t", "v2t_videos", "t2v_clips", "v2t_clips"):
        np.testing.assert_array_equal(getattr(whole, field), getattr(ones, field))
    assert (whole.t2v_clips == 0).all() and (whole.v2t_clips == 0).all()


def test_a_video_scores_by_its_best_clip_not_its_mean():
    """Video 0 has one clip on the caption's axis and one opposite: by its mean it would lose to video 1."""
    clips = np.array([[-1.0, 0.0], [1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    t2v, v2t = retrieval_ranks(np.array([[1.0, 0.0]], np.float32), clips, [0], clips_per_video=[2, 1])
    assert t2v.tolist() == [1] and v2t.tolist() == [1]
    ranks = ground_truth_ranks(np.array([[1.0, 0.0]], np.float32), clips, [0], clips_per_video=[2, 1])
    assert ranks.t2v_clips.tolist() == [1] and ranks.v2t_clips.tolist() == [1]


def test_bad_clip_counts():
    videos = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="sum to the 3 video embedding rows"):
        ground_truth_ranks(videos, videos, [0, 1, 1], clips_per_video=[1, 1])
    with pytest.raises(ValueError, match="at least one clip"):
        ground_truth_ranks(videos, videos, [0, 1, 1], clips_per_video=[3, 0])


# -- the index stage on clip embeddings ---------------------------------------------------------------------------


def write_clip_embeddings(directory: Path, texts, clips, counts, index, clip_columns: bool = True) -> list[str]:
    """videos.parquet (one row per clip, clips of 2 s) and texts.parquet, with plain pyarrow; the video ids."""
    directory.mkdir(parents=True, exist_ok=True)
    video_ids = [f"video-{k:02d}" for k in range(len(counts))]
    clip_index = np.concatenate([np.arange(count) for count in counts]).astype(np.int32)
    videos = {"video_id": np.repeat(video_ids, counts).tolist(), "embedding": clips.tolist()}
    if clip_columns:
        videos |= {"clip_index": clip_index, "start_s": 2.0 * clip_index, "end_s": 2.0 * clip_index + 2.0}
    pq.write_table(pa.table(videos), directory / "videos.parquet")
    text_video_ids = [video_ids[video] for video in index]
    captions = [f"caption {t} of {video_id}" for t, video_id in enumerate(text_video_ids)]
    pq.write_table(
        pa.table({"video_id": text_video_ids, "caption": captions, "embedding": texts.tolist()}),
        directory / "texts.parquet",
    )
    return video_ids


def test_index_of_clips_ranks_videos_by_their_best_clip(tmp_path):
    texts, clips, counts, index = clip_data(2)
    video_ids = write_clip_embeddings(tmp_path / "embeddings", texts, clips, counts, index)
    summary = index_embeddings(tmp_path / "embeddings", tmp_path / "index", IndexOptions(progress=False, block_size=4))
    t2v, v2t, queries, t2v_clips, v2t_clips = brute_force_clip_ranks(texts, clips, counts, index)

    metrics = json.loads((tmp_path / "index" / "metrics.json").read_text())
    uncaptioned = len(counts) - len(queries)
    assert (metrics["num_videos"], metrics["num_clips"], metrics["num_texts"]) == (25, counts.sum(), len(index))
    assert metrics["uncaptioned_videos"] == uncaptioned > 0
    counted = f"25 videos ({counts.sum()} clips), {len(index)} captions, {uncaptioned} videos uncaptioned"
    assert counted in summary.line()

    ranks = pd.read_parquet(tmp_path / "index" / "ranks.parquet")
    ranks_t2v, ranks_v2t = ranks[ranks.direction == "t2v"], ranks[ranks.direction == "v2t"]
    assert ranks_t2v["rank"].tolist() == t2v.tolist() and ranks_v2t["rank"].tolist() == v2t.tolist()
    assert ranks_t2v["clip_index"].tolist() == t2v_clips.tolist()
    assert ranks_v2t["clip_index"].tolist() == v2t_clips.tolist()
    assert ranks_t2v["start_s"].tolist() == (2.0 * t2v_clips).tolist()
    assert ranks_t2v["end_s"].tolist() == (2.0 * t2v_clips + 2).tolist()
    assert ranks_v2t["video_id"].tolist() == [video_ids[video] for video in queries]
    # A v2t query is its video's first row in videos.parquet: + clip_index, the row of its best clip.
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    assert ranks_v2t["query"].tolist() == first[queries].tolist()

    id_map = pd.read_parquet(tmp_path / "index" / "video_ids.parquet")
    videos = pd.read_parquet(tmp_path / "embeddings" / "videos.parquet")
    assert len(id_map) == counts.sum() and id_map["faiss_id"].tolist() == list(range(counts.sum()))
    for name in ("video_id", *CLIP_COLUMNS):
        assert id_map[name].tolist() == videos[name].tolist()

    again = index_embeddings(tmp_path / "embeddings", tmp_path / "index", IndexOptions(progress=False))
    assert again.skip_reason and again.metrics == metrics


def test_dsl_on_clips_ranks_the_video_level_max(tmp_path):
    texts, clips, counts, index = clip_data(3)
    write_clip_embeddings(tmp_path / "embeddings", texts, clips, counts, index)
    index_embeddings(tmp_path / "embeddings", tmp_path / "index", IndexOptions(progress=False, dsl=True, dsl_scale=30))
    t2v, v2t, *_ = brute_force_clip_ranks(texts, clips, counts, index, scale=30.0)
    ranks = pd.read_parquet(tmp_path / "index" / "ranks.parquet")
    assert ranks[ranks.direction == "t2v"]["rank_dsl"].tolist() == t2v.tolist()
    assert ranks[ranks.direction == "v2t"]["rank_dsl"].tolist() == v2t.tolist()


def test_the_dump_of_clips_lists_rows_and_v2t_top_k_by_best_clip(tmp_path):
    import pickle

    texts, clips, counts, index = clip_data(4)
    write_clip_embeddings(tmp_path / "embeddings", texts, clips, counts, index)
    dump = tmp_path / "dump.pkl"
    index_embeddings(tmp_path / "embeddings", tmp_path / "index", IndexOptions(progress=False, dump=dump, top_k=3))
    written = pickle.loads(dump.read_bytes())
    assert len(written["video_ids"]) == len(written["clip_index"]) == counts.sum()
    owner = np.repeat(np.arange(len(counts)), counts)
    sim = texts @ clips.T
    video_sim = np.stack([sim[:, owner == video].max(axis=1) for video in range(len(counts))], axis=1)
    queries = np.unique(index)
    expected = np.argsort(-video_sim.T[queries], axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(written["v2t"]["topk"], expected)
    expected_scores = np.take_along_axis(video_sim.T[queries], expected, 1)
    np.testing.assert_allclose(written["v2t"]["topk_scores"], expected_scores, atol=1e-6)


def test_embeddings_without_clip_columns_read_as_whole_videos(tmp_path):
    texts, videos, _, index = clip_data(5, uncaptioned=False)
    counts = np.ones(index.max() + 1, int)
    write_clip_embeddings(tmp_path, texts, videos[: len(counts)], counts, index, clip_columns=False)
    embeddings = read_embeddings(tmp_path)
    assert (embeddings.clips_per_video == 1).all() and (embeddings.clip_index == 0).all()
    assert (embeddings.start_s == 0).all() and np.isnan(embeddings.end_s).all()


@pytest.mark.parametrize(
    "case, problem",
    [
        ("split clips", r"1 duplicated video_id\(s\): video-00; a video has one row, or its clips in consecutive"),
        ("a gap", r"row 1 \(video-00\) is clip 2, expected 1"),
        ("no end_s", r"has clip_index, start_s but not end_s; give all clip columns or none"),
        ("string start", r"column start_s must be floats \(seconds\), got string"),
        ("null clip_index", r"column clip_index has 1 null value\(s\)"),
    ],
)
def test_bad_clip_columns_are_one_line_naming_the_file(tmp_path, case, problem):
    rows = {
        "video_id": ["video-00", "video-00", "video-01", "video-00"],
        "embedding": np.eye(4).tolist(),
        "clip_index": pa.array([0, 1, 0, 1], pa.int32()),
        "start_s": [0.0, 2.0, 0.0, 4.0],
        "end_s": [2.0, 4.0, 2.0, 6.0],
    }
    if case == "split clips":  # video-00's clip 1 after video-01's clips
        rows["video_id"] = ["video-00", "video-01", "video-01", "video-00"]
        rows["clip_index"] = pa.array([0, 0, 1, 1], pa.int32())
    elif case == "a gap":
        rows["clip_index"] = pa.array([0, 2, 0, 1], pa.int32())
    elif case == "no end_s":
        del rows["end_s"]
    elif case == "string start":
        rows["start_s"] = ["0", "2", "0", "4"]
    else:
        rows["clip_index"] = pa.array([0, None, 0, 1], pa.int32())
    pq.write_table(pa.table(rows), tmp_path / "videos.parquet")
    texts = pa.table({"video_id": ["video-00"], "caption": ["a"], "embedding": [[1.0, 0, 0, 0]]})
    pq.write_table(texts, tmp_path / "texts.parquet")
    with pytest.raises(VidretError, match=problem) as error:
        read_embeddings(tmp_path)
    assert str(error.value).startswith(f"{tmp_path / 'videos.parquet'}: ") and "\n" not in str(error.value)


# -- frames of clips, written as decode writes them ---------------------------------------------------------------


def write_frames(
    directory: Path, spans: dict[str, list[tuple[float, float]]], seed: int = 0, clip_columns=True, pixels=None
):
    """A frames directory of 4x32x32 frames (random, or ``pixels[video_id, clip]``), written with pyarrow as
    decode writes one: one row (and row group) per clip, a video's clips in consecutive rows;
    ``clip_columns=False`` writes an earlier vidret's part file (whole videos, 12 frames at 6 fps). Returns each
    row's frames."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    schema = FRAMES_SCHEMA if clip_columns else pa.schema([f for f in FRAMES_SCHEMA if f.name not in CLIP_COLUMNS])
    frames = {}
    with pq.ParquetWriter(directory / "part-00000.parquet", schema) as writer:
        for video_id, clips in spans.items():
            for clip, (start, end) in enumerate(clips):
                random = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
                frames[video_id, clip] = random if pixels is None else pixels[video_id, clip]
                row = {
                    "video_id": video_id, "frames": frames[video_id, clip].tobytes(), "num_frames": 4, "height": 32,
                    "width": 32, "frame_indices": [0, 3, 6, 9], "source_num_frames": 12, "fps": 6.0,
                    "clip_index": clip, "start_s": start, "end_s": end,
                }  # fmt: skip
                writer.write_table(pa.Table.from_pylist([{name: row[name] for name in schema.names}], schema=schema))
    status = [{"video_id": video_id, "status": "ok", "error": "", "seconds": 0.1} for video_id in spans]
    pq.write_table(pa.Table.from_pylist(status, schema=STATUS_SCHEMA), directory / "status.parquet")
    commit(Stage("decode", directory, f"test-{seed}", {}), {"input": {}}, ["part-00000.parquet", "status.parquet"])
    return frames


def write_plain_manifest(path: Path, captions: dict[str, list[str]], split: str = "test") -> Path:
    records = [
        {"video_id": video_id, "path": f"{video_id}.mp4", "split": split, "captions": texts}
        for video_id, texts in captions.items()
    ]
    write_manifest(path, records)
    return path


SPANS = {"a": [(0.0, 2.0), (2.0, 4.0), (4.0, 5.5)], "b": [(0.0, 3.0)], "c": [(0.0, 2.0), (2.0, 2.5)]}


def test_frame_store_lists_every_clip_in_order(tmp_path):
    write_frames(tmp_path / "frames", SPANS)
    store = FrameStore(tmp_path / "frames")
    assert store.clip_units(["c", "a", "b"]) == [("c", 0), ("c", 1), ("a", 0), ("a", 1), ("a", 2), ("b", 0)]
    assert [(clip.start_s, clip.end_s) for clip in store.clips("a")] == SPANS["a"]
    assert store.has_clips("a") and not store.has_clips("b")


def test_frame_store_reads_part_files_of_an_earlier_vidret_as_whole_videos(tmp_path):
    write_frames(tmp_path / "frames", {"a": [(0.0, 2.0)], "b": [(0.0, 2.0)]}, clip_columns=False)
    store = FrameStore(tmp_path / "frames")
    assert store.clip_units(["a", "b"]) == [("a", 0), ("b", 0)]
    clip = store.clips("a")[0]
    assert (clip.clip_index, clip.start_s, clip.end_s) == (0, 0.0, 2.0)  # 12 frames at 6 fps
    manifest = write_plain_manifest(tmp_path / "m.jsonl", {"a": ["one"], "b": ["two"]})
    embed(EmbedOptions(tmp_path / "frames", manifest, tmp_path / "embeddings", model=MODEL, pretrained="none",
                       device="cpu", progress=False))  # fmt: skip
    videos = pd.read_parquet(tmp_path / "embeddings" / "videos.parquet")
    assert videos[["video_id", *CLIP_COLUMNS]].values.tolist() == [["a", 0, 0.0, 2.0], ["b", 0, 0.0, 2.0]]


def test_embed_writes_one_row_per_clip_equal_to_the_clip_embedded_alone(tmp_path):
    frames = write_frames(tmp_path / "frames", SPANS)
    manifest = write_plain_manifest(tmp_path / "m.jsonl", {"a": ["one"], "b": ["two", "three"], "c": []})
    options = dict(model=MODEL, pretrained="none", device="cpu", progress=False, batch_size=2)
    summary = embed(EmbedOptions(tmp_path / "frames", manifest, tmp_path / "embeddings", **options))
    assert (summary.videos, summary.clips, summary.texts, summary.uncaptioned) == (3, 6, 3, 1)
    assert "embed: 3 videos (6 clips), 3 captions (1 videos uncaptioned), 0 videos skipped" in summary.line()
    videos = pd.read_parquet(tmp_path / "embeddings" / "videos.parquet")
    assert list(zip(videos.video_id, videos.clip_index, strict=True)) == [
        ("a", 0), ("a", 1), ("a", 2), ("b", 0), ("c", 0), ("c", 1)
    ]  # fmt: skip
    assert list(zip(videos.start_s, videos.end_s, strict=True)) == [span for clips in SPANS.values() for span in clips]
    stage = json.loads((tmp_path / "embeddings" / "stage.json").read_text())
    assert stage["counts"] | {"skipped": {}} == {"videos": 3, "clips": 6, "texts": 3, "uncaptioned": 1, "skipped": {}}

    # Each clip as a whole video of its own, in other batches: the same embedding.
    alone = {f"{video_id}{clip}": [(0.0, 1.0)] for video_id, clip in frames}
    write_frames(tmp_path / "alone", alone, pixels={(f"{v}{c}", 0): frame for (v, c), frame in frames.items()})
    manifest = write_plain_manifest(tmp_path / "alone.jsonl", {video_id: ["x"] for video_id in alone})
    embed(EmbedOptions(tmp_path / "alone", manifest, tmp_path / "alone-embeddings", **options))
    single = pd.read_parquet(tmp_path / "alone-embeddings" / "videos.parquet")
    np.testing.assert_allclose(np.stack(videos.embedding), np.stack(single.embedding), atol=1e-5)


def test_train_refuses_clip_frames(tmp_path):
    write_frames(tmp_path / "frames", SPANS)
    manifest = write_plain_manifest(tmp_path / "m.jsonl", {"a": ["one"], "b": ["two"], "c": ["three"]}, "train")
    recipe = make_recipe("demo", epochs=1, batch_size=2)
    with pytest.raises(VidretError) as error:
        train(TrainOptions(tmp_path / "frames", manifest, tmp_path / "model", model=MODEL, pretrained="none",
                           recipe=recipe, device="cpu", progress=False))  # fmt: skip
    assert str(error.value) == (
        f"{tmp_path / 'frames'}: train needs whole-video frames: decode without --clip-seconds/--clip-shots"
    )
    assert not (tmp_path / "model" / "best.pt").exists()


def test_search_over_clips_returns_moments_and_prints_json(tmp_path):
    write_frames(tmp_path / "frames", SPANS)
    manifest = write_plain_manifest(tmp_path / "m.jsonl", {"a": ["one"], "b": ["two"], "c": []})
    embed(EmbedOptions(tmp_path / "frames", manifest, tmp_path / "run" / "embeddings", model=MODEL, pretrained="none",
                       device="cpu", progress=False))  # fmt: skip
    index_embeddings(tmp_path / "run" / "embeddings", tmp_path / "run" / "index", IndexOptions(progress=False))
    hits = search_videos(tmp_path / "run", ["a red circle"], k=6, device="cpu")[0]
    assert sorted((hit.video_id, hit.clip_index, hit.start_s, hit.end_s) for hit in hits) == sorted(
        (video_id, clip, *span) for video_id, clips in SPANS.items() for clip, span in enumerate(clips)
    )
    assert [hit.path for hit in hits] == [str(tmp_path / f"{hit.video_id}.mp4") for hit in hits]

    command = [sys.executable, "-m", "cli.main", "search", tmp_path / "run", "a red circle", "--k", "2", "--json"]
    ran = subprocess.run([*map(str, command), "--device", "cpu"], capture_output=True, text=True, cwd=REPO)
    assert ran.returncode == 0, ran.stderr
    lines = [json.loads(line) for line in ran.stdout.splitlines()]
    assert [list(line) for line in lines] == [
        ["query", "rank", "score", "video_id", "clip_index", "start_s", "end_s", "path"]
    ] * 2
    assert [(line["rank"], line["video_id"], line["clip_index"]) for line in lines] == [
        (hit.rank, hit.video_id, hit.clip_index) for hit in hits[:2]
    ]
