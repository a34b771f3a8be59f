"""benchmarks/reproduce.py on the CPU with tiny ResNet-8 runs: results equal to each run's summary,
nothing redone on a second call, a deadline bridged by stopping and resuming, one-line errors and
failed runs; and the report's single paper table with its README section."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import README_TEMPLATE, REPO, figures, tables, tiny_overrides

from fastcifar.models import build_model
from fastcifar.training import checkpoint as ckpt

from fastcifar.bench import common, report, reproduce

EPOCHS_TO_BRIDGE = 40  # ~0.8 s each on 2 slow cores: a 6 s deadline stops the run well before its end


@pytest.fixture
def config_dir(tmp_path) -> Path:
    tree = yaml.safe_load((REPO / "configs" / "resnet20.yml").read_text())
    tree["model"]["name"] = "resnet8"
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "resnet8.yml").write_text(yaml.safe_dump(tree, sort_keys=False))
    return folder


def driver_args(tmp_path, config_dir, root, *extra, seeds=("0",), **overrides) -> list[str]:
    tiny = [o for o in tiny_overrides(root, tmp_path / "unused", **overrides) if not o.startswith("--train.run_dir=")]
    return ["--depths", "8", "--seeds", *seeds, "--config-dir", str(config_dir), "--data-root", str(root),
            "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), *extra, *tiny]


def start(args: list[str]) -> subprocess.Popen:
    # one thread per run: two runs share the two cores of the CI machine
    return subprocess.Popen([sys.executable, "-m", "fastcifar.bench.reproduce", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def call(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    proc = start(args)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def status(tmp_path) -> dict:
    data = json.loads((tmp_path / "out" / "reproduce_status.json").read_text())
    assert data["kind"] == "paper_status"
    return data


def results(tmp_path) -> dict[int, dict]:
    return {json.loads(p.read_text())["seed"]: json.loads(p.read_text())
            for p in sorted((tmp_path / "out").glob("*_paper_resnet8_seed*.json"))}


# ---- runs ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_seeds_in_parallel_and_a_second_call_starts_nothing(tmp_path, config_dir, synthetic_root):
    args = driver_args(tmp_path, config_dir, synthetic_root, "--parallel", "2", seeds=("0", "1"))
    first = call(args)
    assert first.returncode == 0, first.stderr[-3000:]
    found = results(tmp_path)
    assert set(found) == {0, 1}
    for seed, r in found.items():
        run_dir = tmp_path / "runs" / f"resnet8-seed{seed}"
        summary = json.loads((run_dir / "summary.json").read_text())
        assert r["kind"] == "paper_run" and r["schema_version"] == 1
        assert (r["model"], r["depth"], r["seed"], r["dataset"]) == ("resnet8", 8, seed, "cifar10")
        assert (r["final_top1"], r["final_top5"]) == (summary["final_top1"], summary["final_top5"])
        assert [p["epoch"] for p in r["curve"]] == [1, 2]
        assert (r["curve"][-1]["top1"], r["curve"][-1]["top5"]) == (r["final_top1"], r["final_top5"])
        assert r["best_top1_seen"] == max(p["top1"] for p in r["curve"])
        assert "NOT used for selection" in r["selection"]
        assert (r["epochs"], r["segments"], r["train_seconds"]) == (2, 1, summary["train_seconds"])
        for key in ("device", "amp", "compile", "channels_last", "torch"):
            assert r[key] == summary[key], key
        assert r["config"]["train"]["seed"] == seed and r["config"]["model"]["name"] == "resnet8"
        assert f"--train.seed={seed}" in r["command"] and "--train.keep_checkpoints=2" in r["command"]
        assert r["commands"] == [r["command"]]
        assert "reproduce.py" in r["environment"]["command"]
        weights = torch.load(r["weights"], weights_only=True)  # what export_weights.py ships
        final = torch.load(run_dir / "checkpoint_epoch0002.pt", weights_only=True)["model"]
        assert weights.keys() == final.keys() and all(torch.equal(weights[k], final[k]) for k in final)
        build_model("resnet8").load_state_dict(weights, strict=True)
        assert Path(r["weights"]) == tmp_path / "runs" / f"resnet8-seed{seed}.pt"
        date = r["finished_at"][:10]
        assert (tmp_path / "out" / f"{date}_{common.slug(summary['device'])}_paper_resnet8_seed{seed}.json").is_file()
    s = status(tmp_path)
    assert [(r["seed"], r["state"], r["started"], r["epochs_done"]) for r in s["runs"]] == [
        (0, "finished", True, 2), (1, "finished", True, 2)]
    assert "| 8 | 1 | finished | 2/2 |" in first.stdout

    logs = {p: p.read_text() for p in (tmp_path / "runs").glob("*/log.txt")}
    second = call(args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert [(r["state"], r["started"]) for r in status(tmp_path)["runs"]] == [("finished", False)] * 2
    assert {p: p.read_text() for p in logs} == logs  # no run.py started
    assert results(tmp_path) == found  # kept as the call that ran them wrote them, environment included

    other = call([*args, "--optim.lr=0.5"])  # its runs were trained at lr 0.05: no mixing, no mislabelling
    assert other.returncode == 2
    assert other.stderr.strip().splitlines()[-1].startswith("reproduce.py: error:")
    assert "holds a run of another recipe (optim.lr: 0.05 -> 0.5)" in other.stderr
    assert {p: p.read_text() for p in logs} == logs

    # collecting again: seed 0's result file is gone (rewritten, its weights still listed, although
    # the final checkpoint is gone too); seed 1's final checkpoint is damaged and its weights gone
    runs = tmp_path / "runs"
    (runs / "resnet8-seed0" / "checkpoint_epoch0002.pt").unlink()
    next((tmp_path / "out").glob("*_seed0.json")).unlink()
    (runs / "resnet8-seed1" / "checkpoint_epoch0002.pt").write_bytes(b"not a checkpoint")
    (runs / "resnet8-seed1.pt").unlink()
    next((tmp_path / "out").glob("*_seed1.json")).unlink()
    third = call(args)
    assert third.returncode == 1, third.stderr[-3000:]
    s0, s1 = status(tmp_path)["runs"]
    assert s0["state"] == "finished" and s0["weights"] == found[0]["weights"]
    assert results(tmp_path)[0]["weights"] == found[0]["weights"]
    assert s1["state"] == "failed" and s1["error"].startswith("collecting resnet8 seed 1 from ")
    assert "CheckpointError" in s1["error"] and "reproduce.py: collecting resnet8 seed 1" in third.stderr
    assert "Traceback" not in third.stderr


@pytest.mark.slow
def test_a_deadline_stops_the_run_and_the_next_call_finishes_it(tmp_path, config_dir, synthetic_root):
    args = driver_args(tmp_path, config_dir, synthetic_root, train__epochs=EPOCHS_TO_BRIDGE)
    run_dir = tmp_path / "runs" / "resnet8-seed0"
    # a slow machine may reach the deadline before run.py has started training (then no checkpoint
    # exists yet): try again with a longer one rather than depend on the machine's speed
    for tries, deadline in enumerate((6, 12, 24, 48), 1):  # each a segment: a stop is at a step, with a checkpoint
        first = call([*args, "--deadline", str(deadline), "--min-start", "0", "--grace", "120"])
        assert first.returncode == 0, first.stderr[-3000:]
        [run] = status(tmp_path)["runs"]
        assert run["state"] != "finished", (
            f"all {EPOCHS_TO_BRIDGE} epochs finished within a {deadline} s deadline: this machine is too fast "
            "for the test; raise EPOCHS_TO_BRIDGE")
        assert run["state"] == "stopped" and run["error"] is None
        if ckpt.latest_epoch(run_dir):
            break
    else:
        pytest.fail("no checkpoint even with a 48 s deadline")
    assert status(tmp_path)["stopped_by"] == "deadline"
    assert 1 <= run["epochs_done"] == ckpt.latest_epoch(run_dir) < EPOCHS_TO_BRIDGE
    assert not results(tmp_path)
    assert len(list(run_dir.glob("checkpoint_epoch*.pt"))) <= 2  # train.keep_checkpoints=2

    second = call(args)
    assert second.returncode == 0, second.stderr[-3000:]
    [run] = status(tmp_path)["runs"]
    assert (run["state"], run["epochs_done"]) == ("finished", EPOCHS_TO_BRIDGE)
    [r] = results(tmp_path).values()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert r["segments"] == tries + 1 and r["epochs"] == EPOCHS_TO_BRIDGE
    assert r["commands"][-1] == r["command"] + " --resume"
    assert [p["epoch"] for p in r["curve"]] == list(range(1, EPOCHS_TO_BRIDGE + 1))  # each epoch once
    assert (r["final_top1"], r["final_top5"]) == (summary["final_top1"], summary["final_top5"])
    assert r["curve"][-1]["top1"] == r["final_top1"]


@pytest.mark.slow
def test_sigterm_to_the_driver_stops_its_runs_gracefully(tmp_path, config_dir, synthetic_root):
    run_dir = tmp_path / "runs" / "resnet8-seed0"
    proc = start(driver_args(tmp_path, config_dir, synthetic_root, train__epochs=EPOCHS_TO_BRIDGE))
    try:
        give_up = time.monotonic() + 120
        while not ckpt.latest_epoch(run_dir) and proc.poll() is None and time.monotonic() < give_up:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    s = status(tmp_path)
    assert s["stopped_by"] == "signal SIGTERM"
    [run] = s["runs"]
    assert run["state"] == "stopped" and 1 <= run["epochs_done"] < EPOCHS_TO_BRIDGE
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "stopped" and events[-1]["signal"] == "SIGTERM"


# ---- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, message", [
    (["--depths", "21"], "depth 21 is not 6n+2"),
    (["--depths", "8", "14"], "no resnet14.yml for depth 14"),
    (["--train.epochz=3"], "unknown config key train.epochz"),
    (["--train.seed=5"], "train.seed is 5"),
    (["--train.resume=true"], "resumes runs from their checkpoints itself"),
    (["--resume"], "unrecognized argument '--resume'"),
])
def test_bad_input_is_one_line_and_starts_nothing(tmp_path, config_dir, synthetic_root, capsys, extra, message):
    argv = [*driver_args(tmp_path, config_dir, synthetic_root), *extra]
    with pytest.raises(SystemExit) as exc:
        reproduce.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("reproduce.py: error:") and message in err[-1], err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_an_unreadable_saved_config_is_refused_in_one_line(tmp_path, config_dir, synthetic_root, capsys):
    saved = tmp_path / "runs" / "resnet8-seed0" / "config.yaml"
    saved.parent.mkdir(parents=True)
    saved.write_text("model: {name: resnet8\n")  # cut off: which recipe ran there cannot be known
    with pytest.raises(SystemExit) as exc:
        reproduce.main(driver_args(tmp_path, config_dir, synthetic_root))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"reproduce.py: error: {saved}: cannot be read as a saved config"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_failing_run_is_reported_with_its_error(tmp_path, config_dir):
    empty = tmp_path / "no-data"
    empty.mkdir()
    result = call(driver_args(tmp_path, config_dir, empty))
    assert result.returncode == 1
    [run] = status(tmp_path)["runs"]
    assert run["state"] == "failed" and run["returncode"] == 2 and run["result"] is None
    assert run["error"].startswith("fastcifar train: error:") and str(empty) in run["error"]
    assert run["error"] in run["error_tail"]
    assert "| 8 | 0 | failed | 0/2 | fastcifar train: error:" in result.stdout
    assert not results(tmp_path)


# ---- report ----------------------------------------------------------------------------------------
def fake_paper_run(depth: int, seed: int, top1: float, top5: float, best: float, minutes: float) -> dict:
    curve = [{"epoch": 1, "top1": best, "top5": top5, "train_loss": 1.0},
             {"epoch": 200, "top1": top1, "top5": top5, "train_loss": 0.1}]
    return {"kind": "paper_run", "schema_version": 1, "model": f"resnet{depth}", "depth": depth, "seed": seed,
            "dataset": "cifar10", "final_top1": top1, "final_top5": top5, "best_top1_seen": best,
            "best_top1_seen_epoch": 1, "curve": curve, "epochs": 200, "train_seconds": minutes * 60,
            "segments": 3, "finished_at": "2026-11-24T00:00:00+00:00", "device": "NVIDIA H100 80GB HBM3",
            "environment": {"date": "2026-11-24T00:00:00+00:00"}}




def paper_tables(markdown: str) -> list[dict[int, dict[str, str]]]:
    """The tables with a 'runs (seeds)' column, as their rows by depth."""
    return [{int(row["depth"]): row for row in t} for t in tables(markdown) if t and "runs (seeds)" in t[0]]


def test_report_paper_table_over_all_runs(tmp_path, capsys):
    runs20 = [(91.52, 99.70, 91.80, 30.0), (91.87, 99.61, 92.05, 34.0), (91.33, 99.75, 91.60, 31.0)]
    found = tmp_path / "results"
    for seed, (top1, top5, best, minutes) in enumerate(runs20):
        common.write_json(found / f"r20_{seed}.json", fake_paper_run(20, seed, top1, top5, best, minutes))
    common.write_json(found / "r56_0.json", fake_paper_run(56, 0, 93.21, 99.80, 93.50, 80.0))
    common.write_json(found / "reproduce_status.json", {"kind": "paper_status", "runs": []})
    readme = tmp_path / "README.md"
    readme.write_text(README_TEMPLATE)
    argv = ["--results-dir", str(found), "--out-dir", str(tmp_path / "out"), "--readme", str(readme)]
    assert report.main(argv) == 0
    assert "reproduce_status" not in capsys.readouterr().err  # the status file is not a result

    top1, top5, best, minutes = zip(*runs20, strict=True)
    two_places = {"abs": 0.006}
    tables = paper_tables((tmp_path / "out" / "report.md").read_text())
    assert len(tables) == 1  # one table for all the files
    row20, row56 = tables[0][20], tables[0][56]
    assert figures(row20["runs (seeds)"]) == [3, 0, 1, 2]
    for column, values in (("final top-1", top1), ("final top-5", top5)):
        mean_std = [statistics.fmean(values), statistics.stdev(values)]
        assert figures(row20[column]) == pytest.approx(mean_std, **two_places)
    best_seen = "best-seen top-1 mean (not used for selection)"
    assert figures(row20[best_seen]) == pytest.approx([statistics.fmean(best)], **two_places)
    references = ("paper", "akamaster best-of-run", "goal")
    assert [figures(row20[k]) for k in references] == [[91.25], [91.73], [91.7]]
    assert figures(row20["mean − goal"]) == pytest.approx([statistics.fmean(top1) - 91.7], **two_places)
    assert row20["GPU"] == "NVIDIA H100 80GB HBM3"
    assert figures(row20["median train min/run"]) == [statistics.median(minutes)]
    assert figures(row56["runs (seeds)"]) == [1, 0]
    assert figures(row56["final top-1"]) == [93.21] and figures(row56["final top-5"]) == [99.8]  # no std
    assert figures(row56[best_seen]) == [93.5]
    assert [figures(row56[k]) for k in references] == [[93.03], [93.39], [93.4]]
    assert figures(row56["mean − goal"]) == pytest.approx([93.21 - 93.4], **two_places)
    for depth, paper in ((32, 92.49), (44, 92.83), (110, 93.39)):
        assert figures(tables[0][depth]["paper"]) == [paper]
        assert {v for k, v in tables[0][depth].items() if k not in ("depth", *references)} == {"not measured"}
    assert not list((tmp_path / "out").glob("*.png"))  # no plot for this kind

    text = readme.read_text()
    assert "old table" not in text and paper_tables(text) == tables and text.endswith("\noutro\n")
    assert text.count("<!-- BEGIN GENERATED: paper -->") == 1
    report.main(argv)
    assert readme.read_text() == text

    empty = tmp_path / "empty"
    empty.mkdir()
    report.main(["--results-dir", str(empty), "--out-dir", str(tmp_path / "out2"), "--readme", str(readme)])
    text = readme.read_text()
    [table] = paper_tables(text)
    assert list(table) == [20, 32, 44, 56, 110]
    assert {row["runs (seeds)"] for row in table.values()} == {"not measured"}
    assert figures(table[110]["akamaster best-of-run"]) == [93.68]
    assert text.count("Not measured yet.") == 6  # throughput, time to accuracy, CPU side by side, packing, profile, airbench
