"""Atomic file output: write to a hidden temporary sibling, then rename.

A reader (or a rerun after kill -9) sees either the old file or the new one,
never a half-written one. Temporaries start with a dot so that globs such as
``part-*.parquet`` and pyarrow's dataset discovery never pick them up.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TEMPORARY_MARK = ".tmp-"


def temporary_path(path: Path) -> Path:
    """A hidden sibling of ``path``, unique to this host and process."""
    return path.with_name(f".{path.name}{TEMPORARY_MARK}{socket.gethostname()}-{os.getpid()}")


def commit_file(temporary: Path, path: Path) -> None:
    """Flush ``temporary`` to disk and rename it over ``path``."""
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def remove_temporaries(path: Path) -> None:
    """Remove temporaries of ``path`` left by killed runs."""
    for stale in path.parent.glob(f".{path.name}{TEMPORARY_MARK}*"):
        stale.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    temporary = temporary_path(path)
    try:
        temporary.write_text(text)
        commit_file(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_parquet(path: Path, table: pa.Table, **options) -> None:
    temporary = temporary_path(path)
    try:
        pq.write_table(table, temporary, **options)
        commit_file(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_json(path: Path):
    """The parsed JSON in ``path``, or None if it does not exist."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj) -> str:
    """A stable digest of a JSON-serialisable value (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
