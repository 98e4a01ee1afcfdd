"""Embed videos and captions: ``RUN/embeddings/{videos,texts}.parquet``.

Every clip of every video gets a row (a whole video is one clip); an uncaptioned video
gets its rows but no caption row, and a caption-free collection a texts file of no rows.

The model comes from a training checkpoint, or, for zero-shot CLIP, straight from
open_clip (``--model`` and ``--pretrained``, meanP head, ``--caption-length``). Under
torchrun each rank embeds every world-size-th video and rank 0 writes the files.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from pipeline import defaults
from pipeline.encode.checkpoint import load_model, read_checkpoint
from pipeline.encode.distributed import World, barrier, broadcast_decision, close_world, gather_to_all, init_world
from pipeline.encode.model import (
    CLIP4Clip,
    ModelSpec,
    PairFeatures,
    check_model_choice,
    create_clip4clip,
    every_real_frame,
    score_matrix,
)
from pipeline.encode.reader import (
    FrameStore,
    VideoSelection,
    frames_and_manifest,
    prefetch_batches,
    select_videos,
)
from pipeline.errors import VidretError, check_number, check_paths
from pipeline.files import sha256_file, sha256_json, write_parquet
from pipeline.manifest import ManifestEntry, read_manifest, select_split
from pipeline.metrics import retrieval_metrics, score_matrix_metrics
from pipeline.schemas import TEXTS_FILE, TEXTS_SCHEMA, VIDEOS_FILE, VIDEOS_SCHEMA
from pipeline.stage import (
    Stage,
    begin,
    commit,
    decide,
    describe_failures,
    library_versions,
    locked,
    ran_because,
    skip_line,
)


@torch.no_grad()
def embed_videos(
    model: CLIP4Clip,
    store: FrameStore,
    units: list[tuple[str, int]],
    world: World,
    batch_size: int = 64,
    threads: int = 4,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """L2-normalised float32 embeddings of ``units`` ((video_id, clip) pairs, ``FrameStore.clip_units``), in
    order, on every rank."""
    mine = units[world.rank :: world.size]
    batches = (mine[start : start + batch_size] for start in range(0, len(mine), batch_size))
    rows = []
    for batch in prefetch_batches(store, batches, threads=threads, pin_memory=world.device.type == "cuda"):
        with model.autocast():
            rows.append(model.encode_video(batch.frames, batch.frame_mask).float())
        if on_batch:
            on_batch(len(batch.frames) * world.size)
    return _gather_in_order(rows, world, len(units), model.clip.visual.output_dim)


@torch.no_grad()
def embed_texts(model: CLIP4Clip, tokens: torch.Tensor, world: World, batch_size: int = 256) -> np.ndarray:
    """L2-normalised float32 embeddings of tokenised captions, in order, on every rank."""
    mine = tokens[world.rank :: world.size]
    rows = []
    for start in range(0, len(mine), batch_size):
        with model.autocast():
            rows.append(model.encode_text(mine[start : start + batch_size]).float())
    return _gather_in_order(rows, world, len(tokens), model.clip.visual.output_dim)


def _gather_in_order(rows: list[torch.Tensor], world: World, total: int, dim: int) -> np.ndarray:
    """Every rank's rows, back in input order: rank r embedded items r, r + world, r + 2·world, ...

    Rows stay on the device until here: copying each batch back at once would make the host wait
    for every batch and leave the GPU idle while the next one is launched.
    """
    local = torch.cat(rows).cpu().numpy() if rows else np.zeros((0, dim), np.float32)
    parts = gather_to_all(world, local)
    out = np.empty((total, dim), dtype=np.float32)
    for rank, part in enumerate(parts):
        out[rank :: len(parts)] = part
    return out


@torch.no_grad()
def pair_features(
    model: CLIP4Clip, store: FrameStore, units: list[tuple[str, int]], tokens: torch.Tensor, batch_size: int = 64,
    threads: int = 4,
) -> PairFeatures:  # fmt: skip
    """What a pair head scores, for ``units`` (``FrameStore.clip_units``) and tokenised captions, in order, on
    the model's device."""
    batches = (units[start : start + batch_size] for start in range(0, len(units), batch_size))
    frames, frame_masks = [], []
    for batch in prefetch_batches(store, batches, threads=threads, pin_memory=model.pixel_mean.device.type == "cuda"):
        with model.autocast():
            frames.append(model.encode_frames(batch.frames))
        frame_masks.append(every_real_frame(batch.frame_mask, frames[-1]))
    texts, text_masks = [], []
    for start in range(0, len(tokens), batch_size):
        with model.autocast():
            text, text_mask = model.encode_text_tokens(tokens[start : start + batch_size])
        texts.append(text.float())
        text_masks.append(text_mask)
    return PairFeatures(torch.cat(texts), torch.cat(text_masks), torch.cat(frames), torch.cat(frame_masks))


