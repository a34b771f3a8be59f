"""airbench_side_by_side.py on the CPU: the .pt files airbench reads hold our npz exactly, a wrong sdist
is refused in one line, the dry run writes both sides into one result file, and the vendored sdist is
the one its README names."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, write_npz

from fastcifar.bench import airbench_side_by_side as side

SDIST = REPO / "benchmarks" / "third_party" / "airbench-0.1.8.tar.gz"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def airbench(tmp_path, monkeypatch):
    """The vendored airbench, imported for one test: its import turns cudnn.benchmark on, process-wide."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    module = side.import_airbench(side.extract(SDIST, tmp_path / "airbench-src"))
    yield module
    for name in [k for k in sys.modules if k == "airbench" or k.startswith("airbench.")]:
        del sys.modules[name]


def test_the_pt_files_hold_the_npz_in_airbench_s_layout_and_its_loader_reads_them(tmp_path, monkeypatch, airbench):
    root = write_npz(tmp_path / "data", "cifar10", 24, 12)
    work = tmp_path / "work"
    assert side.write_pt(root, work) == {"train": 24, "test": 12}
    for split, n in (("train", 24), ("test", 12)):
        npz = np.load(root / "cifar10" / f"{split}.npz")
        data = torch.load(work / "cifar10" / f"{split}.pt")
        assert sorted(data) == ["classes", "images", "labels"] and data["classes"] == CLASSES
        assert data["images"].dtype == torch.uint8 and tuple(data["images"].shape) == (n, 32, 32, 3)
        assert data["labels"].dtype == torch.int64 and tuple(data["labels"].shape) == (n,)
        assert np.array_equal(data["images"].numpy(), npz["images"])
        assert np.array_equal(data["labels"].numpy(), npz["labels"])
    monkeypatch.chdir(work)  # airbench opens the relative path 'cifar10'
    loader = airbench.CifarLoader("cifar10", train=False, batch_size=2000, gpu="cpu")
    npz = np.load(root / "cifar10" / "test.npz")
    by_hand = torch.from_numpy(npz["images"]).permute(0, 3, 1, 2).half() / 255  # what airbench trains on
    assert torch.equal(loader.images, by_hand) and torch.equal(loader.labels, torch.from_numpy(npz["labels"]))


