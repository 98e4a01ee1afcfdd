"""A run's stage outputs, found from its index by following each stage's record of what it read.

The index stage records its embeddings folder, the embed stage its frames folder and the checkpoint
it embedded with, whose folder is the training run. ``locate_run`` follows those records rather than
assuming the Makefile's layout, so an index built from embeddings kept elsewhere finds them too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import VidretError
from pipeline.schemas import ID_MAP_FILE, INDEX_FILE
from pipeline.stage import read_stage


@dataclass(frozen=True)
class RunFolder:
    """The outputs behind one index; a part is None where the run has none (a zero-shot run has no
    training run) or its recorded folder is gone (``missing`` then says which)."""

    root: Path  # the folder the user named
    index: Path
    embeddings: Path | None
    frames: Path | None
    model: Path | None  # the training run whose checkpoint wrote the embeddings
    records: dict[str, dict]  # stage name (decode, train, embed, index) -> its stage.json
    missing: list[str] = field(default_factory=list)  # "frames: PATH (recorded in ...)" lines


def find_index_dir(run: Path | str) -> Path:
    """``RUN/index``, or ``run`` itself when it is an index directory."""
    run = Path(run)
    for candidate in (run / "index", run):
        if (candidate / INDEX_FILE).is_file():
            return candidate
    raise VidretError(f"{run}: no {INDEX_FILE} here or in {run / 'index'}; build it with `vidret index`")


def locate_run(run: Path | str) -> RunFolder:
    """The index under ``run`` and the outputs its records name."""
    index = find_index_dir(run)
    records: dict[str, dict] = {}
    missing: list[str] = []

    def follow(recorded: str | None, stage: str, what: str, recorded_in: Path) -> Path | None:
        """The folder ``recorded`` if it still holds a ``stage`` output, its record kept in ``records``."""
        if recorded is None:
            return None
        folder = Path(recorded)
        record = read_stage(folder) if folder.is_dir() else None
        if record is None or record["stage"] != stage:
            missing.append(f"{what}: {folder} (recorded in {recorded_in}) holds no {stage} output")
            return None
        records[stage] = record
        return folder

    index_record = read_stage(index)
    if index_record is None or index_record["stage"] != "index":
        raise VidretError(f"{index}: no index stage record next to {INDEX_FILE} and {ID_MAP_FILE}; run `vidret index`")
    records["index"] = index_record
    embeddings = follow(index_record.get("input", {}).get("embeddings"), "embed", "embeddings", index)
    frames = model = None
    if embeddings is not None:
        embed_record = records["embed"]
        frames = follow(embed_record.get("input", {}).get("frames"), "decode", "frames", embeddings)
        checkpoint = (embed_record.get("model") or {}).get("checkpoint")
        if checkpoint is not None:
            model = follow(str(Path(checkpoint).parent), "train", "training run", embeddings)
    return RunFolder(Path(run), index, embeddings, frames, model, records, missing)
