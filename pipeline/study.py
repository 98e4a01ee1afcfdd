"""``vidret study``: CLIP4Clip's empirical study, repeated on the built-in synthetic dataset.

A study file (``pipeline/studies/*.json``, or one of your own) fixes the dataset, the frames and decode's
train views, the model, the training recipe and the seed that every run shares, and lists the runs, each
a head and a linear patch, optionally started from an earlier run's checkpoint (``init_from``,
post-pretraining). A pair head (tightTransf) has no embeddings: its run re-ranks an earlier run's index
(``rerank``). ``run_study`` writes the data and the frames once, then for each run trains, embeds the test
split and indexes it, every stage through its own stage contract, so a second study skips what is done:

    OUT/data/            synth: the videos and manifest.jsonl
    OUT/frames/          decode
    OUT/NAME/model/      encode train, one folder per run
    OUT/NAME/embeddings/ encode embed (the test split, with best.pt)
    OUT/NAME/index/      index, with the dual-softmax rows (a pair head's: the re-ranked one's index)
    OUT/study.json       the study file as run, and each run's parameters, metrics and training time
    OUT/study.md         the table in the shape of the CLIP4Clip paper's: one row per method
    OUT/study.png        text-to-video and video-to-text R@1 per run
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from matplotlib.figure import Figure

from pipeline import defaults
from pipeline.decode import DecodeOptions, FrameSpec, decode_videos
from pipeline.encode.embed import EmbedOptions, embed
from pipeline.encode.model import PAIR_HEADS, check_model_choice
from pipeline.encode.train import Recipe, TrainOptions, make_recipe, train
from pipeline.errors import VidretError, check_paths, number_problem
from pipeline.files import write_bytes, write_json, write_text
from pipeline.index import IndexOptions, index_embeddings
from pipeline.report import png_bytes
from pipeline.stage import read_stage
from pipeline.synth import SynthOptions, make_synthetic_dataset

STUDIES_DIR = Path(__file__).with_name("studies")
STUDY_FIELDS = {"description", "synth", "frames", "train_views", "model", "pretrained", "train", "seed", "runs"}
SHARED_FOLDERS = ("data", "frames")  # OUT/data and OUT/frames serve every run
STUDY_FILES = ("study.json", "study.md", "study.png")
COLUMNS = ("R@1", "R@5", "R@10", "MdR", "MnR")


def available_studies() -> list[str]:
    return sorted(path.stem for path in STUDIES_DIR.glob("*.json"))


@dataclass(frozen=True)
class StudyRun:
    name: str
    head: str
    linear_patch: str = defaults.LINEAR_PATCH
    init_from: str | None = None  # an earlier run whose best.pt this one starts from
    rerank: str | None = None  # a pair head's run: the earlier run whose candidates it re-scores


@dataclass(frozen=True)
class Study:
    """A study file, read and checked: everything is known to be buildable before any run starts."""

    name: str
    description: str
    synth: SynthOptions
    decode: DecodeOptions  # the frames and the train views; the rest is decode's defaults
    model: str
    pretrained: str
    recipe_name: str
    recipe: Recipe
    seed: int
    runs: tuple[StudyRun, ...]
    source: dict  # the file's contents, recorded in study.json


def load_study(name_or_path: str | Path) -> Study:
    """A shipped study by name (``clip4clip``) or a study ``.json`` file; a one-line error for anything wrong."""
    path = Path(name_or_path)
    if not path.suffix:
        path = STUDIES_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise VidretError(f"unknown study {name_or_path!r}; choose one of {', '.join(available_studies())}")
    try:
        source = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise VidretError(f"study {path}: not a readable JSON file ({error})") from None
    where = f"study {path}"
    if not isinstance(source, dict):
        raise VidretError(f"{where}: expected a JSON object")
    unknown = sorted(set(source) - STUDY_FIELDS)
    missing = sorted({"runs"} - set(source))
    if unknown or missing:
        problem = f"unknown fields {unknown}" if unknown else f"missing fields {missing}"
        raise VidretError(f"{where}: {problem} (fields: {', '.join(sorted(STUDY_FIELDS))})")
    train_fields = dict(source.get("train", {}))
    recipe_name = train_fields.pop("recipe", defaults.RECIPE)
    recipe_names = {field.name for field in fields(Recipe)}
    if set(train_fields) - recipe_names:
        raise VidretError(f"{where}: train: unknown recipe fields {sorted(set(train_fields) - recipe_names)}")
    try:
        synth = SynthOptions(**source.get("synth", {}))
        frames = FrameSpec(**source.get("frames", {}))
        runs = tuple(StudyRun(**run) for run in source["runs"])
    except TypeError as error:
        raise VidretError(f"{where}: {error}") from None
    try:
        decode = DecodeOptions(spec=frames, train_views=source.get("train_views", 0))
    except VidretError as error:
        raise VidretError(f"{where}: {error}") from None
    recipe = make_recipe(recipe_name, **train_fields)
    model, pretrained = source.get("model", defaults.MODEL), source.get("pretrained", defaults.PRETRAINED)
    check_runs(where, runs, model, pretrained, recipe)
    seed = source.get("seed", defaults.TRAIN_SEED)
    if problem := number_problem(seed, integer=True, at_least=0, below=2**32):
        raise VidretError(f"{where}: seed {problem}")
    return Study(
        name=path.stem, description=source.get("description", ""), synth=synth, decode=decode, model=model,
        pretrained=pretrained, recipe_name=recipe_name, recipe=recipe, seed=seed, runs=runs, source=source,
    )  # fmt: skip


def check_runs(where: str, runs: tuple[StudyRun, ...], model: str, pretrained: str, recipe: Recipe) -> None:
    """Names that are folder names, once each; a model each run can build (head, linear patch)."""
    if not runs:
        raise VidretError(f"{where}: no runs")
    names = [run.name for run in runs]
    for run in runs:
        if not isinstance(run.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", run.name):
            raise VidretError(f"{where}: run name {run.name!r} must be a folder name (letters, digits, . _ -)")
        if names.count(run.name) > 1:
            raise VidretError(f"{where}: two runs are named {run.name!r}")
        if run.name in SHARED_FOLDERS:
            raise VidretError(f"{where}: run name {run.name!r} is the study's {run.name} folder; choose another")
        try:
            check_model_choice(model, pretrained, run.head, None, recipe.precision, run.linear_patch)
        except VidretError as error:
            raise VidretError(f"{where}: run {run.name}: {error}") from None
        earlier = {other.name: other for other in runs[: runs.index(run)]}
        for field_name in ("init_from", "rerank"):
            named = getattr(run, field_name)
            if named is not None and named not in earlier:
                raise VidretError(f"{where}: run {run.name}: {field_name} {named!r} is not a run listed before it")
        if (run.head in PAIR_HEADS) != (run.rerank is not None):
            raise VidretError(
                f"{where}: run {run.name}: a pair head ({', '.join(PAIR_HEADS)}) needs rerank, an earlier run whose"
                " candidates it re-scores, and only a pair head takes one"
            )
        if run.rerank is not None and earlier[run.rerank].head in PAIR_HEADS:
            raise VidretError(
                f"{where}: run {run.name}: rerank {run.rerank!r} is a pair head's run, with no embeddings"
            )


@dataclass(frozen=True)
class StudyOptions:
    study: str | Path = defaults.STUDY
    out: Path = Path(defaults.STUDY_OUT)
    device: str = defaults.DEVICE
    progress: bool = True

    def __post_init__(self) -> None:
        check_paths((self.out, "output folder"))


@dataclass
class StudySummary:
    out: Path
    runs: int
    trained: int  # runs trained now, not skipped as up to date
    seconds: float
    table: str

    def line(self) -> str:
        return (
            f"study: {self.runs} runs ({self.trained} trained, {self.runs - self.trained} up to date) in"
            f" {self.seconds:.1f} s -> {self.out} ({', '.join(STUDY_FILES)})"
        )


def run_study(options: StudyOptions, echo: Callable[[str], None] = lambda line: None) -> StudySummary:
    """Every run of the study, then its table, plot and record; ``echo`` gets each stage's summary line."""
    started = time.perf_counter()
    study = load_study(options.study)
    out = Path(options.out)
    data = make_synthetic_dataset(out / "data", study.synth, progress=options.progress)
    echo(data.line())
    decoded = decode_videos(data.manifest, out / "frames", study.decode, progress=options.progress)
    echo(decoded.line())
    results, trained = [], 0
    for run in study.runs:
        folder = out / run.name
        best = folder / "model" / "best.pt"
        summary = train(
            TrainOptions(
                out / "frames", data.manifest, folder / "model", model=study.model, pretrained=study.pretrained,
                head=run.head, linear_patch=run.linear_patch, recipe=study.recipe, recipe_name=study.recipe_name,
                init_from=out / run.init_from / "model" / "best.pt" if run.init_from else None,
                seed=study.seed, device=options.device, progress=options.progress,
            )
        )  # fmt: skip
        trained += summary.skip_reason is None
        lines = [summary.line()]
        if run.rerank is None:
            embedded = embed(
                EmbedOptions(
                    out / "frames", data.manifest, folder / "embeddings", checkpoint=best, device=options.device,
                    progress=options.progress,
                )
            )  # fmt: skip
            lines.append(embedded.line())
            index_options = IndexOptions(dsl=True, device=options.device, progress=False)
            indexed = index_embeddings(folder / "embeddings", folder / "index", index_options)
            metrics = indexed.metrics
        else:
            index_options = IndexOptions(rerank=best, device=options.device, progress=False)
            indexed = index_embeddings(out / run.rerank / "embeddings", folder / "index", index_options)
            reranked = indexed.metrics["rerank"]
            metrics = {**indexed.metrics, "t2v": reranked["t2v"], "v2t": reranked["v2t"]}
            del metrics["rerank"]
        for line in (*lines, indexed.line()):
            echo(f"{run.name}: {line}")
        model_record = read_stage(folder / "model")
        results.append(
            {
                "name": run.name, "head": run.head, "linear_patch": run.linear_patch, "init_from": run.init_from,
                "rerank": run.rerank, "metrics": metrics, "train_seconds": model_record["throughput"]["seconds"],
                "best_epoch": model_record["best"]["epoch"] if model_record.get("best") else None,
            }
        )  # fmt: skip
    table = study_table(study, results)
    write_json(out / "study.json", {"study": study.name, "file": study.source, "runs": results})
    write_text(out / "study.md", table + "\n")
    write_bytes(out / "study.png", study_png(results))
    return StudySummary(out, len(results), trained, time.perf_counter() - started, table)


