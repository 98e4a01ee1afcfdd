"""Uncaptioned videos and caption-free collections through every stage: manifest, decode, train (left out),
embed (rows, no captions), index (t2v distractors, no v2t query; no metrics without captions) and search."""

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

from pipeline.decode import DecodeOptions, FrameSpec, decode_videos
from pipeline.encode.embed import EmbedOptions, embed
from pipeline.encode.train import TrainOptions, make_recipe, train
from pipeline.index import IndexOptions, index_embeddings, metrics_table
from pipeline.manifest import describe_manifest, read_manifest, write_manifest
from pipeline.search import search_videos
from pipeline.synth import SynthOptions, make_synthetic_dataset

from helpers import brute_force_ranks, random_captions, unit_rows

MODEL = "vidret-micro"
REPO = Path(__file__).resolve().parents[1]
UNCAPTIONED = 4  # of every split's first videos: their captions removed, or the field left out


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> dict[str, Path]:
    """20 synthetic videos decoded at vidret-micro's size; manifests with some and with no captions."""
    root = tmp_path_factory.mktemp("caption-free")
    summary = make_synthetic_dataset(
        root / "data", SynthOptions(videos=20, seed=7, width=64, height=48, min_frames=12, max_frames=20),
        progress=False,
    )  # fmt: skip
    records = [json.loads(line) for line in summary.manifest.read_text().splitlines()]
    some = [dict(record) for record in records]
    for number, record in enumerate(some[:UNCAPTIONED]):
        if number % 2:
            record["captions"] = []
        else:
            del record["captions"]
    none = [{key: value for key, value in record.items() if key != "captions"} for record in records]
    write_manifest(root / "data" / "some.jsonl", some)
    write_manifest(root / "data" / "none.jsonl", none)
    decode_videos(
        root / "data" / "some.jsonl", root / "frames", DecodeOptions(spec=FrameSpec(num_frames=4, size=32), workers=1),
        progress=False,
    )  # fmt: skip
    return {"some": root / "data" / "some.jsonl", "none": root / "data" / "none.jsonl", "frames": root / "frames"}


def embed_options(collection, manifest: str, out: Path, **changes) -> EmbedOptions:
    return EmbedOptions(
        collection["frames"], collection[manifest], out,
        **{"model": MODEL, "pretrained": "none", "split": "all", "device": "cpu", "progress": False, **changes},
    )  # fmt: skip


def test_manifest_check_counts_the_uncaptioned_videos(collection):
    some, none = read_manifest(collection["some"]), read_manifest(collection["none"])
    assert [entry.captions for entry in some[:UNCAPTIONED]] == [()] * UNCAPTIONED
    assert all(entry.captions for entry in some[UNCAPTIONED:])
    assert f"({UNCAPTIONED} videos uncaptioned)" in describe_manifest(some)
    assert describe_manifest(none).startswith("20 videos (") and ", 0 captions (20 videos uncaptioned), " in (
        describe_manifest(none)
    )
    # Decode takes them like any other video.
    status = pq.read_table(collection["frames"] / "status.parquet").to_pandas()
    assert len(status) == 20 and (status.status == "ok").all()


def test_train_leaves_uncaptioned_videos_out_and_says_so(collection, tmp_path):
    manifest = read_manifest(collection["some"])
    left_out = {split: sum(e.split == split and not e.captions for e in manifest) for split in ("train", "val")}
    assert left_out["train"] > 0
    captioned_train = [entry for entry in manifest if entry.split == "train" and entry.captions]
    options = TrainOptions(
        collection["frames"], collection["some"], tmp_path / "model", model=MODEL, pretrained="none",
        recipe=make_recipe("demo", epochs=1, batch_size=4), device="cpu", progress=False,
    )  # fmt: skip
    summary = train(options)
    stage = json.loads((tmp_path / "model" / "stage.json").read_text())
    assert stage["input"]["uncaptioned_left_out"] == left_out
    assert stage["input"]["train_videos"] == len(captioned_train)
    assert stage["input"]["train_samples"] == sum(len(entry.captions) for entry in captioned_train)
    assert stage["input"]["val_videos"] == sum(e.split == "val" and bool(e.captions) for e in manifest)
    assert f"; {sum(left_out.values())} uncaptioned videos left out -> " in summary.line()


