"""JPEG frames (``decode --frame-format jpeg``) against raw ones: bytes, fidelity and embed throughput.

Three corpora of 320x240 H.264 clips (MSR-VTT's size; x264 as `vidret synth` writes it, CRF 20), decoded by
``vidret decode`` at its defaults (12 frames, 224 x 224), raw (lz4 Parquet, as decode writes it) and
as JPEG at each --qualities:

- scene: a camera panning over a landscape, natural-looking: a sky gradient, ground of 1/f texture at
  the contrast of grass or gravel, three shaded balls crossing it, and sensor noise;
- noise: the decode benchmark's panning 1/f-noise texture at full contrast, natural images' spectrum
  everywhere with nothing flat: the worst case for JPEG;
- synthetic: the demo's clips, flat colours (``vidret synth``).

Per corpus and quality: bytes per video (part files over videos) against raw, and PSNR against the
raw frames (over all frames, from their total squared error). Then the throughput of the encode
stage's frame reading (``prefetch_batches`` over a FrameStore: the Parquet read, and for JPEG the
decode) alone, and with vidret-tiny's video tower (CPU, 112 x 112 frames decoded for it), raw and
JPEG at --throughput-quality in the same run, repeats interleaved.

    .venv/bin/python -m pipeline.benchmarks.jpeg_frames [--clips 8] [--qualities 75 85 90 95] [--out FILE]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.benchmarks.decode_throughput import panning_clip, pink_noise
from pipeline.decode import DecodeOptions, FrameSpec, decode_videos
from pipeline.encode.model import create_clip4clip
from pipeline.encode.reader import FrameStore, prefetch_batches
from pipeline.files import write_json
from pipeline.manifest import write_manifest
from pipeline.synth import SynthOptions, plan_dataset, render_frames, write_video

WIDTH, HEIGHT, FPS, CLIP_FRAMES = 320, 240, 30, 90
GOAL_RATIO, GOAL_PSNR = 8.0, 36.0  # dB


def scene_clip(rng: np.random.Generator, width: int = WIDTH, height: int = HEIGHT, frames: int = CLIP_FRAMES):
    """A camera panning over a landscape (see the module docstring), one RGB frame at a time."""
    horizon, world_width = height // 3, width * 2
    sky = np.linspace(215, 140, horizon)[:, None, None] * np.array([0.72, 0.84, 1.0])
    sky = np.broadcast_to(sky, (horizon, world_width, 3))
    texture = pink_noise(rng, height - horizon, world_width).astype(np.float64)
    ground = (texture - 128) * 0.45 + rng.uniform([70, 90, 40], [120, 130, 80])
    world = np.concatenate([sky, ground])
    rows, columns = np.mgrid[0:height, 0:width]
    balls = [
        (rng.uniform(0, width), rng.uniform(horizon, height), *rng.uniform(-2, 2, 2), rng.uniform(12, 30),
         rng.uniform(40, 255, 3))
        for _ in range(3)
    ]  # fmt: skip
    for t in range(frames):
        left = round((world_width - width) * t / frames)
        frame = world[:, left : left + width].copy()
        for x, y, vx, vy, radius, colour in balls:
            distance = np.hypot(columns - (x + vx * t), rows - (y + vy * t)) / radius
            inside = distance < 1
            shade = 1.15 - 0.6 * distance[inside]  # lit from the front: brighter in the middle
            frame[inside] = colour * shade[:, None]
        frame += rng.normal(0, 2.0, frame.shape)
        yield np.clip(frame, 0, 255).astype(np.uint8)


def write_corpora(folder: Path, clips: int) -> dict[str, Path]:
    """Each corpus's clips and their manifest (every clip in the test split); corpus -> manifest."""
    rng = np.random.default_rng(0)
    sources = {
        "scene": lambda: scene_clip(rng),
        "noise": lambda: panning_clip(rng, WIDTH, HEIGHT, CLIP_FRAMES),
    }
    synth = SynthOptions(videos=max(clips, 5), width=WIDTH, height=HEIGHT)
    planned = plan_dataset(synth)[:clips]
    manifests = {}
    for corpus in (*sources, "synthetic"):
        (folder / corpus).mkdir(parents=True)
        records = []
        for number in range(clips):
            path = folder / corpus / f"{corpus}{number}.mp4"
            if corpus == "synthetic":
                _, attributes, motion, _ = planned[number]
                frames = render_frames(attributes, motion, synth.width, synth.height)
            else:
                frames = sources[corpus]()
            write_video(path, frames, FPS)
            records.append({"video_id": path.stem, "path": path.name, "split": "test", "captions": ["a clip"]})
        manifests[corpus] = folder / corpus / "manifest.jsonl"
        write_manifest(manifests[corpus], records)
    return manifests


def decode(manifest: Path, out: Path, spec: FrameSpec) -> FrameStore:
    decode_videos(manifest, out, DecodeOptions(spec=spec, workers=1), progress=False)
    return FrameStore(out)


def part_bytes(store: FrameStore) -> int:
    return sum(part.stat().st_size for part in store.directory.glob("part-*.parquet"))


def fidelity(raw: FrameStore, jpeg: FrameStore) -> dict:
    """PSNR (dB) and mean absolute difference (grey levels) of the JPEG frames against the raw ones."""
    squared, absolute, values = 0.0, 0.0, 0
    for video_id in raw.locations:
        difference = raw.read(video_id).astype(np.float64) - jpeg.read(video_id)
        squared += float(np.square(difference).sum())
        absolute += float(np.abs(difference).sum())
        values += difference.size
    return {"psnr_db": round(10 * np.log10(255**2 / (squared / values)), 2), "mean_abs": round(absolute / values, 3)}


