"""Dataset definitions: data files in pipeline/datasets/catalog/ (shipped in the package), one per benchmark.

A definition names the annotation files of each layout the benchmark is
distributed in (``layouts``: the first whose files are all present is used),
how a missing video's file would be named, and the defaults that reproduce
the published recipe (the model and its weights, frames and how they are sampled,
caption length, the training recipe, which splits exist).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.datasets.formats import READERS, SPLIT_ROLES, DatasetError

DEFINITIONS_DIR = Path(__file__).resolve().with_name("catalog")  # package data: found in an installed wheel too
DEFAULT_KEYS = tuple(
    "model pretrained frames size short_side sampling interpolation train_views caption_length recipe"
    " train_split val_split test_split".split()
)


@dataclass(frozen=True)
class Layout:
    name: str
    format: str  # a reader in formats.READERS
    files: dict[str, str]  # role -> file name inside --annotations


@dataclass(frozen=True)
class DatasetDefinition:
    name: str
    title: str
    layouts: tuple[Layout, ...]
    video_extension: str  # how a video missing from the folder would be named: video_id + this
    defaults: dict
    path: Path

    def splits(self) -> tuple[str, ...]:
        return tuple(split for split in SPLIT_ROLES if self.defaults.get(f"{split}_split"))


def available_datasets() -> list[str]:
    return sorted(path.stem for path in DEFINITIONS_DIR.glob("*.json"))


def load_definition(name: str) -> DatasetDefinition:
    """The definition ``catalog/NAME.json`` beside this module; an error naming the known datasets otherwise."""
    path = DEFINITIONS_DIR / f"{name}.json"
    if not path.is_file():
        known = ", ".join(available_datasets()) or f"none in {DEFINITIONS_DIR}"
        raise DatasetError(f"unknown dataset {name!r} (known: {known})")
    record = json.loads(path.read_text())
    layouts = tuple(Layout(**layout) for layout in record["layouts"])
    unknown = [layout.format for layout in layouts if layout.format not in READERS]
    missing = [key for key in DEFAULT_KEYS if key not in record["defaults"]]
    if unknown or missing:
        raise DatasetError(f"{path}: unknown format {unknown} or missing defaults {missing}")
    return DatasetDefinition(
        record["name"], record["title"], layouts, record["video_extension"], record["defaults"], path
    )
