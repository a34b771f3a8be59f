"""packing.py: the common-window arithmetic on hand-made step timelines, a dry run of concurrent runs on
the CPU, and its refusals and failures in one line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, readme_section, tables

from fastcifar import rundir
from fastcifar.bench import packing
from fastcifar.synthetic import write_npz


# ---- the arithmetic, by hand ------------------------------------------------------------------------
def records(lines: list[tuple[float, int]], batch: int) -> list[dict]:
    """metrics.jsonl of a run with these (time, step) step lines, an epoch record and an event."""
    steps = [{"step": s, "epoch": 0.1, "loss": 2.0, "lr": 0.1, "images_per_s": 1.0, "time": t} for t, s in lines]
    last_time, last_step = lines[-1]
    # an epoch record with a time of its own must not count as a step line
    return steps + [{"train_loss": 2.0, "images_per_s": 5.0, "epoch": 1, "step": last_step, "time": last_time + 9},
                    {"event": "cut_short", "max_steps": last_step, "epoch": 1, "step": last_step}]


# run A, batch 10: one step a second from t=100 on (the line at 97 is a warm-up line)
A = [(97.0, 1), (100.0, 2), (102.0, 4), (104.0, 6), (106.0, 8), (108.0, 10)]
# run B, batch 20: uneven, finishes first
B = [(99.0, 2), (101.0, 4), (102.0, 6), (103.0, 8), (107.0, 10)]


def test_step_lines_keep_only_the_step_records():
    assert packing.step_lines(records(A, 10)) == A
    assert packing.step_lines(records(B, 20)) == B


def test_steps_between_step_lines_are_interpolated_linearly():
    assert packing.steps_at(B, 99.0) == 2 and packing.steps_at(B, 107.0) == 10 and packing.steps_at(B, 102.0) == 6
    assert packing.steps_at(B, 100.0) == pytest.approx(3.0)  # halfway from (99, 2) to (101, 4)
    assert packing.steps_at(B, 103.5) == pytest.approx(8.25)  # an eighth of the way from (103, 8) to (107, 10)
    for outside in (98.9, 107.1):
        with pytest.raises(ValueError):
            packing.steps_at(B, outside)


def test_the_common_window_and_its_totals_by_hand():
    # past 2 warm-up steps: A at 100 (its line at 97 is step 1), B at 99 -> t0 = 100; B ends first: t1 = 107
    assert packing.common_window([A, B], 2) == (100.0, 107.0)
    # two windows, [100, 103.5] and [103.5, 107]:
    #   A: steps 2 -> 5.5 -> 9, 3.5 steps x 10 images / 3.5 s = 10 images/s in each
    #   B: steps 3 -> 8.25 -> 10: 5.25 x 20 / 3.5 = 30 images/s, then 1.75 x 20 / 3.5 = 10
    rates = packing.window_rates([A, B], [10, 20], 100.0, 107.0, 2)
    assert rates == [[pytest.approx(10), pytest.approx(30)], [pytest.approx(10), pytest.approx(10)]]
    figures = packing.summarize(rates)
    assert figures["total_images_per_s"] == {"median": pytest.approx(30), "min": pytest.approx(20),
                                             "max": pytest.approx(40), "values": [pytest.approx(40), pytest.approx(20)]}
    assert figures["run_medians"] == [pytest.approx(10), pytest.approx(20)]  # B: the median of 30 and 10
    # past 5 warm-up steps: A at 104 (step 6), B at 102 (step 6) -> [104, 107], one window:
    #   A: 6 -> 9, 3 x 10 / 3 = 10; B: 8.5 -> 10, 1.5 x 20 / 3 = 10
    t0, t1 = packing.common_window([A, B], 5)
    assert (t0, t1) == (104.0, 107.0)
    assert packing.window_rates([A, B], [10, 20], t0, t1, 1) == [[pytest.approx(10), pytest.approx(10)]]


def test_no_common_window_asks_for_more_steps():
    with pytest.raises(packing.Unmeasurable, match=r"no common window: a run finished 1.0 s before .*raise --steps$"):
        packing.common_window([A, B], 10)  # A is past 10 steps at 108, after B's last line at 107
    with pytest.raises(packing.Unmeasurable, match=r"^run 1 has no step line at or past step 11 .*raise --steps$"):
        packing.common_window([A + [(110.0, 12)], B], 11)


def test_best_and_the_table():
    counts = [{"n": n, "total_images_per_s": {"median": m, "min": m - 100, "max": m + 100}}
              for n, m in ((1, 1000.0), (2, 1800.0), (4, 1700.0))]
    assert packing.best(counts) == {"n": 2, "total_images_per_s": 1800.0}
    rows = tables(packing.markdown(counts))[0]
    assert [(r["N"], r["per run"], r["vs N=1"]) for r in rows] == [("1", "1,000", "1.00x"), ("2", "900", "1.80x"),
                                                                  ("4", "425", "1.70x")]
    assert rows[1]["total img/s median (min–max)"] == "1,800 (1,700–1,900)"


def test_a_banked_result_fills_the_readme_section(tmp_path):
    """report.py puts a packing result into the README's packing section: the settings, the verdict, the table."""
    from fastcifar.bench import common

    counts = [{"n": n, "total_images_per_s": {"median": m, "min": m - 100, "max": m + 100}}
              for n, m in ((1, 1000.0), (2, 1800.0))]
    result = common.result("packing", 1, complete=True, recipe="configs/resnet20.yml", overrides=["--loader.name=dali"],
                           settings={"steps": 100000, "seconds": 15.0, "warmup_steps": 200, "windows": 5}, counts=counts,
                           best=packing.best(counts), error=None)
    section = readme_section(tmp_path, "packing", {"2026-12-08_h100_packing-result.json": result})
    assert ("`configs/resnet20.yml` with --loader.name=dali: N runs at once, stopped 15 s after all of them were "
            "past 200 steps" in section)
    assert "Most images/s: 2 at once (`reproduce.py --parallel 2`)." in section
    assert [(r["N"], r["vs N=1"]) for r in tables(section)[0]] == [("1", "1.00x"), ("2", "1.80x")]


