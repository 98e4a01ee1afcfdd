"""Atomic file output: write to a hidden temporary sibling, then rename.

A reader (or a rerun after kill -9) sees either the old file or the new one,
never a half-written one. Temporaries start with a dot so that globs such as
``part-*.parquet`` and pyarrow's dataset discovery never pick them up, and
name their host and process, so that the next run can tell a killed run's
leftovers from a live run's work. Parquet is written with page checksums and
read with them verified, so a damaged file is an error, never other numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import VidretError, first_line

TEMPORARY_MARK = ".tmp-"
PARQUET_CHECKSUMS = {"write_page_checksum": True}


def temporary_path(path: Path) -> Path:
    """A hidden sibling of ``path``, unique to this host and process."""
    return path.with_name(f".{path.name}{TEMPORARY_MARK}{socket.gethostname()}-{os.getpid()}")


def commit_file(temporary: Path, path: Path) -> None:
    """Flush ``temporary`` to disk and rename it over ``path``."""
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _is_stale(temporary: Path) -> bool:
    """A temporary of a process of this host that is no longer running."""
    host, _, pid = temporary.name.partition(TEMPORARY_MARK)[2].rpartition("-")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's (a shared folder): it may still be writing
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    return False


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Remove, anywhere under ``directory``, the temporaries that killed runs of this host left; return them."""
    stale = [path for path in directory.rglob(f".*{TEMPORARY_MARK}*") if path.is_file() and _is_stale(path)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_bytes(path: Path, data: bytes) -> None:
    temporary = temporary_path(path)
    try:
        temporary.write_bytes(data)
        commit_file(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_parquet(path: Path, table: pa.Table, **options) -> None:
    temporary = temporary_path(path)
    try:
        pq.write_table(table, temporary, **{**PARQUET_CHECKSUMS, **options})
        commit_file(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_json(path: Path):
    """The parsed JSON in ``path``, or None if it does not exist; a VidretError if it is not JSON."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise VidretError(f"{path}: not a readable JSON file ({first_line(error)})") from None


def open_parquet(path: Path) -> pq.ParquetFile:
    """``path`` as a ParquetFile whose reads verify page checksums; a VidretError if it is not Parquet."""
    try:
        return pq.ParquetFile(path, page_checksum_verification=True)
    except FileNotFoundError:
        raise VidretError(f"{path}: no such file") from None
    except (pa.ArrowException, OSError) as error:
        raise VidretError(f"{path}: not a readable Parquet file ({first_line(error)})") from None


def read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    """The table in ``path``, page checksums verified; one line naming the file if it is missing or damaged."""
    handle = open_parquet(path)
    try:
        return handle.read(columns=columns)
    except (pa.ArrowException, OSError) as error:
        raise VidretError(f"{path}: a damaged Parquet file ({first_line(error)})") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj) -> str:
    """A stable digest of a JSON-serialisable value (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
