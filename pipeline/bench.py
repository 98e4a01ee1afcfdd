"""``vidret bench``: run the benchmarks in ``pipeline.benchmarks`` and collect their figures in one file.

Each part is a script that measures a stage against its floor within one run, so
every comparison is a ratio taken on the same machine at the same time:

- decode: ``decode_throughput``, vidret against a PyAV floor and three common loaders;
- encode: ``encode_throughput``, the train and embed pipelines against the model alone;
- index: ``index_scaling``, blockwise ranks against the bare similarity products, and FAISS;
- jpeg: ``jpeg_frames``, JPEG frames' bytes, PSNR and read and embed throughput against raw frames;
- ann: ``ann_index``, the approximate index ``--index auto`` picks for 1M vectors against exact flat search;
- serve: ``serve_latency``, ``vidret serve``'s time per query over a run and over 1M clips, against the same
  search in-process.

The scripts run as child processes (``python -m pipeline.benchmarks.NAME``, a fresh
interpreter each, so a part's peak memory is its own) in the working directory, with
sizes chosen for the device: a CPU gets the tiny model and small corpora, so that the
whole run takes minutes. The children import the same ``pipeline`` as this process,
from a checkout or an installed wheel alike. ``bench.json`` holds the
machine, each part's command and raw results, and the summary rows that
``bench_table`` prints.
"""

from __future__ import annotations

import json
import os
import platform
import site
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipeline.errors import VidretError
from pipeline.files import write_json

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the folder holding pipeline/: a checkout or site-packages
# Each part's module in pipeline.benchmarks (package code, so an installed wheel has them too).
SCRIPTS = {
    "decode": "decode_throughput",
    "encode": "encode_throughput",
    "index": "index_scaling",
    "jpeg": "jpeg_frames",
    "ann": "ann_index",
    "serve": "serve_latency",
}
# Each part's arguments per setting (the script's --out is added). Decode is CPU work on any machine.
ARGUMENTS = {
    "decode": {
        "cpu": "--clips 12 --hd-clips 1 --workers 1 2 --repeats 3 --stage-copies 8 --long-minutes 30",
        "quick": "--clips 2 --hd-clips 0 --workers 1 --repeats 1 --stage-copies 1 --long-minutes 0.5",
    },
    "encode": {
        "cpu": "--model vidret-tiny --device cpu --videos 256 --batch-size 32 --epochs 2",
        "cuda": "--model ViT-B-32 --videos 1152 --batch-size 128 --epochs 2 --repeats 10",
        "quick": "--model vidret-micro --device cpu --videos 32 --batch-size 8 --repeats 2",
    },
    "index": {
        "cpu": "--sizes 1000 10000 --dim 512",
        "cuda": "--sizes 1000 10000 100000 --dim 512",
        "quick": "--sizes 1000 --dim 64",
    },
    "jpeg": {  # CPU work on any machine, as decode
        "cpu": "--clips 8 --qualities 75 85 90 95 --repeats 5",
        "quick": "--clips 1 --qualities 90 --repeats 1 --passes 1",
    },
    "ann": {  # auto's index for 1M vectors; quick names an IVF (auto is exact below 100k) to run every step
        "cpu": "--vectors 1000000 --dim 512",
        "quick": "--vectors 5000 --dim 32 --index IVF64,SQ8 --queries 100 --latency-queries 20",
    },
    "serve": {  # vidret serve over runs/demo (a small run is built when it is absent) and over 1M clustered clips
        "cpu": "--vectors 1000000 --queries 200",
        "quick": "--vectors 5000 --clusters 100 --queries 10",
    },
}


@dataclass(frozen=True)
class BenchOptions:
    out: Path = Path("bench.json")
    parts: tuple[str, ...] = tuple(SCRIPTS)
    quick: bool = False  # the smallest sizes that still run every measurement: a smoke test, not figures
    progress: bool = True  # print each part's own report as it runs

    def __post_init__(self) -> None:
        unknown = [part for part in self.parts if part not in SCRIPTS]
        if unknown or not self.parts:
            raise VidretError(f"unknown benchmark part {unknown[:1]} (expected some of {', '.join(SCRIPTS)})")


