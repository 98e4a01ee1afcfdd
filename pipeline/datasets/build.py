"""``vidret manifest build``: a benchmark's official annotation files and a folder of videos in,
a manifest and a build report out.

Annotation problems never vanish silently. Each is reported per video in the
build report (``NAME.build.json`` beside the manifest) and summarised on the
console:

- ``missing_video``: no file for the video in the folder. The video stays in the
  manifest, under the path it would have, so decode gives it status ``missing``
  and the test set keeps its size.
- ``ambiguous_video``: several files match; the first in sorted order is used.
- ``duplicate_id``: listed more than once in one split; its captions are merged.
- ``other_split``: listed in two splits; it is kept only in the held-out one
  (test, then val), so that training never sees a test video.
- ``empty_caption``: an empty caption is dropped.
- ``no_caption``: no caption is left; the video is left out of the manifest,
  which needs at least one caption per video.
- ``empty_id``: an annotation line names no video; it is left out.
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.datasets.definitions import DatasetDefinition, Layout, load_definition
from pipeline.datasets.formats import READERS, SPLIT_ROLES, DatasetError, Listing
from pipeline.files import sha256_file, write_json
from pipeline.manifest import write_manifest
from pipeline.stage import library_versions

# A listing in two splits is kept in the first of these.
HELD_OUT_FIRST = ("test", "val", "train")
# Stems are matched only on video files, so that video0.json never stands in for video0.mp4.
VIDEO_EXTENSIONS = frozenset(".3gp .avi .flv .m2ts .m4v .mkv .mov .mp4 .mpeg .mpg .mts .ogv .ts .webm .wmv".split())


@dataclass(frozen=True)
class Problem:
    video_id: str
    split: str
    kind: str
    detail: str

    def line(self) -> str:
        return f"{self.kind}: {self.video_id} ({self.split}): {self.detail}"


@dataclass
class ManifestBuildSummary:
    dataset: str
    layout: str
    out: Path
    report: Path
    counts: dict[str, dict[str, int]]  # split -> videos, captions, missing_video
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        videos = sum(split["videos"] for split in self.counts.values())
        captions = sum(split["captions"] for split in self.counts.values())
        splits = ", ".join(f"{counts['videos']} {split}" for split, counts in self.counts.items())
        kinds = Counter(problem.kind for problem in self.problems)
        problems = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items())) or "none"
        return (
            f"manifest build: {self.dataset} ({self.layout} layout): {videos} videos ({splits}), {captions} captions;"
            f" problems: {problems}; in {self.seconds:.1f} s -> {self.out} (report: {self.report})"
        )

    def problem_lines(self, per_kind: int = 5) -> list[str]:
        """The first ``per_kind`` problems of each kind, then how many more the report holds."""
        by_kind: dict[str, list[Problem]] = defaultdict(list)
        for problem in self.problems:
            by_kind[problem.kind].append(problem)
        lines = []
        for kind, problems in sorted(by_kind.items()):
            lines += [problem.line() for problem in problems[:per_kind]]
            if len(problems) > per_kind:
                lines.append(f"{kind}: ... and {len(problems) - per_kind} more in {self.report}")
        return lines


def report_path(manifest: Path) -> Path:
    """``manifests/msrvtt-9k.jsonl`` -> ``manifests/msrvtt-9k.build.json``."""
    return manifest.with_name(f"{manifest.stem}.build.json")


def choose_layout(definition: DatasetDefinition, annotations: Path) -> tuple[Layout, dict[str, Path]]:
    """The first layout whose annotation files are all in ``annotations``."""
    if not annotations.is_dir():
        raise DatasetError(f"{annotations}: no such annotations folder")
    wanted = []
    for layout in definition.layouts:
        files = {role: annotations / name for role, name in layout.files.items()}
        absent = [path.name for path in files.values() if not path.is_file()]
        if not absent:
            return layout, files
        wanted.append(f"{layout.name}: {', '.join(absent)}")
    raise DatasetError(f"{annotations}: the {definition.name} annotation files are missing ({'; '.join(wanted)})")


class VideoFolder:
    """Every file under a folder, by name and, for video files, by stem, for one walk of the tree."""

    def __init__(self, root: Path):
        if not root.is_dir():
            raise DatasetError(f"{root}: no such videos folder")
        self.root = root.absolute()
        self.by_name: dict[str, list[Path]] = defaultdict(list)
        self.by_stem: dict[str, list[Path]] = defaultdict(list)
        for folder, subfolders, names in os.walk(self.root):
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            for name in sorted(names):
                if name.startswith("."):
                    continue
                path = Path(folder) / name
                self.by_name[name].append(path)
                if path.suffix.lower() in VIDEO_EXTENSIONS:
                    self.by_stem[path.stem].append(path)

    def find(self, names: tuple[str, ...]) -> list[Path]:
        """The files matching the first of ``names`` that matches any, as a file name or a stem."""
        for name in names:
            found = self.by_name.get(name) or self.by_stem.get(name)
            if found:
                return found
        return []


def build_manifest(dataset: str, annotations: Path | str, videos: Path | str, out: Path | str | None = None):
    """Build ``out`` (default ``manifests/DATASET.jsonl``) and its build report; return the summary."""
    started = time.perf_counter()
    definition = load_definition(dataset)
    out = Path(out) if out is not None else Path("manifests") / f"{dataset}.jsonl"
    annotations = Path(annotations)
    layout, files = choose_layout(definition, annotations)
    listings = READERS[layout.format](files)
    folder = VideoFolder(Path(videos))

    problems: list[Problem] = []
    chosen = _merge_listings(listings, problems)
    records = []
    counts = {split: {"videos": 0, "captions": 0, "missing_video": 0} for split in SPLIT_ROLES if split in listings}
    for split in SPLIT_ROLES:
        for video_id, listing in chosen.get(split, {}).items():
            captions = _usable_captions(listing, split, problems)
            if not captions:
                problems.append(Problem(video_id, split, "no_caption", f"no caption left ({listing.where})"))
                continue
            path = _locate(folder, listing, split, definition, problems)
            records.append({"video_id": video_id, "path": str(path), "split": split, "captions": captions})
            counts[split]["videos"] += 1
            counts[split]["captions"] += len(captions)
            counts[split]["missing_video"] += not path.is_file()
    if not records:
        raise DatasetError(f"{annotations}: the {layout.name} annotations list no captioned video")

    out.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(out, records)
    summary = ManifestBuildSummary(
        dataset, layout.name, out, report_path(out), counts, problems, time.perf_counter() - started
    )
    # Written last: the report says what the manifest holds and why.
    write_json(
        summary.report,
        {
            "dataset": dataset,
            "definition": str(definition.path),
            "layout": layout.name,
            "annotations": {
                role: {"path": str(path.absolute()), "sha256": sha256_file(path)} for role, path in files.items()
            },
            "videos": str(folder.root),
            "manifest": {"path": str(out.absolute()), "sha256": sha256_file(out)},
            "defaults": definition.defaults,
            "counts": counts,
            "problems": [asdict(problem) for problem in problems],
            "versions": library_versions(),
        },
    )
    return summary


def _merge_listings(listings: dict[str, list[Listing]], problems: list[Problem]) -> dict[str, dict[str, Listing]]:
    """One listing per video: repeats within a split merged, a video in two splits kept in the held-out one."""
    owner: dict[str, str] = {}
    chosen: dict[str, dict[str, Listing]] = {}
    for split in HELD_OUT_FIRST:
        kept = chosen.setdefault(split, {})
        for listing in listings.get(split, []):
            video_id = listing.video_id
            if not video_id.strip():
                problems.append(Problem(video_id, split, "empty_id", f"{listing.where}: no video id; left out"))
            elif video_id in kept:
                first = kept[video_id]
                problems.append(
                    Problem(video_id, split, "duplicate_id", f"{listing.where} repeats {first.where}; captions merged")
                )
                kept[video_id] = Listing(video_id, first.captions + listing.captions, first.where, first.names)
            elif video_id in owner:
                problems.append(
                    Problem(
                        video_id, split, "other_split", f"{listing.where}: also in {owner[video_id]}; kept there only"
                    )
                )
            else:
                owner[video_id] = split
                kept[video_id] = listing
    return chosen


def _usable_captions(listing: Listing, split: str, problems: list[Problem]) -> list[str]:
    usable = [caption for caption in listing.captions if isinstance(caption, str) and caption.strip()]
    dropped = len(listing.captions) - len(usable)
    if dropped:
        detail = f"{dropped} empty or non-text caption(s) dropped ({listing.where})"
        problems.append(Problem(listing.video_id, split, "empty_caption", detail))
    return usable


def _locate(
    folder: VideoFolder, listing: Listing, split: str, definition: DatasetDefinition, problems: list[Problem]
) -> Path:
    """The video's file, or the path it would have (reported missing)."""
    found = folder.find(listing.names or (listing.video_id,))
    if not found:
        expected = folder.root / f"{listing.video_id}{definition.video_extension}"
        problems.append(
            Problem(listing.video_id, split, "missing_video", f"no file in {folder.root} ({listing.where})")
        )
        return expected
    if len(found) > 1:
        others = ", ".join(str(path.relative_to(folder.root)) for path in found[1:])
        problems.append(
            Problem(
                listing.video_id, split, "ambiguous_video", f"using {found[0].relative_to(folder.root)}; also {others}"
            )
        )
    return found[0]