def timed_pass(store: FrameStore, batches: list[list[str]], threads: int, model=None) -> tuple[float, float]:
    """(videos/s, CPU ms a video over all of this process's threads) of one pass over ``batches``."""
    start, cpu_start = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for batch in prefetch_batches(
            store, ([(video_id, 0) for video_id in batch] for batch in batches), threads=threads
        ):
            if model is not None:
                model.encode_video(batch.frames, batch.frame_mask)
    videos = sum(map(len, batches))
    return videos / (time.perf_counter() - start), (time.process_time() - cpu_start) * 1000 / videos


def throughput(stores: dict[str, FrameStore], args, model=None) -> dict:
    """Each store's median videos/s and CPU ms a video for its reads (and ``model``'s forward), the stores
    taking turns. On a shared machine the CPU time is the steadier figure."""
    ids = sorted(next(iter(stores.values())).locations) * args.passes
    batches = [ids[start : start + args.batch_size] for start in range(0, len(ids), args.batch_size)]
    passes = {name: [] for name in stores}
    for store in stores.values():  # warm-up: file handles, the model's first calls
        timed_pass(store, batches[:1], args.threads, model)
    for _ in range(args.repeats):
        for name, store in stores.items():
            passes[name].append(timed_pass(store, batches, args.threads, model))
    return {
        name: {
            "videos_per_second": round(float(np.median([rate for rate, _ in runs])), 1),
            "cpu_ms_per_video": round(float(np.median([cpu for _, cpu in runs])), 2),
        }
        for name, runs in passes.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8, help="clips per corpus")
    parser.add_argument("--qualities", type=int, nargs="+", default=[75, 85, 90, 95])
    parser.add_argument("--throughput-quality", type=int, default=90)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--passes", type=int, default=4, help="reads of the corpus per throughput measurement")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="frame-reading threads (encode's --workers)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    spec = FrameSpec()
    results = {"clips": args.clips, "frames": f"{spec.num_frames} x {spec.size} x {spec.size} x 3", "corpora": {}}
    with tempfile.TemporaryDirectory(prefix="vidret-jpeg-") as scratch:
        scratch = Path(scratch)
        manifests = write_corpora(scratch / "videos", args.clips)
        for corpus, manifest in manifests.items():
            raw = decode(manifest, scratch / corpus / "raw", spec)
            raw_bytes = part_bytes(raw) / args.clips
            rows = []
            for quality in args.qualities:
                jpeg_spec = FrameSpec(frame_format="jpeg", jpeg_quality=quality)
                jpeg = decode(manifest, scratch / corpus / f"jpeg{quality}", jpeg_spec)
                jpeg_bytes = part_bytes(jpeg) / args.clips
                smaller = round(raw_bytes / jpeg_bytes, 2)
                rows.append({"quality": quality, "bytes_per_video": round(jpeg_bytes), "smaller": smaller,
                             **fidelity(raw, jpeg)})  # fmt: skip
            meeting = [row["quality"] for row in rows if row["smaller"] >= GOAL_RATIO and row["psnr_db"] >= GOAL_PSNR]
            results["corpora"][corpus] = {"raw_bytes_per_video": round(raw_bytes), "jpeg": rows, "goal_met_at": meeting}
            print(f"{corpus}: raw {raw_bytes / 2**20:.2f} MiB a video")
            for row in rows:
                print(f"  jpeg q{row['quality']}: {row['smaller']:5.2f}x smaller, PSNR {row['psnr_db']:.1f} dB,"
                      f" mean |difference| {row['mean_abs']:.2f}")  # fmt: skip

        quality = args.throughput_quality
        jpeg = {"frame_format": "jpeg", "jpeg_quality": quality}
        at_224 = {
            "raw": FrameStore(scratch / "scene" / "raw"),
            "jpeg": decode(manifests["scene"], scratch / "scene" / "throughput", FrameSpec(**jpeg)),
        }
        at_112 = {  # vidret-tiny's input size
            "raw": decode(manifests["scene"], scratch / "tiny-raw", FrameSpec(size=112)),
            "jpeg": decode(manifests["scene"], scratch / "tiny-jpeg", FrameSpec(size=112, **jpeg)),
        }
        model = create_clip4clip("vidret-tiny", "none", "meanP").eval()
        results["throughput"] = {
            "corpus": "scene",
            "quality": quality,
            "threads": args.threads,
            "batch_size": args.batch_size,
            "torch_threads": torch.get_num_threads(),
            "read_224": throughput(at_224, args),
            "read_112": throughput(at_112, args),
            "read_and_vidret_tiny_112": throughput(at_112, args, model),
        }
    for name, measured in results["throughput"].items():
        if isinstance(measured, dict):
            raw, jpeg = measured["raw"], measured["jpeg"]
            print(
                f"{name}: raw {raw['videos_per_second']} videos/s ({raw['cpu_ms_per_video']} CPU ms a video),"
                f" jpeg {jpeg['videos_per_second']} ({jpeg['cpu_ms_per_video']})"
            )
    if args.out:
        write_json(args.out, results)


if __name__ == "__main__":
    main()
