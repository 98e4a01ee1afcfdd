"""``vidret manifest scan``: every video file under a folder, ids from relative paths, stable rescans,
problems reported and never fatal."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline.decode import DecodeOptions, FrameSpec, decode_videos
from pipeline.errors import VidretError
from pipeline.manifest import read_manifest
from pipeline.scan import list_videos, scan_videos
from pipeline.synth import ALL_ATTRIBUTES, SynthOptions, write_segmented_video

VIDRET = Path(sys.executable).parent / "vidret"
NOBODY = 65534


def touch(path: Path, data: bytes = b"not decoded by scan") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def records(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


@pytest.fixture
def library(tmp_path) -> Path:
    """A folder of video files in every case and nesting, beside files scan must leave out."""
    videos = tmp_path / "videos"
    for name in ("b.mp4", "A.MOV", "holiday/day 1/beach.MkV", "holiday/z.webm", "old/clip.3gp", "old/tape.m2ts"):
        touch(videos / name)
    for name in ("notes.txt", "holiday/cover.jpg", "clip.mp4.part", "._b.mp4", ".cache/hidden.mp4", "subs.srt"):
        touch(videos / name)
    (videos / "empty folder").mkdir()
    return videos


def test_video_files_only_with_ids_from_their_relative_paths(library, tmp_path):
    summary = scan_videos(library, tmp_path / "videos.jsonl")
    written = records(tmp_path / "videos.jsonl")
    ids = ["A.MOV", "b.mp4", "holiday/day 1/beach.MkV", "holiday/z.webm", "old/clip.3gp", "old/tape.m2ts"]
    assert [record["video_id"] for record in written] == ids  # sorted by id
    # Inside the manifest's folder: paths relative to it, so that the two move together; no captions.
    beach = "holiday/day 1/beach.MkV"
    assert written[2] == {"video_id": beach, "path": f"videos/{beach}", "split": "test"}
    entries = read_manifest(tmp_path / "videos.jsonl")
    assert [entry.path for entry in entries] == [library / video_id for video_id in ids]
    assert all(entry.captions == () for entry in entries)
    assert (summary.videos, summary.found, summary.new, summary.removed, summary.problems) == (6, 6, 6, 0, [])
    assert summary.line().startswith("manifest scan: 6 videos (6 new, 0 removed since the last scan); 6 video files")

    # A manifest elsewhere (a run folder) holds absolute paths: the run can move without its videos.
    scan_videos(library, tmp_path / "run" / "manifest.jsonl", split="val")
    elsewhere = records(tmp_path / "run" / "manifest.jsonl")
    assert [record["path"] for record in elsewhere] == [str(library / video_id) for video_id in ids]
    assert {record["split"] for record in elsewhere} == {"val"}


def test_a_rescan_of_an_unchanged_folder_writes_the_same_bytes(library, tmp_path):
    manifest = tmp_path / "videos.jsonl"
    scan_videos(library, manifest)
    first = manifest.read_bytes()
    summary = scan_videos(library, manifest)
    assert manifest.read_bytes() == first
    assert (summary.new, summary.removed) == (0, 0)


def test_a_rescan_keeps_every_entry_as_written_adds_new_files_and_drops_deleted_ones(library, tmp_path):
    manifest = tmp_path / "videos.jsonl"
    scan_videos(library, manifest)
    # The user captions one video, moves another to train, and adds an entry of their own outside the folder.
    edited = records(manifest)
    edited[1] |= {"captions": ["my cat on the sofa"], "rating": 5}
    edited[3]["split"] = "train"
    edited.append({"video_id": "elsewhere", "path": str(touch(tmp_path / "other" / "x.avi")), "split": "test"})
    manifest.write_text("".join(json.dumps(record) + "\n" for record in edited))
    touch(library / "new" / "later.mp4")
    touch(library / "c.avi")
    (library / "old" / "tape.m2ts").unlink()

    summary = scan_videos(library, manifest)
    after = {record["video_id"]: record for record in records(manifest)}
    # The earlier entries where they were, the new files after them (decode's earlier chunks stay decoded).
    assert list(after) == [
        "A.MOV", "b.mp4", "holiday/day 1/beach.MkV", "holiday/z.webm", "old/clip.3gp", "elsewhere", "c.avi",
        "new/later.mp4",
    ]  # fmt: skip
    for record in edited:  # every earlier entry whose file is there is kept exactly as it was
        if record["video_id"] != "old/tape.m2ts":
            assert after[record["video_id"]] == record
    assert after["new/later.mp4"] == {"video_id": "new/later.mp4", "path": "videos/new/later.mp4", "split": "test"}
    assert (summary.videos, summary.found, summary.new, summary.removed, summary.kept_unchecked) == (8, 7, 2, 1, 1)
    assert "(2 new, 1 removed since the last scan, 1 kept unchecked" in summary.line()
    # And the ids stay stable from then on.
    assert scan_videos(library, manifest).new == 0


def test_after_a_rescan_decode_decodes_only_the_new_files(tmp_path):
    """New files go after the earlier entries, so decode's earlier chunks (by position) stay committed."""

    def video(name: str, number: int) -> None:
        write_segmented_video(tmp_path / "videos" / name, [ALL_ATTRIBUTES[number]], 0.5, SynthOptions(fps=8))

    (tmp_path / "videos").mkdir()
    for number, name in enumerate(("b.mp4", "c.mp4", "d.mp4", "e.mp4")):
        video(name, number)
    manifest = tmp_path / "videos.jsonl"
    options = DecodeOptions(spec=FrameSpec(num_frames=2, size=32), shard_size=2, workers=1)
    scan_videos(tmp_path / "videos", manifest)
    decode_videos(manifest, tmp_path / "frames", options, progress=False)
    video("a.mp4", 4)  # sorted in, it would move every earlier video to another chunk
    scan_videos(tmp_path / "videos", manifest)
    again = decode_videos(manifest, tmp_path / "frames", options, progress=False)
    assert (again.videos, again.chunks_run, again.chunks_already_committed) == (1, 1, 2)


