"""Readers for the benchmarks' official annotation formats.

A reader takes one layout's annotation files (``{role: path}``, the roles named
in the dataset's definition under pipeline/datasets/catalog/) and returns, per
manifest split, a ``Listing`` for every time the files list a video, in file
order, so that the builder can report a video listed twice. Captions come back
as written; the builder drops and reports empty ones.

A file that cannot be parsed at all (not JSON, a missing column, a short line)
raises ``DatasetError`` naming the file and line: that is the wrong file, not
a problem with one video.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath

from pipeline.errors import VidretError

SPLIT_ROLES = ("train", "val", "test")


class DatasetError(VidretError):
    pass


@dataclass
class Listing:
    video_id: str
    captions: list[str]
    where: str  # "file:line" or "file: key", for the build report
    names: tuple[str, ...] = ()  # file names or stems to look for in the video folder; () = (video_id,)


Listings = dict[str, list[Listing]]  # manifest split -> listings


def _splits(files: dict[str, Path]) -> list[tuple[str, Path]]:
    return [(split, files[split]) for split in SPLIT_ROLES if split in files]


def _read_text(path: Path) -> str:
    """The file as text: UTF-8, with or without a byte-order mark; any line ends become "\\n"."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def _load_json(path: Path, pairs: bool = False):
    """Parsed JSON; with ``pairs``, objects become lists of (key, value) tuples so that duplicate
    keys survive (``json`` keeps only the last)."""
    try:
        return json.loads(_read_text(path), object_pairs_hook=list if pairs else None)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: not valid JSON ({error})") from None


def _object_items(value, where: str, what: str) -> list[tuple]:
    """The (key, value) items of a JSON object loaded with ``pairs``; an error for anything else."""
    is_object = isinstance(value, list) and all(isinstance(item, tuple) for item in value)
    _expect(is_object, where, f"expected a JSON object {what}")
    return value


def _expect(condition: bool, where: str, what: str) -> None:
    if not condition:
        raise DatasetError(f"{where}: {what}")


def _read_csv(path: Path, columns: tuple[str, ...]) -> tuple[list[str], list[tuple[int, dict]]]:
    """The header and (line number, row) of each row of a comma-separated file whose header names ``columns``."""
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    header = list(reader.fieldnames or [])
    missing = [column for column in columns if column not in header]
    _expect(not missing, str(path), f"no column {', '.join(missing)} in its header {reader.fieldnames}")
    # A short row leaves its last fields None: read them as empty, for the builder to report.
    rows = [
        (reader.line_num, {key: value if isinstance(value, str) else "" for key, value in row.items()})
        for row in reader
    ]
    return header, rows


def read_msrvtt(files: dict[str, Path]) -> Listings:
    """MSR-VTT as CLIP4Clip ships it: split CSVs with a ``video_id`` column; a CSV that also has a
    ``sentence`` column (MSRVTT_JSFUSION_test.csv: one sentence per video) brings its own captions,
    the others take every caption of the video from ``MSRVTT_data.json``'s ``sentences``."""
    sentences: dict[str, list[str]] | None = None
    listings: Listings = {}
    for split, path in _splits(files):
        header, rows = _read_csv(path, ("video_id",))
        own_sentences = "sentence" in header
        if not own_sentences and sentences is None:
            sentences = _msrvtt_sentences(files)
        listings[split] = [
            Listing(
                row["video_id"],
                [row["sentence"]] if own_sentences else list(sentences.get(row["video_id"], [])),
                f"{path.name}:{line}",
            )
            for line, row in rows
        ]
    return listings


def _msrvtt_sentences(files: dict[str, Path]) -> dict[str, list[str]]:
    path = files["sentences"]
    data = _load_json(path)
    _expect(isinstance(data, dict) and isinstance(data.get("sentences"), list), str(path), "no 'sentences' list")
    sentences: dict[str, list[str]] = {}
    for number, sentence in enumerate(data["sentences"]):
        _expect(
            isinstance(sentence, dict) and "video_id" in sentence and "caption" in sentence,
            f"{path}: sentences[{number}]",
            "expected an object with 'video_id' and 'caption'",
        )
        sentences.setdefault(sentence["video_id"], []).append(sentence["caption"])
    return sentences


def read_mmaction2(files: dict[str, Path]) -> Listings:
    """MMAction2's prepared retrieval annotations: ``{"video0.mp4": ["caption", ...], ...}`` per split."""
    listings: Listings = {}
    for split, path in _splits(files):
        items = _object_items(_load_json(path, pairs=True), str(path), "mapping video file names to captions")
        listings[split] = []
        for name, captions in items:
            where = f"{path.name}: {name}"
            _expect(isinstance(captions, list), where, "expected a list of captions")
            video = PurePath(name)
            listings[split].append(Listing(video.stem, captions, where, (video.name, video.stem)))
    return listings


