"""The stage contract (issue 14) through the `vidret` command: a bad input is refused in one line before
anything is touched, and damage is found, either by a rerun, which redoes the damaged part and says why, or by
the next stage, which refuses it in one line.

One trained model, its embeddings and their index are built once for the module (``run``); every test that
changes or damages a folder works on its own copy. "Untouched" is checked with ``tree_hashes``: the SHA-256 of
every file under the folder, before and after.
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner, Result

from cli.main import app
from pipeline.encode.reader import FrameStore
from pipeline.manifest import write_manifest

from helpers import manifest_records, tree_hashes, without_locks

VIDRET = Path(sys.executable).parent / "vidret"
RUNNER = CliRunner()
UP_TO_DATE = "same inputs and parameters; --force redoes it"

MODEL_ARGS = ("--model", "vidret-micro", "--pretrained", "none")
TRAIN_ARGS = (*MODEL_ARGS, "--recipe", "demo", "--epochs", 1, "--batch-size", 8, "--device", "cpu", "--no-progress")
DECODE_ARGS = ("--frames", 4, "--size", 32, "--shard-size", 16, "--workers", 1, "--no-progress")  # as conftest's


# -- helpers ---------------------------------------------------------------------------------------------------


def vidret(*args) -> Result:
    """``vidret ARGS`` in this process (torch is imported once); a crash the CLI did not turn into one line
    (a traceback in a real run) fails the test with that traceback."""
    result = RUNNER.invoke(app, [str(arg) for arg in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        pytest.fail(
            f"vidret {' '.join(map(str, args))} crashed:\n" + "".join(traceback.format_exception(*result.exc_info))
        )
    return result


def succeeded(result: Result) -> list[str]:
    """stdout's lines of a command that must have worked."""
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.output
    return result.stdout.splitlines()


def refused(result: Result, *fragments: str) -> str:
    """The one line of a refused command: exit 1, nothing on stdout, ``error: ...`` on stderr, no traceback,
    naming each of ``fragments``."""
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == "", result.stdout
    assert "Traceback" not in result.output, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def skip_line(stage: str, out: Path) -> str:
    return f"{stage}: skipped, {out} is up to date ({UP_TO_DATE})"