def caption_pairs(entries: list[ManifestEntry]) -> tuple[list[str], list[str]]:
    """(video_id, caption) for every caption of every entry, in manifest order."""
    pairs = [(entry.video_id, caption) for entry in entries for caption in entry.captions]
    return [video_id for video_id, _ in pairs], [caption for _, caption in pairs]


def evaluate(
    model: CLIP4Clip,
    store: FrameStore,
    entries: list[ManifestEntry],
    tokens: torch.Tensor,
    world: World,
    batch_size: int,
    threads: int,
) -> dict:
    """Retrieval metrics of ``model`` on ``entries`` (the validation split during training).

    ``tokens`` are the entries' captions, tokenised in ``caption_pairs`` order.
    """
    was_training = model.training
    model.eval()
    video_ids = [entry.video_id for entry in entries]
    text_video_ids, _ = caption_pairs(entries)
    row_of = {video_id: row for row, video_id in enumerate(video_ids)}
    text_video_index = np.array([row_of[video_id] for video_id in text_video_ids])
    if model.scores_pairs:  # every caption against every video: a pair head has no embeddings to rank
        # Every rank scores the whole split: validation sets are small, and the ranks need no gathering.
        features = pair_features(model, store, store.clip_units(video_ids), tokens, batch_size, threads)
        with torch.no_grad():
            scores = score_matrix(model.head, features)
        model.train(was_training)
        return score_matrix_metrics(scores, text_video_index)
    videos = embed_videos(model, store, store.clip_units(video_ids), world, batch_size, threads)
    texts = embed_texts(model, tokens, world)
    model.train(was_training)
    clips_per_video = [len(store.clips(video_id)) for video_id in video_ids]
    return retrieval_metrics(texts, videos, text_video_index, clips_per_video=clips_per_video)


def check_frame_size(model: CLIP4Clip, shape: tuple[int, ...], frames_dir: Path) -> None:
    height, width = shape[1:3]
    if (height, width) != tuple(model.image_size):
        size = model.image_size[0]
        raise VidretError(
            f"{frames_dir}: frames are {height}x{width} but {model.spec.model} takes {size}x{model.image_size[1]}; "
            f"decode with --size {size}"
        )


@dataclass
class EmbedOptions:
    frames_dir: Path
    manifest: Path
    out: Path
    checkpoint: Path | None = None  # a vidret checkpoint; else zero-shot from model + pretrained
    model: str = defaults.MODEL
    pretrained: str = defaults.PRETRAINED
    head: str = defaults.HEAD
    # Zero-shot only (None: ModelSpec's defaults); a checkpoint's spec fixes these.
    caption_length: int | None = None
    precision: str | None = None
    normalize_frames: bool | None = None
    split: str = defaults.EMBED_SPLIT
    video_root: Path | None = None
    batch_size: int = defaults.EMBED_BATCH_SIZE
    workers: int = defaults.READ_WORKERS
    device: str = defaults.DEVICE
    force: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        check_paths(
            (self.frames_dir, "frames directory"), (self.manifest, "manifest"), (self.out, "output folder"),
            (self.checkpoint, "checkpoint"), (self.video_root, "video root"),
        )  # fmt: skip
        check_number("--batch-size", self.batch_size, integer=True, at_least=1)
        check_number("--workers", self.workers, integer=True, at_least=1)
        if self.checkpoint is None:
            precision = self.precision or ModelSpec.precision
            check_model_choice(self.model, self.pretrained, self.head, self.caption_length, precision)
        elif self.caption_length is not None:
            trained_with = read_checkpoint(self.checkpoint).get("spec", {}).get("caption_length")
            raise VidretError(
                f"--caption-length {self.caption_length}: the checkpoint {self.checkpoint} fixes the caption length;"
                f" it was trained with {trained_with or 'the full context length'} (leave --caption-length out)"
            )
        elif self.precision is not None or self.normalize_frames is not None:
            raise VidretError(
                f"--precision and --normalize-frames are for zero-shot models; the checkpoint {self.checkpoint}"
                " fixes them (leave them out)"
            )
        if self.checkpoint is None and self.head != "meanP":
            raise VidretError(
                f"--head {self.head} has untrained weights without --checkpoint; zero-shot embedding uses --head meanP"
            )


