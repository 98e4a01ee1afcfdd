"""``--dataset NAME``: the options a benchmark's definition (catalog/NAME.json, its "defaults") sets per stage.

A stage's options are merged as ``{**library defaults, **preset_options(dataset, stage), **given flags}``:
an explicit flag wins over the preset, and the preset over the library's defaults.
"""

from __future__ import annotations

from pipeline.datasets.definitions import load_definition

# stage -> {option name (the CLI's, as a Python identifier) -> key of the definition's "defaults"}.
PRESET_KEYS: dict[str, dict[str, str]] = {
    "decode": {
        "frames": "frames",
        "size": "size",
        "short_side": "short_side",
        "sampling": "sampling",
        "interpolation": "interpolation",
        "train_views": "train_views",
    },
    "train": {"model": "model", "pretrained": "pretrained", "caption_length": "caption_length", "recipe": "recipe"},
    "embed": {"model": "model", "pretrained": "pretrained", "caption_length": "caption_length", "split": "test_split"},
    "index": {},  # nothing dataset-specific today; --dataset is accepted (and its name checked) for uniformity
}

# What a checkpoint fixes: embedding a trained model takes these from it, not from the preset.
CHECKPOINT_FIXES = ("model", "pretrained", "caption_length")


def preset_options(dataset: str | None, stage: str) -> dict:
    """Option name -> value that ``dataset``'s definition sets for ``stage`` (decode, train, embed or index);
    {} for no dataset. An unknown dataset is the DatasetError ``load_definition`` raises."""
    if stage not in PRESET_KEYS:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(PRESET_KEYS)}")
    if dataset is None:
        return {}
    defaults = load_definition(dataset).defaults
    return {option: defaults[key] for option, key in PRESET_KEYS[stage].items()}
