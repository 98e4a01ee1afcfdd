"""Pick the Parquet compression for frame shards by measurement.

Writes the same decoded frames with each candidate codec and reports size,
write time and read time as ratios to uncompressed Parquet, on two corpora:
the synthetic demo clips (flat colours, very compressible) and "natural"
clips: panning 1/f-noise textures, which have natural images' power
spectrum, encoded with H.264 so the decoded frames carry real codec artefacts.

    .venv/bin/python -m pipeline.benchmarks.parquet_codecs [--videos 24]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.benchmarks.decode_throughput import pink_noise  # the same natural-image texture
from pipeline.decode.reader import FrameSpec, read_video
from pipeline.decode.worker import DecodeResult
from pipeline.decode.writer import FRAMES_PARQUET_OPTIONS, frames_table
from pipeline.schemas import FRAMES_SCHEMA
from pipeline.synth import SynthOptions, plan_dataset, render_frames, write_video

CODECS = [("none", None), ("snappy", None), ("lz4", None), ("zstd", 1), ("zstd", 3), ("gzip", None)]


def natural_clip(rng: np.random.Generator, frames: int = 90, height: int = 240, width: int = 320):
    texture = pink_noise(rng, height * 2, width * 2)
    dx, dy = rng.uniform(-1.2, 1.2, 2)  # stays inside the texture for 90 frames
    for t in range(frames):
        y, x = int(height / 2 + dy * t), int(width / 2 + dx * t)
        yield np.ascontiguousarray(texture[y : y + height, x : x + width])


def decoded_tables(paths: list[Path]) -> list:
    spec = FrameSpec()
    tables = []
    for seq, path in enumerate(paths):
        video = read_video(path, spec)
        tables.append(frames_table(DecodeResult(seq, path.stem, "ok", "", 0.0, [video])))
    return tables


def measure(tables: list, directory: Path) -> list[tuple[str, float, float, float]]:
    rows = []
    for codec, level in CODECS:
        path = directory / f"{codec}{level or ''}.parquet"
        options = {**FRAMES_PARQUET_OPTIONS, "compression": codec, "compression_level": level}
        start = time.perf_counter()
        with pq.ParquetWriter(path, FRAMES_SCHEMA, **options) as writer:
            for table in tables:
                writer.write_table(table)
        write = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(3):
            pq.read_table(path)
        read = (time.perf_counter() - start) / 3
        rows.append((f"{codec}{'-' + str(level) if level else ''}", path.stat().st_size, write, read))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=24)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpora = {"synthetic": [], "natural": []}
        options = SynthOptions(videos=max(args.videos, 5))
        for number, (_, attributes, motion, _) in enumerate(plan_dataset(options)[: args.videos]):
            path = tmp / f"synthetic{number}.mp4"
            write_video(path, render_frames(attributes, motion, options.width, options.height), options.fps)
            corpora["synthetic"].append(path)
        for number in range(args.videos):
            path = tmp / f"natural{number}.mp4"
            write_video(path, natural_clip(rng), 30, codec_options={"preset": "veryfast", "crf": "23"})
            corpora["natural"].append(path)
        for name, paths in corpora.items():
            rows = measure(decoded_tables(paths), tmp)
            base_size, base_write, base_read = rows[0][1:]
            print(f"\n{name}: {len(paths)} videos, 12 x 224 x 224 x 3 each, {base_size / 2**20:.1f} MiB uncompressed")
            print(f"{'codec':10} {'size':>7} {'write time':>11} {'read time':>10}   (ratios to 'none')")
            for codec, size, write, read in rows:
                print(f"{codec:10} {size / base_size:7.3f} {write / base_write:11.2f} {read / base_read:10.2f}")


if __name__ == "__main__":
    main()