def test_uncaptioned_videos_are_embedded_indexed_and_t2v_distractors(collection, tmp_path):
    summary = embed(embed_options(collection, "some", tmp_path / "embeddings"))
    manifest = read_manifest(collection["some"])
    assert summary.uncaptioned == UNCAPTIONED and f"({UNCAPTIONED} videos uncaptioned)" in summary.line()
    videos = pd.read_parquet(tmp_path / "embeddings" / "videos.parquet")
    texts = pd.read_parquet(tmp_path / "embeddings" / "texts.parquet")
    assert videos.video_id.tolist() == [entry.video_id for entry in manifest]
    assert texts.video_id.tolist() == [entry.video_id for entry in manifest for _ in entry.captions]
    counts = json.loads((tmp_path / "embeddings" / "stage.json").read_text())["counts"]
    assert (counts["videos"], counts["clips"], counts["uncaptioned"]) == (20, 20, UNCAPTIONED)

    indexed = index_embeddings(tmp_path / "embeddings", tmp_path / "index", IndexOptions(progress=False))
    metrics = json.loads((tmp_path / "index" / "metrics.json").read_text())
    assert (metrics["num_videos"], metrics["num_clips"], metrics["num_texts"]) == (20, 20, len(texts))
    assert metrics["uncaptioned_videos"] == UNCAPTIONED
    assert f"{UNCAPTIONED} videos uncaptioned" in indexed.line() and f"{UNCAPTIONED} videos uncaptioned" in (
        metrics_table(metrics)
    )

    # t2v: every caption ranks all 20 videos; v2t: only the 16 captioned videos query.
    video_matrix, text_matrix = np.stack(videos.embedding), np.stack(texts.embedding)
    row_of = {video_id: row for row, video_id in enumerate(videos.video_id)}
    index = texts.video_id.map(row_of).to_numpy()
    sim = text_matrix @ video_matrix.T
    t2v = np.array([np.sum(sim[t] >= sim[t, index[t]]) for t in range(len(index))])
    captioned = np.unique(index)
    v2t = np.array([1 + np.sum(sim[index != v, v] >= sim[index == v, v].max()) for v in captioned])
    ranks = pd.read_parquet(tmp_path / "index" / "ranks.parquet")
    assert ranks[ranks.direction == "t2v"]["rank"].tolist() == t2v.tolist()
    assert ranks[ranks.direction == "v2t"]["rank"].tolist() == v2t.tolist()
    assert set(ranks[ranks.direction == "v2t"].video_id) == {entry.video_id for entry in manifest if entry.captions}

    # Searchable like any other: a query's hits cover every video, captioned or not.
    hits = search_videos(tmp_path, ["a red circle"], k=20, device="cpu")[0]
    assert {hit.video_id for hit in hits} == set(videos.video_id)


def test_a_caption_free_collection_is_indexed_and_searched_without_metrics(collection, tmp_path):
    run = tmp_path / "run"
    summary = embed(embed_options(collection, "none", run / "embeddings"))
    assert (summary.videos, summary.texts, summary.uncaptioned) == (20, 0, 20)
    texts = pq.read_table(run / "embeddings" / "texts.parquet")
    assert texts.num_rows == 0 and texts.column_names == ["video_id", "caption", "embedding"]

    indexed = index_embeddings(run / "embeddings", run / "index", IndexOptions(progress=False))
    assert indexed.line().startswith("index: caption-free collection: 20 videos, 20 clips indexed; no metrics")
    written = sorted(path.name for path in (run / "index").iterdir() if not path.name.startswith("."))
    assert written == ["stage.json", "video_ids.parquet", "videos.faiss"]
    stage = json.loads((run / "index" / "stage.json").read_text())
    assert stage["counts"]["uncaptioned_videos"] == 20 and "t2v" not in stage["metrics"]
    assert metrics_table(indexed.metrics).startswith("no metrics: a caption-free collection (20 videos)")

    again = index_embeddings(run / "embeddings", run / "index", IndexOptions(progress=False))
    assert again.skip_reason and again.metrics == indexed.metrics

    hits = search_videos(run, ["a blue square"], k=3, device="cpu")[0]
    assert [hit.rank for hit in hits] == [1, 2, 3] and all(hit.path.endswith(".mp4") for hit in hits)

    # The CLI prints the table line, then the summary line.
    command = [sys.executable, "-m", "cli.main", "index", run / "embeddings", "--out", tmp_path / "cli-index"]
    ran = subprocess.run([*map(str, command), "--no-progress"], capture_output=True, text=True, cwd=REPO)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[-1].startswith("index: caption-free collection: 20 videos, 20 clips indexed")


