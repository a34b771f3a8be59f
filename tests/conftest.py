"""Shared fixtures: small synthetic CIFAR sets in every layout, the real copy when present, and
tiny training configs."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from fastcifar import config as config_lib
from fastcifar.synthetic import synthetic_arrays, write_npz  # noqa: F401 (the tests import them from here)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FASTCIFAR_SHARED_DATA", REPO.parent / "shared" / "data"))


def one_line(excinfo) -> str:
    """The message of a pytest.raises ExceptionInfo, checked to be one line."""
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def official_batch(images: np.ndarray, labels: np.ndarray, label_key: bytes) -> bytes:
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return pickle.dumps({b"data": data, label_key: labels.tolist(), b"batch_label": b"synthetic"})


def write_official(root: Path, dataset: str, n_train: int, n_test: int, seed: int = 0) -> Path:
    """The extracted official python layout, with tiny batches."""
    from fastcifar.data import SPECS

    spec = SPECS[dataset]
    folder = root / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        images, labels = synthetic_arrays(n, spec.num_classes, s)
        files = spec.files[split]
        for i, name in enumerate(files):
            part = slice(i * n // len(files), (i + 1) * n // len(files))
            (folder / name).write_bytes(official_batch(images[part], labels[part], spec.label_key))
    return folder


def write_archive(root: Path, dataset: str, n_train: int, n_test: int) -> Path:
    from fastcifar.data import SPECS

    spec = SPECS[dataset]
    staging = root / "_staging"
    folder = write_official(staging, dataset, n_train, n_test)
    archive = root / spec.archive
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=spec.folder)
    return archive


def import_dali():
    """pytest.importorskip for DALI, except under FASTCIFAR_REQUIRE_DALI=1 (the GPU suite), where a
    missing DALI fails the module's collection: a suite that expects DALI must not skip its tests."""
    if os.environ.get("FASTCIFAR_REQUIRE_DALI") == "1":
        try:
            import nvidia.dali
        except ImportError as e:
            pytest.fail(f"FASTCIFAR_REQUIRE_DALI=1 but DALI cannot be imported ({e}): put its folder on "
                        "PYTHONPATH (gpu_suite.py --dali-path)", pytrace=False)
        return nvidia.dali
    return pytest.importorskip("nvidia.dali", reason="DALI is not installed (pip install -e '.[dali]')")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """CIFAR-10-shaped npz data: 640 train and 200 test images, learnable."""
    return write_npz(tmp_path_factory.mktemp("synthetic"), "cifar10", 640, 200)


@pytest.fixture(scope="session")
def real_cifar_root(tmp_path_factory) -> Path:
    """The real CIFAR-10 copy from ../shared/data, prepared as npz and official layout."""
    prepare = SHARED_DATA / "prepare.py"
    if not prepare.is_file():
        pytest.skip(f"real CIFAR-10 copy not present ({prepare} not found)")
    dest = tmp_path_factory.mktemp("real_cifar")
    subprocess.run([sys.executable, str(prepare), str(dest), "--official"], check=True,
                   stdout=subprocess.DEVNULL)
    return dest


