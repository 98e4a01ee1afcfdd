"""`make … DATASET=…`: a benchmark's definition supplies the stage options (checked with make -n)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def planned_commands(*args: str) -> list[str]:
    """The vidret commands ``make -n ARGS`` would run, continuation lines joined."""
    if shutil.which("make") is None:
        pytest.fail("make is not installed; the README's commands need it")
    made = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    joined = made.stdout.replace("\\\n", " ")
    return [" ".join(line.split()) for line in joined.splitlines() if "vidret " in line]


def test_dataset_defaults_reach_every_stage():
    decode, train, embed, index = planned_commands("decode", "encode", "index", "DATASET=msvd")
    assert decode.endswith(
        "vidret decode manifests/msvd.jsonl --out runs/msvd/frames --split all --frames 12 --size 224"
        " --short-side 224 --sampling clip4clip --interpolation bicubic --train-views 0"
    )
    assert train.endswith(
        "vidret encode train runs/msvd/frames --manifest manifests/msvd.jsonl --out runs/msvd/model"
        " --model ViT-B-32-quickgelu --pretrained openai --head meanP --recipe clip4clip --caption-length 32"
    )
    assert "--checkpoint runs/msvd/model/best.pt --out runs/msvd/embeddings --split test" in embed
    assert index.endswith("vidret index runs/msvd/embeddings --out runs/msvd/index")

    (decode,) = planned_commands("decode", "DATASET=activitynet", "FRAMES=32")  # the command line wins
    assert "--frames 32 --size 224" in decode
    decode, train, _ = planned_commands("decode", "encode", "DATASET=msrvtt-9k")
    assert decode.endswith("--sampling uniform --interpolation bilinear --train-views 5")
    assert train.endswith("--recipe mmaction2")  # MMAction2 tokenises to CLIP's full context


def test_a_test_only_dataset_embeds_zero_shot():
    (embed,) = planned_commands("embed", "DATASET=msrvtt-1k-a")
    assert "--manifest manifests/msrvtt-1k-a.jsonl --model ViT-B-32-quickgelu --pretrained openai --head meanP" in embed
    assert "--caption-length" not in embed and "--checkpoint" not in embed
    (embed,) = planned_commands("embed", "DATASET=lsmdc", "CHECKPOINT=")
    assert "--model ViT-B-32-quickgelu --pretrained openai --head meanP --caption-length 32" in embed


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
