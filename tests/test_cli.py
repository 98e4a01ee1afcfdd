"""The installed ``vidret`` command: summaries on stdout, one-line errors and exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.manifest import read_manifest, write_manifest

from helpers import make_video, manifest_records

VIDRET = Path(sys.executable).parent / "vidret"


def vidret(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(VIDRET), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_synth_manifest_check_and_decode(tmp_path):
    made = vidret("synth", tmp_path / "data", "--videos", 10, "--seed", 1, "--no-progress")
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("synth: 10 videos (7 train, 1 val, 2 test)")

    checked = vidret("manifest", "check", tmp_path / "data" / "manifest.jsonl")
    assert checked.returncode == 0
    assert checked.stdout.strip().endswith(
        "ok, 10 videos (7 train, 1 val, 2 test), 24 captions, missing video files: 0"
    )

    out = tmp_path / "run" / "frames"
    decoded = vidret("decode", tmp_path / "data" / "manifest.jsonl", "--out", out, "--frames", 4, "--size", 32)
    assert decoded.returncode == 0, decoded.stderr
    assert decoded.stdout.startswith("decode: 10 videos in ") and "10 ok |" in decoded.stdout
    assert f"output: {out}" in decoded.stdout
    assert "decode: 100%" in decoded.stderr  # the progress bar
    assert json.loads((out / "stage.json").read_text())["params"]["num_frames"] == 4

    again = vidret("decode", tmp_path / "data" / "manifest.jsonl", "--out", out, "--frames", 4, "--size", 32)
    assert again.returncode == 0 and again.stdout.startswith("decode: skipped, ")


def test_failures_are_counted_and_exit_zero(tmp_path):
    make_video(tmp_path / "good.mp4", num_frames=8)
    (tmp_path / "bad.mp4").write_text("not a video")
    write_manifest(tmp_path / "m.jsonl", manifest_records({"good": "good.mp4", "bad": "bad.mp4", "gone": "gone.mp4"}))
    result = vidret("decode", tmp_path / "m.jsonl", "--out", tmp_path / "frames", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "3 videos in" in result.stdout and "1 ok, 1 missing, 1 unreadable" in result.stdout
    assert pq.read_table(tmp_path / "frames" / "status.parquet").column("status").to_pylist() == [
        "ok",
        "unreadable",
        "missing",
    ]


def test_bad_input_is_one_line_on_stderr_and_exit_1(tmp_path):
    (tmp_path / "m.jsonl").write_text(
        '{"video_id": "a", "path": "a.mp4", "split": "test", "captions": ["x"]}\n{"video_id": "a"\n'
    )
    for args in [
        ("manifest", "check", tmp_path / "m.jsonl"),
        ("decode", tmp_path / "m.jsonl", "--out", tmp_path / "frames"),
        ("decode", tmp_path / "none.jsonl", "--out", tmp_path / "frames"),
        ("decode", tmp_path / "m.jsonl", "--out", tmp_path / "frames", "--num-shards", 2, "--shard-index", 2),
        ("decode", tmp_path / "m.jsonl", "--out", tmp_path / "frames", "--sampling", "random"),
        ("decode", tmp_path / "m.jsonl", "--out", tmp_path / "frames", "--workers", 0),
        ("decode", tmp_path / "m.jsonl", "--out", tmp_path / "frames", "--train-views", 2, "--sampling", "linspace"),
        ("decode", tmp_path / "m.jsonl", "--out", tmp_path / "frames", "--train-views", -1),
        ("decode", tmp_path / "m.jsonl", "--out", tmp_path / "f", "--interpolation", "bicubic", "--decoder", "decord"),
    ]:
        result = vidret(*args)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.stderr)
    assert vidret("manifest", "check", tmp_path / "m.jsonl").stderr.startswith(
        f"error: {tmp_path / 'm.jsonl'}:2: invalid JSON"
    )
    assert not (tmp_path / "frames").exists()  # a refused run writes nothing


def test_encode_train_embed_index_and_search(decoded_synthetic, tmp_path):
    data = [decoded_synthetic["frames"], "--manifest", decoded_synthetic["manifest"], "--model", "vidret-micro"]
    trained = vidret(
        "encode", "train", *data, "--out", tmp_path / "model", "--pretrained", "none", "--epochs", 1,
        "--batch-size", 8, "--precision", "fp16", "--eps", 1e-6, "--freeze-layers", -1, "--normalize-frames",
        "--linear-patch", "3d", "--device", "cpu", "--no-progress",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    params = json.loads((tmp_path / "model" / "stage.json").read_text())["params"]
    assert (params["recipe"], params["precision"], params["freeze_layers"]) == ("mmaction2", "fp16", -1)
    assert params["linear_patch"] == "3d"
    assert params["normalize_frames"] and params["optimizer"] == "adamw"
    finished = {path.name: path.read_bytes() for path in (tmp_path / "model").iterdir()}
    refused = vidret("encode", "train", *data, "--out", tmp_path / "model", "--pretrained", "none", "--force",
                     "--precision", "fp16", "--device", "cpu")  # fmt: skip
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("error: recipe mmaction2: --precision fp16 keeps the optimiser's moments in fp16")
    assert {path.name: path.read_bytes() for path in (tmp_path / "model").iterdir()} == finished
    assert trained.stdout.splitlines()[-1].startswith("train: 10 steps (1 epochs), 80 videos in ")
    assert "epoch 1/1: loss " in trained.stdout and "val t2v R@1" in trained.stdout
    embedded = vidret(
        "encode", "embed", *data[:3], "--checkpoint", tmp_path / "model" / "best.pt", "--out", tmp_path / "emb",
        "--no-progress",
    )  # fmt: skip
    assert embedded.returncode == 0, embedded.stderr
    assert embedded.stdout.startswith("embed: 8 videos, 8 captions, 1 videos skipped (1 missing) in ")
    assert pq.read_table(tmp_path / "emb" / "videos.parquet").num_rows == 8

    indexed = vidret("index", tmp_path / "emb", "--out", tmp_path / "index", "--dsl")
    assert indexed.returncode == 0, indexed.stderr
    table = indexed.stdout.splitlines()
    assert table[0].split() == ["R@1", "R@5", "R@10", "MdR", "MnR"]
    assert [line.split()[0] for line in table[1:5]] == ["text->video", "video->text"] * 2
    assert "DSL" in table[3] and "DSL" in table[4]
    assert table[-1].startswith("index: 8 videos, 8 captions in ") and str(tmp_path / "index") in table[-1]
    assert table[-1].endswith("; not in these metrics: 1 videos of the split that decode skipped (1 missing)")
    assert "rank: 100%" in indexed.stderr  # the progress bar

    caption = read_manifest(decoded_synthetic["manifest"])[-3].captions[0]
    found = subprocess.run(
        [str(VIDRET), "search", tmp_path, caption, "--k", "3", "--file", "-"],
        input="a red circle\n\n  a blue square moves up  \n", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    assert [line for line in lines if line.startswith("query: ")] == [
        f"query: {caption}",
        "query: a red circle",
        "query: a blue square moves up",
    ]
    hits = [line.split() for line in lines if not line.startswith("query: ")]
    assert len(hits) == 9 and [hit[0] for hit in hits[:3]] == ["1", "2", "3"]
    # rank, video, its moment ("0.0-3.0 s": a whole video), score, file
    assert all(hit[1].startswith("synth") and hit[2].startswith("0.0-") and hit[5].endswith(".mp4") for hit in hits)
    assert float(hits[0][4]) >= float(hits[1][4]) >= float(hits[2][4])

    refused = vidret("index", tmp_path / "model", "--out", tmp_path / "index")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith(f"error: {tmp_path / 'model' / 'videos.parquet'}: no such file; write embeddings")
    assert refused.stderr.count("\n") == 1


def test_encode_errors_are_one_line(decoded_synthetic, tmp_path):
    """Each `vidret` start imports torch and open_clip (seconds), so the CLI checks one error per command;
    tests/test_encode*.py check the messages of the others."""
    data = [decoded_synthetic["frames"], "--manifest", decoded_synthetic["manifest"]]
    unknown = vidret("encode", "train", *data, "--out", tmp_path / "model", "--model", "ViT-B-99")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("error: unknown model 'ViT-B-99'. Did you mean ")
    assert "ViT-B-32" in unknown.stderr and unknown.stderr.count("\n") == 1
    no_start = vidret("encode", "train", *data, "--out", tmp_path / "model", "--init-from", tmp_path / "pre.pt")
    assert no_start.returncode == 1
    assert no_start.stderr == f"error: --init-from {tmp_path / 'pre.pt'}: no such checkpoint\n"
    missing = vidret(
        "encode", "embed", tmp_path / "nowhere", *data[1:], "--out", tmp_path / "e", "--pretrained", "none"
    )
    assert missing.returncode == 1
    assert missing.stderr == f"error: {tmp_path / 'nowhere'}: no such frames directory (run `vidret decode` first)\n"


def test_manifest_build_reports_problems_on_stderr(tmp_path):
    annotations = Path(__file__).parent / "data" / "msrvtt"
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "video9770.mp4").write_bytes(b"stand-in")
    out = tmp_path / "msrvtt-1k-a.jsonl"
    built = vidret(
        "manifest",
        "build",
        "msrvtt-1k-a",
        "--annotations",
        annotations,
        "--videos",
        tmp_path / "videos",
        "--out",
        out,
        "--show",
        1,
    )
    assert built.returncode == 0, built.stderr
    assert built.stdout.startswith("manifest build: msrvtt-1k-a (clip4clip layout): 1000 videos (1000 test), 1000")
    assert "problems: 999 missing_video" in built.stdout
    assert built.stderr.splitlines() == [
        f"missing_video: video9771 (test): no file in {tmp_path / 'videos'} (MSRVTT_JSFUSION_test.csv:3)",
        f"missing_video: ... and 998 more in {tmp_path / 'msrvtt-1k-a.build.json'}",
    ]
    assert vidret("manifest", "check", out).stdout.strip().endswith("missing video files: 999")

    listed = vidret("manifest", "datasets")
    assert listed.returncode == 0 and "msvd: MSVD" in listed.stdout and "LSMDC16_annos_training.csv" in listed.stdout

    unknown = vidret("manifest", "build", "msrvtt", "--annotations", annotations, "--videos", tmp_path)
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("error: unknown dataset 'msrvtt' (known: activitynet, didemo, lsmdc,")
    assert len(unknown.stderr.splitlines()) == 1
