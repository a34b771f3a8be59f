"""The GPU suite (fastcifar/bench/gpu_suite.py): every step dry-run on the CPU at tiny sizes, so that a
typo never reaches a GPU; a failing command fails the suite; DALI required means DALI tests fail."""

import json
import subprocess
import sys

import pytest
from conftest import REPO, import_dali, write_npz

from fastcifar.bench import gpu_suite


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
    assert all(0 < step.minutes <= 6 for step in gpu_suite.STEPS.values())


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
def test_every_step_dry_runs_on_the_cpu(tmp_path, tiny_root):
    """validate and measure, every command at tiny sizes: exit 0, each step's JSON and log written, the
    table printed last, the stop-and-resume run signalled and resumed, every throughput file complete."""
    import_dali()  # the loaders step and the DALI runs need it
    out = tmp_path / "out"
    done = suite("validate", "measure", data=tiny_root, out=out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "| step | command | exit | seconds | result |"
    for name, step in gpu_suite.STEPS.items():
        report = json.loads((out / f"{name}.json").read_text())
        assert report["results"] and all(r["problem"] is None for r in report["results"]), report
        assert (out / f"{name}.log").is_file()
        assert sum(f"| {name} |" in line for line in lines) == len(report["results"])
    stop, resume, torchrun = json.loads((out / "stop-resume.json").read_text())["results"]
    assert stop["signalled"] and stop["exit"] == 3 and stop["summary"]["status"] == "stopped"
    assert resume["summary"]["status"] == "cut_short" and resume["summary"]["steps"] > stop["summary"]["steps"] >= 1
    assert torchrun["summary"]["world_size"] == 1
    measured = sorted(p.name for p in out.glob("*-*.json") if p.stem not in gpu_suite.STEPS)
    assert len(measured) == 2 + 4 + 4 + 4  # loaders (2), step-r20-* (2 + 2), step-r56-* (2 + 2), step-r110-* (4)
    assert all(json.loads((out / m).read_text())["complete"] for m in measured)


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
