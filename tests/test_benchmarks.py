"""The benchmark scripts on the CPU with tiny settings: complete JSON with figures computed right,
loaders that cannot run reported as errors, impossible figures flagged, compile time measured apart,
the time-to-accuracy selection rules, and the report's tables, plots, curves and README rewrite."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
from conftest import README_TEMPLATE, REPO, figures, free_port, tables

from fastcifar import pipelines
from fastcifar.bench import common, report, throughput, time_to_accuracy
from fastcifar import config as config_lib
from fastcifar import flops

TINY_THROUGHPUT = ["--device", "cpu", "--data", "synthetic", "--synthetic-size", "256", "--depths", "8",
                   "--steps", "2", "--warmup", "1", "--repeats", "2", "--train.compile=false", "--loader.workers=0"]


def run_module(name: str, *args: str, timeout: int = 300):
    return subprocess.run([sys.executable, "-m", f"fastcifar.bench.{name}", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def assert_figure(fig: dict, batch: int, warmup: int, counts: dict | None = None):
    assert "error" not in fig, fig.get("error")
    rate = fig["images_per_s"]
    assert len(rate["values"]) == 2 and all(positive(v) for v in rate["values"])
    assert rate["min"] <= rate["median"] <= rate["max"]
    assert positive(fig["first_step_seconds"]) and positive(fig["warmup_seconds"])
    assert "peak_memory_bytes" not in fig  # CPU: no CUDA fields
    assert (fig["batch_size"], fig["steps"], fig["warmup"], fig["repeats"]) == (batch, 2, warmup, 2)
    assert ("tflops" in fig) == (counts is not None)
    if counts is not None:
        assert fig["tflops"]["median"] == pytest.approx(rate["median"] * 6 * counts["macs_per_image"] / 1e12)
        moved = rate["median"] * flops.bytes_per_image(counts, batch, 4)  # fp32 on the CPU
        assert fig["bytes_per_s"]["median"] == pytest.approx(moved)
        assert "bandwidth_fraction" not in fig  # no known peak for a CPU


# ---- throughput ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_throughput_smoke_writes_every_figure(tmp_path):
    out = tmp_path / "tp.json"
    result = run_module("throughput", *TINY_THROUGHPUT, "--synthetic-size", "128", "--batch-sizes", "32", "64",
                        "--loaders", "torchvision", "--baseline-batch-size", "16", "--baseline-workers", "1",
                        "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["kind"] == "throughput" and data["complete"] is True
    for key in ("date", "command", "git", "torch", "torchvision", "dali", "cpu", "cpu_count"):
        assert key in data["environment"], key
    assert not {"cuda", "cudnn", "driver", "gpu", "gpus", "gpu_count"} & set(data["environment"])  # a CPU run
    assert "benchmarks/throughput.py" in data["environment"]["command"] or "throughput" in data["environment"]["command"]
    host = socket.gethostname()
    assert len(host) <= 3 or host not in out.read_text(), "the results must not name the machine"
    s = data["settings"]
    assert (s["device"], s["batch_sizes"], s["loaders"], s["workers"]) == ("cpu", [32, 64], ["torchvision"], 0)
    assert "peak_bandwidth" not in s and "cuda_graph" not in s["config"]
    assert s["config"]["compile"] is False and "--train.compile=false" in s["overrides"]
    # printed: GFLOP/s on a CPU (TFLOP/s would read 0.0), and no GPU-only columns
    model_table, loader_table = tables(result.stdout)
    assert "TFLOP/s" not in result.stdout and "peak GiB" not in model_table[0] and "CUDA graph" not in result.stdout
    median = data["results"][0]["batches"][0]["model_alone"]["tflops"]["median"]
    assert figures(model_table[0]["GFLOP/s"]) == [pytest.approx(1e3 * median, abs=0.05)]

    [r] = data["results"]
    counts = flops.count("resnet8")
    assert {k: r[k] for k in counts} == counts and r["depth"] == 8
    assert [b["batch_size"] for b in r["batches"]] == [32, 64]
    for b in r["batches"]:
        batch = b["batch_size"]
        model = b["model_alone"]
        assert_figure(model, batch, 1, counts)
        assert model["compile_seconds"] is None  # compile off: no compile figure at all
        assert b["bytes_per_image"] == pytest.approx(flops.bytes_per_image(counts, batch, 4))
        e = b["loaders"]["torchvision"]
        assert e["error"] is None
        assert_figure(e["loader_alone"], batch, 128 // batch)  # at least an epoch of warm-up
        assert_figure(e["end_to_end"], batch, 128 // batch, counts)
        assert e["ratio_end_to_end_to_model"] == pytest.approx(
            e["end_to_end"]["images_per_s"]["median"] / model["images_per_s"]["median"])
        assert (e["suspect"] is not None) == (e["ratio_end_to_end_to_model"] > throughput.SUSPECT_RATIO)
    base = r["seed_style"]
    assert base["setting"]["batch_size"] == 16 and base["setting"]["amp"] == "none"
    assert_figure(base["model_alone"], 16, 1, counts)
    assert_figure(base["end_to_end"], 16, 128 // 16, counts)
    assert base["speedup_model_alone"] == pytest.approx(
        r["batches"][0]["model_alone"]["images_per_s"]["median"] / base["model_alone"]["images_per_s"]["median"])


@pytest.mark.slow
def test_throughput_writes_its_json_as_each_figure_is_done(tmp_path, monkeypatch):
    """A run killed by a time limit keeps what it measured: the file is rewritten after every figure."""
    out, snapshots = tmp_path / "tp.json", []
    write = common.write_json

    def spy(path, data):
        snapshots.append(json.loads(json.dumps(data)))
        return write(path, data)

    monkeypatch.setattr(common, "write_json", spy)
    argv = [*TINY_THROUGHPUT, "--synthetic-size", "64", "--batch-sizes", "32", "--loaders", "torchvision",
            "--baseline-batch-size", "16", "--baseline-workers", "0", "--repeats", "1", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["throughput.py", *argv])
    assert throughput.main(argv) == 0

    def done(snapshot):  # the figures measured so far, in order
        r = snapshot["results"][0]
        b = (r.get("batches") or [{}])[0]
        loader = (b.get("loaders") or {}).get("torchvision") or {}
        return [k for k, f in (("model alone", b.get("model_alone")), ("loader alone", loader.get("loader_alone")),
                               ("end to end", loader.get("end_to_end")), ("seed-style", r.get("seed_style"))) if f]

    seen = [done(snap) for snap in snapshots]
    assert seen[:4] == [["model alone"], ["model alone", "loader alone"],
                        ["model alone", "loader alone", "end to end"],
                        ["model alone", "loader alone", "end to end", "seed-style"]], seen
    assert [snap["complete"] for snap in snapshots] == [False] * (len(snapshots) - 1) + [True]
    for snap in snapshots:  # a partial file still renders
        assert "incomplete run" in report.throughput_markdown(snap) or snap["complete"]
    assert json.loads(out.read_text()) == snapshots[-1]


def fig(median: float) -> dict:
    return {"images_per_s": {"median": median, "min": median, "max": median, "values": [median]}}


def test_an_end_to_end_faster_than_the_model_alone_is_flagged():
    model = fig(1000.0)
    suspect = throughput.flag({"end_to_end": fig(3660.0)}, model)
    assert suspect["ratio_end_to_end_to_model"] == pytest.approx(3.66) and "3.66" in suspect["suspect"]
    fine = throughput.flag({"end_to_end": fig(1050.0)}, model)  # within noise of 1.0
    assert fine["ratio_end_to_end_to_model"] == pytest.approx(1.05) and fine.get("suspect") is None
    missing = throughput.flag({"end_to_end": {"error": "x"}}, model)
    assert missing["ratio_end_to_end_to_model"] is None and missing.get("suspect") is None


class FakeStep:
    """A step whose first call stands for a compile: cold the first time built, warm after."""

    built = 0

    def __init__(self, runtime):
        FakeStep.built += 1
        self.runtime, self.calls, self.first = runtime, 0, 0.4 if FakeStep.built == 1 else 0.15

    def __call__(self, images, labels):
        time.sleep(self.first if self.calls == 0 else 0.001)
        self.calls += 1


def test_compile_time_is_measured_cold_and_warm_and_kept_out_of_images_per_s(monkeypatch):
    from fastcifar.training.engine import Runtime

    runtime = Runtime(torch.device("cpu"), None, True, "default", False)
    monkeypatch.setattr(throughput, "build_step", lambda cfg, device: FakeStep(runtime))
    FakeStep.built = 0
    args = throughput.parse_args([*TINY_THROUGHPUT, "--batch-sizes", "4", "--baseline-batch-size", "4"])
    cfg = throughput.make_config(args, 8, "torchvision", 4)
    step, model = throughput.model_alone(args, cfg, flops.count("resnet8"))  # the runtime compiles
    assert FakeStep.built == 2 and step.first == 0.15  # the warm one is kept
    c = model["compile_seconds"]
    assert 0.35 < c["cold"] < 0.6 and 0.1 < c["warm"] < 0.3
    assert model["step_ms"]["max"] < 100  # the compiling first call is not in the timed steps


@pytest.mark.slow
def test_throughput_reports_a_loader_that_cannot_be_built(tmp_path, monkeypatch, capsys):
    def broken(spec):
        raise ImportError("No module named 'nvidia.dali'")

    monkeypatch.setitem(pipelines.LOADERS, "dali", broken)  # as on a machine without DALI
    monkeypatch.delitem(pipelines.LOADERS, "torch-gpu")  # as a backend whose module failed to import
    out = tmp_path / "tp.json"
    assert throughput.main([*TINY_THROUGHPUT, "--batch-sizes", "32", "--loaders", "dali", "torch-gpu",
                            "--no-baseline", "--out", str(out)]) == 0
    [b] = json.loads(out.read_text())["results"][0]["batches"]
    assert b["loaders"]["dali"]["error"] == "ImportError: No module named 'nvidia.dali'"
    assert b["loaders"]["torch-gpu"]["error"] == "KeyError: 'torch-gpu'"  # the config allows it, none registered
    assert positive(b["model_alone"]["images_per_s"]["median"])
    assert "unavailable: ImportError" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--device", "cpu", "--train.amp=fp16"], "fp16"),
    (["--depths", "7"], "depth 7 is not 6n+2"),
    (["--loaders", "nope"], "invalid choice: 'nope'"),
    (["--steps", "0"], "expected a positive integer"),
    (["--device", "cpu", "--batch-sizes", "512", "--synthetic-size", "100"], "larger than --synthetic-size"),
    (["--device", "cpu", "--train.epochz=3"], "train.epochz"),
    (["--device", "cpu", "extra"], "unrecognized argument 'extra'"),
])
def test_throughput_bad_options_give_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        throughput.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("throughput.py: error:")


def test_throughput_without_the_data_set_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        throughput.main(["--device", "cpu", "--data", "cifar10", f"--data.root={tmp_path}", "--data.download=false"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"throughput.py: error: CIFAR-10 not found under {tmp_path}: expected {tmp_path}/cifar10/train.npz, "
        f"{tmp_path}/cifar-10-batches-py/ or {tmp_path}/cifar-10-python.tar.gz (or set data.download=true)"]


def test_peak_bandwidth_by_device_name():
    assert flops.peak_bandwidth("NVIDIA H200") == 4.8e12
    assert flops.peak_bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
    assert flops.peak_bandwidth("NVIDIA H100 PCIe") == 2.0e12
    assert flops.peak_bandwidth("cpu") is None


@pytest.mark.slow
def test_release_lets_every_depth_compile_instead_of_running_eager():
    """Every depth shares CifarResNet.forward; past dynamo's bound of graphs per code object (8) the
    rest would run eager, silently. throughput.py and time_to_accuracy.py release between runs."""
    from torch._dynamo.utils import counters

    from fastcifar.models import build_model

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
            "--loader.name=torchvision", "--run-root", str(tmp_path / "runs"), "--out", str(tmp_path / "tta.json"),
            "--train.batch_size=64", "--loader.workers=0", "--loader.eval_batch_size=50",
            "--optim.lr=0.05", "--train.amp=none", "--train.compile=false", *extra]


@pytest.mark.slow
def test_time_to_accuracy_evaluates_only_the_final_epoch(tmp_path):
    result = run_module("time_to_accuracy", *tiny_tta_args(tmp_path, "--seeds", "1", "--epochs", "2", "--target", "5"))
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "tta.json").read_text())
    assert data["kind"] == "time_to_accuracy" and data["complete"] is True
    s = data["settings"]
    assert (s["target"], s["seeds"], s["depths"], s["epochs"], s["curves"]) == (5.0, 1, [8], [2], False)
    [d] = data["depths"]
    [recipe] = d["recipes"]
    assert (recipe["epochs"], recipe["batch_size"], recipe["seeds"], recipe["loader"]) == (2, 64, 1, "torchvision")
    for i, run in enumerate(recipe["runs"]):
        assert run["seed"] == i and run["epochs"] == 2 and run["steps"] == 2 * (256 // 64)
        assert [p["top1"] is None for p in run["curve"]] == [True, False]  # the result uses only the final
        assert run["evaluated_epochs"] == 1 and run["first_crossing"] is None
        assert run["final_top1"] == run["curve"][-1]["top1"]
        assert run["compile_seconds"] is None and run["wall_seconds_without_compile"] == run["wall_seconds"]
    assert recipe["final_top1"]["values"] == [r["final_top1"] for r in recipe["runs"]]
    t = d["time_to_target"]  # the mean over seeds is checked on made-up runs below
    assert t["status"] == "reached" and t["recipe"] == 0 and t["wall_seconds"]["values"] == [recipe["runs"][0]["wall_seconds"]]


@pytest.mark.slow
def test_time_to_accuracy_curves_evaluate_every_epoch(tmp_path):
    assert time_to_accuracy.main(tiny_tta_args(tmp_path, "--seeds", "1", "--epochs", "2", "--target", "5",
                                               "--curves")) == 0
    [run] = json.loads((tmp_path / "tta.json").read_text())["depths"][0]["recipes"][0]["runs"]
    assert run["evaluated_epochs"] == 2 and all(0 <= p["top1"] <= 100 for p in run["curve"])
    crossing = run["first_crossing"]  # the learnable synthetic set is well above 5% after an epoch
    assert crossing["epoch"] == 1 and crossing["wall_seconds"] == run["curve"][0]["wall_seconds"]


@pytest.mark.slow
def test_time_to_accuracy_a_signal_in_a_runs_last_epoch_ends_the_script(tmp_path, capsys, monkeypatch):
    """The run itself finishes, but the next seed must not start: the signal is not swallowed."""
    import signal

    from fastcifar.training.trainer import Trainer

    evaluate = Trainer.evaluate

    def signalled_evaluation(self):  # after the run's last step: a signal there stops no step
        os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(self)

    monkeypatch.setattr(Trainer, "evaluate", signalled_evaluation)
    before = signal.getsignal(signal.SIGTERM)
    assert time_to_accuracy.main(tiny_tta_args(tmp_path, "--seeds", "2", "--epochs", "1")) == 3
    err = capsys.readouterr().err
    assert "time_to_accuracy.py: stopped by a signal" in err and err.strip().endswith("no recipe was finished")
    assert [p.name for p in (tmp_path / "runs" / "resnet8" / "e1").iterdir()] == ["seed0"]
    assert signal.getsignal(signal.SIGTERM) == before


def test_time_to_accuracy_keeps_the_seeds_finished_before_a_stop(tmp_path, capsys, monkeypatch):
    """The file is written after every run: a command stopped in its second seed keeps the first, marked
    incomplete, so a time limit loses one seed at most; --first-seed names the seeds."""
    import signal

    from fastcifar.training.trainer import Trainer

    evaluate, calls = Trainer.evaluate, []

    def second_run_signalled(self):
        calls.append(self.cfg.train.seed)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(self)

    monkeypatch.setattr(Trainer, "evaluate", second_run_signalled)
    argv = tiny_tta_args(tmp_path, "--seeds", "2", "--first-seed", "4", "--epochs", "1")
    assert time_to_accuracy.main(argv) == 3 and calls == [4, 5]
    data = json.loads((tmp_path / "tta.json").read_text())
    [recipe] = data["depths"][0]["recipes"]
    assert data["complete"] is False and [r["seed"] for r in recipe["runs"]] == [4] and recipe["seeds"] == 1
    assert data["settings"]["first_seed"] == 4
    assert "recipes done are in" in capsys.readouterr().err


def test_time_to_accuracy_bad_options_give_one_line(tmp_path, capsys):
    for argv, message in ((["--target", "120"], "percentage in (0, 100]"),
                          (["--depths", "8"], "resnet8.yml (pass --config FILE)"),
                          (["--train.epochs"], "unrecognized argument '--train.epochs'")):
        with pytest.raises(SystemExit) as exc:
            time_to_accuracy.main(argv)
        assert exc.value.code == 2
        assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert time_to_accuracy.main(tiny_tta_args(tmp_path, "--seeds", "1", "--train.batch_size=-1")) == 2
    assert "time_to_accuracy.py: error: train.batch_size" in capsys.readouterr().err


def fake_run(seed: int, top1s: list[float], epoch_s: float = 10.0, compile_s: float | None = 6.0) -> dict:
    """A run record as time_to_accuracy.run_record makes it, from per-epoch accuracies."""
    records = [{"epoch": e, "wall_seconds": e * (epoch_s + 1), "train_seconds": e * epoch_s, "top1": top1,
                "train_loss": 1.0} for e, top1 in enumerate(top1s, 1)]
    summary = {"epochs": len(top1s), "steps": 10 * len(top1s), "train_seconds": len(top1s) * epoch_s,
               "final_top1": top1s[-1], "first_step_seconds": 4.0, "setup_seconds": 1.0,
               "compile_seconds": compile_s, "device": "cpu", "world_size": 1, "amp": "none",
               "compile": compile_s is not None, "channels_last": True}
    cfg = config_lib.load(REPO / "configs" / "fast" / "resnet56.yml",
                          [f"--train.seed={seed}", "--loader.name=torchvision", f"--train.epochs={len(top1s)}"])
    return time_to_accuracy.run_record(cfg, summary, records, 92.0)


def fake_recipe(depth: int, runs: list[dict], *tuned: str) -> dict:
    path = REPO / "configs" / "fast" / f"resnet{depth}.yml"
    cfg = config_lib.load(path, ["--loader.name=torchvision", f"--train.epochs={runs[0]['epochs']}", *tuned])
    return time_to_accuracy.recipe_record(path, cfg, runs)


def fake_recipes() -> list[dict]:
    short = [fake_run(s, c) for s, c in enumerate(([90.0, 92.4], [91.0, 91.4]))]   # mean 91.9, crosses
    middle = [fake_run(s, c) for s, c in enumerate(([90.0, 92.0, 92.5], [91.0, 92.1, 92.3]))]  # 92.4
    long = [fake_run(s, c) for s, c in enumerate(([90.0, 92.0, 92.5, 93.1], [91.0, 92.1, 92.3, 93.0]))]
    return [fake_recipe(56, runs) for runs in (short, middle, long)]


def test_compile_time_is_subtracted_as_measured():
    run = fake_run(0, [80.0, 92.5, 93.1])
    assert run["wall_seconds"] == 33.0 and run["wall_seconds_without_compile"] == 27.0
    assert run["first_crossing"]["epoch"] == 2
    off = fake_run(0, [80.0, 92.5], compile_s=None)
    assert off["compile_seconds"] is None and off["wall_seconds_without_compile"] == off["wall_seconds"]


def test_time_to_target_selects_on_mean_final_accuracy():
    recipes = fake_recipes()
    d = time_to_accuracy.depth_record(56, recipes, 92.0)
    t = d["time_to_target"]
    # the 2-epoch recipe crosses 92% in one seed but its mean final is 91.9: the 3-epoch one counts
    assert t["status"] == "reached" and t["recipe"] == 1 and t["wall_seconds"] == recipes[1]["wall_seconds"]
    assert t["best_mean_final_top1"] == pytest.approx(93.05)
    assert recipes[0]["first_crossing_seconds"]["count"] == 1  # recorded apart: it selects on the test set
    p = d["time_to_paper"]
    assert d["paper_top1"] == 93.03 and p["status"] == "reached" and p["recipe"] == 2
    missed = time_to_accuracy.time_to(recipes, 94.0)
    assert missed["status"] == "not reached" and missed["recipe"] is None and missed["wall_seconds"] is None


def tta_result(runs: list[dict], date: str, target: float = 92.0, first_seed: int = 0, tuned=()) -> dict:
    settings = {"target": target, "seeds": len(runs), "first_seed": first_seed, "depths": [56], "epochs": None,
                "curves": False, "data": "cifar10", "overrides": [], "config": None, "device": "cuda",
                "device_name": "NVIDIA H100 80GB HBM3", "world_size": 1, "run_root": f"runs/{date}"}
    return {"kind": "time_to_accuracy", "settings": settings, "complete": True, "environment": {"date": date},
            "depths": [time_to_accuracy.depth_record(56, [fake_recipe(56, runs, *tuned)], target)]}


def test_results_of_single_seeds_combine_into_one(tmp_path):
    """One seed per command (--first-seed): report.py shows them as one 3-seed result, the mean and std and
    the time to target recomputed over all seeds; a seed run again counts once, the newest; other settings
    stay apart."""
    seed0, seed1 = fake_run(0, [90.0, 92.4]), fake_run(1, [91.0, 91.8])
    seed2_old, seed2 = fake_run(2, [80.0, 85.0]), fake_run(2, [91.0, 92.4], epoch_s=20.0)
    files = [(tmp_path / "a.json", tta_result([seed0], "2026-12-08T01:00:00+00:00")),
             (tmp_path / "b.json", tta_result([seed1, seed2_old], "2026-12-08T02:00:00+00:00", first_seed=1)),
             (tmp_path / "c.json", tta_result([seed2], "2026-12-08T03:00:00+00:00", first_seed=2)),
             (tmp_path / "other.json", tta_result([seed0], "2026-12-08T04:00:00+00:00", target=94.0)),
             # the same file name and settings, but its recipe was tuned since: not averaged with the others
             (tmp_path / "tuned.json", tta_result([fake_run(3, [91.0, 93.0])], "2026-12-09T01:00:00+00:00",
                                                  first_seed=3, tuned=["--optim.weight_decay=0.001"]))]
    combined = dict(time_to_accuracy.combine(files))
    assert set(combined) == {tmp_path / "tuned.json", tmp_path / "other.json"}
    one = combined[tmp_path / "tuned.json"]
    assert one["combined_from"] == ["a.json", "b.json", "c.json", "tuned.json"]
    assert one["settings"]["seed_list"] == [0, 1, 2, 3]
    recipe, tuned = one["depths"][0]["recipes"]
    assert [r["seed"] for r in tuned["runs"]] == [3] and tuned["recipe_digest"] != recipe["recipe_digest"]
    assert [r["seed"] for r in recipe["runs"]] == [0, 1, 2] and recipe["seeds"] == 3
    # final top-1 92.4, 91.8, 92.4 by hand: mean 92.2, sample std sqrt(((0.2^2) * 2 + 0.4^2) / 2) = 0.3464
    assert recipe["final_top1"]["mean"] == pytest.approx(92.2)
    assert recipe["final_top1"]["std"] == pytest.approx(0.34641, abs=1e-4)
    # wall seconds: 2 epochs x 11 s, 2 x 11 s, 2 x 21 s -> mean 28.667; the tuned recipe's one seed: 2 x 11 s,
    # final 93.0: both reach 92%, the tuned one sooner, so it is the time to target
    assert recipe["wall_seconds"]["mean"] == pytest.approx(86 / 3)
    t = one["depths"][0]["time_to_target"]
    assert (t["status"], t["recipe"]) == ("reached", 1) and t["wall_seconds"]["mean"] == pytest.approx(22.0)
    assert combined[tmp_path / "other.json"] is files[3][1]

    results = tmp_path / "results"
    for path, data in files[:3]:
        common.write_json(results / path.name, data)
    readme = tmp_path / "README.md"
    readme.write_text(README_TEMPLATE)
    assert report.main(["--results-dir", str(results), "--out-dir", str(tmp_path), "--readme", str(readme),
                        "--no-plots"]) == 0
    text = readme.read_text()
    assert "3 seed(s) per recipe" in text and "Combined from 3 result files (seeds 0, 1, 2): a.json, b.json, c.json." in text
    [row] = tables(text.split("<!-- BEGIN GENERATED: time_to_accuracy -->")[1])[0:1][0]
    assert row["seeds"] == "3" and figures(row["final top-1"]) == pytest.approx([92.2, 0.35], abs=0.006)


@pytest.mark.slow
def test_time_to_accuracy_under_torchrun(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
         "-m", "fastcifar.bench.time_to_accuracy", *tiny_tta_args(tmp_path, "--seeds", "1", "--epochs", "1", "--target", "5")],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "tta.json").read_text())
    assert data["settings"]["world_size"] == 2 and data["environment"]["world_size"] == 2
    run = data["depths"][0]["recipes"][0]["runs"][0]
    assert run["world_size"] == 2 and run["steps"] == 256 // 64
    assert result.stdout.count("| depth | recipe |") == 1  # only rank 0 reports
    assert not list(tmp_path.glob(".tta.json.tmp*"))  # written atomically, nothing left over


# ---- report ----------------------------------------------------------------------------------------
def figure(median: float, compile_s: dict | None = None) -> dict:
    return {"images_per_s": {"median": median, "min": 0.9 * median, "max": 1.1 * median, "values": [median]},
            "tflops": {"median": median * 6 * 40e6 / 1e12}, "peak_memory_bytes": 2**30, "compile_seconds": compile_s}


def fake_throughput(compiled: bool = True) -> dict:
    results = []
    for depth, speed in ((20, 40000.0), (56, 16000.0)):
        model = figure(speed, {"cold": 30.0, "warm": 4.0} if compiled else None)
        tv = {"error": None, "loader_alone": figure(30000.0), "end_to_end": figure(speed / 2),
              "ratio_end_to_end_to_model": 0.5, "suspect": None}
        dali = {"error": "ModuleNotFoundError: No module named 'nvidia.dali'", "loader_alone": None,
                "end_to_end": None, "ratio_end_to_end_to_model": None, "suspect": None}
        gpu = throughput.flag({"error": None, "loader_alone": figure(1e6), "end_to_end": figure(speed * 3.66)}, model)
        results.append({"depth": depth, "params": 270000, "macs_per_image": 40_560_000, "batches": [
            {"batch_size": 512, "bytes_per_image": 4e6, "model_alone": model,
             "loaders": {"torchvision": tv, "dali": dali, "torch-gpu": gpu}}], "seed_style": None})
    return {"kind": "throughput", "complete": True,
            "environment": {"date": "2026-11-23T00:00:00+00:00", "command": "python benchmarks/throughput.py",
                            "torch": "2.11", "gpu": "NVIDIA H100 80GB HBM3", "gpu_count": 1},
            "settings": {"device_name": "NVIDIA H100 80GB HBM3", "loaders": ["torchvision", "dali", "torch-gpu"],
                         "steps": 50, "warmup": 10, "repeats": 5, "workers": 8, "data": "synthetic",
                         "peak_bandwidth": 3.35e12, "config": {"amp": "bf16", "compile": compiled,
                                                               "channels_last": True, "cuda_graph": "false"}},
            "results": results}


def fake_time_to_accuracy() -> dict:
    low = [fake_recipe(20, [fake_run(s, [90.0, 91.2 + s * 0.2]) for s in range(2)])]
    return {"kind": "time_to_accuracy", "complete": True,
            "environment": {"date": "2026-11-23T01:00:00+00:00", "command": "python benchmarks/time_to_accuracy.py"},
            "settings": {"target": 92.0, "seeds": 2, "data": "cifar10", "world_size": 1},
            "depths": [time_to_accuracy.depth_record(20, low, 92.0),
                       time_to_accuracy.depth_record(56, fake_recipes(), 92.0)]}




@pytest.mark.slow
def test_report_tables_plots_and_readme(tmp_path):
    results = tmp_path / "results"
    common.write_json(results / "throughput-h100.json", fake_throughput())
    common.write_json(results / "throughput-off.json", {**fake_throughput(compiled=False),
                                                          "environment": {"date": "2026-11-22"}})
    common.write_json(results / "tta-h100.json", fake_time_to_accuracy())
    readme = tmp_path / "docs" / "README.md"
    readme.parent.mkdir()
    readme.write_text(README_TEMPLATE)
    out = tmp_path / "out"
    assert report.main(["--results-dir", str(results), "--out-dir", str(out), "--readme", str(readme)]) == 0
    for png in ("throughput-h100.png", "throughput-off.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    (model_on, loaders_on), (model_off, _) = (tables(report.throughput_markdown(fake_throughput(compiled)))
                                              for compiled in (True, False))
    model = model_on[0]
    assert [figures(model[k]) for k in ("depth", "batch", "params", "MACs/image", "MB/image (est.)")] == [
        [20], [512], [270000], [40.6], [4.0]]
    assert figures(model["model alone (img/s)"]) == pytest.approx([40000, 36000, 44000])
    assert figures(model["TFLOP/s"]) == pytest.approx([40000 * 6 * 40e6 / 1e12], abs=0.05)
    assert figures(model["compile (s)"]) == [30.0, 4.0] and figures(model["peak GiB"]) == [1.0]
    assert figures(model_off[0]["compile (s)"]) == []  # compile off: its column is empty
    loaders, ratio = {r["loader"]: r for r in loaders_on if r["depth"] == "20"}, "end to end / model alone"
    assert figures(loaders["torchvision"]["end to end (img/s)"]) == pytest.approx([20000, 18000, 22000])
    assert figures(loaders["torch-gpu"][ratio]) == [3.66] and "suspect" in loaders["torch-gpu"][ratio]
    assert figures(loaders["torchvision"][ratio]) == [0.5] and "suspect" not in loaders["torchvision"][ratio]
    assert "nvidia.dali" in loaders["dali"]["loader alone (img/s)"] and not figures(loaders["dali"][ratio])
    tta = {r["depth"]: r for r in tables(report.time_to_accuracy_markdown(fake_time_to_accuracy()))[0]}
    assert tta["20"]["time to 92%"].startswith("not reached") and figures(tta["20"]["time to 92%"]) == [91.3]
    assert figures(tta["20"]["without compile"]) == [] and figures(tta["20"]["paper top-1"]) == [91.25]
    assert figures(tta["20"]["time to paper top-1"]) == [22.0, 0.0]  # the time to its paper accuracy instead
    assert figures(tta["56"]["final top-1"]) == pytest.approx([92.4, 0.14], abs=0.006)
    assert [figures(tta["56"][k]) for k in ("time to 92%", "without compile", "time to paper top-1")] == [
        [33.0, 0.0], [27.0, 0.0], [44.0, 0.0]]

    text = readme.read_text()
    assert text.startswith("# project\n\nintro\n") and "\nmiddle\n" in text and text.endswith("outro\n")
    assert "old text" not in text and text.count("<!-- BEGIN GENERATED: throughput -->") == 1
    assert "](../out/throughput-h100.png)" in text  # linked from the README's folder
    assert text.index("throughput-h100.png") < text.index("throughput-off.png")  # newest first
    report.main(["--results-dir", str(results), "--out-dir", str(out), "--readme", str(readme)])
    assert readme.read_text() == text  # a second run changes nothing


def test_throughput_plot_bars_read_as_ratios_and_mark_suspect_figures():
    fig = report.throughput_figure(fake_throughput())
    assert len(fig.axes) == 2  # one panel per depth and batch
    for ax, speed in zip(fig.axes, (40000.0, 16000.0)):
        assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0  # heights in the ratio of the figures
        heights = [patch.get_height() for patch in ax.patches]
        assert heights == pytest.approx([speed, speed / 2, speed * 3.66])  # model, torchvision, torch-gpu; no dali
        assert [t.get_text() for t in ax.get_xticklabels()] == ["model alone", "torchvision\nend to end",
                                                                "torch-gpu\nend to end"]
        assert [patch.get_hatch() for patch in ax.patches] == [None, None, "//"]
        assert [t.get_text() for t in ax.texts] == ["0.50x", "3.66x\nSUSPECT"]


def test_report_marks_a_recorded_command_that_todays_script_rejects():
    old = fake_throughput()
    old["environment"]["command"] = "python3 benchmarks/throughput.py --depths 20 --batch-size 1024 --workers 16"
    text = report.throughput_markdown(old)
    assert "today's throughput.py rejects it: unrecognized argument '--batch-size'" in text
    current = fake_throughput()
    current["environment"]["command"] = "python benchmarks/throughput.py --depths 20 --batch-sizes 1024 --loader.workers=16"
    assert "rejects" not in report.throughput_markdown(current)


def test_report_without_results_says_not_measured(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README_TEMPLATE)
    (tmp_path / "none").mkdir()
    argv = ["--results-dir", str(tmp_path / "none"), "--out-dir", str(tmp_path / "out"), "--readme", str(readme)]
    assert report.main(argv) == 0
    assert readme.read_text().count("Not measured yet.") == 6 and "old text" not in readme.read_text()


def test_report_refuses_a_readme_without_markers(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(SystemExit):
        report.main(["--results-dir", str(tmp_path), "--out-dir", str(tmp_path / "o"), "--readme", str(readme)])
    assert "has no '<!-- BEGIN GENERATED: throughput -->'" in capsys.readouterr().err
    assert readme.read_text() == "# no markers\n"


def test_report_draws_training_curves(tmp_path, monkeypatch):
    runs = []
    for name, lr in (("a", 0.1), ("b", 0.2)):
        run = tmp_path / name
        run.mkdir()
        lines = [{"event": "resume", "epoch": 0}]
        for epoch in (1, 2, 3):
            lines += [{"step": 2 * epoch - 1, "epoch": epoch - 0.5, "loss": 2.0 / epoch, "lr": lr, "images_per_s": 9.0},
                      {"epoch": epoch, "train_loss": 2.0 / epoch, "lr": lr, "top1": 30.0 * epoch if epoch != 2 else None}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        if name == "a":  # a run directory names its model in config.yaml; b has none: its folder's name
            (run / "config.yaml").write_text("model:\n  name: resnet8\n")
        runs.append(run)
    fig = report.curves_figure(runs)
    for ax in fig.axes:  # every panel names the runs' models
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["resnet8 (a)", "b"]
    loss, lr, top1 = fig.axes
    assert [list(line.get_xydata()[:, 1]) for line in loss.get_lines()] == [[2.0, 1.0, 2.0 / 3]] * 2
    assert [list(line.get_xydata()[:, 1]) for line in lr.get_lines()] == [[0.1] * 3, [0.2] * 3]
    assert [line.get_xydata().tolist() for line in top1.get_lines()] == [[[1, 30.0], [3, 90.0]]] * 2  # epoch 2 unevaluated
    png = tmp_path / "curves.png"
    assert report.main(["--runs", *map(str, runs), "--curves", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    drawn = []  # the series plotted, not only that a PNG exists
    monkeypatch.setattr(report, "save", lambda fig, path: drawn.append(fig) or path)
    report.curves_plot(runs, png)
    panels = [[(list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()] for ax in drawn[0].axes]
    steps = [0.5, 1.5, 2.5]
    for i, lr in enumerate((0.1, 0.2)):  # per run: step losses, step rates, evaluated epochs' top-1
        assert panels[0][i] == (steps, [2.0, 1.0, 2.0 / 3]), "train loss panel"
        assert panels[1][i] == (steps, [lr] * 3), "learning-rate panel"
        assert panels[2][i] == ([1, 3], [30.0, 90.0]), "test top-1 panel"
    with pytest.raises(SystemExit):
        report.main(["--runs", str(tmp_path / "missing"), "--curves", str(png)])


def test_environment_names_the_cpu_and_the_cpus_usable():
    from fastcifar.environment import environment

    env = environment()
    assert env["cpu_count_usable"] >= 1
    if os.path.isfile("/proc/cpuinfo"):
        assert env["cpu"]


def test_a_tree_without_git_records_the_commit_it_is_given(monkeypatch):
    """A GPU machine gets a copy of the tree without .git: the commit comes from FASTCIFAR_COMMIT and says
    so; in a clone, git's own answer wins over the variable."""
    from fastcifar import environment as env_lib

    sha = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("FASTCIFAR_COMMIT", sha)
    in_clone = env_lib.environment()["git"]
    if in_clone["commit"] is not None:
        assert in_clone["commit"] != sha and "source" not in in_clone
    real_run = env_lib._run
    monkeypatch.setattr(env_lib, "_run", lambda cmd: None if cmd[0] == "git" else real_run(cmd))
    assert env_lib.environment()["git"] == {"commit": sha, "dirty": None, "source": "FASTCIFAR_COMMIT"}
    monkeypatch.setenv("FASTCIFAR_COMMIT", "HEAD")  # not a commit id: not recorded as one
    assert env_lib.environment()["git"] == {"commit": None, "dirty": None, "source": "FASTCIFAR_COMMIT",
                                            "not_a_commit": "HEAD"}
    monkeypatch.delenv("FASTCIFAR_COMMIT")
    assert env_lib.environment()["git"] == {"commit": None, "dirty": None}


