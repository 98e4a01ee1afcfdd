"""vidret bench: the benchmark scripts run as parts, and their figures land in bench.json and the table."""

import json

import pytest

from pipeline.bench import SCRIPTS, BenchOptions, bench_table, run_bench
from pipeline.errors import VidretError


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
    embed_row = rows[("encode", "embed")]
    expected = encode["pipeline"]["embedding_videos_per_second"] / encode["model_alone"]["inference_videos_per_second"]
    assert embed_row["ratio"] == pytest.approx(expected, abs=5e-4)  # rounded to 3 decimals

    table = bench_table(results).splitlines()
    assert table[0].startswith("vidret bench (quick) on ") and f"{results['machine']['cores']} cores" in table[0]
    assert len(table) == 2 + len(results["summary"])
    assert any(line.startswith("encode ") and "pipeline / model alone" in line for line in table)


def test_unknown_part_is_refused():
    with pytest.raises(VidretError, match=r"unknown benchmark part \['ranks'\]"):
        BenchOptions(parts=("index", "ranks"))
    assert set(SCRIPTS) == {"decode", "encode", "index"}