def test_a_wrong_or_missing_sdist_is_refused_in_one_line(tmp_path, capsys):
    root = write_npz(tmp_path / "data", "cifar10", 8, 8)
    wrong = tmp_path / "airbench-0.1.8.tar.gz"
    wrong.write_bytes(b"not airbench")
    out = tmp_path / "out.json"
    base = ["--device", "cpu", "--data-root", str(root), "--out", str(out)]
    assert side.main([*base, "--airbench", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("airbench_side_by_side.py: error: --airbench: ")
    assert sha256(wrong) in err and sha256(SDIST) in err
    assert side.main([*base, "--airbench", str(tmp_path / "absent.tar.gz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "absent.tar.gz not found" in err and not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no CUDA")
def test_device_cuda_without_cuda_is_refused_in_one_line(tmp_path, capsys):
    assert side.main(["--device", "cuda", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == "airbench_side_by_side.py: error: --device cuda: no CUDA device here (--device cpu is the dry run)\n"


@pytest.mark.slow
def test_the_dry_run_writes_our_figures_and_airbench_not_run_into_one_file(tmp_path):
    root = write_npz(tmp_path / "data", "cifar10", 64, 40)
    out = tmp_path / "side.json"
    done = subprocess.run([sys.executable, "-m", "fastcifar.bench.airbench_side_by_side", "--device", "cpu",
                           "--data-root", str(root), "--depth", "20", "--seeds", "1", "--target", "1",
                           "--run-root", str(tmp_path / "runs"), "--out", str(out), "--optim.lr=0.05"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["kind"] == "airbench_side_by_side" and data["complete"] is True
    assert "airbench_side_by_side" in data["command"] and data["command"] == data["environment"]["command"]
    assert "gpu" not in data["environment"]  # a CPU result: no CUDA fields
    ab = data["airbench"]
    assert ab["not_run"] == "needs CUDA" and ab["version"] == "0.1.8" and ab["sha256"] == sha256(SDIST)
    assert ab["loader_check"] == {"train_images": 64, "test_images": 40, "image_shape": [3, 32, 32], "classes": 10}
    ours = data["fastcifar"]
    assert ours["kind"] == "time_to_accuracy" and ours["complete"] is True
    assert ours["settings"]["overrides"][-1] == "--optim.lr=0.05"  # the user's overrides reach our side, last
    [depth] = ours["depths"]
    [recipe] = depth["recipes"]
    [run] = recipe["runs"]
    assert depth["depth"] == 20 and run["steps"] == 2 and run["seed"] == 0  # the dry run's 2 steps
    fc = data["comparison"]["fastcifar"]
    assert depth["time_to_target"]["status"] == fc["status"] == "reached"  # 1%: any trained model reaches it
    assert fc["seconds_mean"] == run["wall_seconds"] > 0 and fc["top1_mean"] == run["final_top1"]
    assert data["comparison"]["airbench94"]["seconds_median"] is None
    assert data["comparison"]["fastcifar_seconds_over_airbench94"] is None
    table = done.stdout.strip().splitlines()[-4:]  # printed last
    assert table[0] == "| trainer | runs | seconds | test top-1 |"
    assert "airbench94 (airbench 0.1.8)" in table[2] and "not run (needs CUDA)" in table[2]
    assert "fastcifar resnet20 to 1.0%" in table[3] and f"{run['final_top1']:.2f}%" in table[3]


def test_the_vendored_sdist_is_the_one_its_readme_and_the_module_name():
    readme = (REPO / "benchmarks" / "third_party" / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `airbench-0.1.8.tar.gz`"))
    (written,) = re.findall(r"`([0-9a-f]{64})`", row)
    assert sha256(SDIST) == written == side.SDIST_SHA256


def test_the_comparison_and_table_of_a_gpu_result_put_airbench_s_median_beside_our_mean():
    seconds = side.spread([3.0, 2.0, 4.0])
    assert (seconds["median"], seconds["min"], seconds["max"], seconds["mean"]) == (3.0, 2.0, 4.0, 3.0)
    airbench = {"version": "0.1.8", "runs": [{}, {}, {}], "seconds": seconds,
                "top1_tta": side.spread([94.0, 94.2, 93.8]), "top1": side.spread([93.5, 93.5, 93.5])}
    ours = {"depths": [{"depth": 56, "recipes": [{"seeds": 3, "final_top1": {"mean": 92.5}}],
                        "time_to_target": {"target": 92.0, "status": "reached", "recipe": 0,
                                           "wall_seconds": {"mean": 60.0}, "wall_seconds_without_compile":
                                           {"mean": 45.0}, "best_mean_final_top1": 92.5}}]}
    result = {"airbench": airbench, "comparison": side.comparison(airbench, ours, 56)}
    assert result["comparison"]["fastcifar_seconds_over_airbench94"] == 60.0 / 3.0
    assert result["comparison"]["fastcifar"]["top1_mean"] == 92.5
    rows = side.markdown(result).splitlines()[2:]
    assert rows[0] == "| airbench94 (airbench 0.1.8) | 3 | median 3.00 s (2.00–4.00) | 94.00% with TTA (93.50% without) |"
    assert rows[1] == "| fastcifar resnet56 to 92.0% | 3 | mean 60.00 s (without compile 45.00 s) | 92.50% |"


def test_a_banked_result_fills_the_readme_section(tmp_path):
    from conftest import readme_section

    from fastcifar.bench import common

    airbench = {"version": "0.1.8", "runs": [{}, {}], "seconds": side.spread([4.0, 2.0]),
                "top1_tta": side.spread([94.0, 94.2]), "top1": side.spread([93.5, 93.5])}
    ours = {"depths": [{"depth": 56, "recipes": [{"seeds": 1, "final_top1": {"mean": 92.4}}],
                        "time_to_target": {"target": 92.0, "status": "reached", "recipe": 0,
                                           "wall_seconds": {"mean": 45.0}, "wall_seconds_without_compile":
                                           {"mean": 30.0}, "best_mean_final_top1": 92.4}}]}
    result = common.result("airbench_side_by_side", 1, complete=True, settings={"target": 92.0}, airbench=airbench,
                           fastcifar=ours, comparison=side.comparison(airbench, ours, 56))
    section = readme_section(tmp_path, "airbench", {"2026-12-08_h100_airbench-result.json": result})
    assert "Ours / airbench's: 15.0x." in section  # 45 s against the median of 4 and 2 s
    assert "| airbench94 (airbench 0.1.8) | 2 | median 3.00 s (2.00–4.00) |" in section
