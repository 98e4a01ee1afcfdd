"""The FAISS inner-product index over video embeddings, and its id map.

``videos.faiss`` is an ``IndexIDMap2`` over an exact ``IndexFlatIP`` (``--index flat``,
the default), or over the approximate index an ``index_factory`` string names
(``--index auto`` picks one from the number of vectors and a memory budget); FAISS ids
are the rows of ``video_ids.parquet``, which maps them back to ``video_id`` (and
to the video file, where the run knows it). An approximate index's search parameter
(nprobe, efSearch) is tuned at build time to a recall@10 against exact search,
recorded in ``stage.json`` and applied by ``read_index``. Searches run on a GPU when
this FAISS build has GPU support, sees one and has a GPU form of the index; the file
on disk is always the CPU form, so ``faiss.read_index`` loads it anywhere.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

from pipeline import defaults
from pipeline.errors import VidretError, first_line
from pipeline.files import commit_file, read_parquet, temporary_path, write_parquet
from pipeline.schemas import CLIP_COLUMNS, ID_MAP_FILE, ID_MAP_SCHEMA, INDEX_FILE
from pipeline.stage import read_stage


def faiss_gpus() -> int:
    """GPUs this FAISS build can use (0 for faiss-cpu)."""
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def build_index(embeddings: np.ndarray) -> faiss.Index:
    """An exact inner-product index over ``embeddings`` (float32, rows x dim), ids 0..rows-1."""
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(embeddings.shape[1]))
    index.add_with_ids(np.ascontiguousarray(embeddings, dtype=np.float32), np.arange(len(embeddings), dtype=np.int64))
    return index


# --index: the exact index, auto's choice, or any FAISS index_factory string (inner product).
EXACT_INDEX, AUTO_INDEX = "flat", "auto"
EXACT_FACTORY = "Flat"  # the factory string of the exact index, as build_index makes it
RECALL_K = 10  # the search is tuned to recall@RECALL_K against exact search
TUNE_QUERIES = 1000  # indexed vectors (seeded) that measure recall, each left out of its own results

# auto's rules, after autofaiss's (criteo/autofaiss, external/optimize.py) and FAISS's index guidelines:
# exact below EXACT_BELOW vectors; then inverted lists, uncompressed below IVF_FLAT_BELOW, 8-bit scalar
# quantised from there (4x smaller, recall@10 within a few points); product quantisation, the largest code
# that fits, when neither fits the budget. HNSW is not among them: on 2 CPU cores it built 3x slower than
# IVF-SQ8 and was slower at equal recall on 100k random 512-d vectors, and it keeps every vector uncompressed
# plus its graph (docs/performance.md); --index HNSW32 builds one, with efSearch tuned.
EXACT_BELOW = 100_000
IVF_FLAT_BELOW = 1_000_000
MIN_POINTS_PER_LIST = 39  # FAISS's k-means warns below 39 training points per centroid
TRAIN_POINTS_PER_LIST = 64  # k-means trains on at most this many points per list (the build's cost)
PQ_BYTES = (256, 128, 64, 48, 32, 24, 16, 8, 4)  # the codes auto tries, largest first (autofaiss's list)
PQ_CENTROIDS = 256  # 8-bit codes: each sub-quantiser's k-means needs at least this many vectors
ID_BYTES = 8  # one int64 id per vector, in the inverted lists and again in IndexIDMap2's map


def default_index_memory() -> int:
    """auto's budget when --index-memory is not given: a quarter of the physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def human_bytes(size: int) -> str:
    """``size`` in binary units: "512 B", "1.5 KiB", ..., "3.2 GiB"."""
    power = min(3, int(math.log(size, 1024))) if size >= 1024 else 0
    return f"{size} B" if power == 0 else f"{size / 1024**power:.1f} {('KiB', 'MiB', 'GiB')[power - 1]}"


