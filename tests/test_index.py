"""The index stage on embeddings written directly with pyarrow (as another tool would write them):
ranks and metrics against a brute-force definition, the FAISS index and its id map, --dump, --dsl,
caching, and bad input."""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb
import faiss
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import VidretError
from pipeline.index import IndexOptions, index_embeddings, metrics_table, read_embeddings
from pipeline.index.faiss_index import build_index
from pipeline.metrics import summarize_ranks

from helpers import brute_force_dsl_ranks, brute_force_ranks, random_captions, unit_rows

FLOAT32_LIST = pa.list_(pa.float32())


@dataclass
class Data:
    video_ids: list[str]
    videos: np.ndarray  # float32, unit rows, in videos.parquet order
    text_video_ids: list[str]
    captions: list[str]
    texts: np.ndarray  # float32, unit rows, in texts.parquet order
    index: np.ndarray  # each text's row in ``videos``

    @property
    def sim(self) -> np.ndarray:
        return self.texts.astype(np.float64) @ self.videos.astype(np.float64).T


def normalized(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


def make_data(seed: int = 4, per_video_max: int = 3, noise: float = 2.0, num_videos: int = 30, dim: int = 16) -> Data:
    """Random unit videos; 1..per_video_max captions each, in shuffled order, whose embeddings are noisy
    copies of their video's (so the ranks spread). Video ids are numbered in an order unlike the rows'."""
    rng = np.random.default_rng(seed)
    video_ids = [f"clip-{k:02d}" for k in rng.permutation(num_videos)]
    videos = unit_rows(rng, num_videos, dim)
    index = random_captions(rng, num_videos, per_video_max)
    texts = normalized(videos[index] + noise * unit_rows(rng, len(index), dim))
    text_video_ids = [video_ids[row] for row in index]
    captions = [f"caption {t}: a clip like {video_id}" for t, video_id in enumerate(text_video_ids)]
    return Data(video_ids, videos, text_video_ids, captions, texts, index)


def assert_tie_free(data: Data, margin: float = 1e-6) -> None:
    """No candidate scores within ``margin`` of a ground truth, so float rounding cannot change a rank."""
    sim, index = data.sim, data.index
    for t, v in enumerate(index):
        others = np.delete(sim[t], v)
        assert np.abs(others - sim[t, v]).min() > margin
        others = np.delete(sim[:, v], t)
        assert np.abs(others - sim[t, v]).min() > margin


def embedding_array(rows, type: pa.DataType) -> pa.Array:
    return pa.array([np.asarray(row, dtype=np.float64).tolist() for row in rows], type=type)


def write_embeddings(
    directory: Path,
    video_ids,
    videos,
    text_video_ids,
    captions,
    texts,
    embedding_type: pa.DataType = FLOAT32_LIST,
) -> Path:
    """videos.parquet and texts.parquet in the public format, written with plain pyarrow."""
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table({"video_id": video_ids, "embedding": embedding_array(videos, embedding_type)}),
        directory / "videos.parquet",
    )
    pq.write_table(
        pa.table(
            {"video_id": text_video_ids, "caption": captions, "embedding": embedding_array(texts, embedding_type)}
        ),
        directory / "texts.parquet",
    )
    return directory


def write_data(directory: Path, data: Data, embedding_type: pa.DataType = FLOAT32_LIST) -> Path:
    return write_embeddings(
        directory, data.video_ids, data.videos, data.text_video_ids, data.captions, data.texts, embedding_type
    )


def options(**changes) -> IndexOptions:
    return IndexOptions(**{"progress": False, **changes})


