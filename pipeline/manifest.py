"""The manifest: one JSON object per line describing a video and its captions.

    {"video_id": "video9770", "path": "videos/video9770.mp4", "split": "test",
     "captions": ["a person is connecting something to system"]}

``captions`` may be ``[]`` or left out: an uncaptioned video is decoded, embedded,
indexed and searchable, but never trained on and never scored (in a scored split it
is a text-to-video distractor).

``path`` is relative to the manifest's folder unless it is absolute, or
relative to ``video_root`` when one is given. ``group`` (optional, a string)
names videos that training draws into the same batches, as one another's hard
negatives (the synthetic data's direction twins). Other fields are allowed and
ignored, so datasets can carry extra annotations.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import VidretError, path_error, shown_path
from pipeline.files import write_text

SPLITS = ("train", "val", "test")
REQUIRED_FIELDS = ("video_id", "path", "split")


class ManifestError(VidretError):
    pass


@dataclass(frozen=True)
class ManifestEntry:
    video_id: str
    path: Path  # absolute
    split: str
    captions: tuple[str, ...]  # () for an uncaptioned video
    group: str | None = None  # videos of one group share training batches (hard negatives)


def read_manifest(manifest: Path | str, video_root: Path | str | None = None) -> list[ManifestEntry]:
    """Parse and validate a manifest; raise ManifestError naming file and line."""
    manifest = Path(manifest)
    try:
        lines = manifest.read_bytes().split(b"\n")
    except FileNotFoundError:
        raise ManifestError(f"{shown_path(manifest)}: no such manifest file") from None
    except IsADirectoryError:
        raise ManifestError(f"{shown_path(manifest)}: is a directory, expected a JSON Lines manifest file") from None
    except (OSError, ValueError) as error:  # a symlink loop, a NUL byte in the path, no permission, ...
        raise ManifestError(str(path_error(manifest, error, "manifest"))) from None
    base = Path(video_root) if video_root is not None else manifest.parent
    entries: list[ManifestEntry] = []
    first_line_of: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            entry = _parse_line(raw, base)
            if entry.video_id in first_line_of:
                raise ValueError(
                    f"duplicate video_id {entry.video_id!r} (first on line {first_line_of[entry.video_id]})"
                )
        except ValueError as problem:
            raise ManifestError(f"{manifest}:{number}: {problem}") from None
        first_line_of[entry.video_id] = number
        entries.append(entry)
    if not entries:
        raise ManifestError(f"{manifest}: the manifest has no videos")
    return entries


def _parse_line(raw: bytes, base: Path) -> ManifestEntry:
    """One manifest line as an entry; ValueError says what is wrong with it."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not valid UTF-8") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"invalid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    missing = [field for field in REQUIRED_FIELDS if field not in record]
    if missing:
        raise ValueError(f"missing field {', '.join(repr(field) for field in missing)}")
    video_id, path, split = (record[field] for field in REQUIRED_FIELDS)
    captions = record.get("captions", [])
    if not isinstance(video_id, str) or not video_id.strip():
        raise ValueError("'video_id' must be a non-empty string")
    if not isinstance(path, str) or not path.strip():
        raise ValueError("'path' must be a non-empty string")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    if not isinstance(captions, list):
        raise ValueError("'captions' must be a list of strings (empty, or left out, for an uncaptioned video)")
    for caption in captions:
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"empty or non-string caption {caption!r}")
    group = record.get("group")
    if group is not None and (not isinstance(group, str) or not group.strip()):
        raise ValueError(f"'group' must be a non-empty string (or left out), got {group!r}")
    return ManifestEntry(video_id, (base / path).absolute(), split, tuple(captions), group)


def parse_splits(split: str) -> tuple[str, ...]:
    """``"all"`` or a comma-separated list of split names, in manifest vocabulary."""
    if split == "all":
        return SPLITS
    names = tuple(name.strip() for name in split.split(","))
    unknown = [name for name in names if name not in SPLITS]
    if unknown:
        raise VidretError(f"unknown split {unknown[0]!r} (expected all, or one or more of {', '.join(SPLITS)})")
    return names


def select_split(entries: list[ManifestEntry], split: str, manifest: Path | str) -> list[ManifestEntry]:
    """The entries of ``split`` in manifest order; an error if there are none."""
    wanted = parse_splits(split)
    selected = [entry for entry in entries if entry.split in wanted]
    if not selected:
        raise VidretError(f"{manifest}: no videos in split {split!r}")
    return selected


def describe_manifest(entries: list[ManifestEntry]) -> str:
    """One line: videos per split, captions and uncaptioned videos, and how many video files are missing."""
    per_split = Counter(entry.split for entry in entries)
    captions = sum(len(entry.captions) for entry in entries)
    uncaptioned = sum(not entry.captions for entry in entries)
    missing = sum(not entry.path.is_file() for entry in entries)
    splits = ", ".join(f"{per_split[name]} {name}" for name in SPLITS if per_split[name])
    # Said only when there are some, so that a fully captioned manifest's line stays as it was.
    without = f" ({uncaptioned} videos uncaptioned)" if uncaptioned else ""
    return f"{len(entries)} videos ({splits}), {captions} captions{without}, missing video files: {missing}"


def write_manifest(path: Path, records: list[dict]) -> None:
    """Write manifest records as JSON Lines (atomically)."""
    write_text(path, "".join(json.dumps(record) + "\n" for record in records))
