"""``vidret manifest scan``: a manifest of every video file under a folder of your own.

Each video file (``VIDEO_EXTENSIONS``, any case) becomes one caption-free entry: ``video_id`` is its
path relative to the folder (POSIX separators), so ids never change while the files stay where they
are. A first scan writes the entries sorted by id; scanning an unchanged folder again writes the same
bytes.

Rescanning into an existing manifest keeps its entries as they are and where they are (with any
captions, splits or other fields a user added), and appends the new files, sorted by id: decode cuts
the manifest into chunks by position, so appending leaves every earlier chunk decoded, where sorting
the new files in among the old would decode every chunk after the first new one again. An entry is
dropped only when its file is gone from the folder: decode would otherwise report it missing at every
run, and refuse to replace the frames it decoded. An entry whose file could not be checked (under a
folder that could not be listed, a link that no longer resolves, a path outside the folder) is kept.

Hidden names (starting with a dot) are skipped, as ``vidret manifest build`` skips them: macOS's
``._clip.mp4`` companions are not videos, and vidret's own temporaries start with a dot. Links to
folders are followed after the real folders, and a folder reached twice is scanned once.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pipeline.datasets.build import VIDEO_EXTENSIONS
from pipeline.errors import VidretError, check_path, path_error, shown_path
from pipeline.manifest import SPLITS, read_manifest, write_manifest

SCAN_SPLIT = "test"  # the split of new entries: searchable, never trained on


@dataclass(frozen=True)
class ScanProblem:
    kind: str  # unreadable_folder, unreadable_entry, broken_link, repeated_folder or name_not_utf8
    path: Path
    detail: str

    def line(self) -> str:
        return f"{self.kind}: {shown_path(self.path)}: {self.detail}"


@dataclass
class VideoListing:
    root: Path  # absolute
    videos: list[str]  # paths relative to root, POSIX, sorted
    problems: list[ScanProblem] = field(default_factory=list)
    # What could not be looked into: folders that could not be listed, entries that could not be
    # looked up, broken links (to a drive that is not mounted, say).
    unchecked: list[Path] = field(default_factory=list)

    def could_not_check(self, path: str) -> bool:
        """Whether ``path`` (absolute, normalised) is, or lies under, a path that could not be looked into."""
        return any(Path(path).is_relative_to(unchecked) for unchecked in self.unchecked)


def is_utf8(name: str) -> bool:
    """Whether a file name the system gave is UTF-8 (a Latin-1 name's bytes come as lone surrogates, which
    Parquet cannot store)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def list_videos(video_dir: Path | str) -> VideoListing:
    """Every video file under ``video_dir``; what could not be read is a problem, not an error."""
    root = Path(os.path.normpath(Path(video_dir).absolute()))
    try:
        info = os.stat(root)
    except FileNotFoundError:
        raise VidretError(f"{shown_path(video_dir)}: no such videos folder") from None
    except (OSError, ValueError) as error:
        raise path_error(video_dir, error, "videos folder") from None
    if not stat.S_ISDIR(info.st_mode):
        raise VidretError(f"{shown_path(video_dir)}: not a folder; give the folder that holds the videos")
    listing = VideoListing(root, [])
    scanned_as = {(info.st_dev, info.st_ino): "."}  # each folder once: a link back to an ancestor would never end

    def first_visit(key: tuple[int, int], path: Path, name: PurePosixPath) -> bool:
        if key in scanned_as:
            detail = f"the folder scanned as {scanned_as[key]}; skipped"
            listing.problems.append(ScanProblem("repeated_folder", path, detail))
            return False
        scanned_as[key] = name.as_posix()
        return True

    # Linked folders wait until the real ones are done, so that a folder is named by its real path.
    pending, linked = [(root, PurePosixPath())], []
    while pending or linked:
        if pending:
            folder, relative = pending.pop()
        else:
            folder, relative, key = linked.pop(0)
            if not first_visit(key, folder, relative):
                continue
        try:
            with os.scandir(folder) as found:
                entries = sorted(found, key=lambda entry: entry.name)
        except OSError as error:
            listing.problems.append(ScanProblem("unreadable_folder", folder, f"not scanned ({error.strerror})"))
            listing.unchecked.append(folder)
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path, name = Path(entry.path), relative / entry.name
            if not is_utf8(entry.name):
                listing.problems.append(ScanProblem("name_not_utf8", path, "skipped: vidret stores ids as UTF-8"))
                continue
            try:
                info = entry.stat()  # of the target, for a link
            except OSError as error:
                if entry.is_symlink():
                    target = os.readlink(path)
                    listing.problems.append(ScanProblem("broken_link", path, f"-> {target} ({error.strerror})"))
                else:
                    listing.problems.append(ScanProblem("unreadable_entry", path, error.strerror))
                listing.unchecked.append(path)
                continue
            if stat.S_ISDIR(info.st_mode):
                key = (info.st_dev, info.st_ino)
                if entry.is_symlink():
                    linked.append((path, name, key))
                elif first_visit(key, path, name):
                    subfolders.append((path, name))
            elif stat.S_ISREG(info.st_mode) and Path(entry.name).suffix.lower() in VIDEO_EXTENSIONS:
                listing.videos.append(name.as_posix())
        pending.extend(reversed(subfolders))  # popped in name order
    listing.videos.sort()
    return listing


