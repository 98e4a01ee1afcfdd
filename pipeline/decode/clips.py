"""Which stretches of a video become clips: frame ranges ``(start, end)``, end exclusive.

Everything is in exact frame numbers, so that a clip's bounds do not drift over a
long video: window k of ``seconds`` every ``stride`` seconds starts at frame
``round(k * stride * fps)`` and ends at ``min(round((k * stride + seconds) * fps), n)``.
Windows stop at the first that reaches the end of the video; that last one is
kept when it holds at least half of ``seconds`` (a shorter tail says little on
its own), except in a video shorter than one window, which is one clip of all
of it. A window holds at least one frame, and no two start at the same frame.

Shots (``shot_windows``) are cut at the frames where a new shot starts, and a
shot longer than ``seconds`` is cut into windows of ``seconds`` by the same rules
(a shot shorter than that is one clip, whatever its length).
"""

from __future__ import annotations

import math

DEFAULT_SHOT_SECONDS = 10.0  # --clip-shots without --clip-seconds: the longest clip a shot becomes

Window = tuple[int, int]  # (first frame, end frame exclusive)


def clip_windows(num_frames: int, fps: float, seconds: float, stride: float | None = None) -> list[Window]:
    """The windows of ``seconds`` every ``stride`` (default: ``seconds``) seconds of a video of
    ``num_frames`` frames at ``fps``."""
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if not (fps > 0 and seconds > 0 and (stride is None or stride > 0)):
        raise ValueError(f"fps, seconds and stride must be positive, got {fps}, {seconds}, {stride}")
    stride = seconds if stride is None else stride
    windows: list[Window] = []
    k = 0
    while True:
        start = round(k * stride * fps)
        if windows and start <= windows[-1][0]:  # a stride under one frame: on to the next window that starts later
            k = max(k + 1, math.ceil((windows[-1][0] + 0.5) / (stride * fps)))
            continue
        if start >= num_frames:
            break
        end = max(min(round((k * stride + seconds) * fps), num_frames), start + 1)
        if end == num_frames and windows and 2 * (end - start) < seconds * fps:
            break  # the short last window
        windows.append((start, end))
        if end == num_frames:
            break
        k += 1
    return windows


def shorter_than_a_window(num_frames: int, fps: float, seconds: float) -> bool:
    """Whether a video of ``num_frames`` has fewer frames than one window of ``seconds``."""
    return num_frames < round(seconds * fps)


def shot_windows(cuts: list[int], num_frames: int, fps: float, seconds: float) -> list[Window]:
    """The shots of a video of ``num_frames`` frames, cut at ``cuts`` (the frames that start a new
    shot), each longer than ``seconds`` cut into windows of ``seconds``."""
    bounds = [0, *sorted({cut for cut in cuts if 0 < cut < num_frames}), num_frames]
    windows = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        windows += [(start + first, start + last) for first, last in clip_windows(end - start, fps, seconds)]
    return windows
