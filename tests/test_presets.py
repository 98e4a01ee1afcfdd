"""`--dataset NAME`: a benchmark definition's defaults per stage (pipeline/datasets/presets.py), merged by the
CLI as library defaults < preset < flags given; and every CLI default read from the library, written once."""

import dataclasses
import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cli import main as cli
from pipeline import defaults
from pipeline.datasets import PRESET_KEYS, DatasetError, available_datasets, load_definition, preset_options
from pipeline.datasets.presets import CHECKPOINT_FIXES
from pipeline.decode import DecodeOptions, FrameSpec
from pipeline.manifest import parse_splits, write_manifest
from pipeline.synth import SynthOptions

from helpers import make_video, manifest_records

VIDRET = Path(sys.executable).with_name("vidret")
STAGES = ("decode", "train", "embed", "index")


def vidret(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(VIDRET), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_msrvtt_9k_and_msvd_fill_each_stage():
    assert preset_options("msrvtt-9k", "decode") == {
        "frames": 12, "size": 224, "short_side": 256, "sampling": "uniform", "interpolation": "bilinear",
        "train_views": 5,
    }  # fmt: skip
    assert preset_options("msrvtt-9k", "train") == {
        "model": "ViT-B-32-quickgelu", "pretrained": "openai", "caption_length": None, "recipe": "mmaction2",
    }  # fmt: skip
    assert preset_options("msrvtt-9k", "embed") == {
        "model": "ViT-B-32-quickgelu", "pretrained": "openai", "caption_length": None, "split": "test",
    }  # fmt: skip
    assert preset_options("msvd", "decode") == {
        "frames": 12, "size": 224, "short_side": 224, "sampling": "clip4clip", "interpolation": "bicubic",
        "train_views": 0,
    }  # fmt: skip
    assert preset_options("msvd", "train") == {
        "model": "ViT-B-32-quickgelu", "pretrained": "openai", "caption_length": 32, "recipe": "clip4clip",
    }  # fmt: skip
    assert preset_options("msvd", "embed")["split"] == "test"
    assert preset_options("msvd", "index") == preset_options("msrvtt-9k", "index") == {}
    assert all(preset_options(None, stage) == {} for stage in STAGES)
    with pytest.raises(ValueError, match="unknown stage 'search'"):
        preset_options("msvd", "search")


def test_the_preset_wins_over_the_library_and_a_flag_over_the_preset():
    assert cli.stage_options("decode", None) == {
        "frames": 12, "size": 224, "short_side": None, "sampling": "uniform", "interpolation": "bilinear",
        "train_views": 0,
    }  # fmt: skip
    chosen = cli.stage_options("decode", "msvd", frames=8, size=None, sampling="uniform")  # None: not given
    assert chosen == {
        "frames": 8, "size": 224, "short_side": 224, "sampling": "uniform", "interpolation": "bicubic",
        "train_views": 0,
    }  # fmt: skip
    assert cli.stage_options("train", "msvd", recipe="demo", caption_length=None) == {
        "model": "ViT-B-32-quickgelu", "pretrained": "openai", "caption_length": 32, "recipe": "demo",
    }  # fmt: skip
    assert cli.stage_options("train", None) == {
        "model": "ViT-B-32", "pretrained": "openai", "caption_length": None, "recipe": "mmaction2",
    }  # fmt: skip
    assert cli.stage_options("embed", "msvd", split="val")["split"] == "val"
    # Embedding a checkpoint: the checkpoint fixes the model; the preset sets only the split.
    assert cli.stage_options("embed", "msvd", CHECKPOINT_FIXES) == {
        "model": "ViT-B-32", "pretrained": "openai", "caption_length": None, "split": "test",
    }  # fmt: skip
    assert cli.stage_options("index", "msvd") == {}


@pytest.mark.parametrize("dataset", available_datasets())
def test_every_definition_maps_cleanly_for_every_stage(dataset):
    """Each preset names only options the CLI merges, and its values build valid options for each stage."""
    from pipeline.encode.model import check_model_choice
    from pipeline.encode.train import load_recipe

    defaults_keys = set(load_definition(dataset).defaults)
    for stage in STAGES:
        assert set(PRESET_KEYS[stage].values()) <= defaults_keys
        assert set(preset_options(dataset, stage)) == set(cli.LIBRARY_DEFAULTS[stage]), stage
    decode = cli.stage_options("decode", dataset)
    spec = FrameSpec(
        num_frames=decode["frames"], size=decode["size"], short_side=decode["short_side"],
        sampling=decode["sampling"], interpolation=decode["interpolation"],
    )  # fmt: skip
    DecodeOptions(spec=spec, workers=1, train_views=decode["train_views"])
    for stage in ("train", "embed"):
        chosen = cli.stage_options(stage, dataset)
        check_model_choice(chosen["model"], chosen["pretrained"], defaults.HEAD, chosen["caption_length"])
    load_recipe(cli.stage_options("train", dataset)["recipe"])
    parse_splits(cli.stage_options("embed", dataset)["split"])


def test_an_unknown_dataset_is_one_line_and_exit_1(tmp_path):
    with pytest.raises(DatasetError) as error:
        load_definition("nope")
    expected = f"error: {error.value}\n"
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        preset_options("nope", "index")
    data = [tmp_path / "frames", "--manifest", tmp_path / "m.jsonl"]
    for command in (
        ["decode", tmp_path / "m.jsonl", "--out", tmp_path / "frames"],
        ["encode", "train", *data, "--out", tmp_path / "model"],
        ["encode", "embed", *data, "--out", tmp_path / "embeddings"],
        ["index", tmp_path / "embeddings", "--out", tmp_path / "index"],
    ):
        refused = vidret(*command, "--dataset", "nope")
        assert (refused.returncode, refused.stdout, refused.stderr) == (1, "", expected), command


def test_decode_with_a_dataset_end_to_end(tmp_path):
    """--dataset msvd decodes with CLIP4Clip's frames (224 crop of a 224 short side, one frame a second,
    bicubic); --frames given wins over its 12."""
    videos = {f"v{i}": make_video(tmp_path / f"v{i}.mp4", width=64, height=48, num_frames=30) for i in range(2)}
    write_manifest(tmp_path / "m.jsonl", manifest_records(videos))
    out = tmp_path / "frames"
    made = vidret("decode", tmp_path / "m.jsonl", "--out", out, "--dataset", "msvd", "--frames", 2, "--workers", 1,
                  "--no-progress")  # fmt: skip
    assert made.returncode == 0, made.stderr
    params = json.loads((out / "stage.json").read_text())["params"]
    assert params == {
        "decoder": "pyav", "interpolation": "bicubic", "num_frames": 2, "sampling": "clip4clip", "shard_size": 100,
        "short_side": 224, "size": 224, "split": "all",
    }  # fmt: skip


def test_index_with_a_dataset_end_to_end(tmp_path):
    """--dataset sets no index option: the same metrics as without it."""
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(4, 8)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    embeddings = tmp_path / "embeddings"
    embeddings.mkdir()
    ids = [f"v{i}" for i in range(4)]
    vectors = pa.array(rows.tolist(), type=pa.list_(pa.float32()))
    pq.write_table(pa.table({"video_id": ids, "embedding": vectors}), embeddings / "videos.parquet")
    captions = [f"caption {i}" for i in range(4)]
    pq.write_table(pa.table({"video_id": ids, "caption": captions, "embedding": vectors}), embeddings / "texts.parquet")
    with_dataset = vidret("index", embeddings, "--out", tmp_path / "a", "--dataset", "msrvtt-9k", "--device", "cpu",
                          "--no-progress")  # fmt: skip
    assert with_dataset.returncode == 0, with_dataset.stderr
    without = vidret("index", embeddings, "--out", tmp_path / "b", "--device", "cpu", "--no-progress")
    assert without.returncode == 0, without.stderr
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in "ab"]
    assert metrics[0] == metrics[1]


