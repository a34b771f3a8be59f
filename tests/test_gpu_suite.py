"""The GPU suite (fastcifar/bench/gpu_suite.py): every kind of step dry-run on the CPU at tiny sizes and every
step's GPU-size commands parsed by the scripts they call, so that a typo never reaches a GPU; a failing
command fails the suite; DALI required means DALI tests fail."""

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import REPO, import_dali, write_npz

from fastcifar import config as config_lib
from fastcifar.bench import (airbench_side_by_side, common, gpu_suite, packing, paper_bundle, profile_step, reproduce,
                             time_to_accuracy)

# run in full by the dry run: one step of each kind; the dry run's sizes make every other step-r* step the
# same commands as step-r20-* (ResNet-8 at batch 32), and tta-*, paper-* differ from these by depth and seed
DRY_RUN = ["validate", "loaders", "step-r20-graphs", "step-r20-plain", "profile", "packing", "tta-r56-s0", "paper-r20", "airbench"]


def suite(*argv, data=None, out=None):
    cmd = [sys.executable, "benchmarks/gpu_suite.py", *argv, "--device", "cpu", "--dali-path"]
    cmd += [*(["--data-root", str(data)] if data else []), *(["--out", str(out)] if out else [])]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """256 train images: 8 batches of 32, so an epoch of warm-up is short."""
    return write_npz(tmp_path_factory.mktemp("suite_data"), "cifar10", 256, 100)


