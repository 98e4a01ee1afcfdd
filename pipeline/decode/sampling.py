"""Which source frames to decode: T indices spread uniformly over a video.

Both rules return exactly ``num_frames`` indices in ascending order, repeating
frames when the video is shorter than that, so every video yields a T-frame
tensor.
"""

from __future__ import annotations

import numpy as np

SAMPLINGS = ("uniform", "linspace")


def sample_frame_indices(source_num_frames: int, num_frames: int, sampling: str = "uniform") -> list[int]:
    """Indices of the frames to keep from a video of ``source_num_frames`` frames.

    ``uniform`` is MMAction2's ``UniformSample`` in test mode (one clip): the
    video is cut into ``num_frames`` segments of ``seg = (n - 1) / T`` frames
    and frame ``round(seg * i) + int(seg / 2)`` is taken from segment ``i``
    (numpy rounding, half to even, as MMAction2 does).

    ``linspace`` is CLIP4Clip's uniform rule: ``linspace(0, n - 1, T)``
    truncated to integers, so the first and last frames are always kept.
    """
    if source_num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {source_num_frames}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if sampling == "uniform":
        segment = (source_num_frames - 1) / num_frames
        starts = np.round(segment * np.arange(num_frames)).astype(np.int64)
        indices = starts + int(segment / 2)
    elif sampling == "linspace":
        indices = np.linspace(0, source_num_frames - 1, num=num_frames).astype(np.int64)
    else:
        raise ValueError(f"unknown sampling {sampling!r} (expected one of {', '.join(SAMPLINGS)})")
    return indices.tolist()