def test_an_earlier_entry_that_already_took_a_new_files_id_is_an_error(library, tmp_path):
    manifest = tmp_path / "videos.jsonl"
    scan_videos(library, manifest)
    taken = records(manifest) + [{"video_id": "c.avi", "path": "videos/b.mp4", "split": "test"}]
    manifest.write_text("".join(json.dumps(record) + "\n" for record in taken))
    before = manifest.read_bytes()
    touch(library / "c.avi")
    with pytest.raises(VidretError, match=r"video_id 'c.avi' of .*c.avi names another path already \(.*b.mp4\)"):
        scan_videos(library, manifest)
    assert manifest.read_bytes() == before


def test_broken_links_loops_and_repeated_folders_are_reported_not_fatal(library, tmp_path):
    outside = tmp_path / "outside"
    touch(outside / "linked.mp4")
    (library / "gone.mp4").symlink_to("nowhere.mp4")
    (library / "loop-a").symlink_to("loop-b")
    (library / "loop-b").symlink_to("loop-a")
    (library / "holiday" / "up").symlink_to("..")  # back to an ancestor: a walk would never end
    (library / "ext").symlink_to(outside)  # a linked folder is scanned
    (library / "aa-alias").symlink_to("holiday")  # a folder reached twice: named by its real path
    (library / "film.mp4").symlink_to(library / "b.mp4")  # a link to a video is a video
    touch(Path(os.fsdecode(bytes(library) + b"/caf\xe9.mp4")))  # a Latin-1 name: Parquet stores UTF-8 only

    listing = list_videos(library)
    assert "ext/linked.mp4" in listing.videos and "film.mp4" in listing.videos
    assert not [video for video in listing.videos if video.startswith(("aa-alias/", "holiday/up/"))]
    problems = {(problem.kind, problem.path.name) for problem in listing.problems}
    assert problems == {
        ("broken_link", "gone.mp4"), ("broken_link", "loop-a"), ("broken_link", "loop-b"),
        ("repeated_folder", "up"), ("repeated_folder", "aa-alias"), ("name_not_utf8", "caf\udce9.mp4"),
    }  # fmt: skip
    (loop,) = [problem for problem in listing.problems if problem.path.name == "loop-a"]
    assert loop.line() == f"broken_link: {library / 'loop-a'}: -> loop-b (Too many levels of symbolic links)"

    summary = scan_videos(library, tmp_path / "videos.jsonl")
    assert summary.found == 8 and len(summary.problems) == 6
    assert "problems: 3 broken_link, 1 name_not_utf8, 2 repeated_folder" in summary.line()
    assert len(summary.problem_lines(2)) == 3 and summary.problem_lines(2)[-1] == "... and 4 more problems"
    (latin,) = [problem for problem in listing.problems if problem.kind == "name_not_utf8"]
    assert latin.line() == f"name_not_utf8: {str(latin.path)!r}: skipped: vidret stores ids as UTF-8"


