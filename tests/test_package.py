"""The package as a user gets it: a wheel built from the tree, installed into a fresh virtual
environment and run from a folder that is not the clone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, tiny_overrides, write_npz

NOT_SHIPPED = ("runs", "data", "build", "dist", ".git", ".stage", "__pycache__", "*.egg-info", ".pytest_cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built without network from a copy of the tree (an in-place build would leave build/
    and *.egg-info in the clone)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(*NOT_SHIPPED))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp / "dist"), str(source)], check=True, capture_output=True, text=True)
    (found,) = (tmp / "dist").glob("fastcifar-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh environment with the wheel; torch and the other dependencies come from the system's
    site-packages (installing them again would download gigabytes)."""
    env = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env)], check=True)
    # without PYTHONPATH: a clone on it would count as installed already, and pip would skip the wheel
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([env / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, text=True, env=clean)
    return env


def run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(cwd)})


@pytest.mark.slow
def test_the_wheel_holds_one_package_with_its_recipes_and_no_tests_results_or_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"fastcifar"}, tops
    shipped = {Path(n).relative_to("fastcifar/configs").as_posix() for n in names if n.startswith("fastcifar/configs/")}
    in_tree = {p.relative_to(REPO / "fastcifar" / "configs").as_posix()
               for p in (REPO / "fastcifar" / "configs").rglob("*.yml")}
    assert shipped == in_tree and "fast/resnet56.yml" in shipped
    assert "fastcifar/weights/manifest.json" in names and "fastcifar/weights/LICENSE.akamaster" in names
    manifest = json.loads((REPO / "fastcifar" / "weights" / "manifest.json").read_text())
    files = {w["file"] for entries in manifest["weights"].values() for w in entries.values()}
    assert files and {f"fastcifar/weights/{f}" for f in files} <= set(names)  # every shipped weight travels
    assert not [n for n in names if "/tests/" in n or "results" in n or n.endswith((".npz", ".tar.gz", ".jsonl"))]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "fastcifar = fastcifar.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.slow
def test_the_installed_command_trains_a_recipe_by_name_outside_the_clone(venv, tmp_path):
    where = run(venv, venv / "bin" / "python", "-c", "import fastcifar; print(fastcifar.__file__)", cwd=tmp_path)
    assert where.returncode == 0 and Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr

    helped = run(venv, venv / "bin" / "fastcifar", "train", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "usage: fastcifar train CONFIG" in helped.stdout
    listed = run(venv, venv / "bin" / "fastcifar", "recipes", cwd=tmp_path)
    assert {"resnet56", "fast/resnet56", "resnet1202"} <= set(listed.stdout.split())

    root = write_npz(tmp_path / "data", "cifar10", 256, 100)
    overrides = tiny_overrides(root, tmp_path / "runs" / "smoke", train__max_steps=3, train__epochs=1)
    trained = run(venv, venv / "bin" / "fastcifar", "train", "resnet20", *overrides, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    summary = json.loads((tmp_path / "runs" / "smoke" / "summary.json").read_text())
    assert summary["status"] == "cut_short" and summary["steps"] == 3

    missing = run(venv, venv / "bin" / "fastcifar", "train", "resnet21", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "shipped recipe by name" in missing.stderr and "fast/resnet56" in missing.stderr


@pytest.mark.slow
def test_the_installed_hub_loader_builds_every_entry_point(venv, tmp_path):
    code = ("import json, fastcifar.hub as hub\n"
            "print(json.dumps({n: sum(p.numel() for p in getattr(hub, n)().parameters()) for n in hub.HUB_MODELS}))")
    loaded = run(venv, venv / "bin" / "python", "-c", code, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    counts = json.loads(loaded.stdout)
    # He et al. 2016, Table 6: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M, 19.4M parameters
    assert [round(c / 1e6, 2) for c in counts.values()] == [0.27, 0.46, 0.66, 0.85, 1.73, 19.42]
    # the shipped weights load from the installed package (strict, sha256-checked), none from the clone
    code = ("import fastcifar.hub as hub\n"
            "w = hub.get_weight('CIFAR10_ResNet20_Weights.DEFAULT')\n"
            "m = hub.cifar10_resnet20(pretrained=True)\n"
            "print(w.meta['path'], w.meta['source'], sum(p.numel() for p in m.parameters()))")
    loaded = run(venv, venv / "bin" / "python", "-c", code, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    where, source, params = loaded.stdout.split()
    assert Path(where).is_relative_to(venv) and source == "akamaster" and int(params) == counts["cifar10_resnet20"]


def test_recipes_load_by_name_by_path_and_through_the_clones_link(tmp_path, monkeypatch):
    from fastcifar import config as config_lib
    from fastcifar.errors import ConfigError

    shipped = REPO / "fastcifar" / "configs"
    assert (REPO / "configs").resolve() == shipped.resolve()  # one copy of each recipe
    monkeypatch.chdir(tmp_path)  # not the clone: names still find the shipped files
    assert config_lib.recipe_path("resnet56") == shipped / "resnet56.yml"
    assert config_lib.recipe_path("fast/resnet56.yml") == shipped / "fast" / "resnet56.yml"
    assert config_lib.recipe_path("configs/resnet110.yml") == shipped / "resnet110.yml"
    assert config_lib.load("fast/resnet32").model.name == "resnet32"
    own = tmp_path / "resnet56.yml"  # a file of the user's wins over the shipped recipe of that name
    own.write_text("model:\n  name: resnet8\n")
    assert config_lib.load("resnet56.yml").model.name == "resnet8"
    with pytest.raises(ConfigError, match=r"^config file resnet21 not found \(give a YAML file, or a shipped "
                                          r"recipe by name: fast/resnet110, .*, resnet56\)$"):
        config_lib.recipe_path("resnet21")


def test_the_command_dispatches_and_refuses_an_unknown_command_in_one_line(capsys):
    from fastcifar import cli

    assert cli.main(["recipes"]) == 0 and "fast/resnet20" in capsys.readouterr().out.split()
    assert cli.main(["bench", "report", "--help"]) == 0 and "usage: report.py" in capsys.readouterr().out
    assert cli.main(["bench", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastcifar: error: unknown command 'bench nonsense'") and err.count("\n") == 1
