"""Retrieval metrics (R@1/5/10, median and mean rank) from text and video embeddings.

Similarity is the inner product, so the embeddings should already be
L2-normalised. Ranks are 1-based and ties count against the query: a query's
rank is the number of candidates scoring >= its ground truth, so a model that
scores everything alike gets the worst rank, never the best. A video (v2t) may
have several captions: its rank is its best caption's, and only other videos'
captions count as candidates against it, so a caption repeated verbatim does
not rank its own video down.

Ranks are computed a block of queries at a time: one block costs
``block_size x candidates`` float32 scores, and the full similarity matrix is
never held. The work runs on whatever device the text embeddings are on.

Dual softmax (DSL, Cheng et al. 2021) re-weights every score by a prior: how much
the candidate prefers this query over all the other queries,
``sim[q, c] * softmax_q(scale * sim[:, c])``. The prior comes from the whole test
gallery, so DSL metrics are always reported apart from the plain ones.
"""

from __future__ import annotations

from collections.abc import Callable

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


def _query_logsumexp(
    texts: torch.Tensor, videos: torch.Tensor, scale: float, block_size: int, on_block: Callable[[int], object]
) -> tuple[torch.Tensor, torch.Tensor]:
    """log sum exp(scale * sim) over texts for every video, and over videos for every text: the
    normalisers of the dual-softmax priors, accumulated a block of texts at a time."""
    over_texts = torch.full((videos.shape[0],), -torch.inf, device=texts.device)
    over_videos = torch.empty(texts.shape[0], device=texts.device)
    for start in range(0, texts.shape[0], block_size):
        scores = scale * (texts[start : start + block_size] @ videos.T)
        over_videos[start : start + block_size] = torch.logsumexp(scores, dim=1)
        over_texts = torch.logaddexp(over_texts, torch.logsumexp(scores, dim=0))
        on_block(len(scores))
    return over_texts, over_videos


def retrieval_ranks(
    text_embeddings: ArrayLike,
    video_embeddings: ArrayLike,
    text_video_index: ArrayLike,
    block_size: int = 4096,
    dual_softmax: float | None = None,
    on_block: Callable[[int], object] = lambda queries: None,
) -> tuple[np.ndarray, np.ndarray]:
    """(t2v_ranks per text, v2t_ranks per video), 1-based, pessimistic ties.

    ``text_video_index[i]`` is the row of text i's video in ``video_embeddings``.
    A video's v2t rank is 1 + the number of other videos' captions scoring >= its
    best own caption; every video needs at least one caption. ``dual_softmax``: rank DSL-re-weighted scores
    with this softmax scale (CLIP's logit scale, 100, is the usual choice).
    ``on_block`` is called with the number of queries of each finished block
    (texts, then videos; with DSL, a first pass over the texts before them).
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    device = text_embeddings.device if isinstance(text_embeddings, torch.Tensor) else torch.device("cpu")
    texts = _as_matrix(text_embeddings, "text_embeddings", device)
    videos = _as_matrix(video_embeddings, "video_embeddings", device)
    num_texts, num_videos = texts.shape[0], videos.shape[0]
    if texts.shape[1] != videos.shape[1]:
        raise ValueError(f"embedding sizes differ: texts {texts.shape[1]}, videos {videos.shape[1]}")
    if num_videos == 0:
        raise ValueError("no videos to rank")
    index = _as_index(text_video_index, num_texts, num_videos)
    captions_per_video = np.bincount(index, minlength=num_videos)
    uncaptioned = np.flatnonzero(captions_per_video == 0)
    if uncaptioned.size:
        shown = ", ".join(str(v) for v in uncaptioned[:10]) + (", ..." if uncaptioned.size > 10 else "")
        raise ValueError(f"{uncaptioned.size} video(s) have no caption, so v2t has no ground truth: {shown}")

    # Texts grouped by video, so a block of videos owns one contiguous slice of them.
    by_video = np.argsort(index, kind="stable")
    first_text = np.concatenate(([0], np.cumsum(captions_per_video)))
    index_t = torch.from_numpy(index).to(device)
    by_video_t = torch.from_numpy(by_video).to(device)

    t2v = torch.empty(num_texts, dtype=torch.int64, device=device)
    v2t = torch.empty(num_videos, dtype=torch.int64, device=device)
    with torch.inference_mode():
        if dual_softmax is not None:
            over_texts, over_videos = _query_logsumexp(texts, videos, dual_softmax, block_size, on_block)
        for start in range(0, num_texts, block_size):
            stop = min(start + block_size, num_texts)
            scores = texts[start:stop] @ videos.T
            if dual_softmax is not None:
                scores = scores * torch.exp(dual_softmax * scores - over_texts)
            # Gathered from the same product, so the ground truth equals its own score bit for bit.
            truth = scores.gather(1, index_t[start:stop, None])
            t2v[start:stop] = (scores >= truth).sum(dim=1)
            on_block(stop - start)

        for start in range(0, num_videos, block_size):
            stop = min(start + block_size, num_videos)
            scores = videos[start:stop] @ texts.T
            if dual_softmax is not None:
                scores = scores * torch.exp(dual_softmax * scores - over_videos)
            own = by_video_t[first_text[start] : first_text[stop]]
            rows = index_t[own] - start
            # Best own caption = max own score; its pessimistic rank is the best rank among own captions.
            own_scores = scores[rows, own]
            truth = torch.full((stop - start,), -torch.inf, device=device)
            truth = truth.scatter_reduce(0, rows, own_scores, reduce="amax")
            # Own captions tied with the best one are right answers, not rivals (MSVD repeats captions
            # verbatim): only other videos' captions count against the video.
            own_ties = torch.zeros(stop - start, dtype=torch.int64, device=device)
            own_ties = own_ties.index_add(0, rows, (own_scores >= truth[rows]).long())
            v2t[start:stop] = (scores >= truth[:, None]).sum(dim=1) - own_ties + 1
            on_block(stop - start)
    return t2v.cpu().numpy(), v2t.cpu().numpy()


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
) -> dict:
    """{"t2v": summarize(t2v), "v2t": summarize(v2t), "num_videos": .., "num_texts": ..}"""
    t2v, v2t = retrieval_ranks(text_embeddings, video_embeddings, text_video_index, block_size, dual_softmax)
    return {
        "t2v": summarize_ranks(t2v),
        "v2t": summarize_ranks(v2t),
        "num_videos": int(v2t.size),
        "num_texts": int(t2v.size),
    }