def study_table(study: Study, results: list[dict]) -> str:
    """Markdown, as the CLIP4Clip paper's tables: one row per method, both directions, DSL in its own rows."""
    header = "| method | " + " | ".join(f"t2v {column}" for column in COLUMNS) + " | "
    header += " | ".join(f"v2t {column}" for column in COLUMNS) + " |"
    lines = [header, "|---" * (1 + 2 * len(COLUMNS)) + "|"]
    for dsl in (False, True):
        for result in results:
            if dsl and "dsl" not in result["metrics"]:  # a re-ranker's scores have no dual softmax
                continue
            metrics = result["metrics"]["dsl"] if dsl else result["metrics"]
            cells = [f"{metrics[direction][column]:.1f}" for direction in ("t2v", "v2t") for column in COLUMNS]
            name = (
                f"{result['name']} (re-ranking {result['rerank']}'s top {defaults.RERANK_K})"
                if result.get("rerank")
                else result["name"]
            )
            lines.append(f"| {name}{' + DSL' if dsl else ''} | " + " | ".join(cells) + " |")
    counts, spec = results[0]["metrics"], study.decode.spec
    views = f", {study.decode.train_views} train views" if study.decode.train_views else ""
    twins = " direction twins;" if study.synth.twins else ""
    lines.append("")
    lines.append(
        f"{study.name}: {study.model} ({study.pretrained} weights), recipe {study.recipe_name}"
        f" ({study.recipe.epochs} epochs, batch {study.recipe.batch_size}), seed {study.seed};"
        f" {spec.num_frames} frames at {spec.size}²{views};{twins} test split of"
        f" {counts['num_videos']} videos, {counts['num_texts']} captions; R@k in %, ranks 1-based."
    )
    return "\n".join(lines)


def study_png(results: list[dict]) -> bytes:
    figure = Figure(figsize=(1.2 * len(results) + 2, 3.6), dpi=100, layout="constrained")
    axes = figure.subplots()
    positions = range(len(results))
    for offset, direction in ((-0.2, "t2v"), (0.2, "v2t")):
        values = [result["metrics"][direction]["R@1"] for result in results]
        axes.bar([position + offset for position in positions], values, width=0.4, label=direction)
    axes.set_xticks(list(positions), [result["name"] for result in results])
    axes.set(title="R@1 on the test split", ylabel="R@1 (%)", ylim=(0, 100))
    axes.grid(axis="y", alpha=0.3)
    axes.legend()
    return png_bytes(figure)
