"""Free-text search over a run's video index with the run's own text tower.

The index stage records which model wrote the embeddings (``RUN/index/stage.json``);
search loads that model, embeds the queries and asks ``videos.faiss`` for the
nearest videos. An index of clips returns clips: moments, so one video may come
several times.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import defaults
from pipeline.device import resolve_device
from pipeline.encode.distributed import World
from pipeline.encode.embed import embed_texts, load_embedding_model
from pipeline.encode.model import CLIP4Clip, ModelSpec
from pipeline.errors import VidretError
from pipeline.files import sha256_file
from pipeline.index.faiss_index import on_search_device, read_index, search
from pipeline.run_folder import find_index_dir
from pipeline.schemas import CLIP_COLUMNS, ID_MAP_FILE, INDEX_FILE
from pipeline.stage import STAGE_FILE, read_committed


@dataclass(frozen=True)
class SearchHit:
    rank: int
    score: float
    video_id: str
    clip_index: int  # 0 for a whole video
    start_s: float  # where the clip starts in the video, in seconds
    end_s: float | None  # where it ends; None when unknown (a whole video whose embeddings gave no duration)
    path: str | None  # the video file, when the run knows it


def load_query_model(index_dir: Path) -> CLIP4Clip:
    """The model whose text tower wrote the indexed embeddings' captions, as the index stage recorded it."""
    record = (read_committed(index_dir, "index", (INDEX_FILE, ID_MAP_FILE)) or {}).get("model")
    if not record:
        raise VidretError(
            f"{index_dir / STAGE_FILE}: no record of the model that wrote these embeddings (from another tool?);"
            " search needs the run's text tower"
        )
    checkpoint = record.get("checkpoint")
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise VidretError(f"{checkpoint}: the checkpoint these embeddings came from is gone")
        if sha256_file(Path(checkpoint)) != record.get("checkpoint_sha256"):
            raise VidretError(
                f"{checkpoint} changed after the embeddings were written; embed and index again before searching"
            )
    # A record written before vidret recorded a field ran with ModelSpec's default for it.
    model, _ = load_embedding_model({**ModelSpec().to_dict(), **record})
    return model


def check_query(query: str, what: str = "query") -> str:
    """The query without surrounding space; a VidretError for an empty or over-long one."""
    query = query.strip()
    if not query:
        raise VidretError(f"{what} is empty; give some words to search for")
    if len(query) > defaults.MAX_QUERY_CHARS:
        raise VidretError(f"{what} is {len(query)} characters long; the most is {defaults.MAX_QUERY_CHARS}")
    return query


def check_k(k: int, what: str = "--k") -> int:
    if not 1 <= k <= defaults.MAX_K:
        raise VidretError(f"{what} must be from 1 to {defaults.MAX_K}, got {k}")
    return k


class Searcher:
    """A run's text tower and index, loaded once; ``search`` answers queries with them.

    ``embed`` and ``nearest`` are search's two steps, apart so that a server can time each.
    """

    def __init__(self, model: CLIP4Clip, index, ids, device: str = "auto"):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        if model.clip.visual.output_dim != index.d:
            raise VidretError(
                f"the index is {index.d}-dimensional, but {model.spec.model} embeds in"
                f" {model.clip.visual.output_dim} dimensions"
            )
        self.index = on_search_device(index)
        self.video_ids, self.paths = ids.column("video_id").to_pylist(), ids.column("path").to_pylist()
        # An id map of an earlier vidret has no clip columns: its rows are whole videos.
        self.clip_index, self.start_s, self.end_s = (
            ids.column(name).to_pylist() if name in ids.column_names else [default] * ids.num_rows
            for name, default in zip(CLIP_COLUMNS, (0, 0.0, None), strict=True)
        )

    @classmethod
    def open(cls, run: Path | str, device: str = "auto") -> Searcher:
        """The searcher of ``run`` (a run folder, or its index folder)."""
        index_dir = find_index_dir(run)
        model = load_query_model(index_dir)  # first: it checks the index files against their record
        index, ids = read_index(index_dir)
        try:
            return cls(model, index, ids, device)
        except VidretError as error:
            raise VidretError(f"{index_dir / INDEX_FILE}: {error}") from None

    @property
    def num_clips(self) -> int:
        return len(self.video_ids)

    def embed(self, queries: list[str]) -> np.ndarray:
        """The queries' text embeddings, one unit row each."""
        with torch.inference_mode():
            return embed_texts(self.model, self.model.tokenize(queries), World(rank=0, size=1, device=self.device))

    def nearest(self, texts: np.ndarray, k: int) -> list[list[SearchHit]]:
        """The ``k`` best clips for every row of ``texts``, best first."""
        scores, rows = search(self.index, texts, k)
        return [
            [self.hit(rank + 1, float(score), row) for rank, (score, row) in enumerate(zip(*query, strict=True))]
            for query in zip(scores, rows, strict=True)
        ]

    def hit(self, rank: int, score: float, row: int) -> SearchHit:
        return SearchHit(
            rank, score, self.video_ids[row], self.clip_index[row], self.start_s[row], self.end_s[row], self.paths[row]
        )

    def search(self, queries: list[str], k: int = 5) -> list[list[SearchHit]]:
        """The ``k`` best videos or moments for every query, best first."""
        return self.nearest(self.embed(queries), k)


def search_videos(run: Path | str, queries: list[str], k: int = 5, device: str = "auto") -> list[list[SearchHit]]:
    """The ``k`` best videos for every query, best first."""
    check_k(k)
    if not queries:
        raise VidretError("give one or more non-empty queries")
    queries = [check_query(query, f"query {number}") for number, query in enumerate(queries, 1)]
    return Searcher.open(run, device).search(queries, k)


def format_hits(query: str, hits: list[SearchHit]) -> str:
    """The query, then one line per hit: rank, video, its moment (start-end s), score and file."""
    lines = [f"query: {query}"]
    for hit in hits:
        end = f"{hit.end_s:.1f}" if hit.end_s is not None else "?"
        moment = f"{hit.start_s:.1f}-{end} s"
        lines.append(f"  {hit.rank:>3}  {hit.video_id}  {moment}  {hit.score:.4f}  {hit.path or '-'}")
    return "\n".join(lines)


def hits_json(query: str, hits: list[SearchHit]) -> str:
    """One JSON object per line and hit: its query (several queries' hits may share one stream), then the
    hit's fields (``SearchHit``)."""
    return "\n".join(json.dumps({"query": query, **asdict(hit)}) for hit in hits)


def read_queries(path: Path | str, stream=None) -> list[str]:
    """Queries one per line from ``path``, or from ``stream`` when ``path`` is ``-``; blank lines are skipped."""
    if str(path) == "-":
        lines = stream.read().splitlines()
    else:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as error:
            raise VidretError(f"{path}: cannot read queries ({error.strerror})") from None
    return [line.strip() for line in lines if line.strip()]