def free_port() -> int:
    """A free TCP port on localhost, for a gloo group or torchrun's rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



def tiny_overrides(root: Path, run_dir: Path, **extra) -> list[str]:
    """A fast CPU training setup: resnet8, fp32 eager, small batches, no warm-up."""
    values = {
        "model.name": "resnet8", "data.root": str(root), "data.download": False,
        "loader.name": "torchvision", "loader.workers": 0, "loader.eval_batch_size": 100,
        "optim.lr": 0.05, "schedule.warmup_epochs": 0, "schedule.milestones": "[]",
        "train.epochs": 2, "train.batch_size": 64, "train.device": "cpu",
        "train.amp": "none", "train.compile": "false", "train.log_every": 2,
        "train.run_dir": str(run_dir), "train.progress": False, "train.checkpoint_every": 1,
    }
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"--{k}={v}" for k, v in values.items()]


def tiny_config(root: Path, run_dir: Path, world_size: int = 1, **extra) -> config_lib.Config:
    return config_lib.load(REPO / "configs" / "resnet20.yml", tiny_overrides(root, run_dir, **extra), world_size)


def final_weights(run_dir: Path) -> dict:
    """The model state of a run directory's newest checkpoint."""
    from fastcifar.training import checkpoint as ckpt

    return ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir))["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    """Bit-identical state dicts."""
    import torch

    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture
def single_process_group(tmp_path):
    """A gloo group of one process, for DDP wrappers and collectives in-process."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


# ---- reading the benchmark reports' markdown (figures, not exact text) ----
def tables(markdown: str) -> list[list[dict[str, str]]]:
    """Each markdown table, as its rows keyed by header."""
    found, headers = [], None
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None or headers is None:
            headers = cells
            found += [[]] if cells else []
        elif set(cells) != {"---"}:
            found[-1].append(dict(zip(headers, cells, strict=True)))
    return found


def figures(cell: str) -> list[float]:
    """The numbers in a cell: '40,000 (36,000–44,000)' -> [40000.0, 36000.0, 44000.0]; '—' -> []."""
    text = "".join(c if c.isdigit() or c in ".+-" else " " for c in cell.replace(",", ""))
    return [float(t) for t in text.split() if any(c.isdigit() for c in t)]


# ---- stored references (torchvision's expect files): written only on purpose, never silently ----
DATA = Path(__file__).resolve().parent / "data"
ACCEPT = "FASTCIFAR_ACCEPT"  # FASTCIFAR_ACCEPT=1 pytest ... rewrites the stored files from the reference code


def stored_reference(name: str, computed: dict) -> dict:
    """The stored tests/data/NAME.json. `computed` must come from the test's own reference code
    (never from the code under test): with FASTCIFAR_ACCEPT=1 it replaces the stored file."""
    import json

    path = DATA / f"{name}.json"
    if os.environ.get(ACCEPT) == "1":
        DATA.mkdir(exist_ok=True)
        path.write_text(json.dumps(computed, indent=1) + "\n")
    if not path.is_file():
        pytest.fail(f"{path} is missing: generate it from the reference code with {ACCEPT}=1")
    return json.loads(path.read_text())


def readme_section(tmp_path: Path, marker: str, results: dict[str, dict]) -> str:
    """report.py run on `results` (file name -> data) into a README of README_TEMPLATE: the text of the
    section `marker`."""
    from fastcifar.bench import common, report

    for name, data in results.items():
        common.write_json(tmp_path / "results" / name, data)
    readme = tmp_path / "README.md"
    readme.write_text(README_TEMPLATE)
    assert report.main(["--results-dir", str(tmp_path / "results"), "--out-dir", str(tmp_path), "--readme",
                        str(readme), "--no-plots"]) == 0
    return readme.read_text().split(f"<!-- BEGIN GENERATED: {marker} -->")[1].split(f"<!-- END GENERATED: {marker} -->")[0]


# ---- a README with every generated section of benchmarks/report.py, for its tests ----
README_TEMPLATE = """# project

intro

<!-- BEGIN GENERATED: throughput -->
Not measured yet.
<!-- END GENERATED: throughput -->

middle

<!-- BEGIN GENERATED: time_to_accuracy -->
old text
<!-- END GENERATED: time_to_accuracy -->

## paper

<!-- BEGIN GENERATED: paper -->
old table
<!-- END GENERATED: paper -->

<!-- BEGIN GENERATED: cpu_side_by_side -->
<!-- END GENERATED: cpu_side_by_side -->

<!-- BEGIN GENERATED: packing -->
<!-- END GENERATED: packing -->

<!-- BEGIN GENERATED: profile -->
<!-- END GENERATED: profile -->

<!-- BEGIN GENERATED: airbench -->
<!-- END GENERATED: airbench -->

<!-- BEGIN GENERATED: pretrained -->
<!-- END GENERATED: pretrained -->

outro
"""


def warnings_of(err: str) -> list[str]:
    """A run's stderr lines less its start line (fastcifar/training/progress.py: "<model>: device ...")."""
    return [line for line in err.strip().splitlines() if ": device " not in line.split(",")[0]]

