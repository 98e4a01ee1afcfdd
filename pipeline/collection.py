"""``vidret collection``: your own folder of videos made searchable in one command.

It runs the stages one after the other on a run folder, each through its own stage contract, so that
each resumes where it stopped and is skipped when it is up to date:

    RUN/manifest.jsonl   manifest scan: every video file under the folder (caption-free)
    RUN/frames/          decode: each video cut into clips of --clip-seconds
    RUN/embeddings/      encode embed: every clip, zero-shot or with --checkpoint
    RUN/index/           index: the clips, exact or approximate (--index auto)

Then ``vidret search RUN "a sentence"`` finds moments: a video and the time range of its clip.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import open_clip

from pipeline import defaults
from pipeline.decode import DecodeOptions, FrameSpec, decode_videos
from pipeline.encode.checkpoint import read_checkpoint
from pipeline.encode.embed import EmbedOptions, embed
from pipeline.errors import VidretError, check_paths
from pipeline.index import IndexOptions, index_embeddings
from pipeline.scan import scan_videos

MANIFEST_FILE = "manifest.jsonl"
STAGE_FOLDERS = {"decode": "frames", "embed": "embeddings", "index": "index"}


@dataclass(frozen=True)
class CollectionOptions:
    clip_seconds: float = defaults.COLLECTION_CLIP_SECONDS
    clip_stride: float | None = None  # None: --clip-seconds (windows end to end)
    frames: int | None = None  # per clip; None: FrameSpec's
    size: int | None = None  # None: the model's input size, the only one it embeds
    workers: int | None = None  # decoder processes; None: DecodeOptions' (one per available core)
    model: str | None = None  # zero-shot; None: defaults.MODEL
    pretrained: str | None = None  # None: defaults.PRETRAINED
    checkpoint: Path | None = None  # a trained run's best.pt: it fixes the model
    device: str = defaults.DEVICE
    index: str = defaults.COLLECTION_INDEX
    index_memory: int | None = None  # bytes --index auto may fill; None: IndexOptions'
    force: bool = False  # redo every stage
    progress: bool = True

    def __post_init__(self) -> None:
        check_paths((self.checkpoint, "checkpoint"))
        if self.checkpoint is not None and (self.model is not None or self.pretrained is not None):
            raise VidretError(
                f"--model and --pretrained are for zero-shot embedding; the checkpoint {self.checkpoint} fixes the"
                " model (leave them out)"
            )


@dataclass
class CollectionSummary:
    run: Path
    videos: int  # searchable: in the index
    clips: int
    ran: list[str]  # the stages that ran, in order
    skipped: list[str]  # those that were up to date
    seconds: float

    def line(self) -> str:
        skipped = f"; up to date, skipped: {', '.join(self.skipped)}" if self.skipped else ""
        ran = ", ".join(self.ran) or "none"
        return (
            f"collection: {self.videos} videos in {self.clips} searchable clips in {self.seconds:.1f} s"
            f" -> {self.run} (stages run: {ran}{skipped})"
        )

    def search_command(self) -> str:
        return f'vidret search {shlex.quote(str(self.run))} "a sentence"'


def model_input_size(model: str, checkpoint: Path | None) -> tuple[str, int | None]:
    """The model's name (its checkpoint's, for a checkpoint) and the frame side it embeds; None if its config
    is not one open_clip lists (an hf-hub model, say)."""
    name = read_checkpoint(checkpoint)["spec"]["model"] if checkpoint is not None else model
    size = ((open_clip.get_model_config(name) or {}).get("vision_cfg") or {}).get("image_size")
    return name, size[0] if isinstance(size, list | tuple) else size


def plan_stages(run: Path, options: CollectionOptions) -> tuple[DecodeOptions, EmbedOptions, IndexOptions]:
    """The three stages' options, all checked before any stage runs: a bad one costs no decoding."""
    model = options.model or defaults.MODEL
    pretrained = options.pretrained or defaults.PRETRAINED
    # Embed takes only frames of the model's size: a wrong --size would fail after the whole decode.
    model_name, model_size = model_input_size(model, options.checkpoint)
    if None not in (options.size, model_size) and options.size != model_size:
        raise VidretError(
            f"--size {options.size}: {model_name} embeds {model_size}x{model_size} frames (leave --size out)"
        )
    size = options.size if options.size is not None else model_size
    given = {"num_frames": options.frames, "size": size, "clip_stride": options.clip_stride}
    chosen = {name: value for name, value in given.items() if value is not None}  # the others: FrameSpec's
    spec = FrameSpec(clip_seconds=options.clip_seconds, **chosen)
    workers = {} if options.workers is None else {"workers": options.workers}
    decode = DecodeOptions(spec=spec, split="all", force=options.force, **workers)
    embed_options = EmbedOptions(
        frames_dir=run / STAGE_FOLDERS["decode"], manifest=run / MANIFEST_FILE, out=run / STAGE_FOLDERS["embed"],
        checkpoint=options.checkpoint, model=model, pretrained=pretrained, split="all", device=options.device,
        force=options.force, progress=options.progress,
    )  # fmt: skip
    index = IndexOptions(
        index=options.index,
        index_memory=options.index_memory,
        device=options.device,
        force=options.force,
        progress=options.progress,
    )
    return decode, embed_options, index


def make_collection(
    video_dir: Path | str, run: Path | str, options: CollectionOptions | None = None,
    report: Callable[[str], object] = lambda line: None,
) -> CollectionSummary:  # fmt: skip
    """Scan ``video_dir`` into ``run/manifest.jsonl``, then decode, embed and index it in ``run``; ``report``
    gets each stage's summary line as the stage ends."""
    started = time.perf_counter()
    options = options or CollectionOptions()
    video_dir, run = Path(video_dir), Path(run)
    check_paths((video_dir, "videos folder"), (run, "run folder"))
    decode, embed_options, index = plan_stages(run, options)
    scan = scan_videos(video_dir, run / MANIFEST_FILE)
    for line in scan.problem_lines():
        report(line)
    report(scan.line())
    summaries = {
        "decode": decode_videos(run / MANIFEST_FILE, run / STAGE_FOLDERS["decode"], decode, progress=options.progress)
    }
    report(summaries["decode"].line())
    summaries["embed"] = embed(embed_options)
    report(summaries["embed"].line())
    summaries["index"] = index_embeddings(run / STAGE_FOLDERS["embed"], run / STAGE_FOLDERS["index"], index)
    for note in summaries["index"].notes:
        report(f"note: {note}")
    report(summaries["index"].line())
    indexed = summaries["index"].metrics  # the counts, also when the stage was skipped
    return CollectionSummary(
        run=run,
        videos=indexed["num_videos"],
        clips=indexed["num_clips"],
        ran=[stage for stage, summary in summaries.items() if not summary.skip_reason],
        skipped=[stage for stage, summary in summaries.items() if summary.skip_reason],
        seconds=time.perf_counter() - started,
    )
