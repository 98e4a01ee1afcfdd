"""The built wheel, installed (not editable) outside the source tree, has everything vidret reads at run time:
the dataset definitions, the recipes, the model configs and the benchmark scripts that ``vidret bench`` runs.

The wheel is built from a copy of the sources (building writes build/ and an egg-info beside pyproject.toml)
and installed into a new virtual environment, which reaches the test environment's packages (torch, open_clip,
...) through a .pth line but does not run that environment's .pth files: one of them installs the editable
finder, which would hand out this checkout's pipeline.* for any module missing from the wheel. The commands
run from a working directory outside the source tree and check that what they imported came from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Installed:
    source: Path  # the copy the wheel was built from
    wheel: Path
    venv: Path
    site: Path  # the venv's site-packages, where the wheel went
    work: Path  # the commands' working directory
    env: dict[str, str]

    def run(self, *command, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        ran = subprocess.run(
            [*map(str, command)], cwd=cwd or self.work, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert ran.returncode == 0, f"{command}: exit {ran.returncode}\n{ran.stderr[-3000:]}"
        return ran

    def python(self, code: str, **kwargs) -> subprocess.CompletedProcess:
        """``python -P -c CODE``: -P keeps the working directory off sys.path."""
        return self.run(self.venv / "bin" / "python", "-P", "-c", code, **kwargs)

    def vidret(self, *args, **kwargs) -> subprocess.CompletedProcess:
        """The console script pip wrote for the ``vidret = "cli.main:app"`` entry point."""
        return self.run(self.venv / "bin" / "vidret", *args, **kwargs)


def pip(*args) -> None:
    ran = subprocess.run([sys.executable, "-m", "pip", *map(str, args)], capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    for name in ("pipeline", "cli"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    pip("wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", root / "dist", source)
    (wheel,) = (root / "dist").glob("vidret-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    (packages,) = (venv / "lib").glob("python3*/site-packages")
    (packages / "test-environment.pth").write_text("".join(f"{folder}\n" for folder in site.getsitepackages()))
    pip("--python", venv / "bin" / "python", "install", "--no-deps", "--quiet", wheel)
    work = root / "work"
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    return Installed(source, wheel, venv, packages, work, env)


def test_the_wheel_ships_every_file_of_the_packages_and_the_entry_point(installed):
    shipped = set(zipfile.ZipFile(installed.wheel).namelist())
    sources = {
        path.relative_to(installed.source).as_posix()
        for name in ("pipeline", "cli")
        for path in (installed.source / name).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert sources - shipped == set()
    for data in ("datasets/catalog", "encode/recipes", "encode/model_configs", "studies"):
        assert list((installed.source / "pipeline" / data).glob("*.json")), data  # each kind is there to be shipped
    assert "pipeline/benchmarks/__init__.py" in shipped and "pipeline/benchmarks/index_scaling.py" in shipped
    metadata = next(name for name in shipped if name.endswith(".dist-info/entry_points.txt"))
    assert "vidret = cli.main:app" in zipfile.ZipFile(installed.wheel).read(metadata).decode()


def test_everything_imported_comes_from_the_installed_wheel(installed):
    code = """
import importlib, json, pkgutil, sys
import cli.main, pipeline
for module in pkgutil.walk_packages(pipeline.__path__, "pipeline."):
    importlib.import_module(module.name)
