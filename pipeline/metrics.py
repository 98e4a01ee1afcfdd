"""Retrieval metrics (R@1/5/10, median and mean rank) from text and video embeddings.

Similarity is the inner product, so the embeddings should already be
L2-normalised. Ranks are 1-based and ties count against the query: a query's
rank is the number of candidates scoring >= its ground truth, so a model that
scores everything alike gets the worst rank, never the best. A video (v2t) may
have several captions: its rank is its best caption's, and only other videos'
captions count as candidates against it, so a caption repeated verbatim does
not rank its own video down.

A video may be embedded as several clips (consecutive rows of the video
embeddings): it scores a caption by its best clip, the max over its clips, and
the clip that gave a ground-truth pair its score is returned with the ranks. A
video without a caption is a text-to-video distractor, and no video-to-text
query (it has no ground truth).

Ranks are computed a block of queries at a time: one block costs
``block_size x candidates`` float32 scores, and the full similarity matrix is
never held. The work runs on whatever device the text embeddings are on.

Dual softmax (DSL, Cheng et al. 2021) re-weights every score by a prior: how much
the candidate prefers this query over all the other queries,
``sim[q, c] * softmax_q(scale * sim[:, c])``. The prior comes from the whole test
gallery, so DSL metrics are always reported apart from the plain ones. With clips,
DSL re-weights the video-level scores (each video's max over its clips).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor
RECALL_AT = (1, 5, 10)


def _as_matrix(embeddings: ArrayLike, name: str, device: torch.device) -> torch.Tensor:
    matrix = torch.as_tensor(embeddings).to(device=device, dtype=torch.float32)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be 2-D (items x dim), got shape {tuple(matrix.shape)}")
    if not torch.isfinite(matrix).all():
        # A NaN compares false with everything and would silently give rank 0.
        raise ValueError(f"{name} contains NaN or infinite values")
    return matrix


def _as_index(text_video_index: ArrayLike, num_texts: int, num_videos: int) -> np.ndarray:
    if isinstance(text_video_index, torch.Tensor):
        text_video_index = text_video_index.cpu().numpy()
    index = np.asarray(text_video_index)
    if index.ndim != 1 or index.shape[0] != num_texts:
        raise ValueError(f"text_video_index must have one entry per text ({num_texts}), got shape {index.shape}")
    if num_texts and index.dtype.kind not in "iu":
        raise ValueError(f"text_video_index must hold integers, got dtype {index.dtype}")
    index = index.astype(np.int64)
    if num_texts and (index.min() < 0 or index.max() >= num_videos):
        raise ValueError(f"text_video_index values must lie in [0, {num_videos}), got {index.min()}..{index.max()}")
    return index


@dataclass(frozen=True)
class GroundTruthRanks:
    """Every query's ground-truth rank, and the clip that scored its ground-truth pair."""

    t2v: np.ndarray  # int64, per caption: the rank of its video among all videos
    v2t: np.ndarray  # int64, per captioned video, in video order: the rank of its best own caption
    v2t_videos: np.ndarray  # int64, the video (0..videos-1) of each v2t rank
    t2v_clips: np.ndarray  # int64, per caption: its video's best clip for it (0-based within the video)
    v2t_clips: np.ndarray  # int64, per v2t query: the clip of its best own caption's score


