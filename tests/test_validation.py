"""Bad input to every command is refused before anything runs: one line on stderr, ``error: ...``, naming the
option, the recipe field or the path; exit 1; no traceback; and an earlier output left exactly as it was.

Options and recipe fields out of range, of the wrong type, NaN or infinite; recipe files written by hand
(JSON: strings, booleans and floats where integers belong); manifest, frames, checkpoint and --dump paths
that are missing, folders, symlink loops or hold a NUL byte; and, as a last resort, an OSError nothing
checked (a full disk). The CLI runs in-process (typer's CliRunner), so no case pays for importing torch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from cli.main import app, reports_errors
from pipeline.encode.embed import EmbedOptions
from pipeline.encode.reader import frames_and_manifest
from pipeline.encode.train import RECIPES_DIR, Recipe, TrainOptions, load_recipe, make_recipe
from pipeline.errors import VidretError
from pipeline.index import IndexOptions
from pipeline.manifest import read_manifest

from helpers import tree_hashes

VIDRET = Path(sys.executable).parent / "vidret"
MODEL = ["--model", "vidret-micro", "--pretrained", "none", "--device", "cpu", "--no-progress"]


def vidret(*args):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def assert_refused(result, *needles: str) -> str:
    """Exit 1 with one ``error:`` line on stderr holding every needle, nothing on stdout, no traceback."""
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}\n{result.output}"
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def earlier_run(tmp_path) -> Path:
    """An output folder holding an earlier run's files, which a refused command must leave alone."""
    out = tmp_path / "earlier"
    out.mkdir()
    (out / "stage.json").write_text(json.dumps({"finished": "2024-01-01T00:00:00+00:00"}))
    (out / "last.pt").write_bytes(b"an earlier checkpoint")
    (out / "best.pt").write_bytes(b"an earlier best checkpoint")
    return out


@pytest.fixture
def bad_paths(tmp_path) -> dict[str, tuple[Path, str]]:
    """Paths that are no file to read, each with what the one-line error must say of it."""
    (tmp_path / "a-folder").mkdir()
    os.symlink("loop", tmp_path / "loop")  # a symlink to itself
    (tmp_path / "a-file").write_text("not a folder\n")
    return {
        "missing": (tmp_path / "missing.jsonl", "missing.jsonl"),
        "folder": (tmp_path / "a-folder", "a-folder"),
        "nul": (tmp_path / "nul\0byte.jsonl", "NUL byte"),
        "loop": (tmp_path / "loop", "Too many levels of symbolic links"),
        "under-a-file": (tmp_path / "a-file" / "m.jsonl", "Not a directory"),
    }


# -- vidret encode train: options and recipe fields --------------------------------------------------------

