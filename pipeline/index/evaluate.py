"""The index stage: embeddings in; FAISS index, ranks and metrics out.

Reads ``RUN/embeddings`` (ours, checked against its stage.json, or any in the public
format), writes to ``RUN/index``: ``videos.faiss`` and ``video_ids.parquet``,
``ranks.parquet``, ``metrics.json``, optionally a ``--dump`` pickle, and the commit
record last, through the stage contract (``pipeline.stage``).
"""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from pipeline import defaults
from pipeline.device import resolve_device
from pipeline.errors import VidretError, check_number, check_path, shown_path
from pipeline.files import commit_file, sha256_file, sha256_json, temporary_path, write_json, write_parquet
from pipeline.index.faiss_index import (
    AUTO_INDEX,
    EXACT_FACTORY,
    EXACT_INDEX,
    build_index,
    faiss_gpus,
    index_factory,
    make_index,
    on_search_device,
    search,
    write_index,
)
from pipeline.index.reader import Embeddings, read_embeddings
from pipeline.index.rerank import Reranker, make_reranker, rerank
from pipeline.manifest import read_manifest
from pipeline.metrics import RECALL_AT, GroundTruthRanks, ground_truth_ranks, summarize_ranks
from pipeline.schemas import (
    ID_MAP_FILE,
    INDEX_FILE,
    METRICS_FILE,
    RANKS_FILE,
    RANKS_SCHEMA,
    TEXTS_FILE,
    VIDEOS_FILE,
)
from pipeline.stage import (
    STAGE_FILE,
    Stage,
    begin,
    commit,
    decide,
    describe_failures,
    library_versions,
    locked,
    ran_because,
    read_committed,
    skip_line,
)

DUMP_FORMAT = "vidret-index-dump"


@dataclass(frozen=True)
class IndexOptions:
    top_k: int = defaults.INDEX_TOP_K  # neighbours per query in the --dump file
    dsl: bool = False
    dsl_scale: float = defaults.INDEX_DSL_SCALE  # softmax scale of the dual-softmax prior
    dump: Path | None = None
    block_size: int = defaults.INDEX_BLOCK_SIZE  # queries per block of the similarity matrix
    device: str = defaults.DEVICE  # where ranks are computed: auto (CUDA when present), cpu or cuda
    force: bool = False
    progress: bool = True
    index: str = defaults.INDEX_TYPE  # flat (exact), auto, or a FAISS index_factory string (inner product)
    index_memory: int | None = None  # bytes auto's index may take; None: a quarter of the physical memory
    recall: float = defaults.INDEX_RECALL  # recall@10 an approximate index's search is tuned to reach
    seed: int = defaults.INDEX_SEED  # an approximate index's training and tuning samples
    rerank: Path | None = None  # a pair head's checkpoint (tightTransf), re-scoring each query's top rerank_k
    rerank_k: int = defaults.RERANK_K

    def __post_init__(self) -> None:
        check_number("--top-k", self.top_k, integer=True, at_least=1)
        check_number("--rerank-k", self.rerank_k, integer=True, at_least=1)
        if self.rerank is not None:
            check_path(self.rerank, "--rerank checkpoint")
            if not Path(self.rerank).is_file():
                raise VidretError(f"--rerank {shown_path(self.rerank)}: no such checkpoint")
        if not isinstance(self.index, str) or not self.index.strip():
            raise VidretError(f"--index must be flat, auto or a FAISS index_factory string, got {self.index!r}")
        check_number("--recall", self.recall, above=0, at_most=1)
        if self.index_memory is not None:
            check_number("--index-memory", self.index_memory, integer=True, above=0)
            if self.index != AUTO_INDEX:
                raise VidretError(f"--index-memory is the budget of --index auto; --index {self.index} takes none")
        check_number("--block-size", self.block_size, integer=True, at_least=1)
        # NaN or infinity ranked every query first (R@1 100, MdR 0) and wrote a bare NaN to metrics.json; so
        # did a scale past float32's range (3.4e38), where the softmax is computed.
        check_number("--dsl-scale", self.dsl_scale, above=0)
        check_number("--dsl-scale", self.dsl_scale, at_most=1e30)
        if self.dump is not None:
            check_path(self.dump, "--dump file")
            if Path(self.dump).is_dir():
                raise VidretError(f"--dump {shown_path(self.dump)}: is a directory; give the pickle file to write")

    def output_params(self) -> dict:
        """The options that determine the output (block size and device only change the speed)."""
        params = {
            "dsl_scale": self.dsl_scale if self.dsl else None,
            "top_k": self.top_k,
            "dump": str(Path(self.dump).absolute()) if self.dump else None,
        }
        # The index options enter only away from their defaults, so that indexes written before them (exact)
        # stay up to date; an exact index has no recall to tune nor samples to draw.
        if self.index != EXACT_INDEX:
            params["index"] = self.index
            if self.index_memory is not None:
                params["index_memory"] = self.index_memory
            if self.recall != defaults.INDEX_RECALL:
                params["recall"] = self.recall
            if self.seed != defaults.INDEX_SEED:
                params["seed"] = self.seed
        return params


