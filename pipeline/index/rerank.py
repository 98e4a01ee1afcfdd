"""Re-ranking with a pair head: ``vidret index --rerank CHECKPOINT --rerank-k K``.

tightTransf scores a (caption, video) pair in one pass of its cross transformer, so ranking every pair
would take captions × videos passes. It re-ranks instead: each caption's K best videos by the dual
encoder's embeddings (t2v), and each captioned video's K best captions (v2t), are scored again by the
pair head. A ground truth among its query's K is ranked by those scores among them, by the rules of
``pipeline.metrics`` (ties count against it; a video's own captions are not its rivals); one outside
keeps its dual-encoder rank, which is past K. With K the gallery's size, this is the full pass.

The frames are the ones the embeddings were made from, found from the embed stage's record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.encode.checkpoint import load_model
from pipeline.encode.embed import check_frame_size, pair_features
from pipeline.encode.model import PAIR_HEADS, CLIP4Clip, score_pair_rows
from pipeline.encode.reader import FrameStore
from pipeline.errors import VidretError, shown_path
from pipeline.files import sha256_file
from pipeline.index.reader import Embeddings
from pipeline.metrics import GroundTruthRanks
from pipeline.stage import read_stage


@dataclass(frozen=True)
class Reranker:
    """A pair head's checkpoint and the frames it re-scores, checked, with what identifies them."""

    checkpoint: Path
    frames: Path
    k: int
    checkpoint_sha256: str
    frames_fingerprint: str | None

    def params(self) -> dict:
        """What determines the re-ranked metrics, for the index stage's parameters."""
        return {"checkpoint_sha256": self.checkpoint_sha256, "frames": self.frames_fingerprint, "k": self.k}

    def record(self) -> dict:
        return {"checkpoint": str(self.checkpoint.absolute()), "frames": str(self.frames.absolute()), "k": self.k}


def make_reranker(checkpoint: Path, k: int, embeddings_dir: Path, upstream: dict) -> Reranker:
    """The re-ranker of ``--rerank CHECKPOINT``: refused, in one line, unless it is a pair head's and the
    embeddings' record (``upstream``) names the frames they were made from."""
    checkpoint = Path(checkpoint)
    model, _ = load_model(checkpoint)
    if not model.scores_pairs:
        raise VidretError(
            f"--rerank {shown_path(checkpoint)}: a {model.spec.head} checkpoint, a dual encoder; --rerank takes a"
            f" pair head's ({', '.join(PAIR_HEADS)}: vidret encode train --head tightTransf)"
        )
    recorded = (upstream.get("input") or {}).get("frames")
    if recorded is None:
        raise VidretError(
            f"--rerank re-scores the videos' frames, and {embeddings_dir} names none (no embed stage record);"
            " embed with `vidret encode embed` to re-rank"
        )
    frames = Path(recorded)
    if not frames.is_dir():
        raise VidretError(f"--rerank: {frames}, the frames {embeddings_dir} was embedded from, is gone")
    fingerprint = ((read_stage(frames) or {}).get("input") or {}).get("fingerprint")
    return Reranker(checkpoint, frames, k, sha256_file(checkpoint), fingerprint)


def rerank(
    reranker: Reranker, embeddings: Embeddings, plain: GroundTruthRanks, device: torch.device,
    batch_size: int = 64, progress: bool = True,
) -> GroundTruthRanks:  # fmt: skip
    """Every query's rank after its dual-encoder top K is re-scored by the pair head; ``plain`` holds the
    dual-encoder ranks, kept for a ground truth outside its query's K."""
    if (embeddings.clips_per_video != 1).any():
        raise VidretError(
            "--rerank scores whole videos; these embeddings are of clips (decode without --clip-seconds/--clip-shots)"
        )
    model, _ = load_model(reranker.checkpoint)
    store = FrameStore(reranker.frames)
    absent = [video_id for video_id in embeddings.video_ids if video_id not in store]
    if absent:
        raise VidretError(
            f"--rerank: {len(absent)} embedded videos have no frames in {reranker.frames} (first: {absent[0]!r})"
        )
    check_frame_size(model, store.frame_shape(embeddings.video_ids), reranker.frames)
    model = model.to(device).eval()
    features = pair_features(model, store, store.clip_units(embeddings.video_ids), model.tokenize(embeddings.captions),
                             batch_size)  # fmt: skip
    texts, videos = (torch.from_numpy(array).to(device) for array in (embeddings.texts, embeddings.videos))
    truth = torch.from_numpy(embeddings.text_video_index).to(device)
    queries = torch.from_numpy(plain.v2t_videos).to(device)
    t2v_candidates = top_k(texts, videos, reranker.k)  # captions × K videos
    v2t_candidates = top_k(videos[queries], texts, reranker.k)  # captioned videos × K captions
    pairs = t2v_candidates.numel() + v2t_candidates.numel()
    with torch.no_grad(), tqdm(total=pairs, unit="pair", desc="rerank", disable=not progress) as bar:
        captions = torch.arange(len(texts), device=device)
        t2v_scores = pair_scores(model, features, captions, t2v_candidates, bar.update, captions_first=True)
        v2t_scores = pair_scores(model, features, queries, v2t_candidates, bar.update, captions_first=False)
    t2v = reranked_ranks(t2v_scores, t2v_candidates == truth[:, None], torch.ones_like(t2v_candidates, dtype=bool))
    own = truth[v2t_candidates] == queries[:, None]  # a video's own captions: right answers, not rivals
    v2t = reranked_ranks(v2t_scores, own, ~own)
    return GroundTruthRanks(
        np.where(t2v > 0, t2v, plain.t2v), np.where(v2t > 0, v2t, plain.v2t), plain.v2t_videos,
        plain.t2v_clips, plain.v2t_clips,
    )  # fmt: skip


def top_k(queries: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """Each query's ``k`` best candidates by inner product (all of them where there are fewer)."""
    return (queries @ candidates.T).topk(min(k, len(candidates)), dim=1).indices


def pair_scores(
    model: CLIP4Clip, features, queries: torch.Tensor, candidates: torch.Tensor, on_pass, captions_first: bool
) -> torch.Tensor:
    """The pair head's score of each query with each of its candidates, queries × K."""
    repeated = queries.repeat_interleave(candidates.shape[1])
    rows = (repeated, candidates.flatten()) if captions_first else (candidates.flatten(), repeated)
    return score_pair_rows(model.head, features, *rows, on_pass=on_pass).view(candidates.shape).cpu()


def reranked_ranks(scores: torch.Tensor, is_answer: torch.Tensor, is_rival: torch.Tensor) -> np.ndarray:
    """Per query, 1 + the rivals scoring at least its best answer among its candidates (queries × K masks);
    0 where no answer is among them."""
    is_answer, is_rival = is_answer.cpu(), is_rival.cpu()
    best = torch.where(is_answer, scores, -torch.inf).amax(dim=1, keepdim=True)
    rivals = ((scores >= best) & is_rival & ~is_answer).sum(dim=1)
    return torch.where(is_answer.any(dim=1), rivals + 1, 0).numpy()
