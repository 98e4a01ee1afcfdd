"""Encode-stage throughput: the pipeline against the model alone, measured in one process.

    python -m pipeline.benchmarks.encode_throughput --model vidret-tiny --device cpu   # this CPU
    python -m pipeline.benchmarks.encode_throughput --model ViT-B-32 --batch-size 128  # a GPU

It writes a frames directory of random clips (the decode contract, no videos needed),
then measures, in this order and on the same device:

- model alone, inference: ``encode_video`` on uint8 frames already on the device, and
  ``encode_text`` on tokens already there (embed encodes every caption too);
- model alone, training: forward, ClipLoss, backward and an AdamW step on device tensors;
- the pipeline: ``vidret encode train`` (Parquet reads, prefetch, transfer, training) and
  ``vidret encode embed``, from their own summaries.

Pipeline efficiency = pipeline throughput / model-alone throughput. For embed, the
model-alone ceiling is the time to encode its videos plus its captions (two per video
here); the videos' part of embed is also set against the video tower alone. Random
weights: throughput does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from open_clip.loss import ClipLoss

from pipeline.decode.writer import FRAMES_PARQUET_OPTIONS
from pipeline.encode.embed import EmbedOptions, embed
from pipeline.encode.model import create_clip4clip
from pipeline.encode.train import TrainOptions, make_recipe, train
from pipeline.files import write_json
from pipeline.manifest import write_manifest
from pipeline.schemas import FRAMES_SCHEMA, STATUS_SCHEMA
from pipeline.stage import Stage, commit

CAPTION = "a {} clip number {} of a person doing something in a room"
TEXT_BATCH = 256  # embed_texts' batch


def write_random_frames(root: Path, videos: int, frames: int, size: int, shard: int = 64) -> Path:
    """A frames directory and manifest of ``videos`` random clips (90% train, 10% val)."""
    rng = np.random.default_rng(0)
    frames_dir = root / "frames"
    shutil.rmtree(frames_dir, ignore_errors=True)  # a scratch folder: parts left by a larger run would not match
    frames_dir.mkdir(parents=True)
    records = []
    for start in range(0, videos, shard):
        ids = [f"bench{i:06d}" for i in range(start, min(start + shard, videos))]
        with pq.ParquetWriter(
            frames_dir / f"part-{start // shard:05d}.parquet", FRAMES_SCHEMA, **FRAMES_PARQUET_OPTIONS
        ) as out:
            for video_id in ids:
                clip = rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
                row = [[video_id], [clip.tobytes()], [frames], [size], [size], [list(range(frames))], [frames], [30.0]]
                row += [[0], [0.0], [frames / 30.0]]  # clip 0: the whole video
                out.write_table(pa.table(row, schema=FRAMES_SCHEMA))
        for i, video_id in enumerate(ids, start=start):
            split = "val" if i % 10 == 9 else "train"
            records.append({"video_id": video_id, "path": f"{video_id}.mp4", "split": split,
                            "captions": [CAPTION.format("first", i), CAPTION.format("second", i)]})  # fmt: skip
    ids = [record["video_id"] for record in records]
    status = pa.table([ids, ["ok"] * videos, [""] * videos, [0.0] * videos], schema=STATUS_SCHEMA)
    pq.write_table(status, frames_dir / "status.parquet")
    written = [path.name for path in sorted(frames_dir.glob("*.parquet"))]
    commit(Stage("decode", frames_dir, "random frames", {"synthetic": "random frames"}), {}, written)
    write_manifest(root / "manifest.jsonl", records)
    return frames_dir


def timed(function, repeats: int, device: torch.device) -> float:
    """Seconds per call after one warm-up call."""
    function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def model_alone(args, device: torch.device) -> dict:
    model = create_clip4clip(args.model, "none", args.head).to(device)
    size = model.image_size[0]
    frames = torch.randint(0, 256, (args.batch_size, args.frames, size, size, 3), dtype=torch.uint8, device=device)
    tokens = model.tokenize([CAPTION.format("first", i) for i in range(args.batch_size)]).to(device)

    @torch.no_grad()
    def infer():
        with model.autocast():
            model.encode_video(frames)

    text_tokens = model.tokenize([CAPTION.format("first", i) for i in range(TEXT_BATCH)]).to(device)

    @torch.no_grad()
    def infer_texts():
        with model.autocast():
            model.encode_text(text_tokens)

    model.eval()
    infer_seconds = timed(infer, args.repeats, device)
    text_seconds = timed(infer_texts, args.repeats, device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    loss = ClipLoss()

    def step():
        with model.autocast():
            videos, texts, scale = model(frames, tokens)
        loss(videos.float(), texts.float(), scale.float()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    train_seconds = timed(step, args.repeats, device)
    return {
        "inference_videos_per_second": args.batch_size / infer_seconds,
        "inference_captions_per_second": TEXT_BATCH / text_seconds,
        "training_videos_per_second": args.batch_size / train_seconds,
    }


def embed_ceiling(alone: dict, captions_per_video: float) -> float:
    """Videos/s of embed with nothing but the model: each video's encoding plus its captions'."""
    return 1 / (1 / alone["inference_videos_per_second"] + captions_per_video / alone["inference_captions_per_second"])


def pipeline(args, frames_dir: Path, manifest: Path, device: str) -> dict:
    out = frames_dir.parent
    # The demo recipe trains what model_alone times: AdamW on every weight, amp, CLIP4Clip's pooling.
    options = TrainOptions(
        frames_dir=frames_dir, manifest=manifest, out=out / "model", model=args.model, pretrained="none",
        head=args.head, recipe=make_recipe("demo", epochs=args.epochs, batch_size=args.batch_size),
        device=device, workers=args.workers, force=True, progress=False,
    )  # fmt: skip
    trained = train(options)
    embedded = embed(
        EmbedOptions(
            frames_dir=frames_dir, manifest=manifest, out=out / "embeddings", checkpoint=out / "model" / "best.pt",
            split="all", batch_size=args.batch_size, device=device, workers=args.workers, progress=False,
        )
    )  # fmt: skip
    history = json.loads((out / "model" / "history.json").read_text())
    return {
        "training_videos_per_second": trained.samples / trained.seconds,
        "training_videos_per_second_last_epoch": history[-1]["videos_per_second"],
        "embedding_videos_per_second": embedded.videos / embedded.seconds,
        "embedding_video_part_videos_per_second": embedded.videos / embedded.video_seconds,
        "embedding_captions_per_video": embedded.texts / embedded.videos,
        "train_line": trained.line(),
        "embed_line": embedded.line(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vidret-tiny")
    parser.add_argument("--head", default="meanP")
    parser.add_argument("--videos", type=int, default=256)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--root", type=Path, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--out", type=Path, help="Also write the results here, as JSON.")
    args = parser.parse_args()

    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    size = create_clip4clip(args.model, "none", "meanP").image_size[0]
    if args.root is None:
        args.root = Path(tempfile.mkdtemp(prefix="vidret-encode-bench-"))
    frames_dir = write_random_frames(args.root, args.videos, args.frames, size)
    alone = model_alone(args, device)
    measured = pipeline(args, frames_dir, args.root / "manifest.jsonl", device.type)
    alone["embedding_videos_per_second"] = embed_ceiling(alone, measured["embedding_captions_per_video"])
    results = {
        "model": args.model, "head": args.head, "frames": args.frames, "batch_size": args.batch_size,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(), "model_alone": alone, "pipeline": measured,
        "peak_host_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "efficiency": {
            "training": measured["training_videos_per_second_last_epoch"] / alone["training_videos_per_second"],
            "embedding": measured["embedding_videos_per_second"] / alone["embedding_videos_per_second"],
            "embedding_video_part": (
                measured["embedding_video_part_videos_per_second"] / alone["inference_videos_per_second"]
            ),
        },
    }  # fmt: skip
    print(json.dumps(results, indent=2))
    if args.out:
        write_json(args.out, results)


if __name__ == "__main__":
    main()