@dataclass
class IndexSummary:
    out: Path
    metrics: dict
    seconds: float = 0.0
    skip_reason: str | None = None  # why nothing was computed
    ran_because: str = ""  # why earlier output was replaced, as the line says it
    not_embedded: dict[str, int] = field(default_factory=dict)  # videos of the split decode failed, by status
    notes: list[str] = field(default_factory=list)  # what could not be checked

    def line(self) -> str:
        if self.skip_reason:
            return skip_line("index", self.out)
        metrics = self.metrics
        if "t2v" not in metrics:
            return (
                f"index: caption-free collection: {metrics['num_videos']} videos, {metrics['num_clips']} clips"
                f" indexed; no metrics, in {self.seconds:.1f} s -> {self.out} ({INDEX_FILE}, {ID_MAP_FILE})"
                f"{self.ran_because}"
            )
        t2v = metrics["t2v"]
        # A benchmark's figures are comparable only on its whole test set: say when videos are absent.
        absent = sum(self.not_embedded.values())
        incomplete = (
            f"; not in these metrics: {absent} videos of the split that decode skipped"
            f" ({describe_failures(self.not_embedded)})"
            if absent
            else ""
        )
        reranked = (
            f" (re-ranked top {metrics['rerank']['k']}: R@1 {metrics['rerank']['t2v']['R@1']:.1f})"
            if "rerank" in metrics
            else ""
        )
        return (
            f"index: {describe_counts(metrics)} in {self.seconds:.1f} s;"
            f" t2v R@1 {t2v['R@1']:.1f} MdR {t2v['MdR']:g}{reranked} -> {self.out}"
            f" ({INDEX_FILE}, {ID_MAP_FILE}, {RANKS_FILE}, {METRICS_FILE}){incomplete}{self.ran_because}"
        )


def describe_counts(metrics: dict) -> str:
    """``"30 videos, 61 captions"``, with the clips and the uncaptioned videos where there are any (metrics
    written before clips existed count neither)."""
    clips = metrics.get("num_clips", metrics["num_videos"])
    uncaptioned = metrics.get("uncaptioned_videos", 0)
    return (
        f"{metrics['num_videos']} videos"
        + (f" ({clips} clips)" if clips != metrics["num_videos"] else "")
        + f", {metrics['num_texts']} captions"
        + (f", {uncaptioned} videos uncaptioned (t2v distractors, no v2t query)" if uncaptioned else "")
    )


