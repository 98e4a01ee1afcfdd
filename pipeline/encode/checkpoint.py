"""Checkpoints: written atomically, loadable with ``torch.load(weights_only=True)``.

``RUN/model/last.pt`` holds the whole training state (model, optimizer, scheduler,
RNG states, data position), so ``--resume`` continues exactly where a run stopped.
``RUN/model/best.pt`` holds only what embedding needs: the model spec and weights.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from pipeline.encode.model import CLIP4Clip, ModelSpec, create_clip4clip, create_head, deepened_patch_weight
from pipeline.errors import VidretError, first_line
from pipeline.files import commit_file, temporary_path

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
FORMAT = "vidret-clip4clip"


def save_checkpoint(path: Path, payload: dict) -> None:
    temporary = temporary_path(path)
    try:
        torch.save({"format": FORMAT, **payload}, temporary)
        commit_file(temporary, path)
    except RuntimeError as error:  # torch's zip writer reports a full disk as "unexpected pos ..."
        free = shutil.disk_usage(path.parent).free
        raise VidretError(
            f"{path}: could not write the checkpoint ({first_line(error)}; {free / 2**20:.0f} MiB free on its disk)"
        ) from None
    finally:
        temporary.unlink(missing_ok=True)


def read_checkpoint(path: Path | str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise VidretError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and tensor errors all mean "not our checkpoint"
        raise VidretError(f"{path}: not a readable checkpoint ({type(error).__name__}: {first_line(error)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise VidretError(f"{path}: not a vidret checkpoint (for open_clip weights, use --model and --pretrained)")
    return payload


def model_state(model: CLIP4Clip) -> dict:
    return {"spec": model.spec.to_dict(), "model": model.state_dict()}


@contextlib.contextmanager
def quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def damaged(path: Path | str, error: Exception) -> VidretError:
    return VidretError(f"{path}: a damaged checkpoint ({type(error).__name__}: {first_line(error)})")


def read_spec(path: Path | str) -> tuple[ModelSpec, dict]:
    """A checkpoint's model spec, and the checkpoint."""
    payload = read_checkpoint(path)
    try:
        return ModelSpec(**payload["spec"]), payload
    except (KeyError, TypeError) as error:
        raise damaged(path, error) from None


def load_model(path: Path | str) -> tuple[CLIP4Clip, dict]:
    """The model a checkpoint describes, with its weights, on the CPU; and the checkpoint."""
    spec, payload = read_spec(path)
    try:
        # The checkpoint holds every weight, so the CLIP weights are not fetched again (and open_clip's
        # "initialized randomly" warning would mislead).
        with quiet_root_logger():
            model = create_clip4clip(
                spec.model, "none", spec.head, spec.caption_length, precision=spec.precision,
                normalize_frames=spec.normalize_frames, linear_patch=spec.linear_patch,
                force_quick_gelu=spec.force_quick_gelu,
            )  # fmt: skip
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, RuntimeError) as error:
        raise damaged(path, error) from None
    model.spec = spec
    return model, payload


def initialise_from(model: CLIP4Clip, path: Path | str) -> dict:
    """Start ``model`` from a vidret checkpoint instead of CLIP weights (post-pretraining, then fine-tuning):
    its towers, and its head where it is the same kind. Another head is made afresh on the loaded towers, as
    it would be on CLIP's (seqTransf copies the loaded text layers); a 2d linear patch becomes the 3d one
    as CLIP's does. Returns what was loaded, for the run's record."""
    path = Path(path)
    source, payload = read_spec(path)
    if not isinstance(state := payload.get("model"), dict):
        raise damaged(path, KeyError("model"))
    built = model.spec
    if (source.model, source.force_quick_gelu) != (built.model, built.force_quick_gelu):
        quick = " with QuickGELU" if source.force_quick_gelu else ""
        raise VidretError(
            f"--init-from {path}: a {source.model}{quick} checkpoint, and this run builds {built.model}"
            f" (pass --model {source.model})"
        )
    if (source.linear_patch, built.linear_patch) == ("3d", "2d"):
        raise VidretError(f"--init-from {path}: its tower has the 3d linear patch; pass --linear-patch 3d")
    towers = {name.removeprefix("clip."): tensor for name, tensor in state.items() if name.startswith("clip.")}
    if (source.linear_patch, built.linear_patch) == ("2d", "3d"):
        towers["visual.conv1.weight"] = deepened_patch_weight(towers["visual.conv1.weight"])
    try:
        model.clip.load_state_dict(towers)
        if source.head == built.head:
            model.head.load_state_dict({name.removeprefix("head."): tensor for name, tensor in state.items()
                                        if name.startswith("head.")})  # fmt: skip
        else:
            model.head = create_head(built.head, model.clip, model.clip.visual.output_dim).to(
                next(model.clip.parameters()).device
            )
    except RuntimeError as error:
        raise VidretError(f"--init-from {path}: its weights do not fit ({first_line(error)})") from None
    model.spec = replace(built, pretrained=source.pretrained)  # the towers descend from those CLIP weights
    loaded = "towers and head" if source.head == built.head else f"towers; a new {built.head} head"
    return {"checkpoint": str(path.absolute()), "head": source.head, "loaded": loaded}