def cli_defaults(command) -> dict:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(command).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def field_defaults(options) -> dict:
    return {
        field.name: cli.default_of(options, field.name)
        for field in dataclasses.fields(options)
        if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
    }


def assert_cli_defaults_are_the_library_s(stage, command, options, renamed=(), skip=()):
    """Every option of ``command`` that is a field of ``options`` defaults to the field's default: directly,
    or (an option a preset can set, whose flag defaults to None) through LIBRARY_DEFAULTS."""
    library = field_defaults(options)
    renamed = dict(renamed)
    checked = 0
    for name, default in cli_defaults(command).items():
        field = renamed.get(name, name)
        if field not in library or name in skip:
            continue
        shown = cli.LIBRARY_DEFAULTS.get(stage, {}).get(name, default)
        assert shown == library[field], (command.__name__, name)
        checked += 1
    return checked


def test_every_cli_default_is_the_library_s():
    from pipeline.collection import CollectionOptions
    from pipeline.encode.embed import EmbedOptions
    from pipeline.encode.model import ModelSpec, create_clip4clip
    from pipeline.encode.train import TrainOptions
    from pipeline.index import IndexOptions

    # decode: --workers None is DecodeOptions' default_factory (one per available core).
    assert assert_cli_defaults_are_the_library_s("decode", cli.decode, DecodeOptions, skip=("workers",)) >= 9
    assert assert_cli_defaults_are_the_library_s("decode", cli.decode, FrameSpec, {"frames": "num_frames"}) == 11
    assert assert_cli_defaults_are_the_library_s("train", cli.encode_train, TrainOptions, {"recipe": "recipe_name"})
    assert assert_cli_defaults_are_the_library_s("embed", cli.encode_embed, EmbedOptions) >= 10
    # IndexOptions' module imports torch: the CLI and IndexOptions both read pipeline/defaults.py.
    assert assert_cli_defaults_are_the_library_s("index", cli.index, IndexOptions) == 13
    assert assert_cli_defaults_are_the_library_s("synth", cli.synth, SynthOptions) == 3
    assert assert_cli_defaults_are_the_library_s("collection", cli.collection, CollectionOptions) >= 4
    # One model default: ModelSpec's, the factory's, TrainOptions' and EmbedOptions'. (The factory's
    # force_quick_gelu None decides from the tag; ModelSpec records what was decided.)
    spec = field_defaults(ModelSpec)
    factory = cli_defaults(create_clip4clip)
    del factory["force_quick_gelu"]
    assert factory == {name: spec[name] for name in factory}
    for options in (TrainOptions, EmbedOptions):
        assert {name: field_defaults(options)[name] for name in ("model", "pretrained", "head")} == {
            name: spec[name] for name in ("model", "pretrained", "head")
        }


def test_the_cli_starts_without_torch_or_open_clip():
    """Reading the defaults at start-up imports no heavy stage: `vidret --help` and `vidret decode` stay quick."""
    code = "import sys, cli.main; print(sorted({'torch', 'open_clip', 'faiss'} & set(sys.modules)))"
    started = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert started.stdout.strip() == "[]"
