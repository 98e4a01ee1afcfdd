"""What a stage records next to its output: ``stage.json``.

A stage writes stage.json last, once its output is complete, so its presence
means the directory is whole; a run that changes the output removes it first.
"""

from __future__ import annotations

import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from pipeline.files import read_json, write_json

STAGE_FILE = "stage.json"


def library_versions(*packages: str) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("vidret", *packages):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def read_stage(directory: Path) -> dict | None:
    return read_json(directory / STAGE_FILE)


def write_stage(directory: Path, record: dict) -> None:
    write_json(directory / STAGE_FILE, {**record, "finished": datetime.now(UTC).isoformat(timespec="seconds")})


def remove_stage(directory: Path) -> None:
    (directory / STAGE_FILE).unlink(missing_ok=True)
