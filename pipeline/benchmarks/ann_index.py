"""The approximate index `--index auto` picks, against exact flat search on the same vectors, in one process.

    python -m pipeline.benchmarks.ann_index --vectors 1000000 --dim 512

Data: ``--vectors`` random unit vectors (seeded). Queries: ``--queries`` more random unit vectors, held out
(not indexed). That is the worst case for any approximate index, chosen so that the figure is a floor:
in 512 dimensions a random query's ten nearest neighbours are barely nearer than any other vector, so
no index finds them without scanning much of the data, whereas real embeddings cluster. (Noisy copies of
indexed vectors would make the first neighbour easy and leave the other nine as hard as here.)
``--data clustered`` draws vectors and queries alike from ``--clusters`` random centres instead, each
vector at cosine about 0.71 from its centre (``--spread`` 1): a stand-in for embeddings of real
collections, where similar moments lie together.

Measured, for the exact index (``IndexIDMap2`` over ``IndexFlatIP``, vidret's default) and for auto's:

- build seconds (auto's: training and adding; its search tuning, as the index stage runs it on the indexed
  vectors, separately) and the bytes of the written file;
- one-query latency, p50 and p99 over ``--latency-queries`` queries searched one at a time (top 10), on
  ``--latency-threads`` threads (1: on a shared 2-core machine two OpenMP threads wait out each other's
  time slices, which showed as 20 ms steps in p50);
- recall@10 of the held-out queries against the exact top 10 (``faiss.knn``, blockwise), at the tuned
  search parameter, and along the parameter's powers of two (recall and p50 latency: the trade-off).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from pipeline import defaults
from pipeline.benchmarks import percentiles, run_script
from pipeline.index.faiss_index import (
    RECALL_K,
    build_index,
    choose_factory,
    default_index_memory,
    human_bytes,
    make_index,
    search,
    set_search_parameters,
    tunable_parameter,
)


def unit_vectors(rng: np.random.Generator, rows: int, dim: int, chunk: int = 100_000) -> np.ndarray:
    """Random unit rows, drawn a chunk at a time so that the float64 draw never holds them all."""
    out = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, chunk):
        block = rng.standard_normal((min(chunk, rows - start), dim), dtype=np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def clustered_vectors(
    rng: np.random.Generator, centres: np.ndarray, rows: int, spread: float, chunk: int = 100_000
) -> np.ndarray:
    """Unit rows, each a random centre plus Gaussian noise of norm about ``spread``, a chunk at a time."""
    out = np.empty((rows, centres.shape[1]), dtype=np.float32)
    for start in range(0, rows, chunk):
        size = min(chunk, rows - start)
        noise = rng.standard_normal((size, centres.shape[1]), dtype=np.float32) * (spread / np.sqrt(centres.shape[1]))
        block = centres[rng.integers(0, len(centres), size)] + noise
        out[start : start + size] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def written_bytes(index: faiss.Index) -> int:
    with tempfile.TemporaryDirectory(prefix="vidret-ann-") as scratch:
        path = Path(scratch) / "videos.faiss"
        faiss.write_index(index, str(path))
        return path.stat().st_size


def latencies_ms(index: faiss.Index, queries: np.ndarray, threads: int) -> dict:
    """p50 and p99 of one-query top-10 searches on ``threads`` threads, after one warm-up search."""
    search(index, queries[:1], RECALL_K)
    times, every_thread = [], faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    for row in range(len(queries)):
        started = time.perf_counter()
        search(index, queries[row : row + 1], RECALL_K)
        times.append((time.perf_counter() - started) * 1e3)
    faiss.omp_set_num_threads(every_thread)
    return percentiles(times, "_ms")


def recall_at_10(index: faiss.Index, queries: np.ndarray, exact: np.ndarray) -> float:
    _, found = search(index, queries, RECALL_K)
    return round(sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), exact.tolist(), strict=True)) / exact.size, 4)


def measure(args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
    if args.data == "clustered":
        centres = unit_vectors(rng, args.clusters, args.dim)
        vectors = clustered_vectors(rng, centres, args.vectors, args.spread)
        queries = clustered_vectors(rng, centres, args.queries, args.spread)
        data = f"{args.clusters} clusters, spread {args.spread:g}"
    else:
        vectors = unit_vectors(rng, args.vectors, args.dim)
        queries = unit_vectors(rng, args.queries, args.dim)
        data = "random unit vectors"
    latency_queries = queries[: args.latency_queries]
    result = {
        "vectors": args.vectors,
        "dim": args.dim,
        "data": data,
        "queries": f"held-out draws of the same kind ({data})",
        "recall_queries": args.queries,
        "latency_queries": len(latency_queries),
        "threads": faiss.omp_get_max_threads(),
        "latency_threads": args.latency_threads,
    }
    started = time.perf_counter()
    _, exact = faiss.knn(queries, vectors, RECALL_K, metric=faiss.METRIC_INNER_PRODUCT)
    result["exact_top10_s"] = round(time.perf_counter() - started, 3)

    started = time.perf_counter()
    flat = build_index(vectors)
    result["flat"] = {"factory": "Flat", "build_s": round(time.perf_counter() - started, 3)}
    result["flat"].update(bytes=written_bytes(flat), recall_at_10=recall_at_10(flat, queries, exact))
    result["flat"].update(latencies_ms(flat, latency_queries, args.latency_threads))
    del flat  # the approximate index is measured without the exact one's memory beside it

    memory = args.index_memory or default_index_memory()
    factory = args.index or choose_factory(args.vectors, args.dim, memory)
    index, record = make_index(vectors, factory, args.recall)
    result["ann"] = {
        "factory": factory,
        "chosen_by": "--index" if args.index else f"auto within {memory} bytes ({human_bytes(memory)})",
        "build_s": record["build_seconds"],
        "tune_s": record.get("tune_seconds", 0.0),
        "search_parameters": record["search_parameters"],
        "tuning_recall_at_10": record["recall_at_10"],  # on indexed vectors, each left out of its results
        "recall_target": args.recall,
        "bytes": written_bytes(index),
        "recall_at_10": recall_at_10(index, queries, exact),
        **latencies_ms(index, latency_queries, args.latency_threads),
    }
    tunable = tunable_parameter(index)
    curve = []
    if tunable is not None:
        name, low, high = tunable
        top = min(high, 4 * record["search_parameters"][name])  # HNSW's range reaches the vector count
        values = sorted({*(2**power for power in range(int(np.log2(top)) + 1) if low <= 2**power), top})
        for value in values[-args.curve_points :]:
            set_search_parameters(index, {name: value})
            point = {name: value, "recall_at_10": recall_at_10(index, queries, exact)}
            timed = latency_queries[: args.curve_latency_queries]
            curve.append({**point, **latencies_ms(index, timed, args.latency_threads)})
        set_search_parameters(index, record["search_parameters"])
    result["curve"] = curve
    result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return result


def report(result: dict) -> str:
    flat, ann = result["flat"], result["ann"]
    lines = [
        f"{result['vectors']:,} x {result['dim']} vectors ({result['data']}),"
        f" {result['recall_queries']} held-out queries,"
        f" {result['threads']} threads (latency: {result['latency_threads']})",
        f"  exact Flat: build {flat['build_s']:.1f} s, {human_bytes(flat['bytes'])},"
        f" one query p50 {flat['p50_ms']:.2f} ms p99 {flat['p99_ms']:.2f} ms",
        f"  {ann['factory']} ({ann['chosen_by']}), {ann['search_parameters']}: build {ann['build_s']:.1f} s"
        f" + tuning {ann['tune_s']:.1f} s, {human_bytes(ann['bytes'])}, one query p50 {ann['p50_ms']:.2f} ms"
        f" p99 {ann['p99_ms']:.2f} ms, recall@10 {ann['recall_at_10']:.3f} (tuned to {ann['recall_target']}"
        f" on indexed vectors: {ann['tuning_recall_at_10']:.3f})",
    ]
    lines += [
        f"    {', '.join(f'{k} {v}' for k, v in point.items() if k not in ('p99_ms',))}" for point in result["curve"]
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512, help="ViT-B/32 embeds in 512 dimensions")
    parser.add_argument("--data", choices=("random", "clustered"), default="random")
    parser.add_argument("--clusters", type=int, default=10_000, help="centres of --data clustered")
    parser.add_argument("--spread", type=float, default=1.0, help="noise norm around a centre (--data clustered)")
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries that measure recall@10")
    parser.add_argument("--latency-queries", type=int, default=300, help="queries timed one at a time")
    parser.add_argument("--latency-threads", type=int, default=1, help="threads of a one-query search")
    parser.add_argument("--index", default=None, help="a factory string instead of auto's choice")
    parser.add_argument("--index-memory", type=int, default=None, help="auto's budget in bytes")
    parser.add_argument("--recall", type=float, default=defaults.INDEX_RECALL)
    parser.add_argument("--curve-points", type=int, default=8, help="the largest powers of two of the parameter")
    parser.add_argument("--curve-latency-queries", type=int, default=50)
    run_script(parser, measure, report, {"faiss": faiss.__version__})


if __name__ == "__main__":
    main()