def test_a_caption_free_run_replaces_earlier_metrics(collection, tmp_path):
    """Indexing caption-free embeddings where captioned ones were indexed leaves no stale metrics behind."""
    embed(embed_options(collection, "some", tmp_path / "some", split="test"))
    embed(embed_options(collection, "none", tmp_path / "none", split="test"))
    index_embeddings(tmp_path / "some", tmp_path / "index", IndexOptions(progress=False))
    assert (tmp_path / "index" / "metrics.json").is_file()
    index_embeddings(tmp_path / "none", tmp_path / "index", IndexOptions(progress=False))
    assert not (tmp_path / "index" / "metrics.json").exists() and not (tmp_path / "index" / "ranks.parquet").exists()


def test_distractors_rank_captions_down_exactly_where_they_score_higher(tmp_path):
    """The same captioned videos with and without 10 uncaptioned ones: a caption's t2v rank grows by the
    distractors scoring at least its video; v2t ranks stay as they were."""
    rng = np.random.default_rng(11)
    videos, distractors = unit_rows(rng, 20, 16), unit_rows(rng, 10, 16)
    index = random_captions(rng, 20, 3)
    texts = videos[index] + 1.5 * unit_rows(rng, len(index), 16)
    texts = (texts / np.linalg.norm(texts, axis=1, keepdims=True)).astype(np.float32)

    def write(directory: Path, rows: np.ndarray) -> Path:
        directory.mkdir()
        ids = [f"v{k}" for k in range(len(rows))]
        pq.write_table(pa.table({"video_id": ids, "embedding": rows.tolist()}), directory / "videos.parquet")
        captions = [f"caption {t}" for t in range(len(index))]
        text_ids = [ids[video] for video in index]
        pq.write_table(
            pa.table({"video_id": text_ids, "caption": captions, "embedding": texts.tolist()}),
            directory / "texts.parquet",
        )
        return directory

    index_embeddings(write(tmp_path / "plain", videos), tmp_path / "plain-index", IndexOptions(progress=False))
    gallery = np.vstack([videos, distractors])
    index_embeddings(write(tmp_path / "mixed", gallery), tmp_path / "mixed-index", IndexOptions(progress=False))
    plain = pd.read_parquet(tmp_path / "plain-index" / "ranks.parquet")
    mixed = pd.read_parquet(tmp_path / "mixed-index" / "ranks.parquet")
    sim = texts @ gallery.T
    beaten = (sim[:, 20:] >= sim[np.arange(len(index)), index][:, None]).sum(axis=1)
    assert beaten.sum() > 0  # the distractors matter
    t2v_plain, v2t_plain = brute_force_ranks(texts, videos, index)
    assert plain[plain.direction == "t2v"]["rank"].tolist() == t2v_plain.tolist()
    assert mixed[mixed.direction == "t2v"]["rank"].tolist() == (t2v_plain + beaten).tolist()
    assert mixed[mixed.direction == "v2t"]["rank"].tolist() == v2t_plain.tolist()
    metrics = json.loads((tmp_path / "mixed-index" / "metrics.json").read_text())
    assert (metrics["num_videos"], metrics["uncaptioned_videos"]) == (30, 10)
