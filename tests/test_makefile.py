"""`make … DATASET=…`: every stage gets --dataset, so the benchmark's definition supplies the stage options
(checked with make -n; tests/test_presets.py checks what --dataset sets)."""

import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.study import load_study

ROOT = Path(__file__).resolve().parents[1]


def planned_commands(*args: str) -> list[str]:
    """The vidret commands ``make -n ARGS`` would run, continuation lines joined."""
    if shutil.which("make") is None:
        pytest.fail("make is not installed; the README's commands need it")
    made = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    joined = made.stdout.replace("\\\n", " ")
    return [" ".join(line.split()) for line in joined.splitlines() if "vidret " in line]


# The options --dataset sets (pipeline/datasets/presets.py): make passes none of them itself.
PRESET_FLAGS = (
    "--frames", "--size", "--short-side", "--sampling", "--interpolation", "--train-views", "--model", "--pretrained",
    "--caption-length", "--recipe", "--split test",
)  # fmt: skip


def test_dataset_reaches_every_stage_as_dataset_flag():
    """The definition's defaults travel as --dataset, so make passes none of the options it sets."""
    decode, train, embed, index = planned_commands("decode", "encode", "index", "DATASET=msvd")
    assert decode.endswith("vidret decode manifests/msvd.jsonl --out runs/msvd/frames --dataset msvd --split all")
    assert train.endswith(
        "vidret encode train runs/msvd/frames --manifest manifests/msvd.jsonl --out runs/msvd/model --dataset msvd"
        " --head meanP"
    )
    assert embed.endswith(
        "--manifest manifests/msvd.jsonl --checkpoint runs/msvd/model/best.pt --out runs/msvd/embeddings --dataset msvd"
    )
    assert index.endswith("vidret index runs/msvd/embeddings --out runs/msvd/index --dataset msvd")
    for command in (decode, train, embed, index):
        assert "python" not in command and not any(flag in command for flag in PRESET_FLAGS), command


def test_variables_on_the_command_line_still_win():
    (decode,) = planned_commands("decode", "DATASET=activitynet", "FRAMES=32")
    assert decode.endswith("--dataset activitynet --split all --frames 32")
    (decode,) = planned_commands("decode", "DATASET=msvd", "FRAMES=8", "SIZE=112", "DECODE_ARGS=--short-side 128")
    assert decode.endswith("--dataset msvd --split all --frames 8 --size 112 --short-side 128")
    train, embed = planned_commands(
        "encode", "DATASET=msrvtt-9k", "MODEL=vidret-tiny", "PRETRAINED=none", "TRAIN_ARGS=--recipe demo",
        "EMBED_SPLIT=val", "CHECKPOINT=",
    )  # fmt: skip
    assert train.endswith("--dataset msrvtt-9k --model vidret-tiny --pretrained none --head meanP --recipe demo")
    assert embed.endswith(
        "--model vidret-tiny --pretrained none --head meanP --out runs/msrvtt-9k/embeddings --dataset msrvtt-9k"
        " --split val"
    )


def test_without_a_dataset_the_cpu_defaults_remain():
    decode, train, embed, index = planned_commands("decode", "encode", "index")
    assert decode.endswith("--out runs/demo/frames --split all --frames 12 --size 112")
    assert train.endswith("--out runs/demo/model --model vidret-tiny --pretrained none --head meanP --recipe demo")
    assert embed.endswith("--checkpoint runs/demo/model/best.pt --out runs/demo/embeddings --split test")
    assert index.endswith("vidret index runs/demo/embeddings --out runs/demo/index")
    assert not any("--dataset" in command for command in (decode, train, embed, index))
    demo = planned_commands("demo")
    assert demo[2].endswith(
        "vidret decode data/synthetic/manifest.jsonl --out runs/demo/frames --frames 4 --size 112 --short-side 112"
        " --train-views 4"
    )
    demo_train = "--model vidret-tiny --pretrained none --head seqTransf --linear-patch 3d --recipe demo --epochs 48"
    assert demo_train in demo[3]
    assert not any("--dataset" in command for command in demo)


def test_the_clip4clip_study_runs_the_demos_data_frames_and_recipe():
    """make study's table stands next to make demo's result: the same clips, frames, views, model and recipe."""
    synth, _, decode, train, *_ = planned_commands("demo")
    study = load_study("clip4clip")
    assert f"--videos {study.synth.videos} --seed {study.synth.seed}" in synth
    assert ("--twins" in synth) == study.synth.twins
    spec, views = study.decode.spec, study.decode.train_views
    assert decode.endswith(
        f"--frames {spec.num_frames} --size {spec.size} --short-side {spec.short_side} --train-views {views}"
    )
    assert f"--model {study.model} --pretrained {study.pretrained}" in train
    assert train.endswith(f"--recipe {study.recipe_name} --epochs {study.recipe.epochs}")
    assert ("seqTransf", "3d") in {(run.head, run.linear_patch) for run in study.runs}  # the demo's run


def test_a_test_only_dataset_embeds_zero_shot():
    """No train split (msrvtt-1k-a): no checkpoint; --dataset sets the zero-shot model and its caption length."""
    (embed,) = planned_commands("embed", "DATASET=msrvtt-1k-a")
    assert embed.endswith(
        "--manifest manifests/msrvtt-1k-a.jsonl --head meanP --out runs/msrvtt-1k-a/embeddings --dataset msrvtt-1k-a"
    )
    assert "--checkpoint" not in embed and "--model" not in embed
    (embed,) = planned_commands("embed", "DATASET=lsmdc", "CHECKPOINT=")
    assert embed.endswith("--manifest manifests/lsmdc.jsonl --head meanP --out runs/lsmdc/embeddings --dataset lsmdc")


def test_manifest_target_and_unknown_dataset():
    (build,) = planned_commands("manifest", "DATASET=lsmdc", "ANNOTATIONS=ann", "VIDEO_DIR=vids")
    assert build.endswith("vidret manifest build lsmdc --annotations ann --videos vids --out manifests/lsmdc.jsonl")
    made = subprocess.run(["make", "-n", "decode", "DATASET=nope"], cwd=ROOT, capture_output=True, text=True)
    assert made.returncode != 0 and "DATASET=nope: no pipeline/datasets/catalog/nope.json" in made.stderr


def test_bench_target_installs_the_bench_extra_and_runs_vidret_bench():
    made = subprocess.run(
        ["make", "-n", "-B", "--no-print-directory", "bench", "BENCH_ARGS=--only index"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    assert "pip install --quiet -e '.[dev,bench]'" in made.stdout
    assert made.stdout.rstrip().endswith("vidret bench --out bench.json --only index")


def test_study_target_runs_the_named_study_into_its_folder():
    assert planned_commands("study")[-1].endswith("vidret study clip4clip --out runs/study")
    (command,) = planned_commands("study", "STUDY=my.json", "STUDY_OUT=runs/mine")[-1:]
    assert command.endswith("vidret study my.json --out runs/mine")