def metrics_table(metrics: dict) -> str:
    """The metrics as a text table: one row per direction, DSL rows under their own label."""
    if "t2v" not in metrics:
        return f"no metrics: a caption-free collection ({metrics['num_videos']} videos) has nothing to score"
    columns = [f"R@{k}" for k in RECALL_AT] + ["MdR", "MnR"]
    rows = [("text->video", metrics["t2v"]), ("video->text", metrics["v2t"])]
    for name, label in (("dsl", "DSL"), ("rerank", f"rerank@{metrics.get('rerank', {}).get('k')}")):
        if name in metrics:
            rows += [(f"text->video {label}", metrics[name]["t2v"]), (f"video->text {label}", metrics[name]["v2t"])]
    width = max(len(name) for name, _ in rows)
    lines = [" " * width + "".join(f"{column:>8}" for column in columns)]
    lines += [name.ljust(width) + "".join(f"{values[column]:>8.1f}" for column in columns) for name, values in rows]
    lines.append(f"{describe_counts(metrics)}; R@k in %, ranks 1-based")
    return "\n".join(lines)


OUTPUT_FILES = (INDEX_FILE, ID_MAP_FILE, RANKS_FILE, METRICS_FILE)


def read_embeddings_record(embeddings_dir: Path) -> tuple[dict, list[str]]:
    """The embed stage's record of ``embeddings_dir`` with its two files checked against it (empty for a
    user's embeddings), and notes on what could not be checked."""
    for name in (VIDEOS_FILE, TEXTS_FILE):
        if not (embeddings_dir / name).is_file():
            raise VidretError(f"{embeddings_dir / name}: no such file; write embeddings with `vidret encode embed`")
    record = read_committed(embeddings_dir, "embed", (VIDEOS_FILE, TEXTS_FILE))
    if record is None:
        return {}, [
            f"{embeddings_dir} has no {STAGE_FILE}: could not check that {VIDEOS_FILE} and {TEXTS_FILE}"
            " come from one model and one run"
        ]
    if "files" not in record:
        return record, [f"{embeddings_dir / STAGE_FILE} lists no file hashes (an earlier vidret): not checked"]
    return record, []


def check_dump(dump: Path, embeddings_dir: Path, out: Path) -> None:
    """Refuse a --dump path that would overwrite an input, an output of this stage, or a file that is not a dump."""
    dump = dump.absolute()
    if embeddings_dir.resolve() in dump.resolve().parents:
        raise VidretError(f"--dump {dump}: inside the embeddings folder, an input of this stage; write it elsewhere")
    if dump.parent.resolve() == out.resolve() and (dump.name in OUTPUT_FILES or dump.name == STAGE_FILE):
        raise VidretError(f"--dump {dump}: the name of one of index's own files; choose another name")
    if dump.is_file() and not is_dump(dump):
        raise VidretError(f"--dump {dump}: exists and is not a dump vidret wrote; choose a new path")


def is_dump(path: Path) -> bool:
    """Whether ``path`` starts as ``write_dump`` writes: a pickled dict whose first entry is its format."""
    with open(path, "rb") as handle:
        return DUMP_FORMAT.encode() in handle.read(64)


