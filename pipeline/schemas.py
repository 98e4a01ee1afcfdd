"""The on-disk contracts between stages, as Arrow schemas.

These are public: users read the files with pyarrow, pandas or DuckDB and may
write them with their own tools. docs/formats.md documents them.
"""

import pyarrow as pa

# File names of the contracts, inside each stage's output folder.
STATUS_FILE = "status.parquet"  # RUN/frames
VIDEOS_FILE = "videos.parquet"  # RUN/embeddings
TEXTS_FILE = "texts.parquet"  # RUN/embeddings
INDEX_FILE = "videos.faiss"  # RUN/index
ID_MAP_FILE = "video_ids.parquet"  # RUN/index
RANKS_FILE = "ranks.parquet"  # RUN/index
METRICS_FILE = "metrics.json"  # RUN/index

# A row's place in its video: clip 0 from 0 s to the duration for a whole video, or one window or
# shot of it (decode --clip-seconds / --clip-shots). Files written before clips existed lack these
# columns; readers take such a row as clip 0 from 0 s to source_num_frames / fps (end_s null when the
# file does not know the duration).
CLIP_FIELDS = [
    pa.field("clip_index", pa.int32()),  # 0, 1, ... in time order within the video
    pa.field("start_s", pa.float64()),  # seconds from the start of the video
    pa.field("end_s", pa.float64()),  # exclusive
]
CLIP_COLUMNS = tuple(field.name for field in CLIP_FIELDS)

# RUN/frames/part-NNNNN.parquet: one row (and one row group) per decoded clip, a whole video being
# one clip; a video's clips in consecutive rows, in time order.
FRAMES_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("frames", pa.binary()),  # uint8, num_frames x height x width x 3, RGB, C order
        ("num_frames", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("frame_indices", pa.list_(pa.int32())),  # source frame numbers that were sampled; -1: a zero frame
        ("source_num_frames", pa.int32()),  # frames the container lists
        ("fps", pa.float64()),
        *CLIP_FIELDS,
    ]
)

# decode --frame-format jpeg: the same, one JPEG image (baseline, 4:2:0 or as recorded) per frame.
FRAME_FORMATS = ("raw", "jpeg")
JPEG_FRAMES_FIELD = pa.field("frames", pa.list_(pa.binary()))


def frames_schema(frame_format: str = "raw", views: bool = False) -> pa.Schema:
    """The part-file schema decode writes for ``--frame-format`` and ``--train-views``."""
    schema = FRAMES_SCHEMA
    if frame_format == "jpeg":
        schema = schema.set(schema.get_field_index("frames"), JPEG_FRAMES_FIELD)
    if views:
        schema = schema.insert(1, pa.field("view", pa.int32()))
    return schema


# The same with --train-views: one row per view, a video's views 0..K-1 in consecutive rows
# (train videos K train-mode draws, the others one test-mode row). Without the option the
# column is left out, so that those part files stay as they were before it existed.
FRAMES_VIEWS_SCHEMA = frames_schema(views=True)

# RUN/frames/status.parquet: exactly one row per manifest video of the selected split.
STATUS_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("status", pa.string()),  # one of DECODE_STATUSES
        ("error", pa.string()),  # why it failed; for "ok", a warning or ""
        ("seconds", pa.float64()),  # time spent on the video
    ]
)

DECODE_STATUSES = (
    "ok",
    "missing",  # no file at the path
    "empty",  # a zero-byte file
    "unreadable",  # not a media file decord can open, or no frame decodes
    "no_video",  # a media file without a video stream
    "too_short",  # a video stream with no frames
    "timeout",  # killed after --timeout seconds
    "crashed",  # the decoder process died
)

# RUN/embeddings/videos.parquet: one row per embedded clip (a whole video is clip 0), L2-normalised,
# a video's clips in consecutive rows. The clip columns may be left out (files of an earlier vidret,
# or your own embeddings): every row is then a whole video.
VIDEOS_SCHEMA = pa.schema([("video_id", pa.string()), ("embedding", pa.list_(pa.float32())), *CLIP_FIELDS])

# RUN/embeddings/texts.parquet: one row per caption; video_id is its ground-truth video. Videos with
# no caption have no row here (none at all for a caption-free collection).
TEXTS_SCHEMA = pa.schema([("video_id", pa.string()), ("caption", pa.string()), ("embedding", pa.list_(pa.float32()))])

# RUN/index/video_ids.parquet: FAISS id -> clip of a video, and its file where the run knows it.
ID_MAP_SCHEMA = pa.schema([("faiss_id", pa.int64()), ("video_id", pa.string()), ("path", pa.string()), *CLIP_FIELDS])

# RUN/index/ranks.parquet: the ground truth's rank for every query, both directions.
RANKS_SCHEMA = pa.schema(
    [
        ("direction", pa.string()),  # t2v: a caption queries the videos; v2t: a video queries the captions
        ("query", pa.int64()),  # the query's row in texts.parquet (t2v) or videos.parquet (v2t)
        ("video_id", pa.string()),  # t2v: the caption's ground-truth video; v2t: the query video
        ("caption", pa.string()),  # t2v: the query caption; v2t: null
        ("rank", pa.int64()),  # 1-based rank of the ground truth, ties counted against it
        ("rank_dsl", pa.int64()),  # the same under dual softmax; null without --dsl
        # The ground-truth pair's best clip: a video scores a caption by its best clip.
        *CLIP_FIELDS,
    ]
)
