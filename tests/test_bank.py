"""bank.py: what a GPU machine's output folder brought back, banked under names that say when and on which
GPU, paper-run archives into the paper bank; refusals in one line before anything is written."""

import json
import os

import pytest
from test_paper_bundle import fake_run

from fastcifar.bench import bank, paper_bundle

H100 = {"date": "2026-12-08T10:11:12+00:00", "gpu": "NVIDIA H100 80GB HBM3"}


def returned(tmp_path):
    """An output folder as a GPU suite call leaves it: a step report, its log and xml, a measurement, an
    archive; read-only, as the copies that come back are."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "loaders.json").write_text(json.dumps({"step": "loaders", "environment": H100}))
    (out / "loaders.log").write_text("== throughput loaders ...\n")
    (out / "loaders-loaders.json").write_text(json.dumps({"kind": "throughput", "environment": H100}))
    (out / "tests-loaders.xml").write_text("<testsuite/>")
    (out / "profile-r20-b128.trace.json.gz").write_bytes(b"\x1f\x8b trace")
    fake_run(tmp_path / "runs", finished=True, checkpoints=((2, 0),))
    paper_bundle.pack(tmp_path / "runs", out, 8, [0])
    for f in out.iterdir():
        f.chmod(0o444)
    return out


def test_everything_that_came_back_is_banked_by_date_and_gpu(tmp_path, capsys):
    out, results, runs = returned(tmp_path), tmp_path / "results", tmp_path / "bank"
    assert bank.main([*map(str, sorted(out.iterdir())), "--results-dir", str(results), "--bank", str(runs)]) == 0
    prefix = "2026-12-08T10-11_nvidia-h100-80gb-hbm3_"  # to the minute, from the environment
    assert sorted(p.name for p in results.iterdir()) == sorted([
        "2026-12-07_h100_paper_resnet8_seed0.json",  # the archive's result file keeps its own name
        f"{prefix}loaders-loaders.json", f"{prefix}loaders.json", f"{prefix}loaders.log",
        f"{prefix}profile-r20-b128.trace.json.gz",
        f"{prefix}tests-loaders.xml"])  # alone: the date and GPU of the call's JSON files
    assert (results / f"{prefix}loaders.log").read_text() == "== throughput loaders ...\n"
    assert (runs / "resnet8-seed0.pt").is_file() and "resnet8-seed0: finished" in capsys.readouterr().out
    assert all(os.access(p, os.W_OK) for p in results.iterdir())  # copies of read-only files stay editable

    again = bank.main([str(out / "loaders.json"), "--results-dir", str(results), "--bank", str(runs)])
    assert again == 0  # the same file again: nothing changes


@pytest.mark.parametrize("name, text, message", [
    ("notes.txt", "hello", "notes.txt: not a result (expected .json, .log, .xml, a .json.gz trace or a paper-run .tar.gz)"),
    ("loaders.json", json.dumps({"step": "loaders"}), "loaders.json: no environment with a date"),
    ("broken.json", "{", "broken.json: not a JSON object"),
    ("paper-resnet8-seed0.tar.gz", "not gzip", "paper-resnet8-seed0.tar.gz: not a readable .tar.gz"),
])
def test_a_file_that_is_not_a_result_is_refused_and_nothing_is_written(tmp_path, capsys, name, text, message):
    out = returned(tmp_path)
    (out / name).unlink(missing_ok=True)
    (out / name).write_text(text)
    with pytest.raises(SystemExit) as exc:
        bank.main([*map(str, sorted(out.iterdir())), "--results-dir", str(tmp_path / "results"),
                   "--bank", str(tmp_path / "bank")])
    assert exc.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("bank.py: error: ") and message in line, line
    assert not (tmp_path / "results").exists() and not (tmp_path / "bank").exists()


def test_a_different_file_under_the_same_name_is_not_overwritten(tmp_path, capsys):
    out, results = returned(tmp_path), tmp_path / "results"
    results.mkdir()
    kept = results / "2026-12-08T10-11_nvidia-h100-80gb-hbm3_loaders.log"
    kept.write_text("an earlier call's log\n")
    with pytest.raises(SystemExit):
        bank.main([str(out / "loaders.json"), str(out / "loaders.log"), "--results-dir", str(results)])
    assert f"{kept} exists and differs" in capsys.readouterr().err
    assert kept.read_text() == "an earlier call's log\n" and len(list(results.iterdir())) == 1


def test_two_archives_of_one_run_a_folder_and_a_cut_write(tmp_path, capsys):
    out, other = returned(tmp_path), tmp_path / "other"
    other.mkdir()
    (other / "paper-resnet8-seed0.tar.gz").write_bytes((out / "paper-resnet8-seed0.tar.gz").read_bytes())
    with pytest.raises(SystemExit):
        bank.main([str(out / "paper-resnet8-seed0.tar.gz"), str(other / "paper-resnet8-seed0.tar.gz"),
                   "--results-dir", str(tmp_path / "results"), "--bank", str(tmp_path / "bank")])
    assert "both hold resnet8-seed0: bank one call's output at a time" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bank.main([str(out), "--results-dir", str(tmp_path / "results")])
    assert f"{out} is a folder: pass the files in it ({out}/*)" in capsys.readouterr().err
    (out / "paper-resnet8-seed1.tar.gz.tmp").write_bytes(b"cut")
    assert bank.main([str(out / "loaders.json"), str(out / "paper-resnet8-seed1.tar.gz.tmp"),
                      "--results-dir", str(tmp_path / "results"), "--bank", str(tmp_path / "bank")]) == 0
    assert "skipped" in capsys.readouterr().out and not (tmp_path / "bank").exists()