def index_embeddings(embeddings_dir: Path | str, out: Path | str, options: IndexOptions | None = None) -> IndexSummary:
    """Index ``embeddings_dir`` into ``out``; evaluate retrieval; skip if ``out`` is up to date."""
    options = options or IndexOptions()
    embeddings_dir, out = Path(embeddings_dir), Path(out)
    upstream, notes = read_embeddings_record(embeddings_dir)
    # A committed record's hashes were just checked against the files: hashing them again would be a second read.
    recorded = upstream.get("files") or {}
    fingerprint = sha256_json(
        {
            name: recorded[name]["sha256"] if name in recorded else sha256_file(embeddings_dir / name)
            for name in (VIDEOS_FILE, TEXTS_FILE)
        }
    )
    reranker = None
    if options.rerank is not None:
        reranker = make_reranker(options.rerank, options.rerank_k, embeddings_dir, upstream)
    params = {**options.output_params(), **({"rerank": reranker.params()} if reranker else {})}
    dump = Path(options.dump) if options.dump is not None else None
    owns = (*OUTPUT_FILES, dump.name) if dump is not None and dump.parent.absolute() == out.absolute() else OUTPUT_FILES
    read_from = (embeddings_dir, *((reranker.frames, reranker.checkpoint.parent) if reranker else ()))
    stage = Stage("index", out, fingerprint, params, inputs=read_from, owns=owns)
    if dump is not None:
        check_dump(dump, embeddings_dir, out)
    device = resolve_device(options.device)
    with locked(stage):
        decision = decide(stage, options.force)
        if not decision.run:
            return IndexSummary(out, decision.previous["metrics"], skip_reason=decision.reason, notes=notes)
        embeddings = read_embeddings(embeddings_dir)
        factory = index_factory(options.index, len(embeddings.videos), embeddings.dim, options.index_memory)
        # A caption-free collection is indexed for search only: there is no ground truth to score.
        scored = bool(embeddings.captions)
        if reranker is not None and not scored:
            raise VidretError(f"--rerank re-ranks the captions' retrieval; {embeddings_dir} has no captions")
        begin(stage)
        started = time.perf_counter()
        metrics, ranks = (
            evaluate_ranks(embeddings, options, device, reranker) if scored else (collection_counts(embeddings), {})
        )
        index, index_record = make_index(embeddings.videos, factory, options.recall, options.seed)
        not_embedded = (upstream.get("counts") or {}).get("skipped") or {}
        row_video_ids = embeddings.row_video_ids
        clips = {"clip_index": embeddings.clip_index, "start_s": embeddings.start_s, "end_s": embeddings.end_s}
        write_index(out, index, row_video_ids, video_paths(upstream, row_video_ids), clips)
        index_record["bytes"] = (out / INDEX_FILE).stat().st_size
        files = [INDEX_FILE, ID_MAP_FILE]
        if scored:
            write_parquet(out / RANKS_FILE, ranks_table(embeddings, ranks))
            write_json(out / METRICS_FILE, metrics)
            files += [RANKS_FILE, METRICS_FILE]
        else:  # an earlier run's scores of other embeddings must not stay beside this index
            for name in (RANKS_FILE, METRICS_FILE):
                (out / name).unlink(missing_ok=True)
        if dump is not None:
            exact = index if factory == EXACT_FACTORY else build_index(embeddings.videos)  # top-k as the ranks
            write_dump(dump, embeddings, ranks, metrics, on_search_device(exact), options.top_k)
            files.append(str(dump.relative_to(out.absolute())) if dump.name in owns else str(dump.absolute()))
        seconds = time.perf_counter() - started
        record = {
            "input": {"embeddings": str(embeddings_dir.absolute())},
            "model": upstream.get("model"),  # which text tower `vidret search` must use
            "metrics": metrics,
            "index": index_record,  # read_index applies its search_parameters
            "counts": {
                "videos": metrics["num_videos"],
                "clips": metrics["num_clips"],
                "texts": metrics["num_texts"],
                "uncaptioned_videos": metrics["uncaptioned_videos"],
                "dim": embeddings.dim,
                "not_embedded": not_embedded,
            },
            "throughput": {"seconds": round(seconds, 3), "rank_device": str(device), "faiss_gpus": faiss_gpus()},
            "libraries": library_versions("faiss-cpu", "faiss-gpu", "torch", "pyarrow"),
        }
        commit(stage, record, files)
        if index_record["recall_at_10"] < options.recall:
            notes.append(
                f"{factory} reaches recall@10 {index_record['recall_at_10']} against exact search"
                f" ({index_record['search_parameters'] or 'it has no search parameter'}, its largest), below"
                f" --recall {options.recall}: its compressed codes lose the rest; a finer code or --index flat"
                " reaches it"
            )
    return IndexSummary(
        out, metrics, seconds, ran_because=ran_because(decision), not_embedded=not_embedded, notes=notes
    )


def collection_counts(embeddings: Embeddings) -> dict:
    """What metrics.json counts: videos, their clips (rows), captions, and the videos without one."""
    return {
        "num_videos": len(embeddings.video_ids),
        "num_clips": embeddings.num_clips,
        "num_texts": len(embeddings.captions),
        "uncaptioned_videos": int((~embeddings.captioned).sum()),
    }


