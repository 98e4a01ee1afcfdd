"""``vidret report``: a run on one self-contained HTML page (``RUN/report.html``, and ``/run`` of the server).

It reads what the stages recorded (``stage.json``, ``metrics.json``, ``history.json``, ``ranks.parquet``)
and computes only each worst query's top hit, from the embeddings. The curves are matplotlib PNGs and the
thumbnails JPEGs, both inline, so the page opens offline; the same run always gives the same bytes.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pipeline.files import read_json, read_parquet, write_text
from pipeline.index.evaluate import metrics_table
from pipeline.index.reader import read_embeddings
from pipeline.run_folder import RunFolder, locate_run
from pipeline.schemas import METRICS_FILE, RANKS_FILE
from pipeline.thumbnails import Thumbnails, run_thumbnails

REPORT_FILE = "report.html"
HISTORY_FILE = "history.json"
WORST_QUERIES = 12
STAGE_FOLDERS = {"decode": "frames", "train": "model", "embed": "embeddings", "index": "index"}  # RunFolder fields

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; }
table { border-collapse: collapse; margin: .4em 0; } td, th { border: 1px solid #ddd; padding: .2em .5em; }
th { background: #f3f3f3; text-align: left; } td.number { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #555; font-style: italic; } img.thumbnail { width: 112px; height: 112px; object-fit: cover; }
.worst td { vertical-align: top; }
"""


def escaped(value) -> str:
    return html.escape(str(value))


def note(text: str) -> str:
    return f'<p class="note">{escaped(text)}</p>'