TRAIN_OPTIONS = [
    # clip_grad_norm_ with a negative max turns each step into gradient ascent
    (["--grad-clip", "-1"], "recipe mmaction2: --grad-clip must be at least 0, got -1"),
    (["--grad-clip", "nan"], "--grad-clip must be finite and at least 0, got nan"),
    (["--grad-clip", "inf"], "--grad-clip must be finite and at least 0, got inf"),
    # lr_factor starts the warm-up at this factor: negative or above 1 is no learning rate
    (["--warmup-start", "-0.5"], "recipe mmaction2: --warmup-start must be in [0, 1], got -0.5"),
    (["--warmup-start", "1.5"], "--warmup-start must be in [0, 1], got 1.5"),
    (["--weight-decay", "-1"], "--weight-decay must be at least 0, got -1"),
    (["--beta1", "2"], "recipe mmaction2: --beta1 must be in [0, 1), got 2"),
    (["--beta2", "1"], "--beta2 must be in [0, 1), got 1"),
    (["--eps", "-1"], "--eps must be positive, got -1"),
    (["--eps", "nan"], "--eps must be finite and positive, got nan"),
    (["--lr", "inf"], "--lr must be finite and positive, got inf"),
    (["--lr", "0"], "--lr must be positive, got 0"),
    (["--clip-lr", "-1e-5"], "--clip-lr must be at least 0, got -1e-05"),
    (["--clip-lr", "inf"], "--clip-lr must be finite and at least 0, got inf"),
    (["--warmup", "1"], "--warmup must be in [0, 1), got 1"),
    (["--warmup", "nan"], "--warmup must be finite and in [0, 1), got nan"),
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--batch-size", "1"], "--batch-size must be at least 2, got 1"),
    (["--freeze-layers", "-2"], "--freeze-layers must be at least -1, got -2"),
    (["--precision", "fp8"], "recipe mmaction2: --precision 'fp8': choose one of fp32, amp, fp16"),
    (["--recipe", "clip4clip", "--warmup-start", "0.1"], "recipe clip4clip: --warmup-start must be 0 with the"),
    (["--save-every", "-1"], "--save-every must be at least 0, got -1"),
    (["--stop-after", "0"], "--stop-after must be at least 1, got 0"),
    (["--stop-after", "-1"], "--stop-after must be at least 1, got -1"),
    (["--accum-steps", "0"], "--accum-steps must be at least 1, got 0"),
    (["--workers", "0"], "--workers must be at least 1, got 0"),
    (["--seed", "-1"], "--seed must be in [0, 4294967296), got -1"),
    (["--seed", str(2**32)], "--seed must be in [0, 4294967296), got 4294967296"),
]


@pytest.mark.parametrize(("args", "message"), TRAIN_OPTIONS, ids=[" ".join(args) for args, _ in TRAIN_OPTIONS])
def test_train_refuses_bad_options(decoded_synthetic, earlier_run, args, message):
    before = tree_hashes(earlier_run)
    data = [decoded_synthetic["frames"], "--manifest", decoded_synthetic["manifest"], "--out", earlier_run]
    line = assert_refused(vidret("encode", "train", *data, *MODEL, *args), message)
    assert line.startswith("error: recipe ") or args[0] in line
    assert tree_hashes(earlier_run) == before


def demo_fields() -> dict:
    return json.loads((RECIPES_DIR / "demo.json").read_text())