@dataclass
class EmbedSummary:
    out: Path
    videos: int = 0
    texts: int = 0
    clips: int = 0  # rows of videos.parquet: a video's clips, or the whole video
    uncaptioned: int = 0  # embedded videos without a caption: searchable, never scored
    skipped: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    video_seconds: float = 0.0  # of ``seconds``, embedding the videos (the rest: the captions)
    is_main: bool = True  # under torchrun, only rank 0 reports
    skip_reason: str | None = None  # why nothing was embedded
    ran_because: str = ""  # why earlier embeddings were replaced, as the line says it

    def line(self) -> str:
        if self.skip_reason:
            return skip_line("embed", self.out)
        why = self.ran_because
        skipped = sum(self.skipped.values())
        detail = f" ({describe_failures(self.skipped)})" if skipped else ""
        rate = self.videos / self.seconds if self.seconds else 0.0
        # Clips and uncaptioned videos are said where there are any, so a whole-video captioned run reads as before.
        clips = f" ({self.clips} clips)" if self.clips != self.videos else ""
        uncaptioned = f" ({self.uncaptioned} videos uncaptioned)" if self.uncaptioned else ""
        return (
            f"embed: {self.videos} videos{clips}, {self.texts} captions{uncaptioned}, {skipped} videos skipped{detail} "
            f"in {self.seconds:.1f} s ({rate:.1f} videos/s) -> {self.out}{why}"
        )


def model_source(options: EmbedOptions) -> dict:
    """Where the embedding model comes from, as stage.json records it: a checkpoint by its digest (its spec
    holds the rest), or the zero-shot model's spec."""
    if options.checkpoint is None:
        normalize_frames = ModelSpec.normalize_frames if options.normalize_frames is None else options.normalize_frames
        spec = {
            "model": options.model, "pretrained": options.pretrained, "head": options.head,
            "caption_length": options.caption_length, "precision": options.precision or ModelSpec.precision,
            "normalize_frames": normalize_frames,
        }  # fmt: skip
        return {"checkpoint": None, **spec}
    path = Path(options.checkpoint)
    if not path.is_file():
        raise VidretError(f"{path}: no such checkpoint")
    return {"checkpoint": str(path.absolute()), "checkpoint_sha256": sha256_file(path)}


def load_embedding_model(source: dict) -> tuple[CLIP4Clip, int | None]:
    """The model ``source`` (from ``model_source``) describes, and its training epoch if it is a checkpoint."""
    if source["checkpoint"] is not None:
        model, payload = load_model(source["checkpoint"])
        if model.scores_pairs:
            raise VidretError(
                f"{source['checkpoint']}: a {model.spec.head} checkpoint scores (caption, video) pairs and makes no"
                " embeddings; embed with a dual encoder's (meanP, seqLSTM, seqTransf) and re-rank its index with"
                f" `vidret index --rerank {source['checkpoint']}`"
            )
        return model, payload.get("epoch")
    torch.manual_seed(0)  # --pretrained none: the same random weights on every rank and every run
    model = create_clip4clip(
        source["model"], source["pretrained"], source["head"], source["caption_length"],
        precision=source["precision"], normalize_frames=source["normalize_frames"],
        # Unset when embedding (decided from the tag, and said); a record holds what was built.
        force_quick_gelu=source.get("force_quick_gelu"),
    )  # fmt: skip
    return model, None


def embed(options: EmbedOptions) -> EmbedSummary:
    """Embed a split's videos and captions; write videos.parquet, texts.parquet, then stage.json."""
    world = init_world(options.device)
    try:
        return _embed(options, world)
    finally:
        close_world(world)