def ivf_lists(num_vectors: int) -> int:
    """autofaiss's inverted-list count: the power of two nearest 4 * sqrt(n) (FAISS advises 4 to 16 * sqrt(n)),
    lowered until every list has MIN_POINTS_PER_LIST vectors to train on."""
    nearest = 2 ** round(math.log2(4 * math.sqrt(num_vectors)))
    trainable = 2 ** int(math.log2(max(1, num_vectors // MIN_POINTS_PER_LIST)))
    return min(nearest, trainable)


def auto_candidates(num_vectors: int, dim: int) -> list[tuple[str, int]]:
    """auto's choices for ``num_vectors`` vectors of ``dim``, most preferred first, with their estimated bytes."""
    ids = ID_BYTES * num_vectors
    nlist = ivf_lists(num_vectors)
    centroids = nlist * dim * 4

    def ivf(code_bytes: int, trained_bytes: int = 0) -> int:
        return num_vectors * (code_bytes + ID_BYTES) + centroids + trained_bytes + ids

    candidates = []
    if num_vectors < EXACT_BELOW:
        candidates.append((EXACT_FACTORY, num_vectors * dim * 4 + ids))
    elif num_vectors < IVF_FLAT_BELOW:
        candidates.append((f"IVF{nlist},Flat", ivf(4 * dim)))
    candidates.append((f"IVF{nlist},SQ8", ivf(dim, 2 * dim * 4)))  # SQ8 trains a range per dimension
    if num_vectors >= PQ_CENTROIDS:
        codebooks = PQ_CENTROIDS * dim * 4
        # np: no polysemous training, which only serves Hamming filtering (unused) and costs minutes.
        candidates += [(f"IVF{nlist},PQ{m}np", ivf(m, codebooks)) for m in PQ_BYTES if m < dim and dim % m == 0]
    return candidates


def choose_factory(num_vectors: int, dim: int, memory: int) -> str:
    """auto's index for ``num_vectors`` vectors of ``dim`` within ``memory`` bytes: the first candidate that fits."""
    candidates = auto_candidates(num_vectors, dim)
    for factory, size in candidates:
        if size <= memory:
            return factory
    factory, size = min(candidates, key=lambda candidate: candidate[1])
    raise VidretError(
        f"--index-memory {memory} ({human_bytes(memory)}) is too small for any index of {num_vectors}"
        f" {dim}-d vectors: the smallest, {factory}, needs {size} bytes ({human_bytes(size)})"
    )


def index_factory(choice: str, num_vectors: int, dim: int, memory: int | None = None) -> str:
    """The FAISS factory string that ``--index choice`` builds over ``num_vectors`` vectors of ``dim``; one line
    when FAISS rejects it or there are too few vectors to train it. ``memory`` is auto's budget (None: the
    default)."""
    if choice == EXACT_INDEX:
        return EXACT_FACTORY
    if choice == AUTO_INDEX:
        return choose_factory(num_vectors, dim, default_index_memory() if memory is None else memory)
    try:
        empty = faiss.index_factory(dim, choice, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:  # a C++ trace: its first line says what FAISS could not parse
        raise VidretError(f"--index {choice}: FAISS rejects it for {dim}-d vectors ({first_line(error)})") from None
    ivf = inverted_lists(empty)
    if ivf is not None and ivf.nlist > num_vectors:
        raise VidretError(
            f"--index {choice} needs at least {ivf.nlist} vectors to train (one per inverted list);"
            f" there are {num_vectors}"
        )
    return choice


def inverted_lists(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IVF inside ``index`` (through id maps and transforms), or None."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:  # FAISS's way of saying there is none
        return None


def tunable_parameter(index: faiss.Index) -> tuple[str, int, int] | None:
    """The search parameter that trades speed for recall, with its range: nprobe for IVF, efSearch for HNSW."""
    ivf = inverted_lists(index)
    if ivf is not None:
        return "nprobe", 1, ivf.nlist
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, faiss.IndexHNSW):
        return "efSearch", RECALL_K, max(RECALL_K, index.ntotal)
    return None


def build_factory_index(embeddings: np.ndarray, factory: str, seed: int = defaults.INDEX_SEED) -> faiss.Index:
    """An ``IndexIDMap2`` over ``factory`` (inner product), trained on a seeded sample of ``embeddings``, ids
    0..rows-1."""
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    inner = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexIDMap2(inner)
    try:
        if not index.is_trained:
            ivf = inverted_lists(inner)
            # k-means on every vector costs the most and gains little past a few dozen points per list (or per
            # code of a product quantiser).
            enough = max(TRAIN_POINTS_PER_LIST * ivf.nlist, MIN_POINTS_PER_LIST * PQ_CENTROIDS) if ivf else None
            sample = len(vectors) if enough is None else min(len(vectors), enough)
            rows = np.sort(np.random.default_rng(seed).choice(len(vectors), sample, replace=False))
            index.train(vectors[rows])
        index.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
    except RuntimeError as error:
        raise VidretError(
            f"--index {factory}: FAISS could not build it from {len(vectors)} vectors ({first_line(error)})"
        ) from None
    return index


def set_search_parameters(index: faiss.Index, parameters: dict[str, int]) -> None:
    for name, value in parameters.items():
        faiss.ParameterSpace().set_index_parameter(index, name, value)


class RecallProbe:
    """recall@k of ``index`` against exact search, for a seeded sample of the indexed vectors as queries, each
    left out of both result lists (so that finding itself earns nothing)."""

    def __init__(self, index: faiss.Index, vectors: np.ndarray, seed: int, queries: int = TUNE_QUERIES):
        self.index, self.vectors, self.k = index, vectors, min(RECALL_K, len(vectors) - 1)
        sample = min(queries, len(vectors))
        self.rows = np.sort(np.random.default_rng(seed).choice(len(vectors), sample, replace=False))
        self.queries = np.ascontiguousarray(vectors[self.rows], dtype=np.float32)
        # Exact top-(k+1) by blockwise BLAS products, no second copy of the vectors.
        _, exact = faiss.knn(self.queries, vectors, self.k + 1, metric=faiss.METRIC_INNER_PRODUCT)
        self.exact = self.others(exact)

    def others(self, found: np.ndarray) -> list[set[int]]:
        """Each query's first k results other than itself (an approximate search pads with -1: never a hit)."""
        return [
            set([row for row in rows if row != query][: self.k])
            for query, rows in zip(self.rows.tolist(), found.tolist(), strict=True)
        ]

    def recall(self) -> float:
        if self.k < 1:  # a single vector: nothing else to find
            return 1.0
        _, found = self.index.search(self.queries, self.k + 1)
        hits = sum(len(exact & found) for exact, found in zip(self.exact, self.others(found), strict=True))
        return hits / (self.k * len(self.rows))

    def covering_nprobe(self, target: float, block: int = 256) -> int | None:
        """The fewest inverted lists whose scan holds ``target`` of the exact neighbours (autofaiss's "coverage"):
        an uncompressed IVF's recall at that nprobe, compressed codes' bound, found without a search of the
        lists. None unless the index is an IVF whose flat quantiser sees the raw vectors (no transform)."""
        ivf = faiss.downcast_index(self.index.index)
        if self.k < 1 or not isinstance(ivf, faiss.IndexIVF):
            return None
        quantizer = faiss.downcast_index(ivf.quantizer)
        if not isinstance(quantizer, faiss.IndexFlat):
            return None
        neighbours = np.array([sorted(exact) for exact in self.exact], dtype=np.int64)
        lists = quantizer.assign(self.vectors[neighbours.ravel()], 1).reshape(neighbours.shape)
        ranks = []  # each neighbour's list, as the query's probe order ranks it
        for start in range(0, len(self.queries), block):
            _, order = quantizer.search(self.queries[start : start + block], ivf.nlist)
            ranks.append(np.take_along_axis(np.argsort(order, axis=1), lists[start : start + block], axis=1))
        ranks = np.sort(np.concatenate(ranks), axis=None)
        return int(ranks[math.ceil(target * len(ranks)) - 1]) + 1


def tune_search(index: faiss.Index, vectors: np.ndarray, target: float, seed: int = defaults.INDEX_SEED) -> dict:
    """Set ``index``'s search parameter to the smallest value (to 1/16) whose recall@10 reaches ``target``, or
    its largest; what stage.json records of it: ``search_parameters``, ``recall_at_10``, ``tuning_queries``.

    An IVF starts from the nprobe whose lists hold ``target`` of the neighbours, which no smaller one can beat:
    searching the lists at a large nprobe costs most of the tuning time."""
    probe = RecallProbe(index, vectors, seed)
    tunable = tunable_parameter(index)
    measured: dict[int, float] = {}

    def recall_at(value: int) -> float:
        if value not in measured:
            set_search_parameters(index, {tunable[0]: value})
            measured[value] = probe.recall()
        return measured[value]

    if tunable is None:
        parameters, recall = {}, probe.recall()
    else:
        name, low, high = tunable
        start = probe.covering_nprobe(target) if name == "nprobe" else None
        # Double until the target is reached, then halve the bracket: recall grows with the parameter.
        failing, value = None, low if start is None else min(high, start)
        while recall_at(value) < target and value < high:
            failing, value = value, min(high, 2 * value)
        if failing is not None and recall_at(value) >= target:
            while value - failing > max(1, value // 16):
                middle = (failing + value) // 2
                failing, value = (failing, middle) if recall_at(middle) >= target else (middle, value)
        parameters, recall = {name: value}, recall_at(value)
        set_search_parameters(index, parameters)
    return {"search_parameters": parameters, "recall_at_10": round(recall, 4), "tuning_queries": len(probe.rows)}


def make_index(
    embeddings: np.ndarray, factory: str, recall: float, seed: int = defaults.INDEX_SEED
) -> tuple[faiss.Index, dict]:
    """The index ``factory`` names over ``embeddings``, its search tuned to ``recall`` unless it is exact, and
    what stage.json records of it (``bytes`` is added once the file is written)."""
    started = time.perf_counter()
    if factory == EXACT_FACTORY:
        index = build_index(embeddings)
        seconds = round(time.perf_counter() - started, 3)
        return index, {"factory": factory, "search_parameters": {}, "recall_at_10": 1.0, "build_seconds": seconds}
    index = build_factory_index(embeddings, factory, seed)
    built = time.perf_counter()
    tuned = tune_search(index, embeddings, recall, seed)
    return index, {
        "factory": factory,
        **tuned,
        "recall_target": recall,
        "build_seconds": round(built - started, 3),
        "tune_seconds": round(time.perf_counter() - built, 3),
    }


def on_search_device(index: faiss.Index) -> faiss.Index:
    """``index`` on every visible GPU when FAISS can use one and has a GPU form of it, else unchanged."""
    if not faiss_gpus():
        return index
    try:
        return faiss.index_cpu_to_all_gpus(index)  # copies nprobe with the lists
    except RuntimeError:  # no GPU form (HNSW): it searches on the CPU
        return index


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the top ``min(k, ntotal)`` entries for every query row, best first."""
    k = min(k, index.ntotal)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def write_index(
    directory: Path, index: faiss.Index, video_ids: list[str], paths: list[str | None], clips: dict[str, np.ndarray]
) -> None:
    """Write ``videos.faiss`` and ``video_ids.parquet`` atomically: one id per indexed row (a clip), with its
    ``video_id``, ``path`` and ``clips`` (``clip_index``, ``start_s``, ``end_s``: NaN for an unknown end)."""
    temporary = temporary_path(directory / INDEX_FILE)
    try:
        faiss.write_index(index, str(temporary))
        commit_file(temporary, directory / INDEX_FILE)
    finally:
        temporary.unlink(missing_ok=True)
    ids = pa.table(
        {
            "faiss_id": np.arange(len(video_ids), dtype=np.int64), "video_id": video_ids, "path": paths,
            **{name: pa.array(clips[name], from_pandas=True) for name in CLIP_COLUMNS},
        },
        schema=ID_MAP_SCHEMA,
    )  # fmt: skip
    write_parquet(directory / ID_MAP_FILE, ids)


def read_index(directory: Path) -> tuple[faiss.Index, pa.Table]:
    """The index in ``directory``, with the search parameters its stage.json records applied, and its id map
    (faiss_id, video_id, path, clips)."""
    index_path, ids_path = directory / INDEX_FILE, directory / ID_MAP_FILE
    for path in (index_path, ids_path):
        if not path.is_file():
            raise VidretError(f"{path}: no such file; build the index with `vidret index`")
    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as error:  # FAISS reports a damaged file as a RuntimeError with a C++ trace
        raise VidretError(
            f"{index_path}: not a readable FAISS index ({first_line(error)}); rebuild it with `vidret index --force`"
        ) from None
    ids = read_parquet(ids_path)
    if ids.num_rows != index.ntotal:
        raise VidretError(f"{ids_path}: {ids.num_rows} ids for the {index.ntotal} vectors of {index_path}")
    # An index written before vidret recorded one (exact, flat) has no search parameters.
    set_search_parameters(index, ((read_stage(directory) or {}).get("index") or {}).get("search_parameters") or {})
    return index, ids