RECIPE_FIELDS = [
    ("epochs", "3", "epochs (--epochs) must be an integer, got '3'"),
    ("epochs", True, "epochs (--epochs) must be an integer, got True"),
    ("epochs", 3.0, "epochs (--epochs) must be an integer, got 3.0"),
    ("epochs", 0, "epochs (--epochs) must be at least 1, got 0"),
    ("batch_size", 8.5, "batch_size (--batch-size) must be an integer, got 8.5"),
    ("batch_size", 1, "batch_size (--batch-size) must be at least 2, got 1"),
    ("optimizer", "sgd", "optimizer: choose one of adamw, bertadam, got 'sgd'"),
    ("optimizer", ["adamw"], "optimizer: choose one of adamw, bertadam, got ['adamw']"),
    ("lr", "1e-3", "lr (--lr) must be a number, got '1e-3'"),
    ("lr", None, "lr (--lr) must be a number, got None"),
    ("lr", float("nan"), "lr (--lr) must be finite and positive, got nan"),
    ("lr", float("inf"), "lr (--lr) must be finite and positive, got inf"),
    ("lr", 10**400, "lr (--lr) must be finite and positive"),
    ("clip_lr", -1e-7, "clip_lr (--clip-lr) must be at least 0, got -1e-07"),
    ("weight_decay", -0.05, "weight_decay (--weight-decay) must be at least 0, got -0.05"),
    ("weight_decay", None, "weight_decay (--weight-decay) must be a number, got None"),
    ("no_decay", "none", "no_decay: choose one of mmengine, clip4clip, got 'none'"),
    ("schedule", "step", "schedule: choose one of linear_then_cosine, warmup_cosine, got 'step'"),
    ("warmup", 1.0, "warmup (--warmup) must be in [0, 1), got 1"),
    ("warmup_start", -0.05, "warmup_start (--warmup-start) must be in [0, 1], got -0.05"),
    ("warmup_start", 2, "warmup_start (--warmup-start) must be in [0, 1], got 2"),
    ("beta1", 1.5, "beta1 (--beta1) must be in [0, 1), got 1.5"),
    ("beta2", -0.1, "beta2 (--beta2) must be in [0, 1), got -0.1"),
    ("eps", 0, "eps (--eps) must be positive, got 0"),
    ("grad_clip", -1.0, "grad_clip (--grad-clip) must be at least 0, got -1"),
    ("grad_clip", "1", "grad_clip (--grad-clip) must be a number, got '1'"),
    ("param_grad_clip", -1.0, "param_grad_clip must be at least 0, got -1"),
    ("freeze_layers", -2, "freeze_layers (--freeze-layers) must be at least -1, got -2"),
    ("freeze_layers", 1.5, "freeze_layers (--freeze-layers) must be an integer, got 1.5"),
    ("max_logit_scale", 0, "max_logit_scale must be positive, got 0"),
    ("max_logit_scale", float("inf"), "max_logit_scale must be finite and positive, got inf"),
    ("precision", "fp8", "--precision 'fp8': choose one of fp32, amp, fp16"),
    ("precision", None, "--precision None: choose one of fp32, amp, fp16"),
    ("normalize_frames", "yes", "normalize_frames (--normalize-frames) must be true or false, got 'yes'"),
    ("normalize_frames", 1, "normalize_frames (--normalize-frames) must be true or false, got 1"),
    # Fields fine on their own but not together: refused before a model is built, not at the first step.
    ("schedule", "warmup_cosine", "warmup_start (--warmup-start) must be 0 with the warmup_cosine schedule"),
    ("param_grad_clip", 1.0, "param_grad_clip clips each parameter's gradient inside BertAdam; the adamw optimizer"),
]


@pytest.mark.parametrize(
    ("name", "value", "message"), RECIPE_FIELDS, ids=[f"{name}={value!r}"[:40] for name, value, _ in RECIPE_FIELDS]
)
def test_train_refuses_bad_recipe_fields(decoded_synthetic, earlier_run, tmp_path, name, value, message):
    """A recipe file is JSON written by hand: each field's type, range and choices are checked, and the error
    names the recipe and the field (and the option that sets it)."""
    recipe = tmp_path / "mine.json"
    recipe.write_text(json.dumps({**demo_fields(), name: value}))  # NaN and Infinity as Python's json writes them
    before = tree_hashes(earlier_run)
    data = [decoded_synthetic["frames"], "--manifest", decoded_synthetic["manifest"], "--out", earlier_run]
    assert_refused(vidret("encode", "train", *data, *MODEL, "--recipe", recipe), f"recipe {recipe}: ", message)
    assert tree_hashes(earlier_run) == before


def test_every_recipe_field_is_checked(tmp_path):
    """No Recipe field goes unchecked: a value of no field's type (a list) is refused for each, naming it."""
    recipe = tmp_path / "mine.json"
    for field in fields(Recipe):
        recipe.write_text(json.dumps({**demo_fields(), field.name: [1]}))
        with pytest.raises(VidretError) as error:
            make_recipe(str(recipe))
        message = str(error.value)
        assert "\n" not in message and message.startswith(f"recipe {recipe}: "), message
        assert field.name in message or f"--{field.name.replace('_', '-')}" in message, message
    for name in ("demo", "mmaction2", "clip4clip"):
        assert load_recipe(name) == make_recipe(name)  # the shipped ones pass
    # 0 and None both mean no clipping; ints are fine where floats are asked for.
    assert make_recipe("demo", grad_clip=0.0).grad_clip == 0.0
    recipe.write_text(json.dumps({**demo_fields(), "grad_clip": None, "lr": 1, "warmup_start": 0}))
    assert load_recipe(str(recipe)).lr == 1