# ---- runs on the CPU --------------------------------------------------------------------------------
STEPS, WARMUP, BATCH = 40, 4, 16
TINY = ["--device", "cpu", "--steps", str(STEPS), "--warmup-steps", str(WARMUP), f"--train.batch_size={BATCH}",
        "--model.name=resnet8", "--loader.name=torchvision", "--loader.workers=0", "--train.log_every=2"]


def data_root(tmp_path):
    return write_npz(tmp_path / "data", "cifar10", STEPS // 2 * BATCH, 64)  # two epochs of STEPS // 2 steps


def args_for(tmp_path, root, *extra: str) -> list[str]:
    return [*TINY, "--data-root", str(root), "--runs-root", str(tmp_path / "runs"), "--out",
            str(tmp_path / "packing.json"), *extra]


@pytest.mark.slow
def test_dry_run_measures_concurrent_runs(tmp_path):
    # the runs end by --steps: --seconds far beyond them, for a slow or busy machine
    argv = args_for(tmp_path, data_root(tmp_path), "--counts", "1", "2", "--seconds", "3600")
    done = subprocess.run([sys.executable, "-m", "fastcifar.bench.packing", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((tmp_path / "packing.json").read_text())
    assert (data["kind"], data["schema_version"], data["complete"], data["error"]) == ("packing", 1, True, None)
    assert "packing" in data["command"] and data["command"] == data["environment"]["command"]
    assert not {"cuda", "gpu", "gpus"} & set(data["environment"])  # a CPU result
    assert data["recipe"] == "resnet20" and data["overrides"] == TINY[6:]
    assert [c["n"] for c in data["counts"]] == [1, 2]
    medians = {c["n"]: c["total_images_per_s"]["median"] for c in data["counts"]}
    assert data["best"] == {"n": max(medians, key=medians.get), "total_images_per_s": max(medians.values())}
    for c in data["counts"]:
        n, total = c["n"], c["total_images_per_s"]
        folder = tmp_path / "runs" / f"n{n}"
        assert sorted(p.name for p in folder.iterdir()) == [f"run{i}" for i in range(n)]  # n processes
        seeds = [yaml.safe_load((folder / f"run{i}" / "config.yaml").read_text())["train"]["seed"] for i in range(n)]
        assert seeds == list(range(n)) and [r["seed"] for r in c["per_run"]] == seeds
        for r in c["per_run"]:
            summary = json.loads((folder / f"run{r['seed']}" / "summary.json").read_text())
            assert (summary["status"], summary["steps"]) == ("cut_short", STEPS)
            assert (r["steps"], r["batch_size"]) == (STEPS, BATCH)
            epochs = [e for e in rundir.records(folder / f"run{r['seed']}") if "train_loss" in e]
            assert ["top1" in e for e in epochs] == [False, True]  # evaluated after the last step only
            assert (folder / f"run{r['seed']}" / "log.txt").is_file() and r["log"].endswith("log.txt")
            assert 0 < r["seconds_to_first_step_line"] < r["seconds"] and r["images_per_s_median"] > 0
        assert len(total["values"]) == 5 and total["min"] <= total["median"] <= total["max"]
        assert c["window_seconds"] == pytest.approx(c["common_seconds"] / 5) and c["common_seconds"] > 0
        assert len(c["commands"]) == n and all(f"--train.seed={i}" in c["commands"][i] for i in range(n))
    # N=1: the run's own logged images/s over the measured steps (the lines after its first one past the
    # warm-up) bound the total; 1% for the logged rates' clock (perf_counter, taken just before the line's time)
    lines = [json.loads(line) for line in (tmp_path / "runs/n1/run0/metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "time" in r and "train_loss" not in r]
    first = next(i for i, r in enumerate(steps) if r["step"] >= WARMUP)
    logged = [r["images_per_s"] for r in steps[first + 1:]]
    one = data["counts"][0]["total_images_per_s"]
    assert min(logged) * 0.99 <= one["min"] <= one["max"] <= max(logged) * 1.01, (logged, one)
    [table] = tables(done.stdout)
    assert [(row["N"], row["vs N=1"]) for row in table] == [("1", "1.00x"), ("2", f"{medians[2] / medians[1]:.2f}x")]
    assert all(line.startswith("packing.py:") for line in done.stderr.splitlines())


@pytest.mark.slow
def test_the_runs_are_stopped_seconds_after_all_are_past_the_warm_up(tmp_path):
    """With steps to spare, --seconds ends a count: SIGTERM to every run once all are past the warm-up, each
    stops at its next step (exit 3, summary 'stopped'), and the common window lasts about --seconds."""
    argv = args_for(tmp_path, data_root(tmp_path), "--counts", "2", "--steps", "100000", "--seconds", "3")
    assert packing.main(argv) == 0
    [count] = json.loads((tmp_path / "packing.json").read_text())["counts"]
    for r in count["per_run"]:
        summary = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        assert summary["status"] == "stopped" and WARMUP < summary["steps"] < 100000
        assert not [e for e in rundir.records(Path(r["run_dir"])) if "top1" in e]  # no evaluation
    # from the moment both are past the warm-up (polled every 0.25 s) to the first stop's last step line
    assert 2.5 < count["common_seconds"] < 3 + 5, count["common_seconds"]


@pytest.mark.slow
def test_a_failed_run_is_one_line_naming_the_run_and_its_log(tmp_path, capsys):
    root = data_root(tmp_path)
    (root / "cifar10" / "test.npz").write_bytes(b"not an npz")  # the train split, checked first, is fine
    assert packing.main(args_for(tmp_path, root, "--counts", "1")) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    log = tmp_path / "runs" / "n1" / "run0" / "log.txt"
    assert last.startswith("packing.py: error: N=1: run 0 failed (exit status 2: fastcifar train: error:")
    assert last.endswith(f"its log: {log}") and log.is_file()
    data = json.loads((tmp_path / "packing.json").read_text())
    assert (data["complete"], data["counts"], data["best"]) == (False, [], None) and data["error"] in last


def processes_naming(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:  # gone meanwhile
            pass
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="reads /proc")
def test_sigterm_kills_the_runs_and_keeps_the_result(tmp_path):
    runs = tmp_path / "runs"
    argv = args_for(tmp_path, data_root(tmp_path), "--counts", "1", "--steps", "5000")
    proc = subprocess.Popen([sys.executable, "-m", "fastcifar.bench.packing", *argv], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics, deadline = runs / "n1" / "run0" / "metrics.jsonl", time.monotonic() + 120
    while not metrics.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metrics.is_file() and processes_naming(str(runs)), "the run never started training"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err.strip().splitlines()[-1] == "packing.py: error: stopped by SIGTERM; the runs were killed"
    assert processes_naming(str(runs)) == []
    data = json.loads((tmp_path / "packing.json").read_text())
    assert (data["complete"], data["counts"]) == (False, []) and "SIGTERM" in data["error"]


@pytest.mark.parametrize("extra, message", [
    (["--counts", "0"], "argument --counts: expected a positive integer, got '0'"),
    (["--recipe", "resnet21"], "config file resnet21 not found"),
    (["--warmup-steps", "40"], "--warmup-steps 40 must be below --steps 40"),
    (["--train.seed=3"], "--train.seed=3: packing.py sets train.seed for every run"),
    (["--train.max_steps=9"], "packing.py sets train.max_steps for every run (use --steps)"),
    (["--train.log_every=50"], "--steps 40 leaves fewer than train.log_every=50 steps after --warmup-steps 4"),
])
def test_refusals_are_one_line(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        packing.main(args_for(tmp_path, tmp_path / "nothing", *extra))
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("packing.py: error:") and message in last
    assert not (tmp_path / "runs").exists()


def test_the_command_runs_it(capsys):
    from fastcifar import cli

    assert cli.main(["bench", "packing", "--help"]) == 0 and "usage: packing.py" in capsys.readouterr().out


def test_missing_data_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        packing.main(args_for(tmp_path, tmp_path / "nothing"))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("packing.py: error: --data-root: ") and err.count("\n") == 1
