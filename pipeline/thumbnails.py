"""Thumbnails of clips: each clip's middle sampled frame, read from the frames store as a JPEG.

The frames decode stored are the ones the model saw (``--size``, centre-cropped), so a thumbnail
shows what was embedded. JPEG frames (``--frame-format jpeg``) are sent as stored; raw ones are
encoded once per request, well under a millisecond at the demo's 112².
"""

from __future__ import annotations

from pathlib import Path

from pipeline.encode.reader import FrameStore
from pipeline.errors import VidretError
from pipeline.frames_codec import encode_jpeg
from pipeline.run_folder import RunFolder

THUMBNAIL_QUALITY = 85


class Thumbnails:
    """JPEG thumbnails of every clip in a frames directory."""

    def __init__(self, frames_dir: Path | str):
        self.store = FrameStore(frames_dir)

    def clip_jpeg(self, video_id: str, clip_index: int = 0) -> bytes | None:
        """The clip's middle sampled frame as a JPEG; None for a clip the store does not hold."""
        if video_id not in self.store:
            return None
        clips = self.store.clips(video_id)
        if not 0 <= clip_index < len(clips):
            return None
        middle = max(clips[clip_index].real_frames - 1, 0) // 2  # padding frames come last, never chosen
        # A whole video's row 0 (its views are train-time draws); a clip's row is its clip_index.
        images = self.store.read_jpeg(video_id, clip_index)
        if images is not None:
            return images[middle].to_pybytes()
        frame = self.store.read(video_id, clip_index)[middle : middle + 1]
        return encode_jpeg(frame, THUMBNAIL_QUALITY).images[0]


def run_thumbnails(folder: RunFolder) -> Thumbnails | None:
    """The thumbnails of a run's frames; None where it has none, or an unfinished or damaged frames folder
    (then a line in ``folder.missing`` says why): search and the report work without them."""
    if folder.frames is None:
        return None
    try:
        return Thumbnails(folder.frames)
    except VidretError as problem:
        folder.missing.append(f"thumbnails: {problem}")
        return None
