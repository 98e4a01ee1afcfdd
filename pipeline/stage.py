"""The one stage contract: is this output up to date, and may this run replace it?

Every stage (synth, decode, encode train, encode embed, index) declares a ``Stage``:
the folder it writes, the fingerprint of its inputs, the parameters that shape its
output, the folders it reads and the names it writes. ``decide`` chooses:

- **skip** when ``stage.json`` is finished, records the same fingerprint and
  parameters, and every file it lists is there with its recorded size and SHA-256;
- **run** when there is no earlier output, the inputs or parameters changed, the
  output is damaged, an earlier run did not finish, or ``--force`` is given;
- **refuse**, in one line and before anything is touched, when ``--out`` is a
  file, is or lies inside an input, or holds files vidret did not write or another
  stage's output. Stages add their own refusals only where running would destroy
  work that is not this run's (other shards' chunks, an unfinished training run).

``stage.json`` is the commit record. A run first marks it unfinished (``begin``),
writes its files atomically, and commits by writing it with every file's size and
SHA-256 (``commit``). The next stage reads its inputs through ``read_committed``,
which checks them against that record; a folder without ``stage.json`` (a user's
own embeddings) is read with a note saying what could not be verified.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import socket
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatch
from importlib import metadata
from pathlib import Path

from pipeline.errors import VidretError, first_line
from pipeline.files import read_json, remove_stale_temporaries, sha256_file, write_json

STAGE_FILE = "stage.json"
LOCK_FILE = ".vidret.lock"
UP_TO_DATE = "same inputs and parameters; --force redoes it"
COMMANDS = {
    "synth": "vidret synth",
    "decode": "vidret decode",
    "train": "vidret encode train",
    "embed": "vidret encode embed",
    "index": "vidret index",
}  # what writes each stage's output, for the messages that say what to rerun


@dataclass(frozen=True)
class Stage:
    name: str  # "decode", "train", ...
    out: Path
    fingerprint: str  # digest of everything the stage reads
    params: dict  # the options that shape its output
    inputs: tuple[Path, ...] = ()  # folders it reads: ``out`` may not be, or lie inside, one of them
    owns: tuple[str, ...] = ()  # glob patterns of the names it writes in ``out`` (stage.json aside)

    @property
    def params_as_stored(self) -> dict:
        return json.loads(json.dumps(self.params))  # as JSON has them: tuples become lists


@dataclass(frozen=True)
class Decision:
    run: bool
    reason: str  # why it runs, or why it is skipped
    previous: dict | None  # the earlier record, finished or not ({} if unreadable); None if there is none


def library_versions(*packages: str) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("vidret", *packages):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def read_stage(directory: Path) -> dict | None:
    """The record in ``directory``, or None if it has none; a VidretError if it is unreadable."""
    record = read_json(directory / STAGE_FILE)
    if record is not None and not (isinstance(record, dict) and isinstance(record.get("stage"), str)):
        raise VidretError(f"{directory / STAGE_FILE}: not a vidret stage record")
    return record


def describe_changes(old: dict, new: dict) -> str:
    """``name old -> new`` for every key whose value differs, comma-separated; a key one side lacks (an
    older version's record, or an option recorded only away from its default) shows as ``(not recorded)``."""

    def shown(params: dict, name: str) -> str:
        return repr(params[name]) if name in params else "(not recorded)"

    return ", ".join(
        f"{name} {shown(old, name)} -> {shown(new, name)}"
        for name in sorted(set(old) | set(new))
        if (name in old, old.get(name)) != (name in new, new.get(name))
    )


def describe_failures(counts: Counter | dict) -> str:
    """``"2 missing, 1 unreadable"``: videos by decode status."""
    return ", ".join(f"{count} {status}" for status, count in sorted(counts.items()) if count) or "none"


def skip_line(stage: str, out: Path) -> str:
    return f"{stage}: skipped, {out} is up to date ({UP_TO_DATE})"


def ran_because(decision: Decision) -> str:
    """What a summary line adds when a run replaced earlier output: `` (ran: why)``."""
    return f" (ran: {decision.reason})" if decision.previous is not None else ""


# -- deciding ------------------------------------------------------------------------------------


def decide(stage: Stage, force: bool = False) -> Decision:
    """Skip or run ``stage``; a VidretError (one line, nothing touched) where it must not write ``out``."""
    check_out(stage)
    try:
        previous = read_stage(stage.out)
    except VidretError as error:
        return Decision(True, f"its {STAGE_FILE} is damaged ({error})", {})  # an earlier output, unreadable
    if previous is not None and previous["stage"] != stage.name:
        raise VidretError(
            f"{stage.out}: holds the output of vidret {previous['stage']}, not {stage.name}; choose another --out"
        )
    if force:
        return Decision(True, "--force", previous)
    if previous is None:
        return Decision(True, "no earlier output", None)
    if "finished" not in previous:
        return Decision(True, "an earlier run did not finish", previous)
    if previous.get("params") != stage.params_as_stored:  # first: a stage's fingerprint may digest them too
        changes = describe_changes(previous.get("params") or {}, stage.params_as_stored)
        return Decision(True, f"its parameters changed ({changes})", previous)
    if previous.get("input", {}).get("fingerprint") != stage.fingerprint:
        return Decision(True, "its inputs changed", previous)
    damage = verify_files(stage.out, previous)
    if damage:
        return Decision(True, f"its output is damaged ({damage})", previous)
    return Decision(False, UP_TO_DATE, previous)


def check_out(stage: Stage) -> None:
    """Refuse an ``out`` that is a file, is or lies inside an input, or holds what this stage did not write."""
    out = stage.out
    try:
        resolved = out.resolve()
        exists, is_dir = out.exists(), out.is_dir()
    except (OSError, ValueError) as error:
        raise VidretError(f"{out}: not a usable --out ({first_line(error)})") from None
    if exists and not is_dir:
        raise VidretError(f"{out}: --out is a file, not a folder")
    for source in stage.inputs:
        source = Path(source).resolve()
        if resolved == source or source in resolved.parents:
            raise VidretError(f"{out}: --out is, or is inside, this stage's input {source}; choose a folder of its own")
    if not is_dir:
        return
    foreign = sorted(
        entry.name
        for entry in out.iterdir()
        if not entry.name.startswith(".")
        and entry.name != STAGE_FILE
        and not any(fnmatch(entry.name, pattern) for pattern in stage.owns)
    )
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise VidretError(
            f"{out}: holds files vidret {stage.name} does not write ({shown}); choose an empty or new --out"
        )


# -- the record: begin, commit, verify ----------------------------------------------------------


def begin(stage: Stage) -> None:
    """Mark ``out`` as being written: its record is unfinished until ``commit``."""
    stage.out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    write_json(
        stage.out / STAGE_FILE,
        {"stage": stage.name, "started": started, "pid": os.getpid(), "host": socket.gethostname()},
    )


def file_record(path: Path, sha256: str | None = None) -> dict:
    return {"bytes": path.stat().st_size, "sha256": sha256 or sha256_file(path)}


def commit(stage: Stage, record: dict, files: Iterable[str] | dict[str, dict]) -> dict:
    """Write the finished record: ``record`` with the stage's name, parameters, fingerprint and every file.

    ``files`` names the output's files relative to ``out`` (absolute for one outside it), or maps them to
    their ``file_record`` where the stage already knows it."""
    if not isinstance(files, dict):
        files = {name: file_record(stage.out / name) for name in files}
    finished = {
        **record,
        "stage": stage.name,
        "params": stage.params,
        "input": {**record.get("input", {}), "fingerprint": stage.fingerprint},
        "files": dict(sorted(files.items())),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_json(stage.out / STAGE_FILE, finished)
    return finished


def verify_files(directory: Path, record: dict, names: Iterable[str] | None = None, deep: bool = True) -> str | None:
    """What is wrong with the files ``record`` lists (or those of ``names``): None when each is there with its
    size and, if ``deep``, its SHA-256."""
    files = record.get("files") or {}
    for name in names if names is not None else files:
        if name not in files:
            return f"{name} is not in its {STAGE_FILE}"
        problem = check_file(directory / name, files[name], deep)
        if problem:
            return f"{name} {problem}"
    return None


def check_file(path: Path, expected: dict, deep: bool = True) -> str | None:
    """What differs between ``path`` and its ``file_record``: None when it has that size and, if ``deep``,
    that SHA-256."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "is missing"
    if size != expected["bytes"]:
        return f"has {size} bytes, {STAGE_FILE} says {expected['bytes']}"
    if deep and sha256_file(path) != expected["sha256"]:
        return "changed since it was written"
    return None


def read_committed(directory: Path, stage: str, names: Iterable[str] = (), deep: bool = True) -> dict | None:
    """The finished record of the ``stage`` output in ``directory``, its files (all, or ``names``) checked
    against it; None if the folder has no record (a user's own files). A VidretError says what to rerun."""
    record = read_stage(directory)
    if record is None:
        return None
    rerun = f"rerun {COMMANDS[stage]}"
    if record["stage"] != stage:
        raise VidretError(f"{directory}: holds the output of vidret {record['stage']}, not of {stage}")
    if "finished" not in record:
        raise VidretError(f"{directory}: {stage} has not finished here ({STAGE_FILE} is unfinished); {rerun}")
    if "files" not in record:
        return record  # an earlier vidret listed no files: nothing to check them against
    damage = verify_files(directory, record, list(names) or None, deep)
    if damage:
        raise VidretError(f"{directory}: {damage}; {rerun}")
    return record


# -- one run at a time -----------------------------------------------------------------------------


@contextlib.contextmanager
def locked(stage: Stage, name: str = LOCK_FILE) -> Iterator[None]:
    """Hold ``out``'s lock for the run, and remove the temporaries killed runs left behind.

    The lock is an flock, so it dies with its process; a second run on the same ``out`` is refused."""
    out = stage.out
    check_out(stage)  # before mkdir: a refused --out inside an input must not leave a folder there
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / name, "a+")
    except (OSError, ValueError) as error:
        raise VidretError(f"{out}: cannot write the output folder ({first_line(error)})") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise VidretError(f"{out}: in use by {holder}; wait for it to finish, or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"vidret {stage.name}, process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        remove_stale_temporaries(out)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
