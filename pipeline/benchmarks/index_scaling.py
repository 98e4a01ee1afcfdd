"""Index-stage scaling: blockwise ranks for N captions x N videos, against baselines in the same process.

    python -m pipeline.benchmarks.index_scaling --sizes 1000 10000 100000 --dim 512

Each size runs in a fresh child process, so its peak resident memory is its own. Per size:

- ``gemm``: the bare similarity products, block by block (texts @ videos.T, then videos @ texts.T),
  with nothing else done: the floor any exact evaluation must pay;
- ``ranks``: ``pipeline.metrics.retrieval_ranks`` (both directions, pessimistic ties);
- ``full``: the same ranks from one whole N x N matrix (block = N), where it fits in ``--full-limit-gb``;
- ``dsl``: ranks with dual softmax (optional, ``--dsl``);
- ``faiss``: building the exact inner-product index and searching the top 10 for every caption.

Reported ratios: ranks / gemm (the cost of ranking over the products) and ranks / full.
Embeddings are random unit vectors; captions are noisy copies of their video, one per video.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.files import write_json
from pipeline.index.faiss_index import build_index, search
from pipeline.metrics import retrieval_ranks


def unit(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def measure(size: int, dim: int, block_size: int, dsl: bool, full_limit_gb: float) -> dict:
    rng = np.random.default_rng(0)
    videos = unit(rng.standard_normal((size, dim), dtype=np.float32))
    texts = unit(videos + 1.5 * unit(rng.standard_normal((size, dim), dtype=np.float32)))
    index = np.arange(size)
    texts_t, videos_t = torch.from_numpy(texts), torch.from_numpy(videos)

    def gemm() -> None:
        for start in range(0, size, block_size):
            texts_t[start : start + block_size] @ videos_t.T
        for start in range(0, size, block_size):
            videos_t[start : start + block_size] @ texts_t.T

    result = {"size": size, "dim": dim, "block_size": block_size, "threads": torch.get_num_threads()}
    result["gemm_s"] = timed(gemm)
    ranks: list = []
    result["ranks_s"] = timed(lambda: ranks.append(retrieval_ranks(texts_t, videos_t, index, block_size)))
    result["t2v_R@1"] = float(np.mean(ranks[0][0] == 1) * 100)
    result["ranks_over_gemm"] = result["ranks_s"] / result["gemm_s"]
    if size * size * 4 / 2**30 <= full_limit_gb:
        full: list = []
        result["full_s"] = timed(lambda: full.append(retrieval_ranks(texts_t, videos_t, index, block_size=size)))
        assert all(np.array_equal(a, b) for a, b in zip(ranks[0], full[0], strict=True)), "blockwise != full"
        result["ranks_over_full"] = result["ranks_s"] / result["full_s"]
    if dsl:
        result["dsl_s"] = timed(lambda: retrieval_ranks(texts_t, videos_t, index, block_size, dual_softmax=100.0))
    faiss_index: list = []
    result["faiss_build_s"] = timed(lambda: faiss_index.append(build_index(videos)))
    result["faiss_search_top10_s"] = timed(lambda: search(faiss_index[0], texts, 10))
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--dim", type=int, default=512, help="ViT-B/32 embeds in 512 dimensions")
    parser.add_argument("--block-size", type=int, default=4096)
    parser.add_argument("--dsl", action="store_true", help="also time dual-softmax ranks")
    parser.add_argument("--full-limit-gb", type=float, default=4.0, help="largest N x N matrix for the baseline")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child process: one size
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.dim, args.block_size, args.dsl, args.full_limit_gb)))
        return

    results = []
    for size in args.sizes:
        child = [sys.executable, "-m", "pipeline.benchmarks.index_scaling", "--one", str(size), "--dim", str(args.dim)]
        child += ["--block-size", str(args.block_size), "--full-limit-gb", str(args.full_limit_gb)]
        child += ["--dsl"] if args.dsl else []
        result = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout)
        results.append(result)
        full = ""
        if "full_s" in result:
            full = f", full matrix {result['full_s']:.2f} s (ratio {result['ranks_over_full']:.2f})"
        dsl = f", DSL {result['dsl_s']:.2f} s" if "dsl_s" in result else ""
        print(
            f"{size:>7} x {size:<7} dim {args.dim}: ranks {result['ranks_s']:.2f} s"
            f" (bare GEMM {result['gemm_s']:.2f} s, ratio {result['ranks_over_gemm']:.2f}){full}{dsl};"
            f" FAISS build {result['faiss_build_s']:.2f} s, top-10 search {result['faiss_search_top10_s']:.2f} s;"
            f" peak RSS {result['peak_rss_gib']:.2f} GiB",
            flush=True,
        )
    if args.out:
        machine = {"platform": platform.platform(), "processor": platform.processor(), "cpus": torch.get_num_threads()}
        write_json(args.out, {"machine": machine, "torch": torch.__version__, "results": results})


if __name__ == "__main__":
    main()
