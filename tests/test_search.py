"""Free-text search: the run's own text tower, the FAISS index, and clear errors."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from pipeline.encode.embed import EmbedOptions, embed
from pipeline.encode.train import TrainOptions, make_recipe, train
from pipeline.errors import VidretError
from pipeline.index import IndexOptions, index_embeddings
from pipeline.manifest import read_manifest
from pipeline.search import SearchHit, format_hits, hits_json, read_queries, search_videos

MODEL = "vidret-micro"


@pytest.fixture(scope="module")
def zero_shot_run(decoded_synthetic, tmp_path_factory):
    """RUN/embeddings and RUN/index from zero-shot vidret-micro (random weights, seed 0), every split."""
    run = tmp_path_factory.mktemp("run")
    options = EmbedOptions(
        decoded_synthetic["frames"], decoded_synthetic["manifest"], run / "embeddings", model=MODEL, pretrained="none",
        split="all", device="cpu", progress=False,
    )  # fmt: skip
    embed(options)
    index_embeddings(run / "embeddings", run / "index", IndexOptions(progress=False))
    return run


def test_search_equals_brute_force_over_the_run_embeddings(zero_shot_run, decoded_synthetic):
    """A query that is one of the run's captions gets that caption's stored embedding, so the hits are the
    videos nearest to it, with the files the manifest names."""
    videos = pd.read_parquet(zero_shot_run / "embeddings" / "videos.parquet")
    texts = pd.read_parquet(zero_shot_run / "embeddings" / "texts.parquet")
    queries = [texts.caption[3], texts.caption[40]]
    hits = search_videos(zero_shot_run, queries, k=4, device="cpu")

    path_of = {entry.video_id: str(entry.path) for entry in read_manifest(decoded_synthetic["manifest"])}
    for query, query_hits in zip(queries, hits, strict=True):
        scores = np.stack(videos.embedding) @ np.stack(texts.embedding[texts.caption == query]).T[:, 0]
        best = np.argsort(-scores)[:4]
        assert [hit.video_id for hit in query_hits] == videos.video_id[best].tolist()
        np.testing.assert_allclose([hit.score for hit in query_hits], scores[best], atol=1e-5)
        assert [hit.rank for hit in query_hits] == [1, 2, 3, 4]
        assert [hit.path for hit in query_hits] == [path_of[hit.video_id] for hit in query_hits]
    # The index folder itself works as well as the run folder.
    assert search_videos(zero_shot_run / "index", queries[:1], k=4, device="cpu") == hits[:1]


def test_an_index_written_before_the_precision_pooling_and_activation_were_recorded_still_searches(
    zero_shot_run, tmp_path
):
    """An earlier vidret recorded no precision, frame pooling or forced activation for a zero-shot model:
    search rebuilds it with what that version ran (ModelSpec's defaults), so the results are unchanged."""
    run = tmp_path / "old"
    shutil.copytree(zero_shot_run, run)
    stage = json.loads((run / "index" / "stage.json").read_text())
    for key in ("precision", "normalize_frames", "force_quick_gelu"):
        del stage["model"][key]
    (run / "index" / "stage.json").write_text(json.dumps(stage))
    query = ["a small red circle moves left"]
    assert search_videos(run, query, k=3, device="cpu") == search_videos(zero_shot_run, query, k=3, device="cpu")


def test_search_cuts_queries_to_the_runs_caption_length(decoded_synthetic, tmp_path):
    """A run embedded with --caption-length 6: a query that is one of its long captions gets that caption's
    stored (cut) embedding, so its best hit scores exactly the stored similarity."""
    data = decoded_synthetic["frames"], decoded_synthetic["manifest"]
    options = dict(model=MODEL, pretrained="none", caption_length=6, device="cpu", progress=False)
    embed(EmbedOptions(*data, tmp_path / "embeddings", **options))
    index_embeddings(tmp_path / "embeddings", tmp_path / "index", IndexOptions(progress=False))
    videos = pd.read_parquet(tmp_path / "embeddings" / "videos.parquet")
    texts = pd.read_parquet(tmp_path / "embeddings" / "texts.parquet")
    query = max(texts.caption, key=len)
    assert len(query.split()) > 4  # longer than SOT, 4 words and EOT: the cut matters
    scores = np.stack(videos.embedding) @ np.stack(texts.embedding[texts.caption == query])[0]
    (hits,) = search_videos(tmp_path, [query], k=3, device="cpu")
    best = np.argsort(-scores)[:3]
    assert [hit.video_id for hit in hits] == videos.video_id[best].tolist()
    np.testing.assert_allclose([hit.score for hit in hits], scores[best], atol=1e-5)


def test_k_larger_than_the_gallery_returns_every_video(zero_shot_run):
    (hits,) = search_videos(zero_shot_run, ["a large red circle moves left"], k=1000, device="cpu")
    assert len(hits) == 40 and len({hit.video_id for hit in hits}) == 40
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))


