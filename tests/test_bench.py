"""vidret bench: the benchmark scripts run as parts, and their figures land in bench.json and the table."""

import importlib.util
import json
import subprocess

import pytest

from pipeline.bench import ARGUMENTS, SCRIPTS, BenchOptions, bench_table, part_command, part_environment, run_bench
from pipeline.errors import VidretError


@pytest.mark.slow
def test_quick_index_and_encode_parts_write_bench_json(tmp_path):
    out = tmp_path / "results" / "bench.json"  # a folder that does not exist yet
    results = run_bench(BenchOptions(out=out, parts=("index", "encode"), quick=True, progress=False))
    assert json.loads(out.read_text()) == results
    assert results["setting"] == "quick" and results["machine"]["cores"] >= 1
    assert list(results["parts"]) == ["index", "encode"]

    index = results["parts"]["index"]["results"]["results"][0]
    assert index["size"] == 1000 and index["ranks_s"] > 0 and index["gemm_s"] > 0
    encode = results["parts"]["encode"]["results"]
    assert encode["model"] == "vidret-micro" and encode["peak_host_rss_gib"] > 0

    rows = {(row["part"], row["figure"].split(" ")[0]): row for row in results["summary"]}
    # Recomputed from the raw figures (the summary rounds to 3 decimals): a mixed-up ratio fails here.
    assert rows[("index", "ranks,")]["ratio"] == pytest.approx(index["ranks_s"] / index["gemm_s"], abs=5e-4)
    alone, measured = encode["model_alone"], encode["pipeline"]
    # embed's ceiling: a video and its two captions, each at the model-alone rate.
    ceiling = 1 / (1 / alone["inference_videos_per_second"] + 2 / alone["inference_captions_per_second"])
    assert measured["embedding_captions_per_video"] == 2
    embed_rows = [row for row in results["summary"] if row["figure"].startswith("embed")]
    video_part = measured["embedding_video_part_videos_per_second"] / alone["inference_videos_per_second"]
    assert [row["ratio"] for row in embed_rows] == [
        pytest.approx(measured["embedding_videos_per_second"] / ceiling, abs=5e-4),  # rounded to 3 decimals
        pytest.approx(video_part, abs=5e-4),
    ]

    table = bench_table(results).splitlines()
    assert table[0].startswith("vidret bench (quick) on ") and f"{results['machine']['cores']} cores" in table[0]
    assert len(table) == 2 + len(results["summary"])
    assert any(line.startswith("encode ") and "pipeline / model alone" in line for line in table)


def test_unknown_part_is_refused_and_every_part_is_a_module_its_child_imports(tmp_path):
    expected = r"unknown benchmark part \['ranks'\] \(expected some of decode, encode, index, jpeg, ann, serve\)"
    with pytest.raises(VidretError, match=expected):
        BenchOptions(parts=("index", "ranks"))
    assert BenchOptions().parts == tuple(SCRIPTS) == tuple(ARGUMENTS)  # the default runs every part
    for part in SCRIPTS:
        command = part_command(part, "quick", tmp_path / f"{part}.json")
        assert command[1:3] == ["-m", f"pipeline.benchmarks.{SCRIPTS[part]}"]
        assert command[-2:] == ["--out", str(tmp_path / f"{part}.json")]
        assert importlib.util.find_spec(command[2]) is not None, command[2]
    # The parts import this process's pipeline, not one in their working directory.
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "__init__.py").write_text("raise ImportError('the working directory holds this one')\n")
    ran = subprocess.run(
        [command[0], "-c", "import pipeline.benchmarks, pipeline; print(pipeline.__file__)"],
        cwd=tmp_path, env=part_environment(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ran.returncode == 0 and ran.stdout.strip() == importlib.util.find_spec("pipeline").origin, ran.stderr


@pytest.mark.slow
def test_decode_benchmark_rows_and_the_stage_against_read_video(tmp_path, monkeypatch):
    """The decode benchmark's measurements on two short clips, without the OpenCV baselines
    (a bench-only dependency): every ratio is recomputed from the raw times."""
    from pipeline.benchmarks import decode_throughput as bench

    monkeypatch.setattr(bench, "SECONDS", 2)  # 60-frame clips keep the test short
    paths = bench.make_corpus(tmp_path / "clips", clips=2, hd_clips=0)["msrvtt-like 320x240"]
    assert [path.name for path in paths] == ["320x240-000.mp4", "320x240-001.mp4"]
    rows = bench.measure(paths, workers=1, repeats=1, methods=("floor", "vidret", "vidret-decord"))
    by_method = {row["method"]: row for row in rows}
    assert set(by_method) == {"floor", "vidret", "vidret-decord"}
    floor = by_method["floor"]["seconds"]
    for row in rows:
        assert row["videos"] == 2 and row["seconds"] > 0 and row["cpu_s_per_video"] > 0
        # One repeat: one pair. Seconds are rounded to 4 decimals (±5e-5 each), the ratio to 3 (±5e-4).
        ratio = row["seconds"] / floor
        rounding = ratio * (5e-5 / row["seconds"] + 5e-5 / floor) + 5e-4
        assert row["time_to_floor"] == pytest.approx(ratio, abs=rounding)

    stage = bench.measure_stage(paths, workers=1, copies=2, rows=rows)
    assert stage["method"] == "vidret-stage" and stage["videos"] == 4
    # Paired: the stage and read_video over the same listing, in the same repeat.
    assert stage["time_to_read_video"] == pytest.approx(stage["seconds"] / stage["read_video_seconds"], rel=1e-2)
    assert 0 < stage["seconds_outside_decoders"] < stage["seconds"]


@pytest.mark.slow
def test_quick_serve_part_times_both_corpora_against_in_process_search(tmp_path):
    results = run_bench(BenchOptions(out=tmp_path / "bench.json", parts=("serve",), quick=True, progress=False))
    raw = results["parts"]["serve"]["results"]
    assert sorted(raw["corpora"]) == ["million", "run"] and raw["queries"] == 10
    assert raw["corpora"]["million"]["clips"] == 5000
    for corpus in raw["corpora"].values():
        assert corpus["timed_queries"] == 10  # the warm-up queries are not among them
        for figure in ("server_ms", "round_trip_ms", "in_process_ms", "healthz_ms"):
            assert 0 < corpus[figure]["p50"] <= corpus[figure]["p99"], figure
        assert 0 < corpus["text_share"] + corpus["index_share"] <= 1
    assert raw["goal"]["p50_ms"] == raw["corpora"]["million"]["server_ms"]["p50"]
    rows = [row for row in results["summary"] if row["part"] == "serve"]
    assert len(rows) == 4
    million = raw["corpora"]["million"]
    (p50,) = [row for row in rows if row["figure"].startswith("million") and ", p50 " in row["figure"]]
    assert p50["value"] == million["server_ms"]["p50"]
    assert p50["ratio"] == pytest.approx(million["server_ms"]["p50"] / million["in_process_ms"]["p50"], abs=5e-4)
