"""benchmarks/export_weights.py: the median-seed run of each depth becomes the shipped weights."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from fastcifar import hub
from fastcifar.models import build_model

pytestmark = pytest.mark.slow  # each test runs the script as a subprocess


def write_runs(results, weights_from, finals, depth=20, config=None):
    for seed, top1 in enumerate(finals):
        (results / f"paper_resnet{depth}_seed{seed}.json").write_text(json.dumps(
            {"kind": "paper_run", "depth": depth, "seed": seed, "final_top1": top1, "final_top5": 99.0,
             "config": config}))
        torch.manual_seed(seed)
        torch.save(build_model(f"resnet{depth}").state_dict(), weights_from / f"resnet{depth}-seed{seed}.pt")


def export(*args):
    return subprocess.run([sys.executable, "-m", "fastcifar.bench.export_weights", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_the_median_seed_is_exported(tmp_path, synthetic_root):
    results, weights_from, weights = tmp_path / "results", tmp_path / "from", tmp_path / "weights"
    results.mkdir(), weights_from.mkdir()
    write_runs(results, weights_from, [91.9, 91.2, 92.4])  # the median is seed 0
    result = export("--weights-from", weights_from, "--data-root", synthetic_root,
                    "--results-dir", results, "--weights-dir", weights)
    assert result.returncode == 0, result.stderr
    entry = hub.read_manifest(weights)["weights"]["cifar10_resnet20"]["fastcifar-seed0"]
    assert entry["run"]["seed"] == 0 and entry["run"]["seeds"] == [0, 1, 2]
    assert entry["run"]["result"] == "paper_resnet20_seed0.json" and entry["run"]["final_top1_in_training"] == 91.9
    shipped = hub.get_model("cifar10_resnet20", pretrained=True, weights_dir=weights)
    expected = torch.load(weights_from / "resnet20-seed0.pt", weights_only=True)
    assert all(torch.equal(v, expected[k]) for k, v in shipped.state_dict().items())


def test_too_few_seeds_or_missing_weights_are_one_line_errors(tmp_path, synthetic_root):
    results, weights_from = tmp_path / "results", tmp_path / "from"
    results.mkdir(), weights_from.mkdir()
    write_runs(results, weights_from, [91.9, 91.2])
    result = export("--weights-from", weights_from, "--data-root", synthetic_root, "--results-dir", results,
                    "--weights-dir", tmp_path / "w")
    assert result.returncode == 2 and "resnet20: 2 finished run(s)" in result.stderr
    write_runs(results, weights_from, [92.0, 92.2, 92.4], depth=32)  # complete, but checked first
    result = export("--weights-from", weights_from, "--data-root", synthetic_root, "--results-dir", results,
                    "--weights-dir", tmp_path / "w", "--depths", "32", "20")
    assert result.returncode == 2 and "resnet20: 2 finished run(s)" in result.stderr
    assert not (tmp_path / "w").exists()  # nothing exported before the error
    write_runs(results, weights_from, [91.9, 91.2, 92.4])
    (weights_from / "resnet20-seed0.pt").unlink()
    result = export("--weights-from", weights_from, "--data-root", synthetic_root, "--results-dir", results,
                    "--weights-dir", tmp_path / "w")
    assert result.returncode == 2 and "the median run (seed 0) has no weights at" in result.stderr
    write_runs(results, weights_from, [91.9, 91.2, 92.4], config={"model": {"shortcut": "B"}})
    result = export("--weights-from", weights_from, "--data-root", synthetic_root, "--results-dir", results,
                    "--weights-dir", tmp_path / "w")
    assert result.returncode == 2 and "model.shortcut is 'B', but shipped weights need 'A'" in result.stderr
    assert not (tmp_path / "w").exists()
