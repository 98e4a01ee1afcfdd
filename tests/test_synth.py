import json
import shutil

import numpy as np
import pytest

from pipeline.decode import FrameSpec, read_video
from pipeline.errors import VidretError
from pipeline.synth import (
    ALL_ATTRIBUTES,
    DIRECTIONS,
    SIZES,
    ClipAttributes,
    SynthOptions,
    draw_motion,
    make_synthetic_dataset,
    render_frames,
)

SMALL = SynthOptions(videos=20, seed=3, width=64, height=64, min_frames=12, max_frames=24)  # square: no crop


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = make_synthetic_dataset(out, SMALL, progress=False)
    records = [json.loads(line) for line in summary.manifest.read_text().splitlines()]
    return out, summary, records


def test_splits_captions_and_files(dataset):
    out, summary, records = dataset
    assert summary.splits == {"train": 14, "val": 2, "test": 4}
    assert [r["split"] for r in records].count("test") == 4
    for record in records:
        assert (out / record["path"]).stat().st_size > 0
        attributes = ClipAttributes(*(record[name] for name in ("colour", "shape", "size", "background", "direction")))
        assert len(record["captions"]) == (3 if record["split"] == "train" else 1)
        for caption in record["captions"]:
            assert all(f" {word}" in f" {caption}" for word in vars(attributes).values()), caption
    assert json.loads((out / "stage.json").read_text())["params"]["seed"] == 3


def test_every_test_and_val_caption_matches_exactly_one_clip(dataset):
    _, _, records = dataset
    held_out = [r for r in records if r["split"] != "train"]
    combos = [tuple(r[name] for name in ("colour", "shape", "size", "background", "direction")) for r in held_out]
    assert len(set(combos)) == len(combos)
    test_captions = [r["captions"][0] for r in held_out if r["split"] == "test"]
    for caption in test_captions:
        matching = [
            r
            for r in held_out
            if r["split"] == "test"
            and all(f" {r[n]}" in f" {caption}" for n in ("colour", "shape", "size", "background", "direction"))
        ]
        assert len(matching) == 1, caption


def test_same_seed_same_bytes_other_seed_other_data(dataset, tmp_path):
    out, _, records = dataset
    again = make_synthetic_dataset(tmp_path / "again", SMALL, progress=False)
    assert again.manifest.read_text() == (out / "manifest.jsonl").read_text()
    for record in records:
        assert (tmp_path / "again" / record["path"]).read_bytes() == (out / record["path"]).read_bytes()
    other = make_synthetic_dataset(tmp_path / "other", SynthOptions(**{**vars(SMALL), "seed": 4}), progress=False)
    assert other.manifest.read_text() != again.manifest.read_text()


def test_existing_dataset_is_kept_and_other_options_write_it_again(dataset, tmp_path):
    out, _, _ = dataset
    assert make_synthetic_dataset(out, SMALL, progress=False).skip_reason
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    other = make_synthetic_dataset(copy, SynthOptions(**{**vars(SMALL), "seed": 9}), progress=False)
    assert other.line().endswith("(ran: its parameters changed (seed 3 -> 9))")
    assert (copy / "manifest.jsonl").read_text() != (out / "manifest.jsonl").read_text()


@pytest.mark.parametrize("pair", [("left", "right"), ("up", "down")])
def test_direction_is_only_in_the_order_of_frames(pair):
    """Opposite directions draw the same segment from the same random state,
    and one clip is the other played backwards: the set of frames is the same."""
    attributes = {d: ClipAttributes("red", "triangle", "large", "teal", d) for d in pair}
    motions = {d: draw_motion(np.random.default_rng(7), d, SIZES["large"] * 64, 16, 96, 64) for d in pair}
    first, second = pair
    assert motions[first].start == motions[second].end and motions[first].end == motions[second].start
    frames = {d: np.stack([f.copy() for f in render_frames(attributes[d], motions[d], 96, 64)]) for d in pair}
    assert np.abs(frames[first][::-1].astype(int) - frames[second]).max() <= 1
    assert np.abs(frames[first].astype(int) - frames[second]).max() > 100  # while in order they differ


def test_decoded_clips_move_in_the_captioned_direction(dataset):
    out, _, records = dataset
    for record in records:
        frames = read_video(out / record["path"], FrameSpec(num_frames=6, size=64, short_side=64)).frames.astype(float)
        background = np.median(frames, axis=(1, 2), keepdims=True)
        shape = np.abs(frames - background).sum(-1) > 60
        ys, xs = np.mgrid[0 : shape.shape[1], 0 : shape.shape[2]]
        centres = np.array([(xs[m].mean(), ys[m].mean()) for m in shape])
        dx, dy = DIRECTIONS[record["direction"]]
        travel = centres[-1] - centres[0]
        assert travel[0] * dx + travel[1] * dy > 5, (record["captions"][0], travel)


def test_twins_are_one_clip_played_backwards_in_one_split_and_group(tmp_path):
    """--twins: each clip's twin has its attributes but the opposite direction, its frames in reverse order
    (decoded: the same up to the codec), its split, its caption templates and its group; pairs in the
    held-out splits take distinct combinations of the other attributes and the axis. Without --twins, the
    stage's parameters are as before, so datasets made before twins stay up to date."""
    options = SynthOptions(**{**vars(SMALL), "twins": True})
    summary = make_synthetic_dataset(tmp_path, options, progress=False)
    records = [json.loads(line) for line in summary.manifest.read_text().splitlines()]
    assert summary.splits == {"train": 14, "val": 2, "test": 4}
    opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}
    held_out = set()
    for clip, twin in zip(records[::2], records[1::2], strict=True):
        assert twin["direction"] == opposite[clip["direction"]] and clip["group"] == twin["group"]
        assert {k: v for k, v in clip.items() if k not in ("video_id", "path", "direction", "captions")} == {
            k: v for k, v in twin.items() if k not in ("video_id", "path", "direction", "captions")
        }
        assert [f"{c} ".replace(f" {clip['direction']} ", " X ") for c in clip["captions"]] == [
            f"{c} ".replace(f" {twin['direction']} ", " X ") for c in twin["captions"]
        ]
        spec = FrameSpec(num_frames=6, size=64, short_side=64)
        forward, backward = (read_video(tmp_path / r["path"], spec).frames.astype(int) for r in (clip, twin))
        assert 2 * np.abs(forward[::-1] - backward).mean() < np.abs(forward - backward).mean()
        if clip["split"] != "train":
            axis = clip["direction"] in ("left", "right")
            held_out.add((clip["colour"], clip["shape"], clip["size"], clip["background"], axis))
    assert len(held_out) == sum(1 for r in records[::2] if r["split"] != "train")
    assert "twins" not in json.loads((make_synthetic_dataset(tmp_path / "plain", SMALL, progress=False)
                                      .manifest.parent / "stage.json").read_text())["params"]  # fmt: skip
    with pytest.raises(VidretError, match=r"--twins makes clips in pairs: --videos must be even, got 21"):
        SynthOptions(videos=21, twins=True)


def test_too_many_held_out_videos_is_an_error():
    with pytest.raises(VidretError, match="distinct val and test clips"):
        SynthOptions(videos=5 * len(ALL_ATTRIBUTES))
