"""The benchmark scripts on the CPU with tiny settings: valid JSON with every field, loaders that
cannot run reported as errors, the time-to-accuracy selection rules, and the report's tables,
plots and README rewrite."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO))  # benchmarks/ is a folder of scripts, not an installed package

import pipelines  # noqa: E402
from benchmarks import common, report, throughput, time_to_accuracy  # noqa: E402

TINY_THROUGHPUT = ["--device", "cpu", "--data", "synthetic", "--synthetic-size", "256", "--depths", "8",
                   "--batch-size", "32", "--steps", "2", "--warmup", "1", "--repeats", "2",
                   "--no-compile", "--amp", "none", "--workers", "0"]


def run_script(name: str, *args: str, timeout: int = 300, env: dict | None = None):
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=env)


def positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def assert_figure(fig: dict, first_key: str, with_tflops: bool, batch: int, warmup: int = 1):
    assert "error" not in fig, fig.get("error")
    rate = fig["images_per_s"]
    assert set(rate) == {"median", "min", "max", "values"} and len(rate["values"]) == 2
    assert all(positive(v) for v in rate["values"])
    assert rate["min"] <= rate["median"] <= rate["max"]
    assert positive(fig[first_key]) and positive(fig["warmup_seconds"]) and positive(fig["step_ms"]["median"])
    assert fig["peak_memory_bytes"] is None  # CPU
    assert (fig["batch_size"], fig["steps"], fig["warmup"], fig["repeats"]) == (batch, 2, warmup, 2)
    assert ("tflops" in fig) == with_tflops


# ---- throughput ------------------------------------------------------------------------------------
def test_throughput_smoke_writes_every_figure(tmp_path):
    gpu_loaders = [n for n in ("torch-gpu",) if n in pipelines.LOADERS]
    # DALI, when registered, may or may not be able to run here: figures or an error entry
    maybe = [n for n in ("dali",) if n in pipelines.LOADERS]
    missing = [n for n in common.KNOWN_LOADERS if n not in pipelines.LOADERS]
    loaders = ["torchvision", *gpu_loaders, *maybe, *missing[:1]]
    out = tmp_path / "tp.json"
    result = run_script("throughput.py", *TINY_THROUGHPUT, "--loaders", *loaders,
                        "--baseline-batch-size", "16", "--baseline-workers", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert {"kind", "schema_version", "complete", "environment", "settings", "timing",
            "flops_convention", "results"} <= set(data)
    assert data["kind"] == "throughput" and data["complete"] is True
    env = data["environment"]
    for key in ("date", "command", "git", "python", "torch", "torchvision", "dali", "cuda", "driver",
                "gpu", "gpu_count", "cpu_count"):
        assert key in env, key
    assert "throughput.py" in env["command"] and env["gpu_count"] == 0 and positive(env["cpu_count"])
    host = socket.gethostname()
    if len(host) > 3:
        assert host not in out.read_text(), "the results must not name the machine"
    s = data["settings"]
    assert (s["device"], s["amp"], s["compile"], s["batch_size"]) == ("cpu", "none", False, 32)
    assert s["loaders"] == loaders

    [r] = data["results"]
    assert r["depth"] == 8 and r["model"] == "resnet8" and positive(r["params"])
    assert r["macs_per_image"] == common.forward_macs(8)
    assert r["train_flops_per_image"] == 6 * r["macs_per_image"]
    model = r["model_alone"]
    assert_figure(model, "first_step_seconds", True, 32)
    assert model["compile_seconds_estimate"] >= 0
    tflops = model["images_per_s"]["median"] * 6 * r["macs_per_image"] / 1e12
    assert model["tflops"]["median"] == pytest.approx(tflops)
    for name in ["torchvision", *gpu_loaders]:
        e = r["loaders"][name]
        assert e["error"] is None
        # figures fed by a loader warm up for at least an epoch (256 // 32 batches)
        assert_figure(e["loader_alone"], "first_batch_seconds", False, 32, warmup=8)
        assert_figure(e["end_to_end"], "first_step_seconds", True, 32, warmup=8)
        assert e["ratio_end_to_end_to_model"] == pytest.approx(
            e["end_to_end"]["images_per_s"]["median"] / model["images_per_s"]["median"])
    for name in maybe:
        e = r["loaders"][name]
        if e["error"] is None:
            assert_figure(e["end_to_end"], "first_step_seconds", True, 32, warmup=8)
        else:
            assert isinstance(e["error"], str) and e["error"] and e["end_to_end"] is None
    for name in missing[:1]:  # a known backend that is not registered (yet): an error entry, no crash
        e = r["loaders"][name]
        assert "not registered" in e["error"]
        assert e["end_to_end"] is None and e["ratio_end_to_end_to_model"] is None
    base = r["seed_style"]
    assert base["setting"] == {"name": "seed-style", "batch_size": 16, "amp": "none", "compile": False,
                               "channels_last": False, "workers": 1}
    assert_figure(base["model_alone"], "first_step_seconds", True, 16)
    assert_figure(base["end_to_end"], "first_step_seconds", True, 16, warmup=256 // 16)
    assert positive(base["speedup_model_alone"]) and positive(base["speedup_end_to_end"]["torchvision"])
    # the table comes last on stdout, one row per loader and one for the baseline
    tail = result.stdout.strip().splitlines()
    assert tail[-1].startswith("| 8 | seed-style (torchvision, 1 workers")
    assert any(line.startswith("| 8 | torchvision | ") for line in tail)


def test_throughput_reports_a_loader_that_cannot_be_built(tmp_path, monkeypatch, capsys):
    def broken(spec):
        raise ImportError("No module named 'nvidia.dali'")

    monkeypatch.setitem(pipelines.LOADERS, "dali", broken)  # as on a machine without DALI
    monkeypatch.setattr(common, "KNOWN_LOADERS", (*common.KNOWN_LOADERS, "not-written-yet"))
    out = tmp_path / "tp.json"
    rc = throughput.main([*TINY_THROUGHPUT, "--loaders", "dali", "not-written-yet", "--no-baseline",
                          "--out", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())["results"][0]
    assert r["loaders"]["dali"]["error"] == "ImportError: No module named 'nvidia.dali'"
    assert r["loaders"]["not-written-yet"]["error"].startswith("loader 'not-written-yet' is not registered")
    assert positive(r["model_alone"]["images_per_s"]["median"]) and r["seed_style"] is None
    assert "| 8 | dali | unavailable: ImportError" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--device", "cpu", "--amp", "fp16"], "--amp fp16: needs CUDA"),
    (["--depths", "7"], "depth 7 is not 6n+2"),
    (["--loaders", "nope"], "invalid choice: 'nope'"),
    (["--steps", "0"], "expected a positive integer"),
    (["--device", "cpu", "--batch-size", "512", "--synthetic-size", "100"], "larger than --synthetic-size"),
])
def test_throughput_bad_options_give_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        throughput.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("throughput.py: error:")


def test_release_lets_every_depth_compile_instead_of_running_eager():
    """Every depth shares CifarResNet.forward; past dynamo's bound of graphs per code object (8) the
    rest would run eager, silently. throughput.py and time_to_accuracy.py release between runs."""
    import torch
    from torch._dynamo.utils import counters

    from fastcifar.models import build_model

    torch._dynamo.reset()
    counters.clear()
    x = torch.randn(2, 3, 32, 32)
    depths = (8, 14, 20, 26, 32)  # a train and an eval graph each: 10 graphs
    for depth in depths:
        common.release(torch.device("cpu"))
        model = build_model(f"resnet{depth}")
        compiled = torch.compile(model, backend="eager")
        model.train()
        compiled(x)
        model.eval()
        compiled(x)
    assert counters["stats"]["unique_graphs"] == 2 * len(depths)
    assert counters["frames"]["ok"] == counters["frames"]["total"]
    torch._dynamo.reset()


# ---- time to accuracy ------------------------------------------------------------------------------
def tiny_tta_args(tmp_path, *extra):
    return ["--depths", "8", "--config", "configs/fast/resnet20.yml", "--data", "synthetic",
            "--synthetic-size", "256", "--synthetic-test-size", "100", "--device", "cpu",
            "--loader", "torchvision", "--run-root", str(tmp_path / "runs"), "--out", str(tmp_path / "tta.json"),
            "--train.batch_size=64", "--loader.workers=0", "--loader.eval_batch_size=50",
            "--optim.lr=0.05", "--train.amp=none", "--train.compile=false", *extra]


def test_time_to_accuracy_smoke_writes_every_field(tmp_path):
    result = run_script("time_to_accuracy.py", *tiny_tta_args(tmp_path, "--seeds", "2", "--epochs", "2",
                                                              "--target", "5"))
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "tta.json").read_text())
    assert {"kind", "schema_version", "complete", "environment", "settings", "compile_estimate",
            "selection", "depths"} <= set(data)
    assert data["kind"] == "time_to_accuracy" and data["complete"] is True
    s = data["settings"]
    assert (s["target"], s["seeds"], s["depths"], s["epochs"], s["world_size"]) == (5.0, 2, [8], [2], 1)
    assert "--train.batch_size=64" in s["overrides"]

    [d] = data["depths"]
    assert d["depth"] == 8 and d["paper_top1"] is None and d["time_to_paper"] is None
    [recipe] = d["recipes"]
    assert (recipe["epochs"], recipe["batch_size"], recipe["seeds"], recipe["loader"]) == (2, 64, 2, "torchvision")
    assert recipe["config"] == "configs/fast/resnet20.yml"
    for i, run in enumerate(recipe["runs"]):
        assert run["seed"] == i and run["epochs"] == 2 and run["steps"] == 2 * (256 // 64)
        assert (tmp_path / "runs" / "resnet8" / "e2" / f"seed{i}" / "summary.json").is_file()
        assert all(positive(run[k]) for k in ("wall_seconds", "train_seconds", "first_step_seconds"))
        assert 0 <= run["compile_seconds_estimate"] < run["wall_seconds"]
        without = run["wall_seconds"] - run["compile_seconds_estimate"]
        assert run["wall_seconds_without_compile"] == pytest.approx(without)
        assert [p["epoch"] for p in run["curve"]] == [1, 2]
        assert all(0 <= p["top1"] <= 100 and positive(p["wall_seconds"]) for p in run["curve"])
        assert run["curve"][-1]["wall_seconds"] == run["wall_seconds"]
        assert run["final_top1"] == run["curve"][-1]["top1"]
        crossing = run["first_crossing"]  # the learnable synthetic set is at 30-60% after an epoch
        assert crossing["epoch"] in (1, 2) and crossing["top1"] >= 5
        assert crossing["wall_seconds"] == run["curve"][crossing["epoch"] - 1]["wall_seconds"]
        assert run["first_crossing_paper"] is None  # no paper accuracy for ResNet-8
    finals = [r["final_top1"] for r in recipe["runs"]]
    assert recipe["final_top1"]["mean"] == pytest.approx(sum(finals) / 2)
    t = d["time_to_target"]
    assert t["status"] == "reached" and t["recipe"] == 0 and t["target"] == 5.0
    assert t["wall_seconds"]["mean"] == pytest.approx(sum(r["wall_seconds"] for r in recipe["runs"]) / 2)
    assert t["first_crossing_seconds"]["count"] == 2
    assert "| 8 | resnet20.yml, 2 epochs, batch 64 | 2 |" in result.stdout


def test_time_to_accuracy_a_signal_in_a_runs_last_epoch_ends_the_script(tmp_path, capsys, monkeypatch):
    """The run itself finishes, but the next seed must not start: the signal is not swallowed."""
    import signal

    from fastcifar.training.trainer import Trainer

    train_epoch = Trainer.train_epoch

    def signalled_epoch(self):
        os.kill(os.getpid(), signal.SIGTERM)
        return train_epoch(self)

    monkeypatch.setattr(Trainer, "train_epoch", signalled_epoch)
    before = signal.getsignal(signal.SIGTERM)
    rc = time_to_accuracy.main(tiny_tta_args(tmp_path, "--seeds", "2", "--epochs", "1"))
    assert rc == 3
    assert "time_to_accuracy.py: stopped by a signal" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "runs" / "resnet8" / "e1").iterdir()] == ["seed0"]
    assert signal.getsignal(signal.SIGTERM) == before  # the stop's handler is gone again


def test_time_to_accuracy_bad_options_give_one_line(capsys):
    for argv, message in ((["--target", "120"], "percentage in (0, 100]"),
                          (["--depths", "8"], "no fast recipe for depth 8"),
                          (["--train.epochs"], "unrecognized argument '--train.epochs'")):
        with pytest.raises(SystemExit) as exc:
            time_to_accuracy.main(argv)
        assert exc.value.code == 2
        assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_time_to_accuracy_bad_override_is_a_config_error(tmp_path, capsys):
    rc = time_to_accuracy.main(tiny_tta_args(tmp_path, "--seeds", "1", "--train.batch_size=-1"))
    assert rc == 2
    assert "time_to_accuracy.py: error: train.batch_size" in capsys.readouterr().err


def fake_run(seed: int, top1s: list[float], epoch_s: float = 10.0, first_step: float = 3.0) -> dict:
    """A run record as time_to_accuracy.run_record makes it, from per-epoch accuracies."""
    records, wall = [], 0.0
    for e, top1 in enumerate(top1s, 1):
        train = epoch_s + (first_step if e == 1 else 0.0)
        wall += train + (4.0 if e == 1 else 1.0)  # the first evaluation compiles
        records.append({"epoch": e, "wall_seconds": wall, "train_seconds": e * epoch_s, "epoch_time_s": train,
                        "top1": top1, "train_loss": 1.0})
    summary = {"epochs": len(top1s), "steps": 10 * len(top1s), "train_seconds": wall, "final_top1": top1s[-1],
               "first_step_seconds": first_step + epoch_s / 10, "device": "cpu", "world_size": 1,
               "amp": "none", "compile": True, "channels_last": True}
    cfg = common.load_config(REPO / "configs" / "fast" / "resnet56.yml",
                             [f"--train.seed={seed}", "--loader.name=torchvision", f"--train.epochs={len(top1s)}"])
    return time_to_accuracy.run_record(cfg, summary, records, 1.0, 10, 92.0, 93.03)


def test_compile_estimate_counts_first_step_and_first_evaluation():
    run = fake_run(0, [80.0, 92.5, 93.1])
    assert run["first_crossing"]["epoch"] == 2 and run["first_crossing_paper"]["epoch"] == 3
    # train: first step 4.0 s vs a typical 1.0 s step; eval: 4.0 s first vs 1.0 s later
    assert run["compile_seconds_estimate"] == pytest.approx(3.0 + 3.0)
    assert run["wall_seconds_without_compile"] == pytest.approx(run["wall_seconds"] - 6.0)


def fake_recipe(depth: int, runs: list[dict]) -> dict:
    path = REPO / "configs" / "fast" / f"resnet{depth}.yml"
    cfg = common.load_config(path, ["--loader.name=torchvision", f"--train.epochs={runs[0]['epochs']}"])
    return time_to_accuracy.recipe_record(path, cfg, runs, 92.0)


def fake_recipes() -> list[dict]:
    short = [fake_run(s, c) for s, c in enumerate(([90.0, 92.4], [91.0, 91.4]))]   # mean 91.9, crosses
    middle = [fake_run(s, c) for s, c in enumerate(([90.0, 92.0, 92.5], [91.0, 92.1, 92.3]))]  # 92.4
    long = [fake_run(s, c) for s, c in enumerate(([90.0, 92.0, 92.5, 93.1], [91.0, 92.1, 92.3, 93.0]))]
    return [fake_recipe(56, runs) for runs in (short, middle, long)]


def test_time_to_target_selects_on_mean_final_accuracy():
    recipes = fake_recipes()
    d = time_to_accuracy.depth_record(56, recipes, 92.0)
    t = d["time_to_target"]
    # the 2-epoch recipe crosses 92% in one seed but its mean final is 91.9: the 3-epoch one counts
    assert t["status"] == "reached" and t["recipe"] == 1
    assert t["wall_seconds"] == recipes[1]["wall_seconds"]
    assert t["best_mean_final_top1"] == pytest.approx(93.05)
    crossing = t["first_crossing_seconds"]  # labelled apart: it selects on the test set
    assert crossing["count"] == 2 and crossing["epoch_mean"] == 2
    p = d["time_to_paper"]
    assert d["paper_top1"] == 93.03 and p["status"] == "reached" and p["recipe"] == 2
    missed = time_to_accuracy.time_to(recipes, 94.0)
    assert missed["status"] == "not reached" and missed["recipe"] is None and missed["wall_seconds"] is None
    assert missed["best_mean_final_top1"] == pytest.approx(93.05)


@pytest.mark.slow
def test_time_to_accuracy_under_torchrun(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(port),
         "benchmarks/time_to_accuracy.py",
         *tiny_tta_args(tmp_path, "--seeds", "1", "--epochs", "1", "--target", "5")],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "tta.json").read_text())
    assert data["settings"]["world_size"] == 2 and data["environment"]["world_size"] == 2
    run = data["depths"][0]["recipes"][0]["runs"][0]
    assert run["world_size"] == 2 and run["steps"] == 256 // 64
    assert result.stdout.count("| depth | recipe |") == 1  # only rank 0 reports
    assert not list(tmp_path.glob(".tta.json.tmp*"))  # written atomically, nothing left over


# ---- report ----------------------------------------------------------------------------------------
def figure(median: float, tflops: bool = True, peak: int | None = 2**30) -> dict:
    values = [0.9 * median, median, 1.1 * median]
    rate = {"median": median, "min": values[0], "max": values[-1], "values": values}
    fig = {"images_per_s": rate, "first_step_seconds": 30.0, "compile_seconds_estimate": 29.9,
           "peak_memory_bytes": peak, "warmup_seconds": 1.0}
    if tflops:
        fig["tflops"] = {"median": median * 6 * 40e6 / 1e12}
    return fig


def fake_throughput() -> dict:
    results = []
    for depth, speed in ((20, 40000.0), (56, 16000.0)):
        model, tv, base = figure(speed), figure(speed / 2), figure(speed / 4)
        results.append({
            "depth": depth, "model": f"resnet{depth}", "params": 270000, "macs_per_image": 40_560_000,
            "train_flops_per_image": 6 * 40_560_000, "model_alone": model,
            "loaders": {
                "torchvision": {"error": None, "loader_alone": figure(30000.0, tflops=False), "end_to_end": tv,
                                "ratio_end_to_end_to_model": 0.5},
                "dali": {"error": "ModuleNotFoundError: No module named 'nvidia.dali'", "loader_alone": None,
                         "end_to_end": None, "ratio_end_to_end_to_model": None},
            },
            "seed_style": {"setting": {"name": "seed-style", "batch_size": 128, "amp": "none", "compile": False,
                                       "channels_last": False, "workers": 4},
                           "loader": "torchvision", "model_alone": figure(speed / 3), "end_to_end": base,
                           "speedup_model_alone": 3.0, "speedup_end_to_end": {"torchvision": 2.0, "dali": None}},
        })
    return {"kind": "throughput", "schema_version": 1, "complete": True,
            "environment": {"date": "2026-11-23T00:00:00+00:00", "command": "python benchmarks/throughput.py",
                            "git": {"commit": "0123456789abcdef", "dirty": False}, "torch": "2.11",
                            "cuda": "13.0", "driver": "580", "dali": None, "gpu": "NVIDIA H100 80GB HBM3",
                            "gpu_count": 1},
            "settings": {"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "depths": [20, 56],
                         "loaders": ["torchvision", "dali"], "batch_size": 512, "steps": 50, "warmup": 10,
                         "repeats": 5, "amp": "bf16", "compile": True, "channels_last": True, "workers": 8,
                         "data": "synthetic"},
            "results": results}


def fake_time_to_accuracy() -> dict:
    reached = time_to_accuracy.depth_record(56, fake_recipes(), 92.0)
    low = [fake_recipe(20, [fake_run(s, [90.0, 91.2 + s * 0.2]) for s in range(2)])]
    not_reached = time_to_accuracy.depth_record(20, low, 92.0)
    return {"kind": "time_to_accuracy", "schema_version": 1, "complete": True,
            "environment": {"date": "2026-11-23T01:00:00+00:00", "command": "python benchmarks/time_to_accuracy.py",
                            "git": {"commit": "0123456789abcdef", "dirty": True}, "torch": "2.11",
                            "gpu": "NVIDIA H100 80GB HBM3", "gpu_count": 1},
            "settings": {"target": 92.0, "seeds": 2, "data": "cifar10", "loader": None, "world_size": 1},
            "depths": [not_reached, reached]}


README = """# project