@dataclass(frozen=True)
class _Clips:
    """Where each video's clip rows lie among the video embeddings (a video's clips are consecutive rows)."""

    counts: np.ndarray  # int64, clips per video
    first: np.ndarray  # int64, videos + 1: the first row of each video, then the number of rows
    whole_videos: bool  # one row per video: scores need no reduction over clips

    @classmethod
    def of(cls, clips_per_video: ArrayLike | None, num_rows: int) -> _Clips:
        if clips_per_video is None:
            counts = np.ones(num_rows, dtype=np.int64)
        else:
            if isinstance(clips_per_video, torch.Tensor):
                clips_per_video = clips_per_video.cpu().numpy()
            counts = np.asarray(clips_per_video)
            if counts.ndim != 1 or (counts.size and counts.dtype.kind not in "iu"):
                raise ValueError(f"clips_per_video must be a 1-D array of integers, got shape {counts.shape}")
            counts = counts.astype(np.int64)
            if counts.size == 0 or counts.min() < 1 or counts.sum() != num_rows:
                raise ValueError(
                    f"clips_per_video must give every video at least one clip and sum to the {num_rows} video"
                    f" embedding rows, got {counts.size} videos and {counts.sum()} clips"
                )
        return cls(counts, np.concatenate(([0], np.cumsum(counts))), bool((counts == 1).all()))

    def rows_of(self, videos: np.ndarray) -> slice | np.ndarray:
        """The clip rows of ``videos``, in order: a slice when they are consecutive."""
        counts = self.counts[videos]
        rows = np.repeat(self.first[videos] - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
        rows += np.arange(len(rows))
        return slice(int(rows[0]), int(rows[-1]) + 1) if rows[-1] - rows[0] + 1 == len(rows) else rows


def _best_clips(clip_scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Videos x texts: the max of ``clip_scores`` (clips x texts) over each video's ``counts`` consecutive clip
    rows, as a video scores a caption by its best clip. (Reducing rows: 4x faster on a CPU than columns.)"""
    return torch.segment_reduce(clip_scores, "max", lengths=counts, axis=0)


def _best_own_clip(
    clip_scores: torch.Tensor, first_row: torch.Tensor, counts: torch.Tensor, column: torch.Tensor, max_clips: int
) -> torch.Tensor:
    """For each pair i, the clip k < counts[i] maximising ``clip_scores[first_row[i] + k, column[i]]`` (the
    first on a tie): which clip of a video scored a caption."""
    k = torch.arange(max_clips, device=clip_scores.device)
    valid = k < counts[:, None]
    rows = torch.where(valid, first_row[:, None] + k, first_row[:, None])  # padding repeats the first clip
    scores = clip_scores[rows, column[:, None].expand(rows.shape)].masked_fill(~valid, -torch.inf)
    return scores.argmax(dim=1)


def _query_logsumexp(
    texts: torch.Tensor,
    video_scores: Callable[[slice], tuple[torch.Tensor, torch.Tensor]],
    num_videos: int,
    v2t_queries: torch.Tensor | None,
    scale: float,
    block_size: int,
    on_block: Callable[[int], object],
) -> tuple[torch.Tensor, torch.Tensor]:
    """log sum exp(scale * sim) over texts for every video, and over the v2t query videos (``v2t_queries``;
    None: all) for every text: the normalisers of the dual-softmax priors, accumulated a block of texts at a
    time."""
    over_texts = torch.full((num_videos,), -torch.inf, device=texts.device)
    over_videos = torch.empty(texts.shape[0], device=texts.device)
    for start in range(0, texts.shape[0], block_size):
        scores = scale * video_scores(slice(start, start + block_size))[1]
        queries = scores if v2t_queries is None else scores[:, v2t_queries]
        over_videos[start : start + block_size] = torch.logsumexp(queries, dim=1)
        over_texts = torch.logaddexp(over_texts, torch.logsumexp(scores, dim=0))
        on_block(len(scores))
    return over_texts, over_videos


def _query_blocks(clip_rows: np.ndarray, block_size: int) -> list[tuple[int, int]]:
    """Consecutive [start, stop) ranges of queries holding at most ``block_size`` clip rows each (a query with
    more rows alone): a v2t block costs ``block_size x captions`` scores whatever the number of clips."""
    ends = np.cumsum(clip_rows)
    blocks, start = [], 0
    while start < len(clip_rows):
        before = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, before + block_size, side="right")), start + 1)
        blocks.append((start, stop))
        start = stop
    return blocks


def ground_truth_ranks(
    text_embeddings: ArrayLike,
    video_embeddings: ArrayLike,
    text_video_index: ArrayLike,
    block_size: int = 4096,
    dual_softmax: float | None = None,
    on_block: Callable[[int], object] = lambda queries: None,
    clips_per_video: ArrayLike | None = None,
) -> GroundTruthRanks:
    """Every query's 1-based, pessimistic rank, with the clip that scored its ground-truth pair.

    ``video_embeddings`` holds one row per clip, a video's clips in consecutive rows; ``clips_per_video``
    counts them (None: one row per video). A video scores a caption by its best clip.
    ``text_video_index[i]`` is text i's video (0..videos-1). t2v: each caption ranks every video, uncaptioned
    ones included (they are distractors). v2t: only captioned videos are queries; a video's rank is 1 + the
    number of other videos' captions scoring >= its best own caption. ``dual_softmax``: rank DSL-re-weighted
    video-level scores (the max over clips) with this softmax scale (CLIP's logit scale, 100, is the usual
    choice); each direction's prior is over its queries (all captions; the captioned videos).
    ``on_block`` is called with the number of queries of each finished block (texts, then the v2t videos;
    with DSL, a first pass over the texts before them).
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    device = text_embeddings.device if isinstance(text_embeddings, torch.Tensor) else torch.device("cpu")
    texts = _as_matrix(text_embeddings, "text_embeddings", device)
    rows = _as_matrix(video_embeddings, "video_embeddings", device)
    if texts.shape[1] != rows.shape[1]:
        raise ValueError(f"embedding sizes differ: texts {texts.shape[1]}, videos {rows.shape[1]}")
    if rows.shape[0] == 0:
        raise ValueError("no videos to rank")
    if texts.shape[0] == 0:
        raise ValueError("no captions to rank: ranks need at least one captioned video")
    clips = _Clips.of(clips_per_video, rows.shape[0])
    num_texts, num_videos = texts.shape[0], len(clips.counts)
    index = _as_index(text_video_index, num_texts, num_videos)
    captions_per_video = np.bincount(index, minlength=num_videos)
    queries = np.flatnonzero(captions_per_video)  # the v2t queries: captioned videos
    all_captioned = len(queries) == num_videos

    # Texts grouped by video, so a block of v2t queries owns one contiguous slice of them.
    by_video = np.argsort(index, kind="stable")
    first_text = np.concatenate(([0], np.cumsum(captions_per_video)))
    index_t = torch.from_numpy(index).to(device)
    by_video_t = torch.from_numpy(by_video).to(device)
    counts_t, first_clip_t = torch.from_numpy(clips.counts).to(device), torch.from_numpy(clips.first).to(device)
    query_of_video = np.full(num_videos, -1, dtype=np.int64)
    query_of_video[queries] = np.arange(len(queries))
    query_of_video_t = torch.from_numpy(query_of_video).to(device)
    max_clips = int(clips.counts.max())

    def video_scores(texts_block: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """The scores of a block of texts: clips x texts, and texts x videos."""
        if clips.whole_videos:
            scores = texts[texts_block] @ rows.T
            return scores.T, scores
        clip_scores = rows @ texts[texts_block].T
        return clip_scores, _best_clips(clip_scores, counts_t).T

    t2v = torch.empty(num_texts, dtype=torch.int64, device=device)
    t2v_clips = torch.zeros(num_texts, dtype=torch.int64, device=device)
    v2t = torch.empty(len(queries), dtype=torch.int64, device=device)
    v2t_clips = torch.zeros(len(queries), dtype=torch.int64, device=device)
    with torch.inference_mode():
        if dual_softmax is not None:
            v2t_queries = None if all_captioned else torch.from_numpy(queries).to(device)
            over_texts, over_videos = _query_logsumexp(
                texts, video_scores, num_videos, v2t_queries, dual_softmax, block_size, on_block
            )
        for start in range(0, num_texts, block_size):
            stop = min(start + block_size, num_texts)
            clip_scores, scores = video_scores(slice(start, stop))
            if dual_softmax is not None:
                scores = scores * torch.exp(dual_softmax * scores - over_texts)
            # Gathered from the same product, so the ground truth equals its own score bit for bit.
            truth = scores.gather(1, index_t[start:stop, None])
            t2v[start:stop] = (scores >= truth).sum(dim=1)
            if not clips.whole_videos:
                own = index_t[start:stop]
                columns = torch.arange(stop - start, device=device)
                best = _best_own_clip(clip_scores, first_clip_t[own], counts_t[own], columns, max_clips)
                t2v_clips[start:stop] = best
            on_block(stop - start)

        for start, stop in _query_blocks(clips.counts[queries], block_size):
            block_videos = queries[start:stop]
            block_counts = clips.counts[block_videos]
            block_rows = clips.rows_of(block_videos)
            if not isinstance(block_rows, slice):
                block_rows = torch.from_numpy(block_rows).to(device)
            clip_scores = rows[block_rows] @ texts.T
            scores = clip_scores
            if not clips.whole_videos:
                scores = _best_clips(clip_scores, torch.from_numpy(block_counts).to(device))
            if dual_softmax is not None:
                scores = scores * torch.exp(dual_softmax * scores - over_videos)
            own = by_video_t[first_text[block_videos[0]] : first_text[block_videos[-1] + 1]]
            owner_of_own = query_of_video_t[index_t[own]] - start
            # Best own caption = max own score; its pessimistic rank is the best rank among own captions.
            own_scores = scores[owner_of_own, own]
            truth = torch.full((stop - start,), -torch.inf, device=device)
            truth = truth.scatter_reduce(0, owner_of_own, own_scores, reduce="amax")
            # Own captions tied with the best one are right answers, not rivals (MSVD repeats captions
            # verbatim): only other videos' captions count against the video.
            is_best = own_scores >= truth[owner_of_own]
            own_ties = torch.zeros(stop - start, dtype=torch.int64, device=device)
            own_ties = own_ties.index_add(0, owner_of_own, is_best.long())
            v2t[start:stop] = (scores >= truth[:, None]).sum(dim=1) - own_ties + 1
            if not clips.whole_videos:
                counts = counts_t[index_t[own]]
                first_row = torch.from_numpy(np.concatenate(([0], np.cumsum(block_counts)[:-1]))).to(device)
                best = _best_own_clip(clip_scores, first_row[owner_of_own], counts, own, max_clips)
                # The clip of the best own caption (the earliest clip when tied captions prefer different ones).
                chosen = torch.where(is_best, best, max_clips)
                unset = torch.full((stop - start,), max_clips, dtype=torch.int64, device=device)
                v2t_clips[start:stop] = unset.scatter_reduce(0, owner_of_own, chosen, reduce="amin")
            on_block(stop - start)
    return GroundTruthRanks(
        t2v.cpu().numpy(), v2t.cpu().numpy(), queries, t2v_clips.cpu().numpy(), v2t_clips.cpu().numpy()
    )


def retrieval_ranks(
    text_embeddings: ArrayLike,
    video_embeddings: ArrayLike,
    text_video_index: ArrayLike,
    block_size: int = 4096,
    dual_softmax: float | None = None,
    on_block: Callable[[int], object] = lambda queries: None,
    clips_per_video: ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(t2v ranks per text, v2t ranks per captioned video), as ``ground_truth_ranks`` computes them."""
    ranks = ground_truth_ranks(
        text_embeddings, video_embeddings, text_video_index, block_size, dual_softmax, on_block, clips_per_video
    )
    return ranks.t2v, ranks.v2t


def summarize_ranks(ranks: np.ndarray) -> dict[str, float]:
    """{"R@1": .., "R@5": .., "R@10": .., "MdR": .., "MnR": ..} as plain Python floats."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {ranks.shape}")
    summary = {f"R@{k}": float(np.mean(ranks <= k) * 100.0) for k in RECALL_AT}
    summary["MdR"] = float(np.median(ranks))
    summary["MnR"] = float(np.mean(ranks))
    return summary


def retrieval_metrics(
    text_embeddings: ArrayLike,
    video_embeddings: ArrayLike,
    text_video_index: ArrayLike,
    block_size: int = 4096,
    dual_softmax: float | None = None,
    clips_per_video: ArrayLike | None = None,
) -> dict:
    """{"t2v": summarize(t2v), "v2t": summarize(v2t), "num_videos", "num_clips", "num_texts",
    "uncaptioned_videos"}"""
    ranks = ground_truth_ranks(
        text_embeddings, video_embeddings, text_video_index, block_size, dual_softmax, clips_per_video=clips_per_video
    )
    num_videos = len(video_embeddings) if clips_per_video is None else len(clips_per_video)
    return {
        "t2v": summarize_ranks(ranks.t2v),
        "v2t": summarize_ranks(ranks.v2t),
        "num_videos": num_videos,
        "num_clips": len(video_embeddings),
        "num_texts": int(ranks.t2v.size),
        "uncaptioned_videos": num_videos - int(ranks.v2t.size),
    }


def score_matrix_metrics(scores: ArrayLike, text_video_index: ArrayLike) -> dict:
    """``retrieval_metrics`` of a precomputed texts × videos score matrix (a pair head's), by the same rules."""
    scores = torch.as_tensor(scores, dtype=torch.float32)
    # The scores, as text embeddings, against the identity: their product gives each score back exactly.
    return retrieval_metrics(scores, torch.eye(scores.shape[1], device=scores.device), text_video_index)