def evaluate_ranks(
    embeddings: Embeddings, options: IndexOptions, device: torch.device, reranker: Reranker | None = None
) -> tuple[dict, dict]:
    """The metrics and every query's ground-truth rank; with a ``reranker``, the re-ranked ones too."""
    ranks = compute_ranks(embeddings, options, device)
    metrics = {
        "t2v": summarize_ranks(ranks["plain"].t2v),
        "v2t": summarize_ranks(ranks["plain"].v2t),
        **collection_counts(embeddings),
    }
    if options.dsl:
        metrics["dsl"] = {
            "t2v": summarize_ranks(ranks["dsl"].t2v),
            "v2t": summarize_ranks(ranks["dsl"].v2t),
            "scale": options.dsl_scale,
        }
    if reranker is not None:
        ranks["rerank"] = rerank(reranker, embeddings, ranks["plain"], device, progress=options.progress)
        metrics["rerank"] = {
            "t2v": summarize_ranks(ranks["rerank"].t2v),
            "v2t": summarize_ranks(ranks["rerank"].v2t),
            **reranker.record(),
        }
    return metrics, ranks


def compute_ranks(embeddings: Embeddings, options: IndexOptions, device: torch.device) -> dict[str, GroundTruthRanks]:
    """Ground-truth ranks per query and their best clips: ``plain``, and ``dsl`` with --dsl (DSL re-weights
    the video-level scores, each video's max over its clips)."""
    texts, videos = torch.from_numpy(embeddings.texts).to(device), torch.from_numpy(embeddings.videos).to(device)
    passes = {"plain": None, **({"dsl": options.dsl_scale} if options.dsl else {})}
    # Each pass ranks every caption and every captioned video; DSL first sums its priors over the captions.
    queries = len(embeddings.captions) + int(embeddings.captioned.sum())
    ranks = {}
    with tqdm(
        total=queries * len(passes) + (len(embeddings.captions) if options.dsl else 0),
        unit="query",
        desc="rank",
        disable=not options.progress,
    ) as bar:
        for name, scale in passes.items():
            ranks[name] = ground_truth_ranks(
                texts, videos, embeddings.text_video_index, options.block_size, scale, on_block=bar.update,
                clips_per_video=embeddings.clips_per_video,
            )  # fmt: skip
    return ranks


def ranks_table(embeddings: Embeddings, ranks: dict[str, GroundTruthRanks]) -> pa.Table:
    """One row per query; a v2t query is a captioned video, ``query`` its first row in videos.parquet, so that
    ``query + clip_index`` is the row of its best clip."""
    plain = ranks["plain"]
    num_texts, v2t_videos = len(embeddings.captions), plain.v2t_videos
    first_rows = embeddings.first_rows
    # The ground-truth pair's best clip, as a row of videos.parquet: the same in both passes (DSL re-weights
    # a video's score, not which clip gives it).
    best_rows = np.concatenate(
        [first_rows[embeddings.text_video_index] + plain.t2v_clips, first_rows[v2t_videos] + plain.v2t_clips]
    )
    both = num_texts + len(v2t_videos)
    dsl = np.concatenate([ranks["dsl"].t2v, ranks["dsl"].v2t]) if "dsl" in ranks else [None] * both
    return pa.table(
        {
            "direction": ["t2v"] * num_texts + ["v2t"] * len(v2t_videos),
            "query": np.concatenate([np.arange(num_texts), first_rows[v2t_videos]]),
            "video_id": embeddings.text_video_ids + [embeddings.video_ids[video] for video in v2t_videos],
            "caption": embeddings.captions + [None] * len(v2t_videos),
            "rank": np.concatenate([plain.t2v, plain.v2t]),
            "rank_dsl": dsl,
            "clip_index": embeddings.clip_index[best_rows],
            "start_s": embeddings.start_s[best_rows],
            "end_s": pa.array(embeddings.end_s[best_rows], from_pandas=True),
        },
        schema=RANKS_SCHEMA,
    )