def table(header: list[str], rows: list[list], numbers: bool = False) -> str:
    """An HTML table; cells are escaped, except those given as ``Markup``."""
    cell = "<td class=number>{}</td>" if numbers else "<td>{}</td>"
    head = "".join(f"<th>{escaped(name)}</th>" for name in header)
    body = "".join(
        "<tr>" + "".join(cell.format(value if isinstance(value, Markup) else escaped(value)) for value in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


class Markup(str):
    """HTML that a table cell takes as it is (an image, a line break)."""


def data_uri(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def thumbnail(thumbnails: Thumbnails | None, video_id: str, clip_index: int) -> Markup:
    image = thumbnails.clip_jpeg(video_id, clip_index) if thumbnails is not None else None
    if image is None:
        return Markup('<span class="note">no frames</span>')
    return Markup(f'<img class="thumbnail" alt="{escaped(video_id)}" src="{data_uri(image, "image/jpeg")}">')


def moment(start_s: float, end_s: float | None) -> str:
    return f"{start_s:.1f}-{end_s:.1f} s" if end_s is not None and np.isfinite(end_s) else f"{start_s:.1f} s-"


def model_section(folder: RunFolder) -> str:
    model = folder.records["index"].get("model") or {}
    if not model:
        return note("no record of the model that wrote the embeddings (embeddings from another tool)")
    fields = ("model", "head", "pretrained", "checkpoint", "epoch", "embedding_dim")
    return table(["field", "value"], [[name, "-" if model.get(name) is None else model[name]] for name in fields])


def metrics_section(folder: RunFolder) -> str:
    index = folder.records["index"].get("index") or {}
    built = table(["index", "value"], [[name, json.dumps(index.get(name))] for name in sorted(index)])
    metrics = read_json(folder.index / METRICS_FILE)
    if metrics is None:
        return note("a caption-free collection: nothing to score, no metrics") + built
    return f"<pre>{escaped(metrics_table(metrics))}</pre>" + built


def curves_png(history: list[dict]) -> bytes:
    """Loss per epoch, and val R@1 per epoch in both directions, side by side."""
    figure = Figure(figsize=(10, 3.4), dpi=100, layout="constrained")
    loss, recall = figure.subplots(1, 2)
    epochs = [entry["epoch"] for entry in history]
    loss.plot(epochs, [entry["loss"] for entry in history], marker="o")
    loss.set(title="training loss", xlabel="epoch", ylabel="mean loss")
    validated = [entry for entry in history if entry.get("val")]
    for direction in ("t2v", "v2t"):
        points = [entry["val"][direction]["R@1"] for entry in validated]
        recall.plot([entry["epoch"] for entry in validated], points, marker="o", label=direction)
    recall.set(title="val R@1", xlabel="epoch", ylabel="R@1 (%)")
    if validated:
        recall.legend()
    for axes in (loss, recall):
        axes.grid(alpha=0.3)
    return png_bytes(figure)


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})  # no version stamp: the same bytes each time
    return buffer.getvalue()


def training_section(folder: RunFolder) -> str:
    if folder.model is None:
        return note("zero-shot embeddings: no training run")
    history = read_json(folder.model / HISTORY_FILE)
    if not history:
        return note(f"{folder.model / HISTORY_FILE}: no history")
    best = folder.records["train"].get("best") or {}
    rows = [
        [
            entry["epoch"],
            f"{entry['loss']:.4f}",
            *(f"{entry['val'][direction]['R@1']:.1f}" if entry.get("val") else "-" for direction in ("t2v", "v2t")),
        ]
        for entry in history
    ]
    chosen = (
        f"<p>best.pt: epoch {escaped(best.get('epoch'))} (highest val t2v R@1, then lowest MnR)</p>" if best else ""
    )
    image = f'<img alt="training curves" src="{data_uri(curves_png(history), "image/png")}">'
    return image + chosen + table(["epoch", "loss", "val t2v R@1", "val v2t R@1"], rows, numbers=True)


def decode_section(folder: RunFolder) -> str:
    if "decode" not in folder.records:
        return note("no frames folder: no decode counts")
    counts = folder.records["decode"].get("counts") or {}
    return table(["status", "videos"], [[status, count] for status, count in sorted(counts.items())], numbers=True)


def worst_section(folder: RunFolder, thumbnails: Thumbnails | None) -> str:
    ranks_path = folder.index / RANKS_FILE
    if not ranks_path.is_file():
        return note("a caption-free collection: no ranked queries")
    if folder.embeddings is None:
        return note("the embeddings are gone: no top hits to show")
    ranks = read_parquet(ranks_path).to_pandas()
    worst = ranks[ranks.direction == "t2v"].sort_values(["rank", "query"], ascending=[False, True]).head(WORST_QUERIES)
    embeddings = read_embeddings(folder.embeddings)
    row_video_ids = embeddings.row_video_ids
    rows = []
    for entry in worst.itertuples():
        scores = embeddings.videos @ embeddings.texts[entry.query]
        top = int(np.argmax(scores))
        top_id = row_video_ids[top]
        top_clip, top_start, top_end = int(embeddings.clip_index[top]), embeddings.start_s[top], embeddings.end_s[top]
        rows.append(
            [
                entry.caption,
                entry.rank,
                thumbnail(thumbnails, entry.video_id, int(entry.clip_index)),
                Markup(f"{escaped(entry.video_id)}<br>{escaped(moment(entry.start_s, entry.end_s))}"),
                thumbnail(thumbnails, top_id, top_clip),
                Markup(f"{escaped(top_id)}<br>{escaped(moment(top_start, top_end))}<br>score {scores[top]:.4f}"),
            ]
        )
    header = ["caption", "rank", "ground truth", "", "top hit", ""]
    return f'<div class="worst">{table(header, rows)}</div>'


def parameters_section(folder: RunFolder) -> str:
    parts = []
    for stage, field in STAGE_FOLDERS.items():
        record = folder.records.get(stage)
        if record is None:
            continue
        params = record.get("params") or {}
        where = f"{getattr(folder, field)}, finished {record.get('finished', 'never')}"
        rows = [[name, json.dumps(params[name])] for name in sorted(params)]
        parts.append(f"<h3>{escaped(stage)}</h3><p>{escaped(where)}</p>" + table(["parameter", "value"], rows))
    return "".join(parts)


def build_report(run: Path | str) -> str:
    """The report of ``run`` (a run folder, or its index folder) as one HTML page."""
    folder = locate_run(run)
    thumbnails = run_thumbnails(folder)
    sections = [
        ("Model", model_section(folder)),
        ("Metrics", metrics_section(folder)),
        ("Training", training_section(folder)),
        ("Decode", decode_section(folder)),
        (f"The {WORST_QUERIES} worst-ranked queries (text to video)", worst_section(folder, thumbnails)),
        ("Parameters of every stage", parameters_section(folder)),
    ]
    body = "".join(note(line) for line in folder.missing)
    body += "".join(f"<h2>{escaped(title)}</h2>{content}" for title, content in sections)
    title = f"vidret run: {folder.root}"
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{escaped(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{escaped(title)}</h1>{body}</body></html>\n"
    )


def write_report(run: Path | str) -> Path:
    """Write ``build_report(run)`` to ``run/report.html``, atomically; returns its path."""
    path = Path(run) / REPORT_FILE
    write_text(path, build_report(run))
    return path
