"""Approximate indexes (``vidret index --index auto|FACTORY``): auto's choice by size and budget, the search
parameter tuned to the recall it records (measured again here, by brute force), read back by ``read_index``;
the exact default still written as before and earlier files still read; bad input refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cli.main import app
from pipeline import defaults
from pipeline.errors import VidretError
from pipeline.index import IndexOptions, index_embeddings, read_embeddings
from pipeline.index.faiss_index import (
    EXACT_BELOW,
    IVF_FLAT_BELOW,
    auto_candidates,
    build_factory_index,
    choose_factory,
    human_bytes,
    ivf_lists,
    read_index,
    search,
)

from helpers import tree_hashes, unit_rows, without_locks


def write_embeddings(directory: Path, videos: np.ndarray, noise: float = 1.0, seed: int = 1) -> Path:
    """videos.parquet with ``videos`` and texts.parquet with one noisy copy of each as its caption, in the
    public format, with plain pyarrow."""
    rng = np.random.default_rng(seed)
    texts = videos + noise * unit_rows(rng, len(videos), videos.shape[1])
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    ids = [f"v{row:05d}" for row in range(len(videos))]
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"video_id": ids, "embedding": videos.tolist()}), directory / "videos.parquet")
    pq.write_table(
        pa.table({"video_id": ids, "caption": [f"caption of {i}" for i in ids], "embedding": texts.tolist()}),
        directory / "texts.parquet",
    )
    return directory


def leave_one_out_recall(index: faiss.Index, vectors: np.ndarray, k: int = 10) -> float:
    """recall@k of ``index`` with every indexed vector as a query, itself left out of both lists; the exact
    lists from the full similarity matrix."""
    sim = vectors.astype(np.float64) @ vectors.astype(np.float64).T
    np.fill_diagonal(sim, -np.inf)
    exact = np.argsort(-sim, axis=1)[:, :k]
    _, found = search(index, vectors, k + 1)
    hits = [
        len(set(e) & set([r for r in f if r != q][:k]))
        for q, (e, f) in enumerate(zip(exact, found.tolist(), strict=True))
    ]
    return sum(hits) / (k * len(vectors))


@pytest.fixture
def vectors() -> np.ndarray:
    return unit_rows(np.random.default_rng(0), 3000, 32)


@pytest.mark.parametrize(
    ("factory", "parameter", "target"), [("IVF32,Flat", "nprobe", 0.9), ("HNSW16", "efSearch", 0.99)]
)
def test_the_tuned_index_reaches_the_recall_it_records(tmp_path, vectors, factory, parameter, target):
    out, options = tmp_path / "index", IndexOptions(index=factory, recall=target, progress=False)
    index_embeddings(write_embeddings(tmp_path / "emb", vectors), out, options)
    record = json.loads((out / "stage.json").read_text())
    assert record["params"]["index"] == factory and record["params"]["recall"] == target
    built = record["index"]
    assert built["factory"] == factory and built["tuning_queries"] == 1000
    assert built["bytes"] == (out / "videos.faiss").stat().st_size
    assert built["build_seconds"] > 0 and built["recall_at_10"] >= target
    value = built["search_parameters"][parameter]

    index, ids = read_index(out)
    assert ids.num_rows == index.ntotal == len(vectors)
    # Every vector as a query, not the 1000 the stage sampled: the recorded recall holds beyond its sample.
    measured = leave_one_out_recall(index, vectors)
    assert measured >= target - 0.02 and abs(measured - built["recall_at_10"]) < 0.02
    # The tuning mattered: half the parameter misses the target, so the recorded value is no default.
    faiss.ParameterSpace().set_index_parameter(index, parameter, value // 2)
    assert leave_one_out_recall(index, vectors) < target


def test_read_index_applies_the_recorded_nprobe(tmp_path, vectors):
    out, options = tmp_path / "index", IndexOptions(index="IVF32,SQ8", recall=0.9, progress=False)
    index_embeddings(write_embeddings(tmp_path / "emb", vectors), out, options)
    nprobe = json.loads((out / "stage.json").read_text())["index"]["search_parameters"]["nprobe"]
    assert 1 < nprobe < 32
    # The file saved with nprobe 1: what search gets is the record's value, not the file's.
    stored = faiss.read_index(str(out / "videos.faiss"))
    faiss.extract_index_ivf(stored).nprobe = 1
    faiss.write_index(stored, str(out / "videos.faiss"))
    index, _ = read_index(out)
    assert faiss.extract_index_ivf(index).nprobe == nprobe


def test_the_exact_default_writes_the_same_bytes_as_before(tmp_path, vectors):
    embeddings, out = write_embeddings(tmp_path / "emb", vectors[:200]), tmp_path / "index"
    index_embeddings(embeddings, out, IndexOptions(progress=False))
    earlier = faiss.IndexIDMap2(faiss.IndexFlatIP(32))  # what vidret wrote before --index existed
    earlier.add_with_ids(read_embeddings(embeddings).videos, np.arange(200, dtype=np.int64))
    assert (out / "videos.faiss").read_bytes() == faiss.serialize_index(earlier).tobytes()
    record = json.loads((out / "stage.json").read_text())
    assert not {"index", "index_memory", "recall", "seed"} & set(record["params"])  # earlier outputs stay current
    assert record["index"]["factory"] == "Flat" and record["index"]["search_parameters"] == {}


def test_an_index_of_an_earlier_vidret_still_loads(tmp_path, vectors):
    """videos.faiss, an id map without clip columns, and a stage.json that records no index."""
    out = tmp_path / "index"
    out.mkdir()
    earlier = faiss.IndexIDMap2(faiss.IndexFlatIP(32))
    earlier.add_with_ids(vectors[:50], np.arange(50, dtype=np.int64))
    faiss.write_index(earlier, str(out / "videos.faiss"))
    ids = [f"v{row}" for row in range(50)]
    pq.write_table(
        pa.table({"faiss_id": np.arange(50, dtype=np.int64), "video_id": ids, "path": [None] * 50}),
        out / "video_ids.parquet",
    )
    (out / "stage.json").write_text(json.dumps({"stage": "index", "params": {}, "finished": "2024-01-01"}))
    index, table = read_index(out)
    _, rows = search(index, vectors[:5], 3)
    assert rows[:, 0].tolist() == [0, 1, 2, 3, 4] and table.column("video_id").to_pylist() == ids


def test_auto_picks_by_size_and_budget():
    dim, plenty = 512, 2**50
    assert ivf_lists(1_000_000) == 4096 and ivf_lists(100_000) == 1024  # 2 ** round(log2(4 sqrt n))
    assert ivf_lists(100) == 2  # lowered until each list has 39 vectors to train on
    assert choose_factory(EXACT_BELOW - 1, dim, plenty) == "Flat"
    assert choose_factory(EXACT_BELOW, dim, plenty) == "IVF1024,Flat"
    assert choose_factory(IVF_FLAT_BELOW - 1, dim, plenty) == "IVF4096,Flat"
    assert choose_factory(IVF_FLAT_BELOW, dim, plenty) == "IVF4096,SQ8"
    # Past each budget, the next smaller code: flat vectors are 2 KiB each, SQ8 512 B, PQ256 256 B, PQ4 4 B.
    assert choose_factory(50_000, dim, 100 * 2**20) == "Flat"
    assert choose_factory(50_000, dim, 50 * 2**20) == "IVF1024,SQ8"
    assert choose_factory(500_000, dim, 2**30) == "IVF2048,Flat"
    assert choose_factory(500_000, dim, 2**29) == "IVF2048,SQ8"
    assert choose_factory(1_000_000, dim, 500 * 2**20) == "IVF4096,PQ256np"
    assert choose_factory(1_000_000, dim, 35 * 2**20) == "IVF4096,PQ8np"
    assert all(size > 0 for _, size in auto_candidates(100, dim)) and not any(
        "PQ" in factory for factory, _ in auto_candidates(100, dim)
    )  # too few vectors to train 256 centroids per code
    with pytest.raises(VidretError) as refused:
        choose_factory(1_000_000, dim, 10**6)
    smallest = min(size for _, size in auto_candidates(1_000_000, dim))
    assert str(refused.value) == (
        f"--index-memory 1000000 (976.6 KiB) is too small for any index of 1000000 512-d vectors: the smallest,"
        f" IVF4096,PQ4np, needs {smallest} bytes ({human_bytes(smallest)})"
    )


@pytest.mark.parametrize("num_vectors", [1000, 5000])
def test_auto_estimates_the_bytes_faiss_writes(num_vectors):
    """Within 5% of the serialised size of each kind of candidate: flat, SQ8 and the smallest PQ (4 bytes: 8
    dimensions per sub-quantiser, whose k-means trains fast)."""
    data = unit_rows(np.random.default_rng(2), num_vectors, 32)
    candidates = auto_candidates(num_vectors, 32)
    for factory, size in [*candidates[:2], candidates[-1]]:
        index = build_factory_index(data, factory) if factory != "Flat" else None
        if index is None:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(32))
            index.add_with_ids(data, np.arange(num_vectors, dtype=np.int64))
        written = faiss.serialize_index(index).nbytes
        assert abs(written - size) / written < 0.05, (factory, size, written)


@pytest.fixture
def earlier_index(tmp_path, vectors) -> tuple[Path, Path]:
    """A finished exact index of 200 vectors, which a refused command must leave exactly as it is."""
    embeddings, out = write_embeddings(tmp_path / "emb", vectors[:200]), tmp_path / "index"
    index_embeddings(embeddings, out, IndexOptions(progress=False))
    return embeddings, out


@pytest.mark.parametrize(
    ("options", "needles"),
    [
        (["--index", "IVF16,Bogus"], ["--index IVF16,Bogus: FAISS rejects it", "could not parse"]),
        (["--index", "PQ5"], ["--index PQ5: FAISS rejects it for 32-d vectors", "multiple of"]),
        (["--index", "IVF256,Flat"], ["--index IVF256,Flat needs at least 256 vectors to train", "there are 200"]),
        (["--index", "auto", "--recall", "0"], ["--recall must be in (0, 1], got 0"]),
        (["--index", "auto", "--recall", "1.5"], ["--recall must be in (0, 1], got 1.5"]),
        (["--index", "auto", "--recall", "nan"], ["--recall must be finite"]),
        (["--index", "auto", "--index-memory", "0"], ["--index-memory must be positive, got 0"]),
        (["--index-memory", "1000000"], ["--index-memory is the budget of --index auto"]),
        (["--index", "auto", "--index-memory", "1000"], ["--index-memory 1000 (1000 B) is too small", "bytes ("]),
        (["--index", " "], ["--index must be flat, auto or a FAISS index_factory string"]),
    ],
)
def test_bad_index_options_are_one_line_and_write_nothing(earlier_index, options, needles):
    embeddings, out = earlier_index
    before = without_locks(tree_hashes(out))
    result = CliRunner().invoke(app, ["index", str(embeddings), "--out", str(out), "--no-progress", *options])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert without_locks(tree_hashes(out)) == before


def test_index_options_enter_the_parameters_only_away_from_their_defaults():
    assert IndexOptions().output_params() == {"dsl_scale": None, "top_k": defaults.INDEX_TOP_K, "dump": None}
    assert IndexOptions(recall=0.5).output_params() == IndexOptions().output_params()  # exact: nothing to tune
    assert IndexOptions(index="auto").output_params()["index"] == "auto"
    assert IndexOptions(index="auto", index_memory=2**30, recall=0.9).output_params() == {
        "dsl_scale": None, "top_k": defaults.INDEX_TOP_K, "dump": None, "index": "auto", "index_memory": 2**30,
        "recall": 0.9,
    }  # fmt: skip


@pytest.mark.slow  # a child process importing torch: half a minute on 2 busy cores
def test_the_quick_ann_benchmark_part_writes_its_rows(tmp_path):
    from pipeline.bench import BenchOptions, run_bench

    results = run_bench(BenchOptions(out=tmp_path / "bench.json", parts=("ann",), quick=True, progress=False))
    raw = results["parts"]["ann"]["results"]
    assert raw["ann"]["factory"] == "IVF64,SQ8" and raw["flat"]["recall_at_10"] == 1.0
    assert 0 < raw["ann"]["bytes"] < raw["flat"]["bytes"] and raw["curve"]
    p50, p99, recall, build, size = results["summary"]
    assert "p50" in p50["figure"] and p50["ratio"] == round(raw["ann"]["p50_ms"] / raw["flat"]["p50_ms"], 3)
    assert "p99" in p99["figure"] and p99["value"] == raw["ann"]["p99_ms"]
    assert recall["value"] == raw["ann"]["recall_at_10"] >= 0.8 and build["unit"] == "s"
    assert size["ratio"] == round(raw["ann"]["bytes"] / raw["flat"]["bytes"], 3) < 1