def video_paths(upstream: dict, video_ids: list[str]) -> list[str | None]:
    """Each video's file, from the manifest the embeddings' stage.json (``upstream``) records; None where
    unknown (a user's embeddings)."""
    source = upstream.get("input", {})
    manifest = source.get("manifest")
    if not manifest or not Path(manifest).is_file():
        return [None] * len(video_ids)
    path_of = {entry.video_id: str(entry.path) for entry in read_manifest(manifest, source.get("video_root"))}
    return [path_of.get(video_id) for video_id in video_ids]


def write_dump(path: Path, embeddings: Embeddings, ranks: dict, metrics: dict, index, top_k: int) -> None:
    """A pickle of plain lists, dicts and numpy arrays: per-query ids, top-k, ranks and the features.

    ``video_ids`` and ``video_features`` are per row of videos.parquet (a clip), with ``clip_index``,
    ``start_s`` and ``end_s``; t2v top-k are such rows (a video may come once per clip); v2t top-k are rows of
    ``captions``, for each captioned video by its best clip. A caption-free collection has no t2v or v2t.
    """
    dump = {
        "format": DUMP_FORMAT,
        "metrics": metrics,
        "video_ids": embeddings.row_video_ids,
        "video_features": embeddings.videos,
        "clip_index": embeddings.clip_index,
        "start_s": embeddings.start_s,
        "end_s": embeddings.end_s,
        "captions": embeddings.captions,
        "text_video_ids": embeddings.text_video_ids,
        "text_features": embeddings.texts,
        "t2v": None,
        "v2t": None,
    }
    if ranks:
        plain, dsl = ranks["plain"], ranks.get("dsl")
        t2v_scores, t2v_topk = search(index, embeddings.texts, top_k)
        v2t_scores, v2t_topk = best_clip_topk(build_index(embeddings.texts), embeddings, plain.v2t_videos, top_k)
        dump["t2v"] = {
            "query_video_ids": embeddings.text_video_ids,
            "topk": t2v_topk,
            "topk_video_ids": [[dump["video_ids"][row] for row in rows] for rows in t2v_topk],
            "topk_scores": t2v_scores,
            "rank": plain.t2v,
            "rank_dsl": dsl.t2v if dsl else None,
        }
        dump["v2t"] = {
            "query_video_ids": [embeddings.video_ids[video] for video in plain.v2t_videos],
            "topk": v2t_topk,
            "topk_scores": v2t_scores,
            "rank": plain.v2t,
            "rank_dsl": dsl.v2t if dsl else None,
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    try:
        with open(temporary, "wb") as handle:
            pickle.dump(dump, handle, protocol=pickle.HIGHEST_PROTOCOL)
        commit_file(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def best_clip_topk(text_index, embeddings: Embeddings, videos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, caption rows) of the ``k`` captions scoring best with each of ``videos`` by its best clip: the
    union of its clips' own top ``k`` holds them."""
    first, counts = embeddings.first_rows[videos], embeddings.clips_per_video[videos]
    rows = np.repeat(first - np.concatenate(([0], np.cumsum(counts)[:-1])), counts) + np.arange(counts.sum())
    scores, ids = search(text_index, embeddings.videos[rows], k)
    if (counts == 1).all():
        return scores, ids
    best_scores, best_ids = np.empty((len(videos), scores.shape[1]), scores.dtype), np.empty_like(ids[: len(videos)])
    ends = np.cumsum(counts)
    for query, (start, stop) in enumerate(zip(ends - counts, ends, strict=True)):
        clip_scores, clip_ids = scores[start:stop].ravel(), ids[start:stop].ravel()
        order = np.argsort(-clip_scores, kind="stable")
        _, first_seen = np.unique(clip_ids[order], return_index=True)  # each caption at its best clip's score
        keep = order[np.sort(first_seen)[: scores.shape[1]]]
        best_scores[query], best_ids[query] = clip_scores[keep], clip_ids[keep]
    return best_scores, best_ids