files = {name: module.__file__ for name, module in sys.modules.items() if name.split(".")[0] in ("pipeline", "cli")}
finders = [name for name in sys.modules if name.startswith("__editable__")]
print(json.dumps({"files": files, "path": sys.path, "editable_finders": finders}))
"""
    found = json.loads(installed.python(code, cwd=REPO).stdout)  # the checkout's own pipeline/ is right here
    assert "pipeline.benchmarks.index_scaling" in found["files"] and "pipeline.datasets.definitions" in found["files"]
    elsewhere = {name: file for name, file in found["files"].items() if not Path(file).is_relative_to(installed.site)}
    assert elsewhere == {}
    assert str(REPO) not in found["path"] and "" not in found["path"] and found["editable_finders"] == []


def test_manifest_datasets_lists_every_definition_and_build_reads_one(installed):
    listed = installed.run(installed.venv / "bin" / "python", "-P", "-m", "cli.main", "manifest", "datasets").stdout
    names = [line.split(":")[0] for line in listed.splitlines() if not line.startswith(" ")]
    assert names == sorted(path.stem for path in (installed.source / "pipeline/datasets/catalog").glob("*.json"))
    assert "msrvtt-9k" in names and "didemo" in names

    # The real MSR-VTT 1k-A test CSV, with no video present: every video is listed, each one missing.
    (installed.work / "videos").mkdir()
    out = installed.work / "manifests" / "msrvtt-1k-a.jsonl"
    built = installed.vidret(
        "manifest", "build", "msrvtt-1k-a", "--annotations", REPO / "tests" / "data" / "msrvtt",
        "--videos", installed.work / "videos", "--out", out,
    )  # fmt: skip
    assert built.stdout.startswith("manifest build: msrvtt-1k-a (clip4clip layout): 1000 videos (1000 test)")
    assert len(out.read_text().splitlines()) == 1000
    assert json.loads(out.with_suffix(".build.json").read_text())["dataset"] == "msrvtt-1k-a"


def test_recipes_and_model_configs_load(installed):
    code = """
import json
import open_clip, torch
from pipeline.encode.model import create_clip4clip
from pipeline.encode.train import RECIPES_DIR, available_recipes, load_recipe
from pipeline.study import available_studies, load_study
recipes = {name: load_recipe(name).epochs for name in available_recipes()}
studies = {name: len(load_study(name).runs) for name in available_studies()}
torch.manual_seed(0)
model = create_clip4clip("vidret-micro", "none", "meanP").eval()
with torch.no_grad():
    video = model.encode_video(torch.zeros(1, 2, 32, 32, 3, dtype=torch.uint8))
    text = model.encode_text(model.tokenize(["a dog"]))
models = [name for name in open_clip.list_models() if name.startswith("vidret-")]
shapes = [video.shape[-1], text.shape[-1]]
print(json.dumps({"recipes": recipes, "studies": studies, "dir": str(RECIPES_DIR), "models": models, "shapes": shapes}))
"""
    loaded = json.loads(installed.python(code).stdout)
    shipped = sorted(path.stem for path in (installed.source / "pipeline" / "encode" / "recipes").glob("*.json"))
    assert sorted(loaded["recipes"]) == shipped
    assert {"demo", "clip4clip", "mmaction2"} <= set(loaded["recipes"]) and all(loaded["recipes"].values())
    studies = sorted((installed.source / "pipeline" / "studies").glob("*.json"))
    assert loaded["studies"] == {path.stem: len(json.loads(path.read_text())["runs"]) for path in studies}
    assert Path(loaded["dir"]).is_relative_to(installed.site)
    assert sorted(loaded["models"]) == ["vidret-micro", "vidret-tiny"]
    assert loaded["shapes"] == [32, 32]  # vidret-micro's embed_dim


def test_vidret_bench_runs_a_packaged_script(installed):
    out = installed.work / "bench" / "bench.json"
    ran = installed.vidret("bench", "--quick", "--only", "index", "--out", out, "--no-progress", timeout=600)
    assert ran.stdout.rstrip().endswith(f"-> {out}")
    results = json.loads(out.read_text())
    assert list(results["parts"]) == ["index"]
    assert results["parts"]["index"]["command"].startswith("-m pipeline.benchmarks.index_scaling --sizes 1000")
    assert results["parts"]["index"]["results"]["results"][0]["size"] == 1000
    assert [row["part"] for row in results["summary"]] == ["index", "index"]
