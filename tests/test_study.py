"""vidret study: every shipped study file loads, bad ones are one-line errors, and a small study trains,
embeds and indexes each run through the stage contracts and writes the table, plot and record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import VidretError
from pipeline.study import StudyOptions, available_studies, load_study, run_study

SMALL = {
    "synth": {"videos": 40, "seed": 3, "width": 64, "height": 48, "min_frames": 12, "max_frames": 20, "twins": True},
    "frames": {"num_frames": 4, "size": 32},
    "train_views": 2,
    "model": "vidret-micro",
    "pretrained": "none",
    "train": {"recipe": "demo", "epochs": 2, "batch_size": 8},
    "seed": 1,
    "runs": [
        {"name": "meanP", "head": "meanP"},
        {"name": "meanP-3d", "head": "meanP", "linear_patch": "3d"},
        {"name": "tightTransf", "head": "tightTransf", "init_from": "meanP", "rerank": "meanP"},
    ],
}


def write_study(folder: Path, **changes) -> Path:
    path = folder / "small.json"
    path.write_text(json.dumps({**SMALL, **changes}))
    return path


def test_every_shipped_study_loads_and_every_run_can_be_built():
    assert "clip4clip" in available_studies()
    for name in available_studies():
        study = load_study(name)
        assert study.runs and len({run.name for run in study.runs}) == len(study.runs), name
    clip4clip = load_study("clip4clip")
    assert {(run.head, run.linear_patch) for run in clip4clip.runs} == {
        (head, patch) for head in ("meanP", "seqLSTM", "seqTransf") for patch in ("2d", "3d")
    } | {("tightTransf", "2d")}


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"epochs": 3}, "unknown fields ['epochs']"),
        ({"train": {"recipe": "demo", "epoch": 3}}, "train: unknown recipe fields ['epoch']"),
        ({"runs": []}, "no runs"),
        ({"seed": -1}, "seed must be in [0, 4294967296), got -1"),
        ({"train_views": -1}, "--train-views must be at least 0, got -1"),
        ({"runs": [{"name": "a", "head": "maxP"}]}, "run a: unknown head 'maxP'"),
        ({"model": "RN50", "pretrained": "openai", "runs": [{"name": "a", "head": "meanP", "linear_patch": "3d"}]},
         "run a: --linear-patch 3d deepens a ViT's patch embedding"),
        ({"runs": [{"name": "a", "head": "meanP"}, {"name": "a", "head": "seqLSTM"}]}, "two runs are named 'a'"),
        ({"runs": [{"name": "frames", "head": "meanP"}]}, "'frames' is the study's frames folder"),
        ({"runs": [{"name": "../up", "head": "meanP"}]}, "must be a folder name"),
        ({"runs": [{"name": "a", "head": "meanP", "lr": 1}]}, "unexpected keyword argument 'lr'"),
        ({"runs": [{"name": "a", "head": "tightTransf"}]}, "run a: a pair head (tightTransf) needs rerank"),
        ({"runs": [{"name": "a", "head": "meanP", "rerank": "a"}]}, "run a: rerank 'a' is not a run listed before"),
        ({"runs": [{"name": "a", "head": "meanP", "init_from": "b"}, {"name": "b", "head": "meanP"}]},
         "run a: init_from 'b' is not a run listed before it"),
    ],
)  # fmt: skip
def test_a_bad_study_file_is_a_one_line_error(tmp_path, changes, needle):
    with pytest.raises(VidretError) as error:
        load_study(write_study(tmp_path, **changes))
    assert needle in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_an_unknown_study_name_and_a_file_that_is_not_json(tmp_path):
    with pytest.raises(VidretError, match=r"^unknown study 'clip5clip'; choose one of .*clip4clip"):
        load_study("clip5clip")
    (tmp_path / "broken.json").write_text("{runs")
    with pytest.raises(VidretError, match=r"broken.json: not a readable JSON file"):
        load_study(tmp_path / "broken.json")


def test_a_small_study_runs_every_configuration_and_a_second_one_trains_nothing(tmp_path):
    out = tmp_path / "study"
    lines = []
    summary = run_study(StudyOptions(study=write_study(tmp_path), out=out, device="cpu", progress=False), lines.append)
    assert (summary.runs, summary.trained) == (3, 3)
    words = [line.split()[:2] for line in lines]  # each stage's summary line, a run's after its name
    assert [first for first, _ in words[:2]] == ["synth:", "decode:"]
    assert words[2:] == [
        [f"{run}:", f"{stage}:"] for run in ("meanP", "meanP-3d") for stage in ("train", "embed", "index")
    ] + [["tightTransf:", "train:"], ["tightTransf:", "index:"]]
    record = json.loads((out / "study.json").read_text())
    assert record["file"] == SMALL and [run["name"] for run in record["runs"]] == ["meanP", "meanP-3d", "tightTransf"]
    for run in record["runs"][:2]:
        assert run["metrics"] == json.loads((out / run["name"] / "index" / "metrics.json").read_text())
        assert json.loads((out / run["name"] / "model" / "stage.json").read_text())["params"]["seed"] == 1
    # The re-ranker's row: its re-ranking of meanP's index, from the model meanP's checkpoint started.
    reranked = json.loads((out / "tightTransf" / "index" / "metrics.json").read_text())
    assert reranked["t2v"] == record["runs"][0]["metrics"]["t2v"]
    assert record["runs"][2]["metrics"]["t2v"] == reranked["rerank"]["t2v"] != reranked["t2v"]
    tight_record = json.loads((out / "tightTransf" / "model" / "stage.json").read_text())
    assert tight_record["init_from"]["loaded"] == "towers; a new tightTransf head"
    assert json.loads((out / "meanP-3d" / "model" / "stage.json").read_text())["params"]["linear_patch"] == "3d"
    table = (out / "study.md").read_text()
    meanp = record["runs"][0]["metrics"]
    expected_row = f"| meanP | {meanp['t2v']['R@1']:.1f} | {meanp['t2v']['R@5']:.1f} |"
    assert table.startswith("| method | t2v R@1 |") and expected_row in table, table
    assert "| meanP-3d + DSL |" in table and "vidret-micro" in table
    assert "4 frames at 32², 2 train views; direction twins;" in table, table
    assert json.loads((out / "frames" / "stage.json").read_text())["params"]["train_views"] == 2
    assert (
        "| tightTransf (re-ranking meanP's top 50) |" in table
        and "| tightTransf (re-ranking meanP's top 50) + DSL" not in table
    )
    assert (out / "study.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    lines.clear()
    again = run_study(StudyOptions(study=write_study(tmp_path), out=out, device="cpu", progress=False), lines.append)
    assert sum("skipped" in line for line in lines) == 10, lines
    assert again.trained == 0 and json.loads((out / "study.json").read_text()) == record
    assert "3 runs (0 trained, 3 up to date)" in again.line()


def test_the_command_refuses_an_unknown_study_in_one_line(tmp_path):
    vidret = Path(sys.executable).parent / "vidret"
    refused = subprocess.run([vidret, "study", "clip5clip", "--out", tmp_path / "s"], capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stdout == "" and not (tmp_path / "s").exists()
    assert refused.stderr == "error: unknown study 'clip5clip'; choose one of clip4clip\n"
