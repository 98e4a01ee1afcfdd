"""vidret manifest build: the benchmarks' official annotation formats, written here in small
fixtures (and the real MSR-VTT 1k-A test CSV), converted to manifests with every problem reported."""

import csv
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.datasets import DatasetError, available_datasets, build_manifest, load_definition
from pipeline.decode import DecodeOptions, FrameSpec, decode_videos
from pipeline.encode.embed import EmbedOptions, embed
from pipeline.index import IndexOptions, index_embeddings
from pipeline.manifest import read_manifest

from helpers import brute_force_ranks, make_video

REAL_1K_A = Path(__file__).parent / "data" / "msrvtt" / "MSRVTT_JSFUSION_test.csv"
# The file as shipped in ../shared/data/msrvtt (and in CLIP4Clip's msrvtt_data.zip).
REAL_1K_A_SHA256 = "e61144b312c8a2fc2126f96504c981f8c23c05b3ba9655a56e2af50ac8a4b16a"


def records(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def problems(summary) -> set[tuple[str, str, str]]:
    return {(problem.kind, problem.video_id, problem.split) for problem in summary.problems}


def touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"stand-in")


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


# --- the real MSR-VTT 1k-A test annotations -------------------------------------------------------


def test_real_msrvtt_1k_a_builds_exactly_1000_test_videos(tmp_path):
    assert hashlib.sha256(REAL_1K_A.read_bytes()).hexdigest() == REAL_1K_A_SHA256
    videos = tmp_path / "videos"
    videos.mkdir()
    out = tmp_path / "msrvtt-1k-a.jsonl"
    summary = build_manifest("msrvtt-1k-a", REAL_1K_A.parent, videos, out)

    rows = records(out)
    assert len(rows) == 1000 and len({row["video_id"] for row in rows}) == 1000
    assert {row["split"] for row in rows} == {"test"}
    assert all(len(row["captions"]) == 1 for row in rows)
    by_id = {row["video_id"]: row for row in rows}
    # Checked by hand against the CSV: its first, third, 500th and last data rows.
    assert rows[0]["video_id"] == "video9770"
    assert by_id["video9770"]["captions"] == ["a person is connecting something to system"]
    assert by_id["video7020"]["captions"] == ["a woman creating a fondant baby and flower"]
    assert by_id["video7771"]["captions"] == ["a golf player is trying to hit the ball into the pit"]
    assert rows[-1]["video_id"] == "video9871"
    assert rows[-1]["captions"] == ["bearded guy in grey tshirt talking to the camera"]

    # No videos here: every one is reported missing, and still in the manifest under its expected path.
    assert summary.counts == {"test": {"videos": 1000, "captions": 1000, "missing_video": 1000}}
    assert problems(summary) == {("missing_video", row["video_id"], "test") for row in rows}
    assert by_id["video9770"]["path"] == str((videos / "video9770.mp4").absolute())
    assert "1000 videos (1000 test), 1000 captions; problems: 1000 missing_video" in summary.line()
    shown = summary.problem_lines(per_kind=2)
    assert shown[0] == f"missing_video: video9770 (test): no file in {videos.absolute()} (MSRVTT_JSFUSION_test.csv:2)"
    assert shown[-1] == f"missing_video: ... and 998 more in {tmp_path / 'msrvtt-1k-a.build.json'}"

    entries = read_manifest(out)
    assert len(entries) == 1000 and entries[0].captions == ("a person is connecting something to system",)
    report = json.loads((tmp_path / "msrvtt-1k-a.build.json").read_text())
    assert report["annotations"]["test"]["sha256"] == REAL_1K_A_SHA256
    assert report["manifest"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert len(report["problems"]) == 1000 and report["defaults"]["frames"] == 12


def test_real_msrvtt_1k_a_finds_stand_in_videos_in_subfolders(tmp_path):
    videos = tmp_path / "MSRVTT" / "videos"
    touch(videos, "all/video9770.mp4", "all/video7020.mp4", "other/video9871.webm", "all/video9771.json")
    summary = build_manifest("msrvtt-1k-a", REAL_1K_A.parent, videos, tmp_path / "m.jsonl")
    by_id = {row["video_id"]: row for row in records(tmp_path / "m.jsonl")}
    assert by_id["video9770"]["path"] == str(videos / "all" / "video9770.mp4")
    assert by_id["video9871"]["path"] == str(videos / "other" / "video9871.webm")
    # A .json file is not a video, so video9771 stays missing.
    assert summary.counts["test"]["missing_video"] == 997
    assert ("missing_video", "video9771", "test") in problems(summary)
    assert ("missing_video", "video9770", "test") not in problems(summary)


# --- MSR-VTT 9k / 7k: CLIP4Clip's CSVs and MSRVTT_data.json, and MMAction2's json ------------------


def write_msrvtt_clip4clip(folder: Path, train_name: str = "MSRVTT_train.9k.csv") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # video2 is listed twice; video4 has no sentence; video9 is also a test video; line 8 names no video.
    write_csv(
        folder / train_name,
        ["video_id"],
        [["video0"], ["video1"], ["video2"], ["video2"], ["video4"], ["video9"], [""]],
    )
    sentences = [
        {"caption": "a man sings", "video_id": "video0", "sen_id": 0},
        {"caption": "someone sings on a stage", "video_id": "video0", "sen_id": 1},
        {"caption": "a cat plays", "video_id": "video1", "sen_id": 2},
        {"caption": "   ", "video_id": "video1", "sen_id": 3},
        {"caption": "cars race", "video_id": "video2", "sen_id": 4},
        {"caption": "a test sentence not used", "video_id": "video9", "sen_id": 5},
    ]
    videos = [{"video_id": f"video{i}", "split": "train", "id": i} for i in range(10)]
    (folder / "MSRVTT_data.json").write_text(json.dumps({"info": {}, "videos": videos, "sentences": sentences}))
    write_csv(
        folder / "MSRVTT_JSFUSION_test.csv",
        ["key", "vid_key", "video_id", "sentence"],
        # The last row is cut short: no video_id, no sentence.
        [["ret0", "msr9", "video9", "a dog runs"], ["ret1", "msr8", "video8", "a woman cooks"], ["ret2", "msr7"]],
    )


def test_msrvtt_9k_clip4clip_layout(tmp_path):
    annotations, videos = tmp_path / "msrvtt_data", tmp_path / "videos"
    write_msrvtt_clip4clip(annotations)
    touch(videos, *(f"video{i}.mp4" for i in range(10)))
    summary = build_manifest("msrvtt-9k", annotations, videos, tmp_path / "msrvtt-9k.jsonl")
    assert summary.layout == "clip4clip"
    rows = records(tmp_path / "msrvtt-9k.jsonl")
    assert [(row["split"], row["video_id"], row["captions"]) for row in rows] == [
        ("train", "video0", ["a man sings", "someone sings on a stage"]),  # every caption a training sample
        ("train", "video1", ["a cat plays"]),
        ("train", "video2", ["cars race", "cars race"]),  # listed twice: merged, and reported
        ("test", "video9", ["a dog runs"]),  # the test CSV's own sentence, not MSRVTT_data.json's
        ("test", "video8", ["a woman cooks"]),
    ]
    assert all(row["path"] == str(videos.absolute() / f"{row['video_id']}.mp4") for row in rows)
    assert problems(summary) == {
        ("duplicate_id", "video2", "train"),
        ("empty_caption", "video1", "train"),
        ("no_caption", "video4", "train"),
        ("other_split", "video9", "train"),  # kept in test only, so training never sees it
        ("empty_id", "", "train"),
        ("empty_id", "", "test"),
    }
    detail = {problem.kind: problem.detail for problem in summary.problems}
    assert detail["duplicate_id"] == "MSRVTT_train.9k.csv:5 repeats MSRVTT_train.9k.csv:4; captions merged"
    assert detail["other_split"] == "MSRVTT_train.9k.csv:7: also in test; kept there only"
    assert summary.counts == {
        "train": {"videos": 3, "captions": 5, "missing_video": 0},
        "test": {"videos": 2, "captions": 2, "missing_video": 0},
    }
    report = json.loads(summary.report.read_text())
    assert [problem["kind"] for problem in report["problems"]] == [
        "empty_id",  # found while merging the listings, test first, in file order
        "duplicate_id",
        "other_split",
        "empty_id",
        "empty_caption",  # then per video, in manifest order
        "no_caption",
    ]


def test_msrvtt_7k_reads_the_7k_csv(tmp_path):
    write_msrvtt_clip4clip(tmp_path / "a", train_name="MSRVTT_train.7k.csv")
    train_csv = tmp_path / "a" / "MSRVTT_train.7k.csv"
    train_csv.write_bytes(b"\xef\xbb\xbf" + train_csv.read_bytes())  # as saved by a spreadsheet: a BOM
    summary = build_manifest("msrvtt-7k", tmp_path / "a", tmp_path, tmp_path / "m.jsonl")
    assert summary.counts["train"]["videos"] == 3 and summary.counts["test"]["videos"] == 2
    with pytest.raises(DatasetError, match=r"msrvtt-9k annotation files are missing \(clip4clip: MSRVTT_train.9k.csv;"):
        build_manifest("msrvtt-9k", tmp_path / "a", tmp_path, tmp_path / "m9.jsonl")


def test_msrvtt_mmaction2_layout(tmp_path):
    annotations, videos = tmp_path / "msrvtt", tmp_path / "msrvtt" / "videos"
    annotations.mkdir()
    # A repeated key: json.load would silently keep only the last one.
    (annotations / "train_9k.json").write_text(
        '{"video0.mp4": ["a man sings", "someone sings"], "video1.mp4": ["a cat"], "video0.mp4": ["again"]}'
    )
    (annotations / "test_JSFUSION.json").write_text(json.dumps({"video9.mp4": ["a dog runs"], "video8.mp4": [""]}))
    touch(videos, "video0.mp4", "video1.mp4", "video9.mp4")
    summary = build_manifest("msrvtt-9k", annotations, videos, tmp_path / "m.jsonl")
    assert summary.layout == "mmaction2"
    rows = records(tmp_path / "m.jsonl")
    assert [(row["split"], row["video_id"], row["captions"]) for row in rows] == [
        ("train", "video0", ["a man sings", "someone sings", "again"]),
        ("train", "video1", ["a cat"]),
        ("test", "video9", ["a dog runs"]),
    ]
    assert problems(summary) == {
        ("duplicate_id", "video0", "train"),
        ("empty_caption", "video8", "test"),
        ("no_caption", "video8", "test"),
    }

    # With both layouts present, CLIP4Clip's files win (the first layout in the definition).
    write_msrvtt_clip4clip(annotations)
    assert build_manifest("msrvtt-9k", annotations, videos, tmp_path / "m.jsonl").layout == "clip4clip"


# --- MSVD: split lists and raw-captions.pkl (token lists), several captions per test video -------


def write_msvd(folder: Path) -> dict[str, list[list[str]]]:
    folder.mkdir(parents=True, exist_ok=True)
    captions = {
        "-4wsuPCjDBc_5_15": [["a", "man", "sings"], ["a", "man", "sings"]],  # MSVD repeats captions verbatim
        "-7KMZQEsJW4_205_208": [["a", "dog", "runs"], ["the", "dog", "is", "running"]],
        "0lh_UWF9ZP4_62_69": [["a", "woman", "cooks"]],
        "1dfR0A_BXjw_590_600": [["a", "cat", "jumps"], ["a", "kitten", "leaps"], ["a", "cat", "leaps", "up"]],
        "val_clip_1_2": [["a", "bird", "flies"]],
    }
    with open(folder / "raw-captions.pkl", "wb") as handle:
        pickle.dump(captions, handle)
    (folder / "train_list.txt").write_text("0lh_UWF9ZP4_62_69\nno_captions_0_1\n")
    (folder / "val_list.txt").write_text("val_clip_1_2\n")
    (folder / "test_list.txt").write_text("-4wsuPCjDBc_5_15\n-7KMZQEsJW4_205_208\n1dfR0A_BXjw_590_600\n")
    return captions


def test_msvd_is_multi_caption(tmp_path):
    captions = write_msvd(tmp_path / "msvd_data")
    touch(tmp_path / "YouTubeClips", *(f"{video_id}.avi" for video_id in captions))
    summary = build_manifest("msvd", tmp_path / "msvd_data", tmp_path / "YouTubeClips", tmp_path / "msvd.jsonl")
    rows = {row["video_id"]: row for row in records(tmp_path / "msvd.jsonl")}
    assert rows["-4wsuPCjDBc_5_15"]["captions"] == ["a man sings", "a man sings"]
    assert rows["1dfR0A_BXjw_590_600"]["split"] == "test" and len(rows["1dfR0A_BXjw_590_600"]["captions"]) == 3
    assert rows["val_clip_1_2"]["split"] == "val"
    assert summary.counts["test"] == {"videos": 3, "captions": 7, "missing_video": 0}
    assert problems(summary) == {("no_caption", "no_captions_0_1", "train")}
    assert load_definition("msvd").defaults["frames"] == 12


def test_msvd_test_set_metrics_follow_the_definitions(tmp_path):
    """Multi-caption test videos through decode, embed and index: the metrics stage ranks every
    caption (t2v) and every video by its best caption (v2t), and a caption repeated verbatim does not
    count against its own video."""
    write_msvd(tmp_path / "msvd_data")
    videos = tmp_path / "YouTubeClips"
    videos.mkdir()
    for number, video_id in enumerate(["-4wsuPCjDBc_5_15", "-7KMZQEsJW4_205_208", "1dfR0A_BXjw_590_600"]):
        make_video(videos / f"{video_id}.avi", "mpeg4-avi", width=64 + 16 * number, height=48, num_frames=12)
    manifest = tmp_path / "msvd.jsonl"
    build_manifest("msvd", tmp_path / "msvd_data", videos, manifest)

    run = tmp_path / "run"
    spec = FrameSpec(num_frames=2, size=32)
    decode_videos(manifest, run / "frames", DecodeOptions(spec=spec, split="test", workers=1), progress=False)
    embed(
        EmbedOptions(
            run / "frames",
            manifest,
            run / "embeddings",
            model="vidret-micro",
            pretrained="none",
            device="cpu",
            progress=False,
        )
    )
    summary = index_embeddings(run / "embeddings", run / "index", IndexOptions(progress=False))
    assert summary.metrics["num_videos"] == 3 and summary.metrics["num_texts"] == 7

    texts = pq.read_table(run / "embeddings" / "texts.parquet").to_pandas()
    video_table = pq.read_table(run / "embeddings" / "videos.parquet").to_pandas()
    row_of = {video_id: row for row, video_id in enumerate(video_table.video_id)}
    index = np.array([row_of[video_id] for video_id in texts.video_id])
    expected_t2v, expected_v2t = brute_force_ranks(np.stack(texts.embedding), np.stack(video_table.embedding), index)
    ranks = pq.read_table(run / "index" / "ranks.parquet").to_pandas()
    np.testing.assert_array_equal(ranks[ranks.direction == "t2v"].sort_values("query")["rank"], expected_t2v)
    np.testing.assert_array_equal(ranks[ranks.direction == "v2t"].sort_values("query")["rank"], expected_v2t)
    # The first video's two captions are identical, so its best one ties with the other: only other
    # videos' captions may count against it.
    first = row_of["-4wsuPCjDBc_5_15"]
    sim = np.stack(video_table.embedding)[first] @ np.stack(texts.embedding).T
    rivals = np.sum(sim[index != first] >= sim[index == first].max())
    assert ranks[(ranks.direction == "v2t")].sort_values("query")["rank"].iloc[first] == 1 + rivals


# --- LSMDC: tab-separated, a clip id repeated with another sentence ------------------------------


def test_lsmdc(tmp_path):
    annotations = tmp_path / "lsmdc"
    annotations.mkdir()
    clip = "0001_American_Beauty_00.00.51.926-00.00.54.129"
    other = "0001_American_Beauty_00.01.01.000-00.01.03.000"
    times = "00.00.51.926\t00.00.54.129\t00.00.51.000\t00.00.55.000"
    (annotations / "LSMDC16_annos_training.csv").write_text(
        f"{clip}\t{times}\tSOMEONE walks in.\n{other}\t{times}\tHe sits.\n{clip}\t{times}\tSomeone looks up.\n"
    )
    (annotations / "LSMDC16_annos_val.csv").write_text(f"1012_Unbreakable_00.00.01.000-00.00.02.000\t{times}\t\n")
    (annotations / "LSMDC16_challenge_1000_publictect.csv").write_text(
        f"3001_21_JUMP_STREET_00.00.01.000-00.00.02.000\t{times}\tSomeone runs.\n"
    )
    videos = tmp_path / "avi"
    touch(
        videos,
        f"0001_American_Beauty/{clip}.avi",
        "3001_21_JUMP_STREET/3001_21_JUMP_STREET_00.00.01.000-00.00.02.000.avi",
    )
    summary = build_manifest("lsmdc", annotations, videos, tmp_path / "lsmdc.jsonl")
    rows = records(tmp_path / "lsmdc.jsonl")
    assert [(row["split"], row["video_id"], row["captions"]) for row in rows] == [
        ("train", clip, ["SOMEONE walks in.", "Someone looks up."]),
        ("train", other, ["He sits."]),
        ("test", "3001_21_JUMP_STREET_00.00.01.000-00.00.02.000", ["Someone runs."]),
    ]
    assert rows[0]["path"] == str(videos / "0001_American_Beauty" / f"{clip}.avi")
    assert problems(summary) == {
        ("missing_video", other, "train"),
        ("empty_caption", "1012_Unbreakable_00.00.01.000-00.00.02.000", "val"),
        ("no_caption", "1012_Unbreakable_00.00.01.000-00.00.02.000", "val"),
    }

    (annotations / "LSMDC16_annos_val.csv").write_text(f"{clip}\tonly three\tfields\n")
    with pytest.raises(DatasetError, match=r"LSMDC16_annos_val.csv:1: expected 6 tab-separated fields, got 3"):
        build_manifest("lsmdc", annotations, videos, tmp_path / "lsmdc.jsonl")
    assert len(records(tmp_path / "lsmdc.jsonl")) == 3  # the earlier manifest is untouched


# --- ActivityNet Captions and DiDeMo: paragraph retrieval ----------------------------------------


def test_activitynet_paragraphs(tmp_path):
    annotations = tmp_path / "captions"
    annotations.mkdir()
    train = {
        "v_QOlSCBRmfWY": {
            "duration": 82.7,
            "timestamps": [[0.8, 19.9], [17.4, 60.8]],
            "sentences": ["A woman is dancing.", " She spins. "],
        },
        "v_ehGHCYKzyZ8": {"duration": 61.7, "timestamps": [[0, 10]], "sentences": ["A man plays drums."]},
    }
    (annotations / "train.json").write_text(json.dumps(train))
    (annotations / "val_1.json").write_text(
        '{"v_uqiMw7tQ1Cc": {"duration": 55.2, "timestamps": [[0, 5]], "sentences": ["A boy jumps.", "He lands."]},'
        ' "v_uqiMw7tQ1Cc": {"duration": 55.2, "timestamps": [[5, 9]], "sentences": ["Again."]}}'
    )
    # Downloads name files with or without the v_ prefix, in several containers.
    touch(tmp_path / "videos", "v_QOlSCBRmfWY.mp4", "ehGHCYKzyZ8.mkv", "uqiMw7tQ1Cc.webm")
    summary = build_manifest("activitynet", annotations, tmp_path / "videos", tmp_path / "anet.jsonl")
    rows = records(tmp_path / "anet.jsonl")
    assert [(row["split"], row["video_id"], row["captions"], Path(row["path"]).name) for row in rows] == [
        ("train", "v_QOlSCBRmfWY", ["A woman is dancing. She spins."], "v_QOlSCBRmfWY.mp4"),
        ("train", "v_ehGHCYKzyZ8", ["A man plays drums."], "ehGHCYKzyZ8.mkv"),
        ("test", "v_uqiMw7tQ1Cc", ["A boy jumps. He lands.", "Again."], "uqiMw7tQ1Cc.webm"),
    ]
    assert problems(summary) == {("duplicate_id", "v_uqiMw7tQ1Cc", "test")}
    assert load_definition("activitynet").defaults["frames"] == 64


def test_didemo_paragraphs(tmp_path):
    annotations = tmp_path / "didemo"
    annotations.mkdir()
    moments = {
        "train": [
            {"video": "10015567@N08_3655084291_d8b58466fa.mov", "description": "a girl walks", "times": [[0, 1]]},
            {"video": "10015567@N08_3655084291_d8b58466fa.mov", "description": "she stops", "times": [[2, 2]]},
            {"video": "not_in_the_list.mp4", "description": "ignored", "times": [[0, 0]]},
        ],
        "val": [{"video": "12090392@N02_13482799053_87ef417396.mov", "description": "a car passes", "times": [[1, 1]]}],
        "test": [
            {"video": "13773357@N03_2947549066_e5b1ad1c43.avi", "description": "dogs play", "times": [[0, 2]]},
            {"video": "13773357@N03_2947549066_e5b1ad1c43.avi", "description": "a dog barks", "times": [[3, 3]]},
        ],
    }
    for split, items in moments.items():
        (annotations / f"{split}_data.json").write_text(json.dumps(items))
        videos_listed = dict.fromkeys(item["video"] for item in items if item["video"] != "not_in_the_list.mp4")
        (annotations / f"{split}_list.txt").write_text("".join(f"{video}\n" for video in videos_listed))
    # Original files keep their names; re-encoded ones add an extension.
    touch(tmp_path / "videos", "10015567@N08_3655084291_d8b58466fa.mov", "13773357@N03_2947549066_e5b1ad1c43.avi.mp4")
    summary = build_manifest("didemo", annotations, tmp_path / "videos", tmp_path / "didemo.jsonl")
    rows = records(tmp_path / "didemo.jsonl")
    assert [(row["split"], row["video_id"], row["captions"], Path(row["path"]).name) for row in rows] == [
        (
            "train",
            "10015567@N08_3655084291_d8b58466fa.mov",
            ["a girl walks she stops"],
            "10015567@N08_3655084291_d8b58466fa.mov",
        ),
        ("val", "12090392@N02_13482799053_87ef417396.mov", ["a car passes"], "12090392@N02_13482799053_87ef417396.mov"),
        (
            "test",
            "13773357@N03_2947549066_e5b1ad1c43.avi",
            ["dogs play a dog barks"],
            "13773357@N03_2947549066_e5b1ad1c43.avi.mp4",
        ),
    ]
    assert problems(summary) == {("missing_video", "12090392@N02_13482799053_87ef417396.mov", "val")}


# --- errors and the build as a whole ---------------------------------------------------------------


def test_every_definition_loads_and_names_its_defaults():
    assert set(available_datasets()) >= {
        "msrvtt-9k",
        "msrvtt-7k",
        "msrvtt-1k-a",
        "msvd",
        "lsmdc",
        "activitynet",
        "didemo",
    }
    for name in available_datasets():
        definition = load_definition(name)
        assert definition.name == name and definition.layouts
        assert definition.defaults["frames"] == (64 if name in ("activitynet", "didemo") else 12)
        assert "test" in definition.splits()


def test_ambiguous_videos_are_reported(tmp_path):
    touch(tmp_path / "v", "video9770.mp4", "video9770.avi")
    summary = build_manifest("msrvtt-1k-a", REAL_1K_A.parent, tmp_path / "v", tmp_path / "m.jsonl")
    (problem,) = [problem for problem in summary.problems if problem.kind == "ambiguous_video"]
    assert problem.video_id == "video9770" and problem.detail == "using video9770.avi; also video9770.mp4"


def test_a_rebuild_writes_identical_bytes(tmp_path):
    write_msrvtt_clip4clip(tmp_path / "a")
    build_manifest("msrvtt-9k", tmp_path / "a", tmp_path, tmp_path / "m.jsonl")
    first = (tmp_path / "m.jsonl").read_bytes()
    build_manifest("msrvtt-9k", tmp_path / "a", tmp_path, tmp_path / "m.jsonl")
    assert (tmp_path / "m.jsonl").read_bytes() == first


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown dataset", r"unknown dataset 'msrvtt-10k' \(known: activitynet, didemo, "),
        ("no annotations folder", r"nowhere: no such annotations folder"),
        ("no videos folder", r"novideos: no such videos folder"),
        ("bad json", r"train_9k.json: not valid JSON"),
        ("not utf-8", r"train_9k.json: not UTF-8 text \(invalid start byte at byte 14\)"),
        ("json of the wrong shape", r"train_9k.json: expected a JSON object mapping video file names to captions"),
        ("csv without its column", r"MSRVTT_JSFUSION_test.csv: no column video_id in its header \['key', 'sentence'\]"),
        ("csv with a header only", r"the clip4clip annotations list no captioned video"),
    ],
)
def test_bad_annotations_are_one_line_errors_and_keep_earlier_output(tmp_path, case, message):
    annotations = tmp_path / "a"
    annotations.mkdir()
    (annotations / "test_JSFUSION.json").write_text('{"video1.mp4": ["a caption"]}')
    (annotations / "train_9k.json").write_text('{"video0.mp4": ["a caption"]}')
    out = tmp_path / "m.jsonl"
    build_manifest("msrvtt-9k", annotations, tmp_path, out)
    before = out.read_bytes()
    dataset, videos = "msrvtt-9k", tmp_path
    if case == "unknown dataset":
        dataset = "msrvtt-10k"
    elif case == "no annotations folder":
        annotations = tmp_path / "nowhere"
    elif case == "no videos folder":
        videos = tmp_path / "novideos"
    elif case == "not utf-8":
        (annotations / "train_9k.json").write_bytes(b'{"video0.mp4":\xff}')
    elif case == "bad json":
        (annotations / "train_9k.json").write_text('{"video0.mp4": [')
    elif case == "json of the wrong shape":
        (annotations / "train_9k.json").write_text('[["video0.mp4", "a caption"]]')
    elif case == "csv with a header only":
        dataset = "msrvtt-1k-a"  # whose layout has no MSRVTT_data.json to take captions from
        write_csv(annotations / "MSRVTT_JSFUSION_test.csv", ["key", "vid_key", "video_id", "sentence"], [])
    else:
        dataset = "msrvtt-1k-a"
        write_csv(annotations / "MSRVTT_JSFUSION_test.csv", ["key", "sentence"], [["ret0", "a caption"]])
    with pytest.raises(DatasetError, match=message) as raised:
        build_manifest(dataset, annotations, videos, out)
    assert "\n" not in str(raised.value)
    assert out.read_bytes() == before