# -- vidret encode embed: options --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--batch-size", "0"], "--batch-size must be at least 1, got 0"), (["--workers", "0"], "--workers must be at")],
    ids=["batch-size", "workers"],
)
def test_embed_refuses_bad_options(decoded_synthetic, earlier_run, args, message):
    before = tree_hashes(earlier_run)
    data = [decoded_synthetic["frames"], "--manifest", decoded_synthetic["manifest"], "--out", earlier_run]
    assert_refused(vidret("encode", "embed", *data, *MODEL, *args), message)
    assert tree_hashes(earlier_run) == before


# -- paths: manifests, frames, checkpoints -----------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing", "folder", "loop", "under-a-file"])
@pytest.mark.parametrize("command", ["train", "embed", "decode", "check"])
def test_a_bad_manifest_path_is_one_line_naming_it(decoded_synthetic, earlier_run, bad_paths, command, case):
    """Training hashed the manifest before reading it: a missing one or a folder was a traceback; a NUL byte or
    a symlink loop was one in every command."""
    manifest, needle = bad_paths[case]
    frames = decoded_synthetic["frames"]
    before = tree_hashes(earlier_run)
    args = {
        "train": ["encode", "train", frames, "--manifest", manifest, "--out", earlier_run, *MODEL],
        "embed": ["encode", "embed", frames, "--manifest", manifest, "--out", earlier_run, *MODEL],
        "decode": ["decode", manifest, "--out", earlier_run, "--no-progress"],
        "check": ["manifest", "check", manifest],
    }[command]
    line = assert_refused(vidret(*args), needle)
    assert "manifest" in line
    assert tree_hashes(earlier_run) == before


@pytest.mark.parametrize("case", ["missing", "loop", "under-a-file", "a-file"])
@pytest.mark.parametrize("command", ["train", "embed"])
def test_a_bad_frames_path_is_one_line_naming_it(decoded_synthetic, earlier_run, bad_paths, tmp_path, command, case):
    frames, needle = bad_paths[case] if case != "a-file" else (tmp_path / "a-file", "a-file")
    before = tree_hashes(earlier_run)
    args = [frames, "--manifest", decoded_synthetic["manifest"], "--out", earlier_run, *MODEL]
    line = assert_refused(vidret("encode", command, *args), needle)
    assert "frames directory" in line
    assert tree_hashes(earlier_run) == before


@pytest.mark.parametrize("case", ["missing", "folder", "loop"])
def test_a_bad_checkpoint_path_is_one_line_naming_it(decoded_synthetic, earlier_run, bad_paths, case):
    checkpoint, needle = bad_paths[case]
    before = tree_hashes(earlier_run)
    data = [decoded_synthetic["frames"], "--manifest", decoded_synthetic["manifest"], "--out", earlier_run]
    line = assert_refused(vidret("encode", "embed", *data, "--checkpoint", checkpoint, "--device", "cpu"))
    assert "checkpoint" in line and needle in line
    assert tree_hashes(earlier_run) == before


def test_a_nul_byte_in_a_path_is_one_line_naming_it(decoded_synthetic, earlier_run, bad_paths):
    """No shell can pass a NUL byte in an argument, and typer refuses one itself (a usage error, exit 2); the
    library, which other code calls with any string, says so in one line with the path escaped."""
    nul = bad_paths["nul"][0]
    refused = vidret("manifest", "check", nul)
    assert refused.exit_code == 2 and "Traceback" not in refused.output and "embedded null byte" in refused.output
    frames, manifest = decoded_synthetic["frames"], decoded_synthetic["manifest"]
    calls = {
        "read_manifest": lambda: read_manifest(nul),
        "manifest_sha256": lambda: frames_and_manifest(frames, nul),
        "frames_fingerprint": lambda: frames_and_manifest(nul, manifest),
        "train manifest": lambda: TrainOptions(frames, nul, earlier_run, model="vidret-micro", pretrained="none"),
        "train frames": lambda: TrainOptions(nul, manifest, earlier_run, model="vidret-micro", pretrained="none"),
        "embed checkpoint": lambda: EmbedOptions(frames, manifest, earlier_run, checkpoint=nul, caption_length=8),
        "embed manifest": lambda: EmbedOptions(frames, nul, earlier_run, model="vidret-micro", pretrained="none"),
        "index dump": lambda: IndexOptions(dump=nul),
    }
    before = tree_hashes(earlier_run)
    for name, call in calls.items():
        with pytest.raises(VidretError) as error:
            call()
        message = str(error.value)
        assert "\n" not in message and "\0" not in message, (name, message)
        assert "nul\\x00byte.jsonl" in message and "NUL byte" in message, (name, message)
    assert tree_hashes(earlier_run) == before