def _embed(options: EmbedOptions, world: World) -> EmbedSummary:
    manifest = read_manifest(options.manifest, options.video_root)
    store = FrameStore(options.frames_dir)
    selection: VideoSelection = select_videos(store, manifest, select_split(manifest, options.split, options.manifest))
    if not selection.entries:
        raise VidretError(
            f"{options.frames_dir}: no video of split {options.split!r} decoded"
            f" ({describe_failures(selection.skipped)})"
        )
    out = Path(options.out)
    source = model_source(options)
    inputs = {
        **frames_and_manifest(options.frames_dir, options.manifest),
        "video_root": str(options.video_root) if options.video_root else None,
    }
    fingerprint = sha256_json([inputs["frames_fingerprint"], inputs["manifest_sha256"], source])
    params = {"split": options.split, "batch_size": options.batch_size, "device": world.device.type}
    read_from = (Path(options.frames_dir),) + ((Path(options.checkpoint).parent,) if options.checkpoint else ())
    stage = Stage("embed", out, fingerprint, params, inputs=read_from, owns=(VIDEOS_FILE, TEXTS_FILE))
    # Only rank 0 writes; the others follow its decision.
    with locked(stage) if world.is_main else contextlib.nullcontext():
        decision = broadcast_decision(world, lambda: decide(stage, options.force))
        if not decision.run:
            counts = decision.previous["counts"]
            return EmbedSummary(
                out,
                videos=counts["videos"],
                texts=counts["texts"],
                clips=counts.get("clips", counts["videos"]),  # a record of an earlier vidret: whole videos
                uncaptioned=counts.get("uncaptioned", 0),
                is_main=world.is_main,
                skip_reason=decision.reason,
            )
        model, epoch = load_embedding_model(source)
        video_ids = [entry.video_id for entry in selection.entries]
        check_frame_size(model, store.frame_shape(video_ids), options.frames_dir)
        model = model.to(world.device).eval()
        units = store.clip_units(video_ids)

        if world.is_main:
            begin(stage)
        started = time.perf_counter()
        with tqdm(total=len(units), unit="clip", desc="embed", disable=not (options.progress and world.is_main)) as bar:
            videos = embed_videos(model, store, units, world, options.batch_size, options.workers, bar.update)
        video_seconds = time.perf_counter() - started  # embed_videos returns host arrays: the device is done
        text_video_ids, captions = caption_pairs(selection.entries)
        dim = model.clip.visual.output_dim
        # A caption-free collection: nothing to tokenise, and a texts file of no rows.
        texts = embed_texts(model, model.tokenize(captions), world) if captions else np.zeros((0, dim), np.float32)
        seconds = time.perf_counter() - started

        summary = EmbedSummary(
            out, len(video_ids), len(captions), len(units), sum(not entry.captions for entry in selection.entries),
            selection.skipped, seconds, video_seconds, world.is_main, ran_because=ran_because(decision),
        )  # fmt: skip
        if world.is_main:
            clips = [store.locations[video_id][clip] for video_id, clip in units]
            write_parquet(
                out / VIDEOS_FILE,
                embeddings_table(
                    VIDEOS_SCHEMA, videos, video_id=[video_id for video_id, _ in units],
                    clip_index=[clip.clip_index for clip in clips], start_s=[clip.start_s for clip in clips],
                    end_s=[clip.end_s for clip in clips],
                ),
            )  # fmt: skip
            write_parquet(
                out / TEXTS_FILE, embeddings_table(TEXTS_SCHEMA, texts, video_id=text_video_ids, caption=captions)
            )
            record = {**model.spec.to_dict(), **source, "epoch": epoch, "embedding_dim": model.clip.visual.output_dim}
            commit(stage, embed_record(record, inputs, summary, world), (VIDEOS_FILE, TEXTS_FILE))
        barrier(world)
    return summary


def embeddings_table(schema: pa.Schema, embeddings: np.ndarray, **columns: list) -> pa.Table:
    dim = embeddings.shape[1]
    flat = pa.array(embeddings.reshape(-1), type=pa.float32())
    offsets = pa.array(np.arange(0, len(embeddings) * dim + 1, dim, dtype=np.int32))
    return pa.table({**columns, "embedding": pa.ListArray.from_arrays(offsets, flat)}, schema=schema)


def embed_record(model: dict, inputs: dict, summary: EmbedSummary, world: World) -> dict:
    return {
        "model": model,
        "normalised": "L2",
        "input": inputs,
        "counts": {
            "videos": summary.videos,
            "clips": summary.clips,
            "texts": summary.texts,
            "uncaptioned": summary.uncaptioned,
            "skipped": dict(summary.skipped),
        },
        "throughput": {
            "seconds": round(summary.seconds, 3),
            "video_seconds": round(summary.video_seconds, 3),
            "videos_per_second": round(summary.videos / summary.seconds, 2) if summary.seconds else None,
            "device": str(world.device),
            "world_size": world.size,
        },
        "libraries": library_versions("torch", "open_clip_torch", "pyarrow"),
    }