@dataclass
class ScanSummary:
    out: Path
    root: Path
    videos: int  # entries in the manifest written
    found: int  # video files under root
    new: int  # entries added by this scan
    removed: int  # earlier entries whose file is gone
    kept_unchecked: int  # earlier entries kept although their file was not found
    problems: list[ScanProblem]
    seconds: float

    def line(self) -> str:
        kinds = Counter(problem.kind for problem in self.problems)
        problems = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items())) or "none"
        kept = (
            f", {self.kept_unchecked} kept unchecked (their folder could not be listed, a broken link,"
            " or outside the folder)"
            if self.kept_unchecked
            else ""
        )
        return (
            f"manifest scan: {self.videos} videos ({self.new} new, {self.removed} removed since the last scan{kept});"
            f" {self.found} video files under {self.root}; problems: {problems}; in {self.seconds:.1f} s -> {self.out}"
        )

    def problem_lines(self, show: int = 5) -> list[str]:
        """The first ``show`` problems, then how many more there are."""
        lines = [problem.line() for problem in self.problems[:show]]
        if len(self.problems) > show:
            lines.append(f"... and {len(self.problems) - show} more problems")
        return lines


def read_earlier_manifest(out: Path) -> list[tuple[str, dict]]:
    """(absolute normalised path, record as written) of every entry of the manifest at ``out``; none if there
    is no such file. It is checked as any manifest is: a file that is not one is refused, never overwritten."""
    if not out.exists():
        return []
    entries = read_manifest(out)
    records = [json.loads(line) for line in out.read_bytes().split(b"\n") if line.strip()]
    return [(os.path.normpath(entry.path), record) for entry, record in zip(entries, records, strict=True)]


def manifest_path(path: str, manifest_dir: Path) -> str:
    """``path`` relative to the manifest's folder when it lies inside it, so that a folder holding both moves
    as one; else absolute, so that a run folder holding the manifest can move without its videos."""
    return os.path.relpath(path, manifest_dir) if Path(path).is_relative_to(manifest_dir) else path


def scan_videos(video_dir: Path | str, out: Path | str, split: str = SCAN_SPLIT) -> ScanSummary:
    """Write the manifest ``out`` of every video file under ``video_dir``, keeping the entries it held."""
    started = time.perf_counter()
    out = Path(out)
    check_path(out, "manifest")
    if out.is_dir():
        raise VidretError(f"--out {shown_path(out)}: is a folder; give the manifest file to write (.jsonl)")
    if split not in SPLITS:
        raise VidretError(f"--split: unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    listing = list_videos(video_dir)
    if not listing.videos:
        extensions = " ".join(sorted(extension[1:] for extension in VIDEO_EXTENSIONS))
        unread = f"; {len(listing.problems)} problems, e.g. {listing.problems[0].line()}" if listing.problems else ""
        raise VidretError(f"{shown_path(video_dir)}: no video files found (extensions: {extensions}){unread}")
    earlier = read_earlier_manifest(out)
    found = {os.path.normpath(listing.root / video): video for video in listing.videos}
    manifest_dir = Path(os.path.normpath(out.parent.absolute()))

    kept, removed, kept_unchecked = {}, 0, 0  # video_id -> (path, record) of the earlier entries kept
    for path, record in earlier:
        gone = Path(path).is_relative_to(listing.root) and not os.path.lexists(path)
        if path not in found and gone and not listing.could_not_check(path):
            removed += 1
            continue
        kept[record["video_id"]] = (path, record)
        # Not found, yet kept: not ours to judge, or could not be checked (a folder not listed, a broken link).
        kept_unchecked += path not in found
    known_paths = {path for path, _ in earlier}
    new = [(path, video) for path, video in found.items() if path not in known_paths]
    records = [record for _, record in kept.values()]
    for path, video in new:  # in id order: listing.videos is sorted
        if video in kept:
            raise VidretError(
                f"{shown_path(out)}: video_id {video!r} of {shown_path(path)} names another path already"
                f" ({shown_path(kept[video][0])}); rename that entry's video_id, or scan the folder by the path"
                " the manifest knows it by"
            )
        records.append({"video_id": video, "path": manifest_path(path, manifest_dir), "split": split})
    out.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(out, records)
    return ScanSummary(
        out, listing.root, len(records), len(listing.videos), len(new), removed, kept_unchecked, listing.problems,
        time.perf_counter() - started,
    )  # fmt: skip