def read_metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def read_ranks(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    ranks = pd.read_parquet(out / "ranks.parquet")
    return (
        ranks[ranks.direction == "t2v"].reset_index(drop=True),
        ranks[ranks.direction == "v2t"].reset_index(drop=True),
    )


@pytest.fixture
def data() -> Data:
    data = make_data()
    assert_tie_free(data)
    return data


@pytest.mark.parametrize(
    ("seed", "per_video_max", "embedding_type"),
    [
        (6, 1, FLOAT32_LIST),
        (4, 3, FLOAT32_LIST),
        (4, 3, pa.list_(pa.float64())),
        (4, 3, pa.list_(pa.float32(), 16)),
    ],
    ids=["one-caption-each", "multi-caption", "float64-lists", "fixed-size-lists"],
)
def test_ranks_and_metrics_equal_brute_force(tmp_path, seed, per_video_max, embedding_type):
    data = make_data(seed, per_video_max)
    assert_tie_free(data)
    num_texts = len(data.captions)
    assert (num_texts == 30) == (per_video_max == 1)
    embeddings = write_data(tmp_path / "embeddings", data, embedding_type)

    summary = index_embeddings(embeddings, tmp_path / "index", options())

    t2v, v2t = brute_force_ranks(data.texts, data.videos, data.index)
    assert 1 < t2v.max() and 1 < v2t.max() and (t2v == 1).any()  # the ranks spread
    metrics = read_metrics(tmp_path / "index")
    assert metrics["t2v"] == summarize_ranks(t2v)
    assert metrics["v2t"] == summarize_ranks(v2t)
    assert metrics["num_videos"] == 30 and metrics["num_texts"] == num_texts
    assert "dsl" not in metrics
    assert summary.metrics == metrics and summary.skip_reason is None and summary.ran_because == ""

    schema = pq.read_schema(tmp_path / "index" / "ranks.parquet")
    assert {name: str(schema.field(name).type) for name in schema.names} == {
        "direction": "string",
        "query": "int64",
        "video_id": "string",
        "caption": "string",
        "rank": "int64",
        "rank_dsl": "int64",
        "clip_index": "int32",
        "start_s": "double",
        "end_s": "double",
    }
    ranks_t2v, ranks_v2t = read_ranks(tmp_path / "index")
    # Embeddings without the clip columns are whole videos: clip 0 from 0 s, end unknown.
    both = pd.concat([ranks_t2v, ranks_v2t])
    assert (both["clip_index"] == 0).all() and (both["start_s"] == 0).all() and both["end_s"].isna().all()
    assert len(ranks_t2v) == num_texts and len(ranks_v2t) == 30
    assert ranks_t2v["query"].tolist() == list(range(num_texts))
    assert ranks_t2v["video_id"].tolist() == data.text_video_ids
    assert ranks_t2v["caption"].tolist() == data.captions
    assert ranks_t2v["rank"].tolist() == t2v.tolist()
    assert ranks_v2t["query"].tolist() == list(range(30))
    assert ranks_v2t["video_id"].tolist() == data.video_ids
    assert ranks_v2t["caption"].isna().all()
    assert ranks_v2t["rank"].tolist() == v2t.tolist()
    assert pd.concat([ranks_t2v, ranks_v2t])["rank_dsl"].isna().all()

    path = tmp_path / "index" / "ranks.parquet"
    with duckdb.connect() as connection:
        rows = connection.execute(
            f"SELECT direction, count(*), sum(rank), count(rank_dsl) FROM '{path}' GROUP BY direction ORDER BY 1"
        ).fetchall()
        assert rows == [("t2v", num_texts, int(t2v.sum()), 0), ("v2t", 30, int(v2t.sum()), 0)]
        worst = connection.execute(
            f"SELECT video_id, caption FROM '{path}' WHERE direction = 't2v' ORDER BY rank DESC, query LIMIT 1"
        ).fetchone()
    assert worst == (data.text_video_ids[int(np.argmax(t2v))], data.captions[int(np.argmax(t2v))])


def test_embeddings_are_normalised_again(tmp_path, data):
    rng = np.random.default_rng(11)
    video_scale = rng.uniform(0.01, 50.0, (len(data.videos), 1)).astype(np.float32)
    text_scale = rng.uniform(0.01, 50.0, (len(data.texts), 1)).astype(np.float32)
    unit = write_data(tmp_path / "unit", data)
    scaled = write_data(
        tmp_path / "scaled", replace(data, videos=data.videos * video_scale, texts=data.texts * text_scale)
    )

    index_embeddings(unit, tmp_path / "unit-index", options())
    index_embeddings(scaled, tmp_path / "scaled-index", options())

    t2v, v2t = brute_force_ranks(data.texts, data.videos, data.index)
    assert read_metrics(tmp_path / "scaled-index") == read_metrics(tmp_path / "unit-index")
    assert read_metrics(tmp_path / "scaled-index")["t2v"] == summarize_ranks(t2v)
    assert read_metrics(tmp_path / "scaled-index")["v2t"] == summarize_ranks(v2t)
    embeddings = read_embeddings(scaled)
    np.testing.assert_allclose(np.linalg.norm(embeddings.videos, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(embeddings.texts, data.texts, atol=1e-6)


def test_constant_model_gets_no_hit_at_one(tmp_path):
    index = np.array([0, 0, 1, 2, 2, 2, 3, 4])
    video_ids = [f"clip-{k}" for k in range(5)]
    embedding = np.full(16, 0.3, dtype=np.float32)
    embeddings = write_embeddings(
        tmp_path / "embeddings",
        video_ids,
        [embedding] * 5,
        [video_ids[row] for row in index],
        [f"caption {t}" for t in range(len(index))],
        [embedding] * len(index),
    )
    summary = index_embeddings(embeddings, tmp_path / "index", options())
    assert summary.metrics["t2v"]["R@1"] == 0.0
    assert summary.metrics["t2v"]["MdR"] == 5.0
    assert summary.metrics["v2t"]["R@1"] == 0.0
    ranks_t2v, ranks_v2t = read_ranks(tmp_path / "index")
    # v2t: every other video's caption ties with the video's own and counts against it.
    assert (ranks_t2v["rank"] == 5).all()
    assert ranks_v2t["rank"].tolist() == [1 + len(index) - np.sum(index == video) for video in range(5)]


def test_blockwise_ranks_equal_one_block(tmp_path, data):
    embeddings = write_data(tmp_path / "embeddings", data)
    tables, metrics = [], []
    for block_size in (1, 7, 10_000):
        out = tmp_path / f"index-{block_size}"
        index_embeddings(embeddings, out, options(block_size=block_size, dsl=True))
        tables.append(pq.read_table(out / "ranks.parquet"))
        metrics.append(read_metrics(out))
    assert tables[0].column("rank_dsl").null_count == 0
    assert tables[0].equals(tables[1]) and tables[0].equals(tables[2])
    assert metrics[0] == metrics[1] == metrics[2]


def test_faiss_index_reloads_and_maps_ids_to_videos(tmp_path):
    data = make_data(seed=5, noise=0.5)  # low noise: every caption's nearest video is its own
    embeddings = write_data(tmp_path / "embeddings", data)
    index_embeddings(embeddings, tmp_path / "index", options())

    index = faiss.read_index(str(tmp_path / "index" / "videos.faiss"))
    assert index.ntotal == 30 and index.d == 16
    scores, ids = index.search(data.texts, 5)
    memory_scores, memory_ids = build_index(data.videos).search(data.texts, 5)
    np.testing.assert_array_equal(ids, memory_ids)
    np.testing.assert_allclose(scores, memory_scores, atol=1e-6)

    sim = data.sim
    assert len(np.unique(sim)) == sim.size
    order = np.argsort(-sim, axis=1)[:, :5]
    np.testing.assert_array_equal(ids, order)
    np.testing.assert_allclose(scores, np.take_along_axis(sim, order, axis=1), atol=1e-5)

    id_map = pd.read_parquet(tmp_path / "index" / "video_ids.parquet")
    assert id_map["faiss_id"].tolist() == list(range(30))
    assert id_map["path"].isna().all()  # a user's embeddings name no video files
    video_of = dict(zip(id_map["faiss_id"], id_map["video_id"], strict=True))
    found = [[video_of[i] for i in row] for row in ids]
    # The expected neighbours by name, from the vectors keyed by video_id in sorted order (not the file's).
    vector_of = dict(zip(data.video_ids, data.videos, strict=True))
    names = sorted(vector_of)
    assert names != data.video_ids
    by_name = np.stack([vector_of[name] for name in names]).astype(np.float64)
    expected = [[names[j] for j in np.argsort(-(text @ by_name.T))[:5]] for text in data.texts.astype(np.float64)]
    assert found == expected
    assert [row[0] for row in found] == data.text_video_ids


@pytest.mark.parametrize("dsl", [False, True])
def test_dump(tmp_path, data, dsl):
    embeddings = write_data(tmp_path / "embeddings", data)
    dump_path = tmp_path / "dumps" / "index.pkl"
    index_embeddings(embeddings, tmp_path / "index", options(dump=dump_path, top_k=4, dsl=dsl))

    with open(dump_path, "rb") as handle:
        dump = pickle.load(handle)
    assert isinstance(dump, dict)
    assert dump["metrics"] == read_metrics(tmp_path / "index")
    assert dump["video_ids"] == data.video_ids
    assert dump["captions"] == data.captions and dump["text_video_ids"] == data.text_video_ids
    np.testing.assert_allclose(dump["video_features"], data.videos, atol=1e-6)
    np.testing.assert_allclose(dump["text_features"], data.texts, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(dump["video_features"], axis=1), 1.0, atol=1e-6)

    ranks_t2v, ranks_v2t = read_ranks(tmp_path / "index")
    np.testing.assert_array_equal(dump["t2v"]["rank"], ranks_t2v["rank"])
    np.testing.assert_array_equal(dump["v2t"]["rank"], ranks_v2t["rank"])
    if dsl:
        np.testing.assert_array_equal(dump["t2v"]["rank_dsl"], ranks_t2v["rank_dsl"])
        np.testing.assert_array_equal(dump["v2t"]["rank_dsl"], ranks_v2t["rank_dsl"])
    else:
        assert dump["t2v"]["rank_dsl"] is None and dump["v2t"]["rank_dsl"] is None

    sim = data.sim
    t2v_order, v2t_order = np.argsort(-sim, axis=1)[:, :4], np.argsort(-sim.T, axis=1)[:, :4]
    assert dump["t2v"]["topk"].shape == (len(data.captions), 4)
    assert dump["v2t"]["topk"].shape == (30, 4)
    np.testing.assert_array_equal(dump["t2v"]["topk"], t2v_order)
    np.testing.assert_array_equal(dump["v2t"]["topk"], v2t_order)
    np.testing.assert_allclose(dump["t2v"]["topk_scores"], np.take_along_axis(sim, t2v_order, axis=1), atol=1e-5)
    np.testing.assert_allclose(dump["v2t"]["topk_scores"], np.take_along_axis(sim.T, v2t_order, axis=1), atol=1e-5)
    assert dump["t2v"]["topk_video_ids"] == [[data.video_ids[j] for j in row] for row in t2v_order]
    assert all(type(name) is str for row in dump["t2v"]["topk_video_ids"] for name in row)
    assert dump["t2v"]["query_video_ids"] == data.text_video_ids
    assert dump["v2t"]["query_video_ids"] == data.video_ids


@pytest.mark.parametrize("scale", [10.0, 100.0])
def test_dsl_ranks_equal_brute_force(tmp_path, data, scale):
    # Every ground truth scores above 0: a negative one times a prior that underflows float32 would rank
    # differently in float32 (the library) and float64 (the reference).
    assert (data.sim[np.arange(len(data.index)), data.index] > 0).all()
    embeddings = write_data(tmp_path / "embeddings", data)
    index_embeddings(embeddings, tmp_path / "plain", options())
    summary = index_embeddings(embeddings, tmp_path / "dsl", options(dsl=True, dsl_scale=scale))

    t2v, v2t = brute_force_dsl_ranks(data.texts, data.videos, data.index, scale)
    plain_t2v, _ = brute_force_ranks(data.texts, data.videos, data.index)
    assert (t2v != plain_t2v).any()  # the prior changes some ranks, so the test can tell DSL from plain
    metrics, plain = read_metrics(tmp_path / "dsl"), read_metrics(tmp_path / "plain")
    assert summary.metrics == metrics
    assert metrics["dsl"] == {"t2v": summarize_ranks(t2v), "v2t": summarize_ranks(v2t), "scale": scale}
    assert {key: value for key, value in metrics.items() if key != "dsl"} == plain

    ranks_t2v, ranks_v2t = read_ranks(tmp_path / "dsl")
    assert ranks_t2v["rank_dsl"].tolist() == t2v.tolist()
    assert ranks_v2t["rank_dsl"].tolist() == v2t.tolist()
    plain_t2v_table, plain_v2t_table = read_ranks(tmp_path / "plain")
    assert ranks_t2v["rank"].tolist() == plain_t2v_table["rank"].tolist()
    assert ranks_v2t["rank"].tolist() == plain_v2t_table["rank"].tolist()


def mtimes(out: Path) -> dict[str, int]:
    return {name: (out / name).stat().st_mtime_ns for name in ("metrics.json", "videos.faiss", "stage.json")}


def test_rerun_is_skipped_unless_something_changed(tmp_path, data):
    embeddings = write_data(tmp_path / "embeddings", data)
    out = tmp_path / "index"
    first = index_embeddings(embeddings, out, options())
    assert first.skip_reason is None and first.ran_because == ""
    before = mtimes(out)

    again = index_embeddings(embeddings, out, options())
    assert again.skip_reason and "--force" in again.line()
    assert again.metrics == first.metrics
    assert mtimes(out) == before

    # block size and device only change the speed
    assert index_embeddings(embeddings, out, options(block_size=3, device="cpu")).skip_reason
    # the fingerprint is the files' contents: the same tables written again are the same input
    write_data(embeddings, data)
    assert index_embeddings(embeddings, out, options()).skip_reason
    assert mtimes(out) == before

    forced = index_embeddings(embeddings, out, options(force=True))
    assert forced.skip_reason is None and forced.ran_because == " (ran: --force)"
    assert forced.metrics == first.metrics
    assert mtimes(out)["metrics.json"] != before["metrics.json"]

    changed = index_embeddings(embeddings, out, options(dsl=True))
    assert changed.skip_reason is None and "parameters changed" in changed.ran_because and "dsl" in changed.metrics
    assert index_embeddings(embeddings, out, options(dsl=True)).skip_reason

    texts = data.texts.copy()
    texts[[0, 1]] = texts[[1, 0]]
    write_data(embeddings, replace(data, texts=texts))
    new_input = index_embeddings(embeddings, out, options(dsl=True))
    assert new_input.skip_reason is None and "its inputs changed" in new_input.ran_because
    t2v, _ = brute_force_ranks(texts, data.videos, data.index)
    assert new_input.metrics["t2v"] == summarize_ranks(t2v) == read_metrics(out)["t2v"]


def test_missing_dump_is_recomputed(tmp_path, data):
    embeddings = write_data(tmp_path / "embeddings", data)
    out, dump = tmp_path / "index", tmp_path / "dump.pkl"
    index_embeddings(embeddings, out, options(dump=dump))
    assert index_embeddings(embeddings, out, options(dump=dump)).skip_reason
    dump.unlink()
    rerun = index_embeddings(embeddings, out, options(dump=dump))
    assert rerun.skip_reason is None and "missing" in rerun.ran_because
    assert dump.is_file()


def _videos_table(data: Data, video_ids=None, videos=None) -> pa.Table:
    return pa.table(
        {
            "video_id": data.video_ids if video_ids is None else video_ids,
            "embedding": embedding_array(data.videos if videos is None else videos, FLOAT32_LIST),
        }
    )


def _set(array: np.ndarray, where, value) -> np.ndarray:
    array = array.copy()
    array[where] = value
    return array


def _write_bad(directory: Path, data: Data, case: str) -> None:
    if case == "dimension mismatch":
        write_data(directory, replace(data, texts=data.texts[:, :8]))
    elif case == "caption of an unknown video":
        write_data(
            directory, replace(data, text_video_ids=[*data.text_video_ids[:2], "ghost", *data.text_video_ids[3:]])
        )
    elif case == "NaN in a video":
        write_data(directory, replace(data, videos=_set(data.videos, (3, 5), np.nan)))
    elif case == "inf in a text":
        write_data(directory, replace(data, texts=_set(data.texts, (4, 0), np.inf)))
    elif case == "all-zero vector":
        write_data(directory, replace(data, videos=_set(data.videos, 0, 0.0)))
    elif case == "no video rows":
        write_data(directory, data)
        pq.write_table(_videos_table(data).slice(0, 0), directory / "videos.parquet")
    elif case == "zero-byte texts":
        write_data(directory, data)
        (directory / "texts.parquet").write_bytes(b"")
    elif case == "no embedding column":
        write_data(directory, data)
        pq.write_table(_videos_table(data).drop_columns(["embedding"]), directory / "videos.parquet")
    elif case == "duplicated video_id":
        write_data(directory, data)
        video_ids = [data.video_ids[0], *data.video_ids[:-1]]
        pq.write_table(_videos_table(data, video_ids=video_ids), directory / "videos.parquet")
    elif case == "clips out of order":
        write_data(directory, data)
        video_ids = [data.video_ids[0], *data.video_ids[:-1]]  # row 1 continues video 0, as its clip 2
        clips = {"clip_index": pa.array([0, 2] + [0] * 28, pa.int32()), "start_s": [0.0] * 30, "end_s": [None] * 30}
        table = _videos_table(data, video_ids=video_ids)
        table = pa.table({**dict(zip(table.column_names, table.columns, strict=True)), **clips})
        pq.write_table(table, directory / "videos.parquet")
    elif case == "ragged embeddings":
        write_data(directory, data)
        videos = [row.tolist() for row in data.videos]
        videos[2] = videos[2][:15]
        pq.write_table(_videos_table(data, videos=videos), directory / "videos.parquet")
    elif case == "missing texts file":
        write_data(directory, data)
        (directory / "texts.parquet").unlink()
    elif case == "integer video_id":
        write_data(directory, data)
        table = _videos_table(data).set_column(0, "video_id", pa.array(range(30), pa.int64()))
        pq.write_table(table, directory / "videos.parquet")
    elif case == "null caption":
        write_data(directory, replace(data, captions=[None, *data.captions[1:]]))
    elif case == "integer embeddings":
        write_data(directory, data, pa.list_(pa.int32()))
    else:
        raise AssertionError(case)


D = make_data()  # the good data of the ``data`` fixture, for the expected messages
BAD_INPUTS = {
    # case: (the file the message names, a distinctive part of the message)
    "dimension mismatch": (".", "video embeddings have 16 dimensions but caption embeddings have 8"),
    "caption of an unknown video": (
        "texts.parquet",
        r"1 caption\(s\) name a video_id with no row in videos\.parquet: row 2 \(ghost\)",
    ),
    "NaN in a video": ("videos.parquet", rf"1 embedding\(s\) hold NaN or infinity: row 3 \({D.video_ids[3]}\)"),
    "inf in a text": (
        "texts.parquet",
        rf"1 embedding\(s\) hold NaN or infinity: row 4 \(caption of {D.text_video_ids[4]}\)",
    ),
    "all-zero vector": ("videos.parquet", rf"1 embedding\(s\) are all zeros: row 0 \({D.video_ids[0]}\)"),
    "no video rows": ("videos.parquet", "videos.parquet: no rows"),
    "zero-byte texts": ("texts.parquet", "texts.parquet: not a readable Parquet file"),
    "no embedding column": ("videos.parquet", r"missing column\(s\) embedding; has video_id"),
    "duplicated video_id": ("videos.parquet", rf"1 duplicated video_id\(s\): {D.video_ids[0]}"),
    "clips out of order": (
        "videos.parquet",
        rf"row 1 \({D.video_ids[0]}\) is clip 2, expected 1: a video's clips must be consecutive rows",
    ),
    "ragged embeddings": ("videos.parquet", rf"first row has 16, but {D.video_ids[2]} has 15"),
    "missing texts file": ("texts.parquet", "texts.parquet: no such file"),
    "integer video_id": ("videos.parquet", "column video_id must be strings, got int64"),
    "null caption": ("texts.parquet", r"column caption has 1 null value\(s\)"),
    "integer embeddings": ("videos.parquet", "column embedding must be a list of floats, got list<element: int32>"),
}


def snapshot(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_naming_the_file_and_keeps_the_earlier_output(tmp_path, data, case):
    out = tmp_path / "index"
    index_embeddings(write_data(tmp_path / "good", data), out, options())
    before = snapshot(out)
    assert {"metrics.json", "stage.json", "ranks.parquet", "videos.faiss", "video_ids.parquet"} <= set(before)

    bad = tmp_path / "bad"
    _write_bad(bad, data, case)
    named, pattern = BAD_INPUTS[case]
    with pytest.raises(VidretError, match=pattern) as error:
        index_embeddings(bad, out, options())
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{bad / named if named != '.' else bad}: ")
    after = snapshot(out)
    assert after.keys() == before.keys()
    assert after["metrics.json"] == before["metrics.json"] and after["stage.json"] == before["stage.json"]
    assert after == before
    # the earlier output is still the current one for the good embeddings
    assert index_embeddings(tmp_path / "good", out, options()).skip_reason


def test_embeddings_written_by_pandas(tmp_path, data):
    """pandas 3 writes strings as large_string."""
    directory = tmp_path / "embeddings"
    directory.mkdir()
    pd.DataFrame({"video_id": data.video_ids, "embedding": list(data.videos)}).to_parquet(directory / "videos.parquet")
    pd.DataFrame({"video_id": data.text_video_ids, "caption": data.captions, "embedding": list(data.texts)}).to_parquet(
        directory / "texts.parquet"
    )
    summary = index_embeddings(directory, tmp_path / "index", options())
    t2v, _ = brute_force_ranks(data.texts, data.videos, data.index)
    assert summary.metrics["t2v"] == summarize_ranks(t2v)


def test_large_list_embeddings(tmp_path, data):
    embeddings = write_data(tmp_path / "embeddings", data, pa.large_list(pa.float32()))
    summary = index_embeddings(embeddings, tmp_path / "index", options())
    t2v, _ = brute_force_ranks(data.texts, data.videos, data.index)
    assert summary.metrics["t2v"] == summarize_ranks(t2v)


def test_rows_of_extreme_scale_are_normalised_without_overflow(tmp_path, data):
    """Norms are taken in float64: a row of 1e20s would overflow float32, one of 1e-25s would vanish."""
    videos = data.videos.astype(np.float64)
    videos[0] *= 1e20
    videos[1] *= 1e-25
    embeddings = write_data(tmp_path / "embeddings", replace(data, videos=videos), pa.list_(pa.float64()))
    summary = index_embeddings(embeddings, tmp_path / "index", options())
    t2v, v2t = brute_force_ranks(data.texts, data.videos, data.index)
    assert summary.metrics["t2v"] == summarize_ranks(t2v) and summary.metrics["v2t"] == summarize_ranks(v2t)


def _metrics(offset: float) -> dict[str, float]:
    return {"R@1": 12.34 + offset, "R@5": 40.0 + offset, "R@10": 55.56 + offset, "MdR": 3.0, "MnR": 7.26 + offset}


def table_rows(table: str) -> dict[str, list[str]]:
    """label -> the numbers of its row, for every row that has numbers in columns after its label."""
    rows = {}
    for line in table.splitlines()[1:]:
        match = re.match(r"^((?:text|video)->(?:video|text)(?: DSL)?)\s+(.*)$", line)
        if match:
            rows[match.group(1)] = match.group(2).split()
    return rows


def test_metrics_table():
    metrics = {"t2v": _metrics(0.0), "v2t": _metrics(1.0), "num_videos": 30, "num_texts": 61}
    table = metrics_table(metrics)
    header = table.splitlines()[0].split()
    assert header == ["R@1", "R@5", "R@10", "MdR", "MnR"]
    rows = table_rows(table)
    assert rows == {
        "text->video": ["12.3", "40.0", "55.6", "3.0", "7.3"],
        "video->text": ["13.3", "41.0", "56.6", "3.0", "8.3"],
    }
    assert "DSL" not in table
    assert "30 videos, 61 captions" in table

    with_dsl = metrics_table({**metrics, "dsl": {"t2v": _metrics(2.0), "v2t": _metrics(3.0), "scale": 100.0}})
    rows = table_rows(with_dsl)
    assert list(rows) == ["text->video", "video->text", "text->video DSL", "video->text DSL"]
    assert rows["text->video DSL"] == ["14.3", "42.0", "57.6", "3.0", "9.3"]
    assert rows["video->text DSL"] == ["15.3", "43.0", "58.6", "3.0", "10.3"]
    assert all(re.fullmatch(r"\d+\.\d", value) for values in rows.values() for value in values)