def copy(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def decode(run: dict, out: Path, *extra, manifest: Path | None = None) -> Result:
    """``vidret decode`` with the options the frames of ``run`` were decoded with (``extra`` overrides them)."""
    return vidret("decode", manifest or run["manifest"], "--out", out, *DECODE_ARGS, *extra)


def train(run: dict, out: Path, *extra, frames: Path | None = None) -> Result:
    """``vidret encode train`` as ``run``'s model was trained."""
    return vidret("encode", "train", frames or run["frames"], "--manifest", run["manifest"], "--out", out,
                  *TRAIN_ARGS, *extra)  # fmt: skip


def embed(run: dict, out: Path, *extra, frames: Path | None = None, checkpoint: Path | None = None) -> Result:
    """``vidret encode embed`` with ``run``'s checkpoint, as ``run``'s embeddings were written."""
    checkpoint = checkpoint or run["model"] / "best.pt"
    return vidret("encode", "embed", frames or run["frames"], "--manifest", run["manifest"], "--out", out,
                  "--checkpoint", checkpoint, "--device", "cpu", "--no-progress", *extra)  # fmt: skip


def index(embeddings: Path, out: Path, *extra) -> Result:
    return vidret("index", embeddings, "--out", out, "--device", "cpu", "--no-progress", *extra)


def flip_a_byte(part: Path, column_name: str) -> None:
    """Flip one byte in the middle of column ``column_name`` of the middle row group (one video) of ``part``."""
    metadata = pq.ParquetFile(part).metadata
    group = metadata.row_group(metadata.num_row_groups // 2)
    columns = (group.column(i) for i in range(group.num_columns))
    column = next(column for column in columns if column.path_in_schema.split(".")[0] == column_name)
    data = bytearray(part.read_bytes())
    data[column.data_page_offset + column.total_compressed_size // 2] ^= 0xFF
    part.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def run(decoded_synthetic, tmp_path_factory) -> dict[str, Path]:
    """decoded_synthetic's frames, a model trained on them (1 epoch of the demo recipe), an unfinished run
    (``--stop-after 1``), the model's test-split embeddings and their index, and zero-shot embeddings of the
    same videos (other weights: other video embeddings)."""
    root = tmp_path_factory.mktemp("contract")
    found = {**decoded_synthetic, "data": decoded_synthetic["root"] / "data", "model": root / "model"}
    succeeded(train(found, root / "model"))
    succeeded(train(found, root / "partial", "--stop-after", 1))
    succeeded(embed(found, root / "embeddings"))
    succeeded(vidret("encode", "embed", found["frames"], "--manifest", found["manifest"], *MODEL_ARGS,
                     "--out", root / "zero-shot", "--device", "cpu", "--no-progress"))  # fmt: skip
    succeeded(index(root / "embeddings", root / "index"))
    return {**found, "partial": root / "partial", "embeddings": root / "embeddings", "index": root / "index",
            "zero-shot": root / "zero-shot"}  # fmt: skip


# -- 1. decode's video root and vanished videos ------------------------------------------------------------------


def test_decode_refuses_a_video_root_that_holds_none_of_the_videos(run, tmp_path):
    """Case 1: `decode --video-root /nonexistent` on complete frames refuses in one line naming the root, and
    leaves the frames as they were (a mistyped root must not wipe a finished decode)."""
    frames = copy(run["frames"], tmp_path / "frames")
    before = tree_hashes(frames)
    refused(decode(run, frames, "--video-root", "/nonexistent"),
            "none of the 42 videos to decode exists under --video-root /nonexistent")  # fmt: skip
    assert tree_hashes(frames) == before


def test_decode_replaces_ok_frames_of_vanished_videos_by_missing_only_with_force(run, tmp_path):
    """Case 1: after videos decoded ok are deleted or renamed, a rerun refuses in one line saying how many are
    gone, frames untouched; with --force it decodes again and gives them the status `missing`."""
    data = copy(run["data"], tmp_path / "data")
    manifest = data / run["manifest"].name
    frames = tmp_path / "frames"
    succeeded(decode(run, frames, manifest=manifest))
    (data / "videos" / "synth00001.mp4").unlink()
    (data / "videos" / "synth00020.mp4").unlink()
    (data / "videos" / "synth00035.mp4").rename(data / "videos" / "renamed.mp4")
    before = tree_hashes(frames)
    refused(decode(run, frames, manifest=manifest), "3 videos decoded ok here are missing now", "--force")
    assert tree_hashes(frames) == before

    forced = succeeded(decode(run, frames, "--force", manifest=manifest))
    assert forced[-1].startswith("decode: 42 videos in ") and "37 ok, 5 missing" in forced[-1]
    status = pq.read_table(frames / "status.parquet", columns=["video_id", "status"]).to_pydict()
    missing = [video for video, state in zip(status["video_id"], status["status"], strict=True) if state == "missing"]
    assert sorted(missing) == ["lost-test", "lost-train", "synth00001", "synth00020", "synth00035"]


# -- 2. --out that is, or lies inside, an input -------------------------------------------------------------------

INPUT_AS_OUT = {
    "train F --out F": lambda run, f: train(run, f["frames"], frames=f["frames"]),
    "train F --out F/model": lambda run, f: train(run, f["frames"] / "model", frames=f["frames"]),
    "embed F --out F": lambda run, f: embed(run, f["frames"], frames=f["frames"]),
    "embed F --out F/embeddings": lambda run, f: embed(run, f["frames"] / "embeddings", frames=f["frames"]),
    "index E --out E": lambda run, f: index(f["embeddings"], f["embeddings"]),
    "index E --out E/index": lambda run, f: index(f["embeddings"], f["embeddings"] / "index"),
    "embed --checkpoint M/best.pt --out M": lambda run, f: embed(run, f["model"], checkpoint=f["model"] / "best.pt"),
    "embed --checkpoint M/best.pt --out M/embeddings": lambda run, f: embed(
        run, f["model"] / "embeddings", checkpoint=f["model"] / "best.pt"
    ),
}


@pytest.mark.parametrize("case", INPUT_AS_OUT)
def test_out_may_not_be_or_lie_inside_an_input(run, tmp_path, case):
    """Case 2: a stage whose --out is its input folder, or a folder inside it, refuses in one line and leaves
    the input as it was: no new file or folder in it, so the stage that wrote it still accepts it."""
    folders = {"frames": copy(run["frames"], tmp_path / "frames")}
    if "index" in case:
        folders = {"embeddings": copy(run["embeddings"], tmp_path / "embeddings")}
    if "checkpoint" in case:
        folders = {"model": copy(run["model"], tmp_path / "model")}
    before = {name: tree_hashes(folder) for name, folder in folders.items()}
    refused(INPUT_AS_OUT[case](run, folders), "--out is, or is inside, this stage's input")
    assert {name: tree_hashes(folder) for name, folder in folders.items()} == before
    if "frames" in folders:  # the refusal left nothing that decode would call foreign
        assert succeeded(decode(run, folders["frames"])) == [skip_line("decode", folders["frames"])]


# -- 3. --dump over a file that is not a dump ---------------------------------------------------------------------


@pytest.mark.parametrize("target", ["embeddings' videos.parquet", "a manifest", "another index's stage.json",
                                    "its own metrics.json"])  # fmt: skip
def test_dump_may_not_overwrite_a_file_that_is_not_a_dump(run, tmp_path, target):
    """Case 3: `index E --out O --dump X` refuses in one line where X is an input, a manifest, another stage's
    record or one of index's own files; X (and O) stay as they were."""
    embeddings = copy(run["embeddings"], tmp_path / "embeddings")
    out = copy(run["index"], tmp_path / "index")
    if target == "embeddings' videos.parquet":
        dump, problem = embeddings / "videos.parquet", "inside the embeddings folder, an input of this stage"
    elif target == "a manifest":
        dump, problem = tmp_path / "manifest.jsonl", "exists and is not a dump vidret wrote"
        shutil.copy(run["manifest"], dump)
    elif target == "another index's stage.json":
        dump, problem = copy(run["index"], tmp_path / "other") / "stage.json", "exists and is not a dump vidret wrote"
    else:
        dump, problem = out / "metrics.json", "the name of one of index's own files"
    before = {folder: tree_hashes(folder) for folder in (tmp_path, out, embeddings)}
    refused(index(embeddings, out, "--dump", dump), f"--dump {dump}: {problem}")
    assert {folder: tree_hashes(folder) for folder in (tmp_path, out, embeddings)} == before


def test_a_dump_an_earlier_index_wrote_may_be_overwritten(run, tmp_path):
    """Case 3: a --dump path holding a dump that an earlier index wrote is accepted and written again."""
    dump = tmp_path / "dump.pkl"
    succeeded(index(run["embeddings"], tmp_path / "first", "--dump", dump))
    dump.write_bytes(pickle.dumps({"format": "vidret-index-dump", "metrics": "stale"}))
    succeeded(index(run["embeddings"], tmp_path / "second", "--dump", dump))
    written = pickle.loads(dump.read_bytes())
    assert written["format"] == "vidret-index-dump" and written["metrics"]["num_videos"] == 8
    assert json.loads((tmp_path / "second" / "stage.json").read_text())["files"][str(dump)]["bytes"] == (
        dump.stat().st_size
    )


# -- 4. --out that cannot be a folder -----------------------------------------------------------------------------

STAGES = {
    "decode": lambda run, out: decode(run, out),
    "train": lambda run, out: train(run, out),
    "embed": lambda run, out: embed(run, out),
    "index": lambda run, out: index(run["embeddings"], out),
}


@pytest.mark.parametrize("where", ["an existing file", "a file inside a run", "/proc/x", "/dev/null/x"])
@pytest.mark.parametrize("stage", STAGES)
def test_out_that_cannot_be_a_folder_is_one_line(run, tmp_path, stage, where):
    """Case 4: --out naming a file, a path under a run's file, /proc/x or /dev/null/x: every stage exits 1
    with one line naming the path, no traceback, and nothing is written."""
    out = {
        "an existing file": tmp_path / "notes.txt",
        "a file inside a run": run["model"] / "best.pt" / "x",
        "/proc/x": Path("/proc/x"),
        "/dev/null/x": Path("/dev/null/x"),
    }[where]
    (tmp_path / "notes.txt").write_text("mine\n")
    before = tree_hashes(run["model"]), tree_hashes(tmp_path)
    refused(STAGES[stage](run, out), str(out))
    assert (tree_hashes(run["model"]), tree_hashes(tmp_path)) == before


# -- 5. embeddings: one commit of two files -----------------------------------------------------------------------


def test_index_refuses_embeddings_whose_files_come_from_two_runs(run, tmp_path):
    """Case 5: videos.parquet of another embed run next to the first run's texts.parquet and stage.json (a kill
    between the two writes): index refuses in one line naming videos.parquet, before writing anything."""
    embeddings = copy(run["embeddings"], tmp_path / "embeddings")
    shutil.copy(run["zero-shot"] / "videos.parquet", embeddings / "videos.parquet")
    assert (embeddings / "videos.parquet").read_bytes() != (run["embeddings"] / "videos.parquet").read_bytes()
    before = tree_hashes(embeddings)
    refused(index(embeddings, tmp_path / "index"), f"{embeddings}: videos.parquet ", "rerun vidret encode embed")
    assert tree_hashes(embeddings) == before and not (tmp_path / "index").exists()


def test_index_refuses_unfinished_embeddings(run, tmp_path):
    """Case 5: a stage.json that a run began and never committed: index refuses in one line."""
    embeddings = copy(run["embeddings"], tmp_path / "embeddings")
    (embeddings / "stage.json").write_text(json.dumps({"stage": "embed", "started": "2025-01-01T00:00:00+00:00"}))
    before = tree_hashes(embeddings)
    refused(index(embeddings, tmp_path / "index"), f"{embeddings}: embed has not finished here")
    assert tree_hashes(embeddings) == before and not (tmp_path / "index").exists()


def test_embeddings_without_a_record_are_indexed_with_a_note(run, tmp_path):
    """Case 5: embeddings without stage.json (a user's own) are indexed, with a `note:` on stderr saying what
    could not be checked; the metrics are those of the same embeddings with their record."""
    embeddings = copy(run["embeddings"], tmp_path / "embeddings")
    (embeddings / "stage.json").unlink()
    result = index(embeddings, tmp_path / "index")
    succeeded(result)
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and f"{embeddings} has no stage.json: could not check" in notes[0]
    assert (tmp_path / "index" / "metrics.json").read_text() == (run["index"] / "metrics.json").read_text()


# -- 6, 7. damaged part files -------------------------------------------------------------------------------------


@pytest.mark.parametrize("column", ["frames", "frame_indices", "video_id"])
def test_a_flipped_byte_in_a_part_file_is_an_error_and_decode_redoes_its_chunk(run, tmp_path, column):
    """Case 6: a byte flipped inside the frames of part-00000.parquet (or inside the columns read to index it):
    embedding refuses in one line naming the part file (not other numbers); a decode rerun finds the damage,
    redoes that chunk alone, says why, and the frames are the original ones again."""
    frames = copy(run["frames"], tmp_path / "frames")
    part = frames / "part-00000.parquet"
    original = pq.read_table(run["frames"] / part.name)
    flip_a_byte(part, column)
    line = refused(embed(run, tmp_path / "embeddings", "--split", "all", frames=frames), f"{part}: ")
    if column == "frames":
        assert "damaged frames of video" in line and line.endswith("; rerun vidret decode")
    assert not (tmp_path / "embeddings" / "videos.parquet").exists()

    redone = succeeded(decode(run, frames))
    assert redone[-1].startswith("decode: 16 videos in ") and "resumed: 2 chunks were already committed" in redone[-1]
    assert redone[-1].endswith("(ran: its output is damaged (part-00000.parquet changed since it was written))")
    assert pq.read_table(part).equals(original)
    succeeded(embed(run, tmp_path / "embeddings", "--split", "all", frames=frames))


def test_a_truncated_part_file_is_refused_and_decode_repairs_it(run, tmp_path):
    """Case 7: a part file cut in half: embedding refuses in one line naming it; a decode rerun says it is
    damaged and writes it again."""
    frames = copy(run["frames"], tmp_path / "frames")
    part = frames / "part-00001.parquet"
    original = part.read_bytes()
    part.write_bytes(original[: len(original) // 2])
    problem = f"part-00001.parquet has {len(original) // 2} bytes, stage.json says {len(original)}"
    refused(embed(run, tmp_path / "embeddings", frames=frames), f"{frames}: {problem}; rerun vidret decode")
    redone = succeeded(decode(run, frames))
    assert redone[-1].endswith(f"(ran: its output is damaged ({problem}))")
    assert pq.read_table(part).equals(pq.read_table(run["frames"] / part.name))
    assert len(FrameStore(frames).locations) == 40


# -- 8. damaged index, status and records -------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["overwritten", "truncated"])
def test_a_damaged_faiss_index_is_refused_by_search_and_recomputed_by_index(run, tmp_path, damage):
    """Case 8: videos.faiss with a few bytes overwritten, or cut short: `vidret search` refuses it in one line;
    an index rerun with the same options says the output is damaged and writes it again; search then works."""
    folder = tmp_path / "run"
    embeddings, out = copy(run["embeddings"], folder / "embeddings"), copy(run["index"], folder / "index")
    faiss_file = out / "videos.faiss"
    original = faiss_file.read_bytes()
    middle = len(original) // 2
    if damage == "overwritten":
        faiss_file.write_bytes(original[:middle] + b"\x7f" * 8 + original[middle + 8 :])
        problem = "videos.faiss changed since it was written"
    else:
        faiss_file.write_bytes(original[:middle])
        problem = f"videos.faiss has {middle} bytes, stage.json says {len(original)}"
    before = tree_hashes(folder)
    refused(vidret("search", folder, "a red circle", "--device", "cpu"), f"{out}: {problem}; rerun vidret index")
    assert tree_hashes(folder) == before

    redone = succeeded(index(embeddings, out))
    assert redone[-1].startswith("index: 8 videos, 8 captions in ")
    assert redone[-1].endswith(f" (ran: its output is damaged ({problem}))")
    assert faiss_file.read_bytes() == original
    found = succeeded(vidret("search", folder, "a red circle", "--k", 3, "--device", "cpu"))
    assert found[0] == "query: a red circle" and len(found) == 4


def test_a_deleted_status_file_is_refused_and_restored_by_decode(run, tmp_path):
    """Case 8: frames without status.parquet: embedding refuses in one line; a decode rerun decodes nothing,
    writes it again and says why."""
    frames = copy(run["frames"], tmp_path / "frames")
    (frames / "status.parquet").unlink()
    refused(embed(run, tmp_path / "embeddings", frames=frames), f"{frames}: status.parquet is missing")
    redone = succeeded(decode(run, frames))
    assert redone == [
        f"decode: every chunk was already committed; wrote status.parquet and stage.json in {frames}"
        " (ran: its output is damaged (status.parquet is missing))"
    ]
    assert pq.read_table(frames / "status.parquet").equals(pq.read_table(run["frames"] / "status.parquet"))
    restored, original = tree_hashes(frames), tree_hashes(run["frames"])
    assert restored.pop("stage.json") != original.pop("stage.json")  # committed again, at another time
    assert restored == original


def test_a_garbage_index_record_is_replaced_by_a_forced_or_a_plain_rerun(run, tmp_path):
    """Case 8: an index stage.json that is not JSON (or not a record): `index --force` works, a plain rerun
    works too, and the record they write is good again (the next rerun is skipped)."""
    embeddings, out = copy(run["embeddings"], tmp_path / "embeddings"), copy(run["index"], tmp_path / "index")
    (out / "stage.json").write_bytes(b"\x00\xffnot json{")
    succeeded(index(embeddings, out, "--force"))
    (out / "stage.json").write_text("[1, 2, 3]\n")
    assert succeeded(index(embeddings, out))[-1].startswith("index: 8 videos, 8 captions in ")
    assert succeeded(index(embeddings, out))[-1] == skip_line("index", out)


# -- 9. --resume on other frames ----------------------------------------------------------------------------------


def test_resume_after_the_frames_were_decoded_again_with_other_settings_is_refused(run, tmp_path):
    """Case 9: an unfinished run (--stop-after 1), then its frames decoded again with another --sampling:
    `encode train --resume` refuses in one line saying the inputs changed, the run untouched; on the
    original frames it resumes."""
    frames = copy(run["frames"], tmp_path / "frames")
    model = copy(run["partial"], tmp_path / "model")
    succeeded(decode(run, frames, "--sampling", "linspace"))
    before = tree_hashes(model)
    refused(train(run, model, "--resume", frames=frames), "--resume on other inputs", "changed")
    assert tree_hashes(model) == before
    assert succeeded(train(run, model, "--resume", "--stop-after", 1))[-1].startswith("train: 1 steps (stopped")


# -- 10. one run per --out ----------------------------------------------------------------------------------------


def test_a_second_decode_on_the_same_out_is_refused_while_the_first_runs(run, tmp_path):
    """Case 10: while one `vidret decode` process works on --out, a second on the same --out refuses in one
    line naming the first process; the first finishes as if alone."""
    videos = sorted((run["data"] / "videos").glob("*.mp4"))
    many = tmp_path / "many.jsonl"
    write_manifest(many, manifest_records({f"v{n:04d}": videos[n % len(videos)] for n in range(150)}))
    out = tmp_path / "frames"
    command = [str(VIDRET), "decode", str(many), "--out", str(out), *map(str, DECODE_ARGS)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock, deadline = out / ".vidret.lock", time.monotonic() + 120
        while not (lock.is_file() and lock.read_text().startswith("vidret decode")):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first decode never took its lock"
            time.sleep(0.02)
        assert first.poll() is None, "the first decode finished before the second started: give it more videos"
        refused(decode(run, out, manifest=many), f"{out}: in use by vidret decode, process {first.pid} on ")
        stdout, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, stderr
    assert stdout.startswith("decode: 150 videos in ") and ": 150 ok |" in stdout
    assert succeeded(decode(run, out, manifest=many)) == [skip_line("decode", out)]


def test_a_decode_is_refused_while_another_process_holds_the_lock(run, tmp_path):
    """Case 10: with --out's lock held (here by the test, through flock), decode refuses in one line naming the
    holder and leaves the folder as it was; once released, the same command runs."""
    frames = copy(run["frames"], tmp_path / "frames")
    before = tree_hashes(frames)
    with open(frames / ".vidret.lock", "w") as handle:
        handle.write("vidret decode, process 4242 on elsewhere\n")
        handle.flush()
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused(decode(run, frames), f"{frames}: in use by vidret decode, process 4242 on elsewhere; wait for it")
        assert (frames / ".vidret.lock").read_text() == "vidret decode, process 4242 on elsewhere\n"
    assert tree_hashes(frames) == before
    assert succeeded(decode(run, frames)) == [skip_line("decode", frames)]


# -- 11. killed runs' temporaries ---------------------------------------------------------------------------------


def test_a_killed_runs_temporaries_are_removed_and_a_live_runs_kept(run, tmp_path):
    """Case 11: the next train or decode run on a folder removes the temporaries a run of this host that is no
    longer alive left behind (in the folder and below it); it keeps a live process's and another host's."""
    finished = subprocess.Popen(["true"])
    finished.wait()
    host = socket.gethostname()
    model, frames = copy(run["model"], tmp_path / "model"), copy(run["frames"], tmp_path / "frames")
    stale = [
        model / f".last.pt.tmp-{host}-{finished.pid}",
        frames / f".part-00001.parquet.tmp-{host}-{finished.pid}",
        frames / "_chunks" / f".part-00001.status.parquet.tmp-{host}-{finished.pid}",
    ]
    kept = [
        model / f".last.pt.tmp-{host}-{os.getpid()}",
        frames / f".status.parquet.tmp-{host}-{os.getpid()}",
        frames / f".part-00002.parquet.tmp-elsewhere-{finished.pid}",
    ]
    for path in stale + kept:
        path.write_bytes(b"half a file")
    assert succeeded(train(run, model)) == [skip_line("train", model)]
    assert succeeded(decode(run, frames)) == [skip_line("decode", frames)]
    assert [path for path in stale if path.exists()] == []
    assert [path for path in kept if not path.exists()] == []


# -- 12. an unfinished training run -------------------------------------------------------------------------------


def test_an_unfinished_training_run_is_refused_unless_forced(run, tmp_path):
    """Case 12: a plain rerun on a run stopped with --stop-after refuses in one line and leaves it as it was;
    --force starts over and finishes."""
    model = copy(run["partial"], tmp_path / "model")
    before = tree_hashes(model)
    line = refused(train(run, model))
    assert line == f"error: {model} holds an unfinished training run; --resume continues it, --force starts over"
    assert tree_hashes(model) == before
    forced = succeeded(train(run, model, "--force"))
    assert forced[-1].startswith("train: 10 steps (1 epochs), 80 videos in ") and forced[-1].endswith("(ran: --force)")
    assert "finished" in json.loads((model / "stage.json").read_text())


# -- 13. sharded decodes ------------------------------------------------------------------------------------------


def test_a_sharded_decode_with_force_is_refused(run, tmp_path):
    """Case 13: --force with --num-shards would delete the other shards' chunks: refused in one line, before
    the folder is touched."""
    frames = copy(run["frames"], tmp_path / "frames")
    before = tree_hashes(frames)
    refused(decode(run, frames, "--num-shards", 2, "--shard-index", 0, "--force"), "--force with --num-shards")
    assert tree_hashes(frames) == before


def test_a_sharded_decode_refuses_chunks_decoded_with_other_parameters(run, tmp_path):
    """Case 13: a shard run on a folder holding chunks decoded with other parameters refuses in one line (they
    may be other shards' work) and leaves them as they were (the refused run's shard lock aside)."""
    frames = copy(run["frames"], tmp_path / "frames")
    before = tree_hashes(frames)
    refused(decode(run, frames, "--frames", 3, "--num-shards", 2, "--shard-index", 1),
            f"{frames} holds chunks decoded with other parameters (num_frames 4 -> 3)")  # fmt: skip
    assert without_locks(tree_hashes(frames)) == without_locks(before)


# -- 14. the words of a skip --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["synth", "decode", "train", "embed", "index"])
def test_an_unchanged_rerun_is_skipped_in_the_same_words_by_every_stage(run, tmp_path, stage):
    """Case 14: a rerun with the same inputs and options prints `STAGE: skipped, OUT is up to date (same
    inputs and parameters; --force redoes it)` as its last line and writes nothing."""
    if stage == "synth":
        out = tmp_path / "synth"
        rerun = lambda: vidret("synth", out, "--videos", 4, "--seed", 1, "--no-progress")  # noqa: E731
        succeeded(rerun())
    elif stage == "decode":
        out = copy(run["frames"], tmp_path / "frames")
        rerun = lambda: decode(run, out)  # noqa: E731
    elif stage == "train":
        out = copy(run["model"], tmp_path / "model")
        rerun = lambda: train(run, out)  # noqa: E731
    elif stage == "embed":
        out = copy(run["embeddings"], tmp_path / "embeddings")
        rerun = lambda: embed(run, out)  # noqa: E731
    else:
        embeddings, out = copy(run["embeddings"], tmp_path / "embeddings"), copy(run["index"], tmp_path / "index")
        rerun = lambda: index(embeddings, out)  # noqa: E731
    before = tree_hashes(out)
    assert succeeded(rerun())[-1] == skip_line(stage, out)
    assert tree_hashes(out) == before
