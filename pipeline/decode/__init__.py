"""The decode stage: manifest videos -> sampled frames in Parquet shards.

One module per role: ``sampling`` (which frames), ``reader`` (one video ->
frames), ``worker`` (killable decode processes; ``DecodePool`` spreads the
videos over them), ``writer`` (shards and their commit markers), ``run`` (the
stage: plan the chunks, resume, finish).
"""

from pipeline.decode.reader import DecodedVideo, FrameSpec, VideoError, read_video, read_views
from pipeline.decode.run import DecodeOptions, DecodeSummary, decode_videos
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