# ---- CPU side by side ------------------------------------------------------------------------------
@pytest.mark.slow
def test_cpu_side_by_side_measures_run_py_against_the_baseline(tmp_path):
    out = tmp_path / "sbs.json"
    result = run_module("cpu_side_by_side", "--depth", "8", "--images", "64", "--batch-size", "32",
                        "--baseline-steps", "2", "--repeats", "1", "--conditions", "idle", "--loaders", "torchvision",
                        "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["kind"] == "cpu_side_by_side" and data["complete"] is True
    assert "cpu_side_by_side" in data["environment"]["command"] and data["environment"]["cpu_count_usable"] >= 1
    idle = data["figures"]["idle"]
    assert set(idle) == {"baseline", "run.py torchvision"} and "busy" not in data["figures"]
    for fig in idle.values():
        assert fig["errors"] == [] and len(fig["values"]) == 1 and positive(fig["median"])
        assert fig["min"] == fig["median"] == fig["max"]
    [sample] = data["samples"]["idle"]["run.py torchvision"]
    assert "torch threads" in sample["start_line"] and sample["torch_threads"] >= 1
    ratio = idle["run.py torchvision"]["median"] / idle["baseline"]["median"]
    assert data["verdicts"]["idle/run.py torchvision"] == {"ratio_to_baseline": pytest.approx(ratio),
                                                         "at_least_baseline": ratio >= 1.0}
    assert f"idle/run.py torchvision: {ratio:.2f}x the seed-style baseline" in result.stdout
    [row] = tables(report.cpu_side_by_side_markdown(data))[0]  # the README's table
    assert figures(row["seed-style baseline (img/s)"]) == pytest.approx([idle["baseline"]["median"]] * 3, abs=0.5)
    assert figures(row["vs baseline"]) == [pytest.approx(ratio, abs=0.005)]
    assert figures(row["torch threads"]) == [sample["torch_threads"]]


def test_competing_process_runs_only_while_busy():
    from fastcifar.bench import cpu_side_by_side

    with cpu_side_by_side.competing_process(False) as none:
        assert none is None
    with cpu_side_by_side.competing_process(True) as proc:
        assert proc.poll() is None  # spinning
    assert proc.poll() is not None  # gone after the figure
