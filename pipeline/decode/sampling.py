"""Which source frames to decode: T indices per video, in ascending order.

``uniform`` and ``linspace`` spread T indices over the whole video, repeating
frames when it is shorter than that (as MMAction2 does), so every video yields
T real frames. The CLIP4Clip rules take one frame per second and never repeat
one: a video with fewer seconds than T gets ``PADDING`` for the missing
indices, at the end, and decode writes an all-zero frame there (CLIP4Clip pads
with zeros and masks them).
"""

from __future__ import annotations

import hashlib

import numpy as np

SAMPLINGS = ("uniform", "linspace", "clip4clip", "clip4clip-head")
PADDING = -1  # the index of a padding frame: no source frame, all zeros


def sample_frame_indices(
    source_num_frames: int,
    num_frames: int,
    sampling: str = "uniform",
    *,
    fps: float | None = None,
    rng: np.random.Generator | None = None,
) -> list[int]:
    """Indices of the frames to keep from a video of ``source_num_frames`` frames.

    ``uniform`` is MMAction2's ``UniformSample``: the video is cut into
    ``num_frames`` segments of ``seg = (n - 1) / T`` frames, and segment ``i``
    is ``[round(seg * i), round(seg * (i + 1))]`` (numpy rounding, half to
    even, as MMAction2 does). Test mode takes frame ``round(seg * i) +
    int(seg / 2)`` of each; with ``rng``, train mode draws one frame of each
    segment at random, inclusive of both ends.

    ``linspace`` is ``linspace(0, n - 1, T)`` truncated to integers, so the
    first and last frames are always kept.

    ``clip4clip`` and ``clip4clip-head`` are CLIP4Clip's loader: frame
    ``sec * int(fps)`` for every second that has one (OpenCV's frame rate,
    truncated; a step of one frame below 1 fps), then of those ``linspace``'s T
    (its ``--slice_framepos 2``) or the first T (``--slice_framepos 0``),
    padded with ``PADDING`` when there are fewer.
    """
    if source_num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {source_num_frames}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"unknown sampling {sampling!r} (expected one of {', '.join(SAMPLINGS)})")
    if rng is not None and sampling != "uniform":
        raise ValueError(f"train-mode draws exist for uniform sampling only, not {sampling!r}")
    if sampling == "uniform":
        indices = _uniform(source_num_frames, num_frames, rng)
    elif sampling == "linspace":
        indices = _linspace(source_num_frames, num_frames)
    else:
        if fps is None:
            raise ValueError(f"{sampling} sampling needs the video's frame rate")
        indices = _one_per_second(source_num_frames, num_frames, fps, head=sampling == "clip4clip-head")
    return indices.tolist()


def _uniform(source_num_frames: int, num_frames: int, rng: np.random.Generator | None) -> np.ndarray:
    segment = (source_num_frames - 1) / num_frames
    starts = np.round(segment * np.arange(num_frames)).astype(np.int64)
    if rng is None:
        return starts + int(segment / 2)
    ends = np.round(segment * np.arange(1, num_frames + 1)).astype(np.int64)
    return rng.integers(starts, ends + 1)


def _linspace(source_num_frames: int, num_frames: int) -> np.ndarray:
    return np.linspace(0, source_num_frames - 1, num=num_frames).astype(np.int64)


def _one_per_second(source_num_frames: int, num_frames: int, fps: float, head: bool) -> np.ndarray:
    seconds = np.arange(0, source_num_frames, max(int(fps), 1))
    if len(seconds) > num_frames:
        seconds = seconds[:num_frames] if head else seconds[_linspace(len(seconds), num_frames)]
    return np.concatenate([seconds, np.full(num_frames - len(seconds), PADDING)])


def train_view_seed(seed: int, video_id: str, view: int) -> np.random.SeedSequence:
    """The seed of one train-mode view of a video: from the run's seed, the video's id and the view
    alone, so that the draws do not depend on sharding or manifest order."""
    video = int.from_bytes(hashlib.sha256(video_id.encode()).digest()[:8], "big")
    return np.random.SeedSequence([seed, video, view])
