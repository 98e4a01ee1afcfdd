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

from pipeline.device import resolve_device
from pipeline.encode.distributed import World
from pipeline.encode.embed import embed_texts, load_embedding_model
from pipeline.encode.model import CLIP4Clip, ModelSpec
from pipeline.errors import VidretError
from pipeline.files import sha256_file
from pipeline.index.faiss_index import on_search_device, read_index, search
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


def find_index_dir(run: Path | str) -> Path:
    """``RUN/index``, or ``run`` itself when it is an index directory."""
    run = Path(run)
    for candidate in (run / "index", run):
        if (candidate / INDEX_FILE).is_file():
            return candidate
    raise VidretError(f"{run}: no {INDEX_FILE} here or in {run / 'index'}; build it with `vidret index`")


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


def search_videos(run: Path | str, queries: list[str], k: int = 5, device: str = "auto") -> list[list[SearchHit]]:
    """The ``k`` best videos for every query, best first."""
    if k < 1:
        raise VidretError(f"--k must be at least 1, got {k}")
    queries = [query.strip() for query in queries]
    if not queries or not all(queries):
        raise VidretError("give one or more non-empty queries")
    index_dir = find_index_dir(run)
    model = load_query_model(index_dir)  # first: it checks the index files against their record
    index, ids = read_index(index_dir)
    device = resolve_device(device)
    model = model.to(device).eval()
    if model.clip.visual.output_dim != index.d:
        raise VidretError(
            f"{index_dir / INDEX_FILE}: {index.d}-dimensional, but {model.spec.model} embeds in"
            f" {model.clip.visual.output_dim} dimensions"
        )
    texts = embed_texts(model, model.tokenize(queries), World(rank=0, size=1, device=device))
    scores, rows = search(on_search_device(index), texts, k)
    video_ids, paths = ids.column("video_id").to_pylist(), ids.column("path").to_pylist()
    # An id map of an earlier vidret has no clip columns: its rows are whole videos.
    clip_index, start_s, end_s = (
        ids.column(name).to_pylist() if name in ids.column_names else [default] * ids.num_rows
        for name, default in zip(CLIP_COLUMNS, (0, 0.0, None), strict=True)
    )
    return [
        [
            SearchHit(rank + 1, float(score), video_ids[row], clip_index[row], start_s[row], end_s[row], paths[row])
            for rank, (score, row) in enumerate(zip(query_scores, query_rows, strict=True))
        ]
        for query_scores, query_rows in zip(scores, rows, strict=True)
    ]


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