# -- vidret decode: options --------------------------------------------------------------------------------

DECODE_OPTIONS = [
    (["--timeout", "nan"], "--timeout must be finite and positive, got nan"),
    (["--timeout", "inf"], "--timeout must be finite and positive, got inf"),  # was a traceback (OverflowError)
    (["--timeout", "1e7"], "--timeout must be at most 1000000, got 1e+07"),
    (["--timeout", "0"], "--timeout must be positive, got 0"),
    (["--timeout", "-1"], "--timeout must be positive, got -1"),
    (["--frames", "0"], "--frames must be at least 1, got 0"),
    (["--size", "0"], "--size must be at least 1, got 0"),
    (["--size", "32", "--short-side", "16"], "short side 16 is smaller than the crop size 32"),
    (["--frames", "20000", "--size", "224"], "over the 2 GiB Parquet stores in one value"),
    (["--shard-size", "0"], "--shard-size must be at least 1, got 0"),
    (["--num-shards", "0"], "--num-shards must be at least 1, got 0"),
    (["--workers", "0"], "--workers must be at least 1, got 0"),
    (["--split", "dev"], "unknown split 'dev'"),
]


@pytest.mark.parametrize(("args", "message"), DECODE_OPTIONS, ids=[" ".join(args) for args, _ in DECODE_OPTIONS])
def test_decode_refuses_bad_options(decoded_synthetic, tmp_path, args, message):
    """On a copy of finished frames: a refused decode changes none of them."""
    frames = tmp_path / "frames"
    shutil.copytree(decoded_synthetic["frames"], frames)
    before = tree_hashes(frames)
    assert_refused(vidret("decode", decoded_synthetic["manifest"], "--out", frames, "--no-progress", *args), message)
    assert tree_hashes(frames) == before


# -- vidret index: options ---------------------------------------------------------------------------------


@pytest.fixture
def indexed(tmp_path) -> tuple[Path, Path]:
    """Small embeddings written with pyarrow, and a finished index of them (``--dsl``)."""
    rng = np.random.default_rng(0)
    videos = rng.normal(size=(6, 8))
    texts = videos + 0.5 * rng.normal(size=(6, 8))
    ids = [f"v{i}" for i in range(6)]
    embeddings = tmp_path / "emb"
    embeddings.mkdir()

    def column(rows):
        return pa.array((rows / np.linalg.norm(rows, axis=1, keepdims=True)).tolist(), pa.list_(pa.float32()))

    pq.write_table(pa.table({"video_id": ids, "embedding": column(videos)}), embeddings / "videos.parquet")
    pq.write_table(
        pa.table({"video_id": ids, "caption": [f"caption {i}" for i in ids], "embedding": column(texts)}),
        embeddings / "texts.parquet",
    )
    out = tmp_path / "index"
    done = vidret("index", embeddings, "--out", out, "--dsl", "--device", "cpu", "--no-progress")
    assert done.exit_code == 0, done.output
    return embeddings, out


