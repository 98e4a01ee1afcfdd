"""The public benchmarks: their definitions (pipeline/datasets/catalog/), readers for their official
annotation formats, and the manifest builder behind ``vidret manifest build``."""

from pipeline.datasets.build import ManifestBuildSummary, Problem, build_manifest
from pipeline.datasets.definitions import DatasetDefinition, available_datasets, load_definition
from pipeline.datasets.formats import READERS, DatasetError
from pipeline.datasets.presets import PRESET_KEYS, preset_options

__all__ = [
    "PRESET_KEYS",
    "READERS",
    "DatasetDefinition",
    "DatasetError",
    "ManifestBuildSummary",
    "Problem",
    "available_datasets",
    "build_manifest",
    "load_definition",
    "preset_options",
]