def test_query_input_and_output_format(tmp_path):
    (tmp_path / "queries.txt").write_text("a red circle\n\n   a blue square  \n")
    assert read_queries(tmp_path / "queries.txt") == ["a red circle", "a blue square"]
    assert read_queries("-", io.StringIO("one\ntwo\n")) == ["one", "two"]
    with pytest.raises(VidretError, match="nowhere.txt: cannot read queries"):
        read_queries(tmp_path / "nowhere.txt")
    hits = [
        SearchHit(1, 0.5, "synth00001", 1, 12.0, 22.0, "/data/synth00001.mp4"),
        SearchHit(2, 0.25, "v", 0, 0.0, None, None),
    ]
    assert format_hits("a red circle", hits).splitlines() == [
        "query: a red circle",
        "    1  synth00001  12.0-22.0 s  0.5000  /data/synth00001.mp4",
        "    2  v  0.0-? s  0.2500  -",
    ]
    assert [json.loads(line) for line in hits_json("a red circle", hits[:1]).splitlines()] == [
        {"query": "a red circle", "rank": 1, "score": 0.5, "video_id": "synth00001", "clip_index": 1, "start_s": 12.0,
         "end_s": 22.0, "path": "/data/synth00001.mp4"}
    ]  # fmt: skip


def test_errors(zero_shot_run, tmp_path):
    with pytest.raises(VidretError, match=r"no videos\.faiss here or in .*; build it with `vidret index`"):
        search_videos(tmp_path, ["a red circle"])
    with pytest.raises(VidretError, match="--k must be from 1 to 1000, got 0"):
        search_videos(zero_shot_run, ["a red circle"], k=0)
    with pytest.raises(VidretError, match="--k must be from 1 to 1000, got 1001"):
        search_videos(zero_shot_run, ["a red circle"], k=1001)
    with pytest.raises(VidretError, match="give one or more non-empty queries"):
        search_videos(zero_shot_run, [])
    with pytest.raises(VidretError, match="query 2 is empty; give some words to search for"):
        search_videos(zero_shot_run, ["a red circle", "  "])
    with pytest.raises(VidretError, match="query 1 is 1001 characters long; the most is 1000"):
        search_videos(zero_shot_run, ["a" * 1001])

    # Embeddings from another tool: the index has no record of a text tower.
    foreign = tmp_path / "foreign"
    shutil.copytree(zero_shot_run / "embeddings", foreign / "embeddings")
    (foreign / "embeddings" / "stage.json").unlink()
    index_embeddings(foreign / "embeddings", foreign / "index", IndexOptions(progress=False))
    with pytest.raises(VidretError, match="no record of the model that wrote these embeddings"):
        search_videos(foreign, ["a red circle"])


def test_a_changed_checkpoint_is_refused(decoded_synthetic, tmp_path):
    data = decoded_synthetic["frames"], decoded_synthetic["manifest"]
    recipe = make_recipe("mmaction2", epochs=1, batch_size=8, lr=1e-3)
    train(TrainOptions(*data, tmp_path / "model", model=MODEL, pretrained="none", recipe=recipe, progress=False))
    embed(EmbedOptions(*data, tmp_path / "embeddings", checkpoint=tmp_path / "model" / "best.pt", progress=False))
    index_embeddings(tmp_path / "embeddings", tmp_path / "index", IndexOptions(progress=False))
    assert len(search_videos(tmp_path, ["a small green square"], k=2)[0]) == 2

    with open(tmp_path / "model" / "best.pt", "ab") as handle:
        handle.write(b"retrained")
    with pytest.raises(VidretError, match="best.pt changed after the embeddings were written"):
        search_videos(tmp_path, ["a small green square"])
    (tmp_path / "model" / "best.pt").unlink()
    with pytest.raises(VidretError, match="best.pt: the checkpoint these embeddings came from is gone"):
        search_videos(tmp_path, ["a small green square"])