def test_require_dali_fails_instead_of_skipping(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # import fails as if not installed
    monkeypatch.delenv("FASTCIFAR_REQUIRE_DALI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        import_dali()
    monkeypatch.setenv("FASTCIFAR_REQUIRE_DALI", "1")
    with pytest.raises(pytest.fail.Exception, match="FASTCIFAR_REQUIRE_DALI=1 but DALI cannot be imported"):
        import_dali()


def test_every_step_is_named_in_a_group_and_estimated_within_a_command():
    grouped = [name for names in gpu_suite.GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(gpu_suite.STEPS)  # `validate measure` runs every step once
    assert all(0 < step.minutes * 60 <= step.limit <= 600 for step in gpu_suite.STEPS.values())


def test_bad_options_are_one_line(tmp_path, tiny_root):
    missing = suite("runs", data=tmp_path / "nowhere", out=tmp_path / "out")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"gpu_suite.py: error: --data-root: {tmp_path / 'nowhere'}/cifar10/train.npz not found "
        "(the staging guide's data lands in /root/data)"]
    unknown = suite("validat", data=tiny_root, out=tmp_path / "out")
    assert unknown.returncode == 2 and "invalid choice: 'validat'" in unknown.stderr


def test_a_failing_command_fails_the_suite(tmp_path, tiny_root):
    out = tmp_path / "out"
    done = suite("tests-loaders", "--test-files", "tests/no_such_test.py", data=tiny_root, out=out)
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads((out / "tests-loaders.json").read_text())
    assert report["results"][0]["exit"] == 4 and report["results"][0]["problem"].startswith("pytest exit 4")
    assert "| tests-loaders | pytest -m cuda (1 files) | 4 |" in done.stdout
    assert done.stdout.strip().splitlines()[-1].startswith("gpu_suite.py: 0 of 1 commands ok")


@pytest.mark.slow
def test_one_step_of_each_kind_dry_runs_on_the_cpu(tmp_path, tiny_root):
    """validate, loaders, the step, a profile, packing, time to accuracy, a paper run and the side by side, every command at tiny sizes: exit 0,
    each step's JSON and log written, the table printed last, the stop-and-resume run signalled and resumed,
    every throughput file complete, every paper run packed for the bank."""
    import_dali()  # the loaders step and the DALI runs need it
    out = tmp_path / "out"
    done = suite(*DRY_RUN, data=tiny_root, out=out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "| step | command | exit | seconds | result |"
    ran = [name for group in DRY_RUN for name in gpu_suite.GROUPS.get(group, [group])]
    for name in ran:
        report = json.loads((out / f"{name}.json").read_text())
        assert report["results"] and all(r["problem"] is None for r in report["results"]), report
        assert (out / f"{name}.log").is_file()
        assert sum(f"| {name} |" in line for line in lines) == len(report["results"])
    stop, resume, torchrun = json.loads((out / "stop-resume.json").read_text())["results"]
    assert stop["signalled"] and stop["exit"] == 3 and stop["summary"]["status"] == "stopped"
    assert resume["summary"]["status"] == "cut_short" and resume["summary"]["steps"] > stop["summary"]["steps"] >= 1
    assert torchrun["summary"]["world_size"] == 1
    measured = sorted(p.name for p in out.glob("*-*.json") if p.stem not in gpu_suite.STEPS)
    assert measured == sorted(["airbench-result.json", "loaders-dali-warp-affine.json", "loaders-loaders.json",
                               "step-r20-graphs-graph.json", "step-r20-graphs-reduce-overhead.json",
                               "step-r20-plain-foreach.json", "step-r20-plain-plain.json", "packing-result.json",
                               "paper-r20-status.json",
                               "profile-r110-b1024.json", "profile-r20-b128.json", "tta-r56-s0-result.json"])
    assert all(json.loads((out / m).read_text()).get("complete", True) for m in measured)
    assert (out / "profile-r20-b128.trace.json.gz").is_file()
    assert sorted(p.name for p in out.glob("*.tar.gz")) == [f"paper-resnet20-seed{s}.tar.gz" for s in (0, 1, 2)]
    status = json.loads((out / "paper-r20-status.json").read_text())  # reproduce.py's, returned beside the archives
    assert status["kind"] == "paper_status" and [r["state"] for r in status["runs"]] == ["finished"] * 3
    *_, packed = json.loads((out / "paper-r20.json").read_text())["results"]
    assert packed["archives"] == [f"paper-resnet20-seed{s}.tar.gz" for s in (0, 1, 2)]


def gpu_commands(name: str, tmp_path, root) -> list[list[str]]:
    """The commands a step runs on the GPU machine, built (not run) with the GPU round's sizes."""
    args = gpu_suite.parse_args([name, "--data-root", str(root), "--out", str(tmp_path / "out"), "--dali-path",
                                 "--bank", str(tmp_path / "empty-bank")])
    args.current, args.step_deadline = name, time.monotonic() + gpu_suite.STEPS[name].limit
    return [c.argv() if callable(c.argv) else c.argv for c in gpu_suite.STEPS[name].commands(args)]


def overrides_of(argv: list[str]) -> list[str]:
    return [a for a in argv if a.startswith("--") and "." in a.split("=")[0] and "=" in a]


@pytest.mark.parametrize("name", sorted(gpu_suite.STEPS))
def test_every_steps_gpu_commands_parse(name, tmp_path, tiny_root):
    """Each command a step would start on a GPU is accepted by the script it calls: the options, the config
    overrides, the recipes and depths it names. The dry run runs one step of each kind at tiny sizes only."""
    for argv in gpu_commands(name, tmp_path, tiny_root):
        assert argv[0] == sys.executable
        if "run.py" in argv:  # alone or under torchrun
            config_lib.load(REPO / argv[argv.index("run.py") + 1], overrides_of(argv))
            continue
        module, rest = argv[2], argv[3:]
        if module == "pytest":
            assert all((REPO / f).is_file() for f in rest if f.endswith(".py")), rest
        elif module == "fastcifar.bench.throughput":
            args = common.parse_with_overrides(common.throughput_parser(), rest)
            assert args.device == "cuda" and not args.data == "synthetic"
            config_lib.load(None, args.overrides)
        elif module == "fastcifar.bench.time_to_accuracy":
            args = time_to_accuracy.parse_args(rest)
            depth, seed = map(int, name.removeprefix("tta-r").split("-s"))
            assert (args.seeds, args.first_seed, args.depths) == (1, seed, [depth])
        elif module == "fastcifar.bench.reproduce":
            args = reproduce.parse_args(rest)
            depth = int(name.removeprefix("paper-r"))
            assert [(r.depth, r.seed, r.epochs) for r in args.runs] == [(depth, s, 200) for s in (0, 1, 2)]
            assert 400 < args.deadline < gpu_suite.STEPS[name].limit
        elif module == "fastcifar.bench.packing":  # parsed for the CPU here: it checks the device exists
            device = rest.index("--device") + 1
            assert rest[device] == "cuda"
            args = packing.parse_args([*rest[:device], "cpu", *rest[device + 1:]])
            assert args.counts == [1, 2, 4, 8] and args.recipe == gpu_suite.RECIPE
        elif module == "fastcifar.bench.profile_step":  # parsed for the CPU here: it checks the device exists
            device = rest.index("--device") + 1
            args = profile_step.parse_args([*rest[:device], "cpu", *rest[device + 1:]])
            assert (args.depth, args.batch_size) in [(d, b) for d, b, _trace in gpu_suite.PROFILES.values()]
        elif module == "fastcifar.bench.airbench_side_by_side":  # parsed for the CPU: it checks for CUDA
            device = rest.index("--device") + 1
            args = airbench_side_by_side.parse_args([*rest[:device], "cpu", *rest[device + 1:]])
            assert (args.depth, args.seeds, args.target) == (56, 1, 92.0)
        elif module == "fastcifar.bench.paper_bundle":
            paper_bundle.build_parser().parse_args(rest)
        else:
            pytest.fail(f"{name}: no parse check for {module}")


def test_at_the_deadline_a_command_is_terminated_then_killed_and_a_reserve_runs_past_it(tmp_path, monkeypatch):
    """SIGTERM first (training runs stop with a checkpoint), SIGKILL KILL_GRACE later; a command with a reserve
    (packing what the step made) runs even when the step's deadline has passed."""
    monkeypatch.setattr(gpu_suite, "KILL_GRACE", 1.0)
    marker = tmp_path / "got-sigterm"
    stubborn = ("import signal, sys, time, pathlib\n"
                f"signal.signal(signal.SIGTERM, lambda *a: pathlib.Path({str(marker)!r}).write_text('yes'))\n"
                "while True: time.sleep(0.05)\n")
    with open(tmp_path / "log", "w") as log:
        result = gpu_suite.run_command(gpu_suite.Command("stubborn", [sys.executable, "-c", stubborn]), {}, log,
                                       deadline=time.monotonic() + 1.5)
        assert marker.read_text() == "yes" and result["exit"] == -9  # terminated, ignored it, killed
        assert result["problem"] == "stopped at the step's time limit (--limit, --budget)"
        assert 2.4 < result["seconds"] < 10
        late = gpu_suite.run_command(gpu_suite.Command("pack", [sys.executable, "-c", "print('packed')"], reserve=30),
                                     {}, log, deadline=time.monotonic() - 5)
        assert (late["exit"], late["problem"]) == (0, None)
    assert "packed" in (tmp_path / "log").read_text()


@pytest.mark.slow
def test_a_budget_starts_no_step_that_cannot_fit_and_a_commit_must_be_one(tmp_path, tiny_root):
    done = suite("runs", "loaders", "--budget", "60", "--min-step", "120", data=tiny_root, out=tmp_path / "out")
    assert done.returncode == 1
    assert "| runs | not started (--budget) |" in done.stdout and "| loaders | not started (--budget) |" in done.stdout
    assert "runs and the steps after it not started: less than --min-step 120 s of --budget 60 s left" in done.stderr
    assert not (tmp_path / "out" / "runs.json").exists()
    not_a_commit = subprocess.run([sys.executable, "benchmarks/gpu_suite.py", "runs", "--device", "cpu", "--dali-path",
                                   "--data-root", str(tiny_root)], cwd=REPO, capture_output=True, text=True,
                                  env={**os.environ, "FASTCIFAR_COMMIT": "$(git rev-parse HEAD)"})
    assert not_a_commit.returncode == 2 and not_a_commit.stderr.strip().splitlines() == [
        "gpu_suite.py: error: FASTCIFAR_COMMIT='$(git rev-parse HEAD)' is not a commit id (7 to 40 hex digits, "
        "as git rev-parse HEAD writes it)"]


def test_a_failed_figure_inside_a_result_file_is_found():
    """throughput.py records a figure that failed (OOM, a loader that cannot run) as an error entry and
    exits 0: the suite's check must still see it, at every level of a batch size's figures."""
    ok = {"images_per_s": {"median": 1.0}}
    batch = {"model_alone": ok, "loaders": {"dali": {"error": None, "loader_alone": ok, "end_to_end": ok}}}
    assert gpu_suite.figure_errors(batch) == []
    for where in ("model_alone", "loader", "loader_alone", "end_to_end"):
        broken = json.loads(json.dumps(batch))
        if where == "model_alone":
            broken["model_alone"] = {"error": "OutOfMemoryError"}
        elif where == "loader":
            broken["loaders"]["dali"]["error"] = "OutOfMemoryError"
        else:
            broken["loaders"]["dali"][where] = {"error": "OutOfMemoryError"}
        assert gpu_suite.figure_errors(broken) == ["OutOfMemoryError"], where
