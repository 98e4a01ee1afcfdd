import json
from pathlib import Path

import pytest

from pipeline.errors import VidretError
from pipeline.manifest import ManifestError, describe_manifest, read_manifest, select_split

GOOD = {"video_id": "v1", "path": "videos/v1.mp4", "split": "train", "captions": ["a cat"]}


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_reads_entries_and_resolves_paths_next_to_the_manifest(tmp_path):
    manifest = write_lines(
        tmp_path / "m.jsonl",
        [
            GOOD,
            "",
            {**GOOD, "video_id": "v2", "path": "/abs/v2.mp4", "split": "test", "captions": ["a", "b"], "extra": 1},
        ],
    )
    first, second = read_manifest(manifest)
    assert first.video_id == "v1" and first.path == tmp_path / "videos" / "v1.mp4"
    assert first.split == "train" and first.captions == ("a cat",)
    assert second.path == Path("/abs/v2.mp4") and second.captions == ("a", "b")


def test_video_root_replaces_the_manifest_folder_for_relative_paths(tmp_path):
    manifest = write_lines(tmp_path / "m.jsonl", [GOOD, {**GOOD, "video_id": "v2", "path": "/abs/v2.mp4"}])
    first, second = read_manifest(manifest, video_root=tmp_path / "elsewhere")
    assert first.path == tmp_path / "elsewhere" / "videos" / "v1.mp4"
    assert second.path == Path("/abs/v2.mp4")


@pytest.mark.parametrize(
    "bad_line, problem",
    [
        ("{not json", "invalid JSON"),
        ('["a list"]', "expected a JSON object, got list"),
        ({"path": "p", "split": "train", "captions": ["c"]}, "missing field 'video_id'"),
        ({**GOOD, "video_id": ""}, "'video_id' must be a non-empty string"),
        ({**GOOD, "video_id": 7}, "'video_id' must be a non-empty string"),
        ({**GOOD}, "duplicate video_id 'v1' (first on line 1)"),
        ({**GOOD, "video_id": "v2", "path": ""}, "'path' must be a non-empty string"),
        ({**GOOD, "video_id": "v2", "split": "dev"}, "unknown split 'dev'"),
        ({**GOOD, "video_id": "v2", "captions": "a cat"}, "'captions' must be a list of strings"),
        ({**GOOD, "video_id": "v2", "captions": None}, "'captions' must be a list of strings"),
        ({**GOOD, "video_id": "v2", "captions": ["ok", "  "]}, "empty or non-string caption"),
        ({**GOOD, "video_id": "v2", "captions": [""]}, "empty or non-string caption"),
        ({**GOOD, "video_id": "v2", "captions": [3]}, "empty or non-string caption"),
        ({**GOOD, "video_id": "v2", "group": 7}, "'group' must be a non-empty string (or left out), got 7"),
        ({**GOOD, "video_id": "v2", "group": " "}, "'group' must be a non-empty string"),
    ],
)
def test_a_bad_line_names_the_file_the_line_and_the_problem(tmp_path, bad_line, problem):
    manifest = write_lines(tmp_path / "m.jsonl", [GOOD, "", bad_line])
    with pytest.raises(ManifestError) as raised:
        read_manifest(manifest)
    message = str(raised.value)
    assert message.startswith(f"{manifest}:3: ")
    assert problem in message
    assert "\n" not in message


def test_missing_file_empty_manifest_and_invalid_utf8(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest file"):
        read_manifest(tmp_path / "nope.jsonl")
    with pytest.raises(ManifestError, match="has no videos"):
        read_manifest(write_lines(tmp_path / "empty.jsonl", ["", "  "]))
    (tmp_path / "latin1.jsonl").write_bytes(b'{"video_id": "caf\xe9"}\n')
    with pytest.raises(ManifestError, match=r"latin1.jsonl:1: not valid UTF-8"):
        read_manifest(tmp_path / "latin1.jsonl")


def test_select_split(tmp_path):
    manifest = write_lines(
        tmp_path / "m.jsonl",
        [GOOD, {**GOOD, "video_id": "v2", "split": "test"}, {**GOOD, "video_id": "v3", "split": "val"}],
    )
    entries = read_manifest(manifest)
    assert [e.video_id for e in select_split(entries, "all", manifest)] == ["v1", "v2", "v3"]
    assert [e.video_id for e in select_split(entries, "test", manifest)] == ["v2"]
    assert [e.video_id for e in select_split(entries, "val,train", manifest)] == ["v1", "v3"]
    with pytest.raises(VidretError, match="unknown split 'dev'"):
        select_split(entries, "dev", manifest)
    only_train = read_manifest(write_lines(tmp_path / "t.jsonl", [GOOD]))
    with pytest.raises(VidretError, match="no videos in split 'test'"):
        select_split(only_train, "test", tmp_path / "t.jsonl")


def test_describe_counts_splits_captions_and_missing_files(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "v1.mp4").write_bytes(b"x")
    manifest = write_lines(
        tmp_path / "m.jsonl",
        [GOOD, {**GOOD, "video_id": "v2", "path": "videos/v2.mp4", "split": "test", "captions": ["a", "b"]}],
    )
    assert (
        describe_manifest(read_manifest(manifest)) == "2 videos (1 train, 1 test), 3 captions, missing video files: 1"
    )


def test_captions_empty_or_left_out_is_an_uncaptioned_video(tmp_path):
    """``[]`` and no ``captions`` field both mean a video without captions; the check line counts them."""
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "v1.mp4").write_bytes(b"x")
    without = {key: value for key, value in GOOD.items() if key != "captions"}
    manifest = write_lines(
        tmp_path / "m.jsonl",
        [GOOD, {**GOOD, "video_id": "v2", "captions": []}, {**without, "video_id": "v3", "split": "test"}],
    )
    entries = read_manifest(manifest)
    assert [entry.captions for entry in entries] == [("a cat",), (), ()]
    assert describe_manifest(entries) == (
        "3 videos (2 train, 1 test), 1 captions (2 videos uncaptioned), missing video files: 0"
    )
