"""What a stage records next to its output: ``stage.json``.

A stage writes stage.json last, once its output is complete, so its presence
means the directory is whole; a run that changes the output removes it first.
"""

from __future__ import annotations

import json
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


def describe_changes(old: dict, new: dict) -> str:
    """``name old -> new`` for every key whose value differs, comma-separated."""
    return ", ".join(
        f"{name} {old.get(name)!r} -> {new.get(name)!r}"
        for name in sorted(set(old) | set(new))
        if old.get(name) != new.get(name)
    )


def describe_rerun(previous: dict | None, fingerprint: str, params: dict) -> str | None:
    """Why a stage must run again given its previous stage.json, or None when that output is up to date.

    ``fingerprint`` digests the stage's inputs and ``params`` the options that shape its output.
    """
    if previous is None:
        return "no finished earlier run"
    if previous.get("input", {}).get("fingerprint") != fingerprint:
        return "its input changed"
    params = json.loads(json.dumps(params))  # as stored: tuples become lists
    if previous.get("params") != params:
        return f"its parameters changed ({describe_changes(previous.get('params') or {}, params)})"
    return None
