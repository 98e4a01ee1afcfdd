"""vidret report: the page holds what metrics.json, history.json, ranks.parquet and the stage records hold,
inline and offline, the same bytes for the same run; runs without training, captions or frames still report."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.encode.embed import EmbedOptions, embed
from pipeline.encode.train import TrainOptions, make_recipe, train
from pipeline.index import IndexOptions, index_embeddings
from pipeline.index.evaluate import metrics_table
from pipeline.manifest import write_manifest
from pipeline.report import WORST_QUERIES, build_report, write_report

VIDRET = Path(sys.executable).parent / "vidret"


@pytest.fixture(scope="module")
def trained_run(decoded_synthetic, tmp_path_factory) -> Path:
    """vidret-micro trained 2 epochs (validated on val), its test split embedded and indexed with DSL."""
    run = tmp_path_factory.mktemp("trained")
    data = decoded_synthetic["frames"], decoded_synthetic["manifest"]
    recipe = make_recipe("demo", epochs=2, batch_size=8)
    train(TrainOptions(*data, run / "model", model="vidret-micro", pretrained="none", recipe=recipe, progress=False))
    embed(EmbedOptions(*data, run / "embeddings", checkpoint=run / "model" / "best.pt", progress=False))
    index_embeddings(run / "embeddings", run / "index", IndexOptions(dsl=True, progress=False))
    return run


def images(page: str, media_type: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(rf'src="data:{media_type};base64,([^"]+)"', page)]


def test_the_report_holds_the_runs_numbers(trained_run, decoded_synthetic):
    page = build_report(trained_run)
    metrics = json.loads((trained_run / "index" / "metrics.json").read_text())
    assert "dsl" in metrics
    assert f"<pre>{html.escape(metrics_table(metrics))}</pre>" in page  # as `vidret index` prints it

    history = json.loads((trained_run / "model" / "history.json").read_text())
    assert len(history) == 2
    for entry in history:
        row = [entry["epoch"], f"{entry['loss']:.4f}", f"{entry['val']['t2v']['R@1']:.1f}"]
        row.append(f"{entry['val']['v2t']['R@1']:.1f}")
        assert "<tr>" + "".join(f"<td class=number>{cell}</td>" for cell in row) + "</tr>" in page
    best = json.loads((trained_run / "model" / "stage.json").read_text())["best"]["epoch"]
    assert f"best.pt: epoch {best} " in page

    counts = json.loads((decoded_synthetic["frames"] / "stage.json").read_text())["counts"]
    for status, count in counts.items():
        assert f"<tr><td class=number>{status}</td><td class=number>{count}</td></tr>" in page

    for stage, folder in {"decode": decoded_synthetic["frames"], "train": trained_run / "model",
                          "embed": trained_run / "embeddings", "index": trained_run / "index"}.items():  # fmt: skip
        record = json.loads((folder / "stage.json").read_text())
        assert f"<h3>{stage}</h3><p>{html.escape(str(folder))}, finished {record['finished']}</p>" in page
        for name, value in record["params"].items():
            assert f"<tr><td>{name}</td><td>{html.escape(json.dumps(value))}</td></tr>" in page

    (curves,) = images(page, "image/png")
    assert Image.open(io.BytesIO(curves)).format == "PNG"


def test_the_worst_queries_come_worst_first_with_their_top_hits(trained_run):
    page = build_report(trained_run)
    ranks = pd.read_parquet(trained_run / "index" / "ranks.parquet")
    t2v = ranks[ranks.direction == "t2v"]
    worst = t2v.sort_values(["rank", "query"], ascending=[False, True]).head(WORST_QUERIES)
    assert len(worst) == min(WORST_QUERIES, len(t2v)) and worst["rank"].iloc[0] > 1
    videos = pd.read_parquet(trained_run / "embeddings" / "videos.parquet")
    texts = pd.read_parquet(trained_run / "embeddings" / "texts.parquet")
    section = page[page.index("worst-ranked queries") : page.index("Parameters of every stage")]
    shown = re.findall(r"<tr><td>([^<]*)</td><td>(\d+)</td>", section)
    assert shown == [
        (html.escape(caption), str(rank)) for caption, rank in zip(worst.caption, worst["rank"], strict=True)
    ]
    rows = section.split("<tr>")[2:]
    for entry, row in zip(worst.itertuples(), rows, strict=True):
        scores = np.stack(videos.embedding) @ np.asarray(texts.embedding[entry.query])
        top = int(np.argmax(scores))
        assert f"{videos.video_id[top]}<br>" in row.split("</td>")[-2]
        assert f"score {scores[top]:.4f}" in row
        assert f"{entry.video_id}<br>" in row
    thumbnails = images(page, "image/jpeg")
    assert len(thumbnails) == 2 * len(worst)
    assert all(Image.open(io.BytesIO(image)).size == (32, 32) for image in thumbnails)  # the frames' size


def test_the_report_is_one_offline_page_and_the_same_run_gives_the_same_bytes(trained_run):
    page = build_report(trained_run)
    for outside in ("http://", "https://", 'src="/', "<link", "<script", "url("):
        assert outside not in page
    assert build_report(trained_run) == page
    path = write_report(trained_run)
    assert path == trained_run / "report.html" and path.read_text() == page
    assert sorted(p.name for p in trained_run.iterdir()) == ["embeddings", "index", "model", "report.html"]


def test_a_zero_shot_run_without_frames_says_what_it_lacks(served_run, tmp_path):
    """served_run is zero-shot: no training section. With its frames gone: no thumbnails or counts, a note."""
    page = build_report(served_run)
    assert "zero-shot embeddings: no training run" in page and "image/png" not in page
    assert len(images(page, "image/jpeg")) == 2 * WORST_QUERIES

    run = tmp_path / "run"
    for part in ("embeddings", "index"):
        shutil.copytree(served_run / part, run / part)
    record = json.loads((run / "index" / "stage.json").read_text())
    record["input"]["embeddings"] = str(run / "embeddings")
    (run / "index" / "stage.json").write_text(json.dumps(record))
    record = json.loads((run / "embeddings" / "stage.json").read_text())
    record["input"]["frames"] = str(tmp_path / "gone")
    (run / "embeddings" / "stage.json").write_text(json.dumps(record))
    page = build_report(run)
    assert f"frames: {tmp_path / 'gone'} (recorded in {run / 'embeddings'}) holds no decode output" in page
    assert "no frames folder: no decode counts" in page
    assert images(page, "image/jpeg") == [] and page.count("no frames</span>") == 2 * WORST_QUERIES


def test_a_caption_free_run_has_no_metrics_or_worst_queries(decoded_synthetic, tmp_path):
    records = [json.loads(line) for line in decoded_synthetic["manifest"].read_text().splitlines()]
    write_manifest(tmp_path / "manifest.jsonl", [{**record, "captions": []} for record in records])
    embed(EmbedOptions(decoded_synthetic["frames"], tmp_path / "manifest.jsonl", tmp_path / "embeddings",
                       model="vidret-micro", pretrained="none", device="cpu", progress=False))  # fmt: skip
    index_embeddings(tmp_path / "embeddings", tmp_path / "index", IndexOptions(progress=False))
    page = build_report(tmp_path)
    assert "a caption-free collection: nothing to score, no metrics" in page
    assert "a caption-free collection: no ranked queries" in page
    assert "<h3>decode</h3>" in page and "<h3>index</h3>" in page


def test_vidret_report_writes_the_page_and_bad_input_is_one_line(trained_run, tmp_path):
    (trained_run / "report.html").unlink(missing_ok=True)
    ran = subprocess.run([VIDRET, "report", trained_run], capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith(f"report: {trained_run / 'report.html'} ")
    assert (trained_run / "report.html").read_text() == build_report(trained_run)
    failed = subprocess.run([VIDRET, "report", tmp_path], capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1
    assert (
        failed.stderr
        == f"error: {tmp_path}: no videos.faiss here or in {tmp_path / 'index'}; build it with `vidret index`\n"
    )