def run_without_root(function, *args):
    """``function(*args)`` in a forked child that permissions apply to: the tests run as root, whom chmod
    000 does not stop, so there the child first gives up root for nobody's ids. Returns what it returned."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read)
            if os.getuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            result = function(*args)
            with os.fdopen(write, "wb") as handle:
                pickle.dump(result, handle)
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as handle:
        data = handle.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and data, "the unprivileged child failed"
    return pickle.loads(data)


@pytest.fixture
def open_folder():
    """A folder nobody's ids can enter and write (pytest's tmp_path lies under a folder only root enters)."""
    folder = Path(tempfile.mkdtemp(prefix="vidret-scan-"))
    folder.chmod(0o755)
    yield folder
    for path in folder.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(folder)


def test_an_unreadable_folder_is_reported_and_its_earlier_entries_are_kept(open_folder):
    videos, out = open_folder / "videos", open_folder / "out"
    for name in ("a.mp4", "private/b.mp4", "private/deeper/c.mp4"):
        touch(videos / name)
    out.mkdir()
    if os.getuid() == 0:
        os.chown(out, NOBODY, NOBODY)
    manifest = out / "videos.jsonl"
    scan_videos(videos, manifest)  # everything readable
    before = manifest.read_bytes()

    (videos / "private").chmod(0)
    touch(videos / "z.mp4")
    summary = run_without_root(scan_videos, videos, manifest)
    (unreadable,) = summary.problems
    assert (unreadable.kind, unreadable.path) == ("unreadable_folder", videos / "private")
    assert unreadable.line() == f"unreadable_folder: {videos / 'private'}: not scanned (Permission denied)"
    # Its videos may be there still: their entries are kept, the new file is added, nothing is removed.
    assert [record["video_id"] for record in records(manifest)] == [
        "a.mp4",
        "private/b.mp4",
        "private/deeper/c.mp4",
        "z.mp4",
    ]
    assert manifest.read_bytes().startswith(before[: before.index(b"\n") + 1])
    assert (summary.found, summary.new, summary.removed, summary.kept_unchecked) == (2, 1, 0, 2)


def test_bad_input_is_one_line_and_writes_nothing(library, tmp_path):
    no_videos = tmp_path / "no-videos"
    touch(no_videos / "readme.txt")
    (no_videos / "sub").mkdir()
    out = tmp_path / "m.jsonl"
    with pytest.raises(VidretError, match=r"no-videos: no video files found \(extensions: 3gp avi .* wmv\)$"):
        scan_videos(no_videos, out)
    with pytest.raises(VidretError, match=r"missing: no such videos folder"):
        scan_videos(tmp_path / "missing", out)
    with pytest.raises(VidretError, match=r"readme.txt: not a folder"):
        scan_videos(no_videos / "readme.txt", out)
    with pytest.raises(VidretError, match=r"--out .*no-videos: is a folder"):
        scan_videos(library, no_videos)
    with pytest.raises(VidretError, match=r"unknown split 'dev'"):
        scan_videos(library, out, split="dev")
    assert not out.exists()
    # An existing --out that is not a manifest is refused, never overwritten.
    (tmp_path / "notes.jsonl").write_text("my notes\n")
    with pytest.raises(VidretError, match=r"notes.jsonl:1: invalid JSON"):
        scan_videos(library, tmp_path / "notes.jsonl")
    assert (tmp_path / "notes.jsonl").read_text() == "my notes\n"


def test_the_command_prints_problems_on_stderr_and_the_summary_on_stdout(library, tmp_path):
    (library / "gone.mp4").symlink_to("nowhere.mp4")
    out = tmp_path / "run" / "manifest.jsonl"
    ran = subprocess.run(
        [VIDRET, "manifest", "scan", library, "--out", out, "--split", "val"], capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr == f"broken_link: {library / 'gone.mp4'}: -> nowhere.mp4 (No such file or directory)\n"
    assert ran.stdout.startswith("manifest scan: 6 videos (6 new, 0 removed since the last scan)")
    assert ran.stdout.strip().endswith(f"-> {out}")
    assert {record["split"] for record in records(out)} == {"val"}

    empty = tmp_path / "empty"
    empty.mkdir()
    failed = subprocess.run([VIDRET, "manifest", "scan", empty, "--out", out], capture_output=True, text=True)
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.startswith(f"error: {empty}: no video files found") and failed.stderr.count("\n") == 1