def machine() -> dict:
    """What the figures were measured on."""
    import torch

    names = [line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")]
    return {
        "cpu": names[0] if names else platform.processor(),
        "cores": len(os.sched_getaffinity(0)),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def part_command(part: str, setting: str, out: Path) -> list[str]:
    arguments = ARGUMENTS[part].get(setting, ARGUMENTS[part]["cpu"]).split()
    return [sys.executable, "-m", f"pipeline.benchmarks.{SCRIPTS[part]}", *arguments, "--out", str(out)]


def part_environment() -> dict[str, str]:
    """The parts' environment: they import this process's ``pipeline`` (its folder first on their path unless
    it is a site-packages folder, which they have anyway), never one in the working directory (PYTHONSAFEPATH)."""
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    if PACKAGE_ROOT not in {Path(folder).resolve() for folder in site.getsitepackages()}:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
    return env


def run_bench(options: BenchOptions) -> dict:
    """Run the parts in order; write ``options.out`` (bench.json) and return what it holds."""
    import torch

    setting = "quick" if options.quick else "cuda" if torch.cuda.is_available() else "cpu"
    results = {"machine": machine(), "setting": setting, "parts": {}, "summary": []}
    with tempfile.TemporaryDirectory(prefix="vidret-bench-") as scratch:
        for part in options.parts:
            out = Path(scratch) / f"{part}.json"
            command = part_command(part, setting, out)
            started = time.perf_counter()
            finished = subprocess.run(command, env=part_environment(), capture_output=not options.progress, text=True)
            if finished.returncode != 0:
                last_line = (finished.stderr or "").strip().splitlines()[-1:] if not options.progress else []
                why = f"exit {finished.returncode}{': ' + last_line[0] if last_line else ''}"
                raise VidretError(f"bench: the {part} benchmark failed ({why})")
            raw = json.loads(out.read_text())
            results["parts"][part] = {
                "command": " ".join(command[1:]),
                "seconds": round(time.perf_counter() - started, 1),
                "results": raw,
            }
            results["summary"] += SUMMARIES[part](raw)
    Path(options.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(options.out), results)
    return results


def _decode_rows(raw: dict) -> list[dict]:
    rows = []
    for corpus, runs in raw["runs"].items():
        for run in runs:
            stage = run["method"] == "vidret-stage"  # the whole stage, against read_video alone
            outside = f"; {run['seconds_outside_decoders']} s outside read_video" if stage else ""
            rows.append(
                {
                    "part": "decode",
                    "figure": f"{corpus}, {run['method']}, {run['workers']} worker(s){outside}",
                    "value": run["videos_per_s_per_worker"],
                    "unit": "videos/s per worker",
                    "ratio": run["time_to_read_video"] if stage else run["time_to_floor"],
                    "ratio_of": "time / read_video's" if stage else "time / the floor's",
                }
            )
    return rows


def _encode_rows(raw: dict) -> list[dict]:
    alone, measured = raw["model_alone"], raw["pipeline"]
    where = f"{raw['device']}, {raw['model']} {raw['head']}, batch {raw['batch_size']}"
    pairs = [
        ("embed", measured["embedding_videos_per_second"], alone["embedding_videos_per_second"], "embedding"),
        (
            "embed, its videos' part,",
            measured["embedding_video_part_videos_per_second"],
            alone["inference_videos_per_second"],
            "embedding_video_part",
        ),
        ("train", measured["training_videos_per_second_last_epoch"], alone["training_videos_per_second"], "training"),
    ]
    return [
        {
            "part": "encode",
            "figure": f"{name} pipeline ({where}); model alone {ceiling:.1f} videos/s",
            "value": round(value, 1),
            "unit": "videos/s",
            "ratio": round(raw["efficiency"][key], 3),
            "ratio_of": "pipeline / model alone",
        }
        for name, value, ceiling, key in pairs
    ]


def _index_rows(raw: dict) -> list[dict]:
    rows = []
    for result in raw["results"]:
        size = f"{result['size']:,} x {result['size']:,}, dim {result['dim']}"
        rows += [
            {
                "part": "index",
                "figure": f"ranks, both directions, {size}; peak RSS {result['peak_rss_gib']:.2f} GiB",
                "value": round(result["ranks_s"], 3),
                "unit": "s",
                "ratio": round(result["ranks_over_gemm"], 3),
                "ratio_of": "time / the bare similarity products'",
            },
            {
                "part": "index",
                "figure": f"FAISS top-10 for every caption, {size}",
                "value": round(result["faiss_search_top10_s"], 3),
                "unit": "s",
                "ratio": None,
                "ratio_of": None,
            },
        ]
    return rows


def _jpeg_rows(raw: dict) -> list[dict]:
    rows = [
        {
            "part": "jpeg",
            "figure": f"{corpus} frames as JPEG q{row['quality']}: PSNR {row['psnr_db']} dB against raw",
            "value": row["bytes_per_video"],
            "unit": "bytes per video",
            "ratio": row["smaller"],
            "ratio_of": "raw lz4 Parquet's bytes / JPEG's",
        }
        for corpus, measured in raw["corpora"].items()
        for row in measured["jpeg"]
    ]
    speed = raw["throughput"]
    for name in ("read_224", "read_112", "read_and_vidret_tiny_112"):
        jpeg, plain = speed[name]["jpeg"], speed[name]["raw"]
        measured = f"{name.replace('_', ' ')}, JPEG q{speed['quality']}"
        rows.append(
            {
                "part": "jpeg",
                "figure": f"{measured} (raw {plain['videos_per_second']} videos/s)",
                "value": jpeg["videos_per_second"],
                "unit": "videos/s",
                "ratio": round(jpeg["videos_per_second"] / plain["videos_per_second"], 3),
                "ratio_of": "JPEG / raw",
            }
        )
    return rows


def _ann_rows(raw: dict) -> list[dict]:
    flat, ann = raw["flat"], raw["ann"]
    index, where = f"{ann['factory']} {ann['search_parameters']}", f"{raw['vectors']:,} x {raw['dim']}"

    def row(figure: str, value, unit: str, ratio=None, ratio_of=None) -> dict:
        return {"part": "ann", "figure": f"{index}, {where}: {figure}", "value": value, "unit": unit,
                "ratio": ratio, "ratio_of": ratio_of}  # fmt: skip

    exact = "time / exact search's"
    return [
        row(f"one held-out query, p50 (exact {flat['p50_ms']:.1f} ms)", ann["p50_ms"], "ms",
            round(ann["p50_ms"] / flat["p50_ms"], 3), exact),
        row(f"one held-out query, p99 (exact {flat['p99_ms']:.1f} ms)", ann["p99_ms"], "ms",
            round(ann["p99_ms"] / flat["p99_ms"], 3), exact),
        row(f"recall@10 against exact search (tuned to {ann['recall_target']})", ann["recall_at_10"], "recall@10"),
        row(f"build, then {ann['tune_s']:.0f} s tuning (exact {flat['build_s']:.1f} s)", ann["build_s"], "s"),
        row("index file", round(ann["bytes"] / 2**20, 1), "MiB", round(ann["bytes"] / flat["bytes"], 3),
            "bytes / exact index's"),
    ]  # fmt: skip


def _serve_rows(raw: dict) -> list[dict]:
    rows = []
    for name, corpus in raw["corpora"].items():
        where = f"{name}, {corpus['clips']:,} clips, {raw['model']}"
        shares = f"text tower {corpus['text_share']:.0%}, index {corpus['index_share']:.0%}"
        for stat in ("p50", "p99"):
            rows.append(
                {
                    "part": "serve",
                    "figure": f"{where}: server time per query, {stat} ({shares})",
                    "value": corpus["server_ms"][stat],
                    "unit": "ms",
                    "ratio": round(corpus["server_ms"][stat] / corpus["in_process_ms"][stat], 3),
                    "ratio_of": "server / the same search in-process",
                }
            )
    return rows


SUMMARIES = {
    "decode": _decode_rows, "encode": _encode_rows, "index": _index_rows, "jpeg": _jpeg_rows, "ann": _ann_rows,
    "serve": _serve_rows,
}  # fmt: skip


def bench_table(results: dict) -> str:
    """The summary rows as text, under the machine they were measured on."""
    host = results["machine"]
    lines = [
        f"vidret bench ({results['setting']}) on {host['cpu']}, {host['cores']} cores"
        f"{', ' + host['gpu'] if host['gpu'] else ''}; {host['date']}",
        f"{'part':7} {'value':>10}  {'unit':20} {'ratio':>6}  figure (ratio of)",
    ]
    for row in results["summary"]:
        ratio = f"{row['ratio']:6.2f}" if row["ratio"] is not None else " " * 6
        of = f" ({row['ratio_of']})" if row["ratio_of"] else ""
        lines.append(f"{row['part']:7} {row['value']:>10}  {row['unit']:20} {ratio}  {row['figure']}{of}")
    return "\n".join(lines)