def _read_id_list(path: Path) -> list[tuple[int, str]]:
    """(line number, id) for each non-blank line of a one-id-per-line list."""
    lines = _read_text(path).split("\n")
    return [(number, line.strip()) for number, line in enumerate(lines, start=1) if line.strip()]


def read_msvd(files: dict[str, Path]) -> Listings:
    """MSVD as collaborative-experts and CLIP4Clip ship it: ``{split}_list.txt`` and
    ``raw-captions.pkl``, a pickle mapping each video id to its captions as token lists."""
    path = files["captions"]
    try:
        with open(path, "rb") as handle:
            raw_captions = pickle.load(handle)  # the official format is a pickle: load only files you trust
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise DatasetError(f"{path}: not a readable pickle ({error})") from None
    _expect(isinstance(raw_captions, dict), str(path), "expected a dict from video id to captions")

    def caption(tokens) -> str:
        return tokens if isinstance(tokens, str) else " ".join(tokens)

    return {
        split: [
            Listing(
                video_id, [caption(tokens) for tokens in raw_captions.get(video_id, [])], f"{list_path.name}:{line}"
            )
            for line, video_id in _read_id_list(list_path)
        ]
        for split, list_path in _splits(files)
    }


def read_lsmdc(files: dict[str, Path]) -> Listings:
    """LSMDC 2016: tab-separated ``clip_id, start_aligned, end_aligned, start_extracted, end_extracted,
    sentence``. A clip id may repeat with another sentence: each is one more caption of the clip."""
    listings: Listings = {}
    for split, path in _splits(files):
        clips: dict[str, Listing] = {}
        for number, line in enumerate(_read_text(path).split("\n"), start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            _expect(len(fields) >= 6, f"{path}:{number}", f"expected 6 tab-separated fields, got {len(fields)}")
            clip_id, sentence = fields[0], "\t".join(fields[5:])
            if clip_id not in clips:
                clips[clip_id] = Listing(clip_id, [], f"{path.name}:{number}")
            clips[clip_id].captions.append(sentence)
        listings[split] = list(clips.values())
    return listings


def paragraph(sentences: list) -> str:
    """Paragraph retrieval (ActivityNet, DiDeMo): a video's sentences joined in order, as CLIP4Clip does."""
    return " ".join(sentence.strip() for sentence in sentences if isinstance(sentence, str) and sentence.strip())


def read_activitynet(files: dict[str, Path]) -> Listings:
    """ActivityNet Captions: ``{"v_id": {"duration", "timestamps", "sentences": [...]}}`` per split,
    one paragraph per video. Video files may be named with or without the ``v_`` prefix."""
    listings: Listings = {}
    for split, path in _splits(files):
        items = _object_items(_load_json(path, pairs=True), str(path), "mapping video ids to annotations")
        listings[split] = []
        for video_id, annotation in items:
            where = f"{path.name}: {video_id}"
            sentences = dict(_object_items(annotation, where, "with a 'sentences' list")).get("sentences")
            _expect(isinstance(sentences, list), where, "expected an object with a 'sentences' list")
            names = (video_id, video_id[2:]) if video_id.startswith("v_") else (video_id,)
            listings[split].append(Listing(video_id, [paragraph(sentences)], where, names))
    return listings


def read_didemo(files: dict[str, Path]) -> Listings:
    """DiDeMo as CLIP4Clip reads it: ``{split}_list.txt`` names the videos (file names such as
    ``…_87ef417396.mov``), ``{split}_data.json`` holds one description per moment; a video's
    descriptions, in file order, make its paragraph."""
    listings: Listings = {}
    for split, list_path in _splits(files):
        data_path = files[f"{split}_data"]
        moments = _load_json(data_path)
        _expect(isinstance(moments, list), str(data_path), "expected a list of moments")
        descriptions: dict[str, list[str]] = {}
        for number, moment in enumerate(moments):
            _expect(
                isinstance(moment, dict) and "video" in moment and "description" in moment,
                f"{data_path}: [{number}]",
                "expected an object with 'video' and 'description'",
            )
            descriptions.setdefault(moment["video"], []).append(moment["description"])
        listings[split] = [
            Listing(
                video_id,
                [paragraph(descriptions.get(video_id, []))] if video_id in descriptions else [],
                f"{list_path.name}:{line}",
                (video_id, PurePath(video_id).stem),
            )
            for line, video_id in _read_id_list(list_path)
        ]
    return listings


READERS: dict[str, Callable[[dict[str, Path]], Listings]] = {
    "msrvtt": read_msrvtt,
    "mmaction2": read_mmaction2,
    "msvd": read_msvd,
    "lsmdc": read_lsmdc,
    "activitynet": read_activitynet,
    "didemo": read_didemo,
}