INDEX_OPTIONS = [
    # NaN and infinity (and a scale past float32's range) gave DSL R@1 100.0, MdR 0.0 and NaN in metrics.json
    (["--dsl-scale", "nan"], "--dsl-scale must be finite and positive, got nan"),
    (["--dsl-scale", "inf"], "--dsl-scale must be finite and positive, got inf"),
    (["--dsl-scale", "1e300"], "--dsl-scale must be at most 1e+30, got 1e+300"),
    (["--dsl-scale", "0"], "--dsl-scale must be positive, got 0"),
    (["--dsl-scale", "-100"], "--dsl-scale must be positive, got -100"),
    (["--top-k", "0"], "--top-k must be at least 1, got 0"),
    (["--block-size", "0"], "--block-size must be at least 1, got 0"),
]


@pytest.mark.parametrize(("args", "message"), INDEX_OPTIONS, ids=[" ".join(args) for args, _ in INDEX_OPTIONS])
def test_index_refuses_bad_options(indexed, args, message):
    embeddings, out = indexed
    before = tree_hashes(out)
    assert_refused(vidret("index", embeddings, "--out", out, "--dsl", "--force", "--device", "cpu", *args), message)
    assert tree_hashes(out) == before


def test_index_refuses_a_dump_that_is_a_directory(indexed, bad_paths):
    embeddings, out = indexed
    before = tree_hashes(out)
    folder = bad_paths["folder"][0]
    refused = vidret("index", embeddings, "--out", out, "--dump", folder, "--force", "--device", "cpu")
    assert_refused(refused, f"--dump {folder}: is a directory")
    refused = vidret("index", embeddings, "--out", out, "--dump", bad_paths["loop"][0], "--device", "cpu")
    assert_refused(refused, "loop: cannot open the --dump file (Too many levels of symbolic links)")
    assert tree_hashes(out) == before and folder.is_dir() and not any(folder.iterdir())


def test_the_installed_command_prints_one_line_and_exits_1(decoded_synthetic, indexed, tmp_path):
    """The same through the installed ``vidret`` script (a real process, its real stderr)."""
    embeddings, out = indexed
    before = tree_hashes(out)
    (tmp_path / "dump-folder").mkdir()
    for args, message in [
        (["decode", decoded_synthetic["manifest"], "--out", tmp_path / "frames", "--timeout", "inf"], "--timeout"),
        (["index", embeddings, "--out", out, "--dump", tmp_path / "dump-folder"], "is a directory"),
    ]:
        result = subprocess.run([str(VIDRET), *map(str, args)], capture_output=True, text=True, timeout=300)
        assert result.returncode == 1 and result.stdout == "", result.stderr
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and message in result.stderr
    assert tree_hashes(out) == before and not (tmp_path / "frames").exists()


# -- the last resort: an OSError nothing checked -----------------------------------------------------------


def test_an_unchecked_os_error_is_one_line_naming_the_path():
    """A full disk (or any OSError no check caught) is ``error: PATH: strerror`` and exit 1, no traceback."""
    tiny = typer.Typer()

    @tiny.command()
    @reports_errors
    def write(path: str, errno: int = 28) -> None:
        raise OSError(errno, os.strerror(errno), path)

    @tiny.command()
    @reports_errors
    def pathless() -> None:
        raise OSError(28, os.strerror(28))

    result = CliRunner().invoke(tiny, ["write", "/data/run/frames/part-00001.parquet"])
    assert_refused(result)
    assert result.stderr == "error: /data/run/frames/part-00001.parquet: No space left on device\n"
    result = CliRunner().invoke(tiny, ["pathless"])
    assert_refused(result)
    assert result.stderr == "error: No space left on device\n"


def test_writing_to_a_full_device_is_one_line():
    tiny = typer.Typer()

    @tiny.command()
    @reports_errors
    def write() -> None:
        with open("/dev/full", "wb", buffering=0) as handle:
            handle.write(b"frames")

    result = CliRunner().invoke(tiny, [])
    assert_refused(result)
    assert result.stderr == "error: No space left on device\n"
