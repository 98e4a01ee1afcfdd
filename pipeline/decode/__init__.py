"""The decode stage: manifest videos -> sampled frames in Parquet shards.

One module per role, as in img2dataset: ``sampling`` (which frames),
``reader`` (one video -> frames), ``worker`` (killable decode processes),
``writer`` (shards and their commit markers), ``distributor`` (the plan,
resumption and the run).
"""

from pipeline.decode.distributor import DecodeOptions, DecodeSummary, decode_videos
from pipeline.decode.reader import DecodedVideo, FrameSpec, VideoError, read_video, read_views
from pipeline.decode.sampling import sample_frame_indices

__all__ = [
    "DecodeOptions",
    "DecodeSummary",
    "DecodedVideo",
    "FrameSpec",
    "VideoError",
    "decode_videos",
    "read_video",
    "read_views",
    "sample_frame_indices",
]