intro

<!-- BEGIN GENERATED: throughput -->
Not measured yet.
<!-- END GENERATED: throughput -->

middle

<!-- BEGIN GENERATED: time_to_accuracy -->
old text
<!-- END GENERATED: time_to_accuracy -->

outro
"""


def test_report_tables_plots_and_readme(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    common.write_json(results / "throughput-h100.json", fake_throughput())
    common.write_json(results / "tta-h100.json", fake_time_to_accuracy())
    readme = tmp_path / "docs" / "README.md"
    readme.parent.mkdir()
    readme.write_text(README)
    out = tmp_path / "out"
    assert report.main(["--results-dir", str(results), "--out-dir", str(out), "--readme", str(readme)]) == 0

    for png in ("throughput-h100.png", "tta-h100.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "| 20 | 270,000 | 40.6 M | 40,000 (36,000–44,000) |" in md
    assert "| 20 | torchvision | 30,000 (27,000–33,000) | 20,000 (18,000–22,000) | 0.50 |" in md
    assert "| 20 | dali | unavailable: ModuleNotFoundError: No module named 'nvidia.dali' |" in md
    assert "| 56 | seed-style (torchvision, 4 workers, fp32, NCHW, eager, batch 128) | — | 4,000" in md
    assert "2.0x" in md and "3.0x" in md
    # ResNet-20 ends at 91.3% on average: not reached, with the time to its paper accuracy (91.25) instead
    assert ("| 20 | resnet20.yml, 2 epochs, batch 512 | 2 | 91.30 ± 0.14% | not reached (best mean final 91.30%) "
            "| — | — | 91.25 | 28.0 ± 0.0 s |") in md
    assert "| 56 | resnet56.yml, 3 epochs, batch 512 | 2 | 92.40 ± 0.14% | 39.0 ± 0.0 s | 33.0 ± 0.0 s |" in md
    assert "![throughput: throughput-h100](throughput-h100.png)" in md

    text = readme.read_text()
    assert text.startswith("# project\n\nintro\n") and "\nmiddle\n" in text and text.endswith("outro\n")
    assert "old text" not in text and "Not measured yet." not in text
    assert text.count("<!-- BEGIN GENERATED: throughput -->") == 1
    assert "| 56 | torchvision |" in text and "not reached (best mean final 91.30%)" in text
    assert "](../out/throughput-h100.png)" in text  # linked from the README's folder
    # a second run changes nothing
    report.main(["--results-dir", str(results), "--out-dir", str(out), "--readme", str(readme)])
    assert readme.read_text() == text


def test_report_without_results_says_not_measured(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    empty = tmp_path / "none"
    empty.mkdir()
    argv = ["--results-dir", str(empty), "--out-dir", str(tmp_path / "out"), "--readme", str(readme)]
    assert report.main(argv) == 0
    text = readme.read_text()
    assert text.count("Not measured yet.") == 2 and "old text" not in text
    assert (tmp_path / "out" / "report.md").read_text().count("Not measured yet.") == 2


def test_report_refuses_a_readme_without_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="has no '<!-- BEGIN GENERATED: throughput -->'"):
        report.main(["--results-dir", str(tmp_path), "--out-dir", str(tmp_path / "o"), "--readme", str(readme)])
    assert readme.read_text() == "# no markers\n"
