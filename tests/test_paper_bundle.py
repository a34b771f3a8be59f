"""Paper runs across GPU machines (fastcifar/bench/paper_bundle.py): what an archive holds, the bank it fills,
what comes back to be resumed, one-line refusals; and a run stopped by reproduce.py's deadline, packed,
banked, restored into an empty folder and finished there."""

import json
import os
import tarfile

import pytest
from conftest import one_line
from test_reproduce import EPOCHS_TO_BRIDGE, call, config_dir, driver_args  # noqa: F401 (config_dir: a fixture)

from fastcifar import rundir
from fastcifar.bench import paper_bundle
from fastcifar.training import checkpoint as ckpt


def fake_run(runs_dir, depth=8, seed=0, finished=False, checkpoints=((1, 0), (2, 0), (2, 5))):
    """A run folder as reproduce.py leaves it: its files, checkpoints (epoch, step of the next), and when
    finished its weights beside it and its result file in runs_dir/results."""
    run = runs_dir / f"resnet{depth}-seed{seed}"
    run.mkdir(parents=True)
    for name in paper_bundle.RUN_FILES[:3]:
        (run / name).write_text(f"{name} of seed {seed}\n")
    (run / "summary.json").write_text(json.dumps({"finished": finished, "final_top1": 12.5 if finished else None}))
    for epoch, step in checkpoints:
        ckpt.checkpoint_path(run, epoch, step).write_bytes(b"state %d %d" % (epoch, step))
    if finished:
        (runs_dir / f"resnet{depth}-seed{seed}.pt").write_bytes(b"weights")
        (runs_dir / "results").mkdir(exist_ok=True)
        (runs_dir / "results" / f"2026-12-07_h100_paper_resnet{depth}_seed{seed}.json").write_text("{}")
        (runs_dir / "results" / f"2026-12-07_h100_paper_resnet{depth}_seed{seed + 1}.json").write_text("{}")
    return run


def names(archive) -> list[str]:
    with tarfile.open(archive) as tar:
        return sorted(tar.getnames())


def test_an_unfinished_run_travels_with_its_newest_checkpoint_only(tmp_path):
    fake_run(tmp_path / "runs")
    [archive] = paper_bundle.pack(tmp_path / "runs", tmp_path / "out", 8, [0, 1])  # seed 1 has no folder
    assert archive.name == "paper-resnet8-seed0.tar.gz"
    assert names(archive) == ["resnet8-seed0/checkpoint_midepoch0002_step000005.pt", "resnet8-seed0/config.yaml",
                              "resnet8-seed0/log.txt", "resnet8-seed0/metrics.jsonl", "resnet8-seed0/summary.json"]


def test_a_finished_run_travels_with_its_weights_and_its_own_result_file(tmp_path):
    fake_run(tmp_path / "runs", seed=1, finished=True)
    [archive] = paper_bundle.pack(tmp_path / "runs", tmp_path / "out", 8, [1])
    assert names(archive) == ["resnet8-seed1.pt", "resnet8-seed1/config.yaml", "resnet8-seed1/log.txt",
                              "resnet8-seed1/metrics.jsonl", "resnet8-seed1/summary.json",
                              "results/2026-12-07_h100_paper_resnet8_seed1.json"]  # not seed 2's


def test_banking_replaces_the_run_and_a_finished_run_is_not_restored(tmp_path):
    bank, results = tmp_path / "bank", tmp_path / "results"
    bank.mkdir()
    fake_run(tmp_path / "first")
    [first] = paper_bundle.pack(tmp_path / "first", tmp_path / "out1", 8, [0])
    assert paper_bundle.bank(first, bank, results) == (
        "resnet8-seed0: unfinished, resumes from checkpoint_midepoch0002_step000005.pt")
    assert paper_bundle.unfinished(bank, 8, [0, 1]) == [0, 1]

    restored = tmp_path / "machine"
    assert paper_bundle.restore(bank, restored, 8, [0, 1]) == ["resnet8-seed0: restored at epoch 2"]
    assert sorted(p.name for p in (restored / "resnet8-seed0").iterdir()) == sorted(
        ["checkpoint_midepoch0002_step000005.pt", *paper_bundle.RUN_FILES])
    assert paper_bundle.restore(bank, restored, 8, [0]) == [f"resnet8-seed0: kept the run in {restored / 'resnet8-seed0'}"]

    fake_run(tmp_path / "second", finished=True, checkpoints=((3, 0),))
    [second] = paper_bundle.pack(tmp_path / "second", tmp_path / "out2", 8, [0])
    assert paper_bundle.bank(second, bank, results) == "resnet8-seed0: finished, final top-1 12.5"
    assert sorted(p.name for p in (bank / "resnet8-seed0").iterdir()) == sorted(paper_bundle.RUN_FILES)  # no checkpoint
    assert (bank / "resnet8-seed0.pt").read_bytes() == b"weights"
    assert [p.name for p in results.iterdir()] == ["2026-12-07_h100_paper_resnet8_seed0.json"]
    assert paper_bundle.unfinished(bank, 8, [0, 1]) == [1]
    assert paper_bundle.restore(bank, tmp_path / "machine2", 8, [0, 1]) == []  # seed 1 was never banked
    assert not [p for p in bank.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_a_run_too_large_to_travel_does_not_keep_the_others_from_packing(tmp_path, monkeypatch):
    fake_run(tmp_path / "runs", seed=0)
    big = fake_run(tmp_path / "runs", seed=1)
    ckpt.checkpoint_path(big, 3, 0).write_bytes(os.urandom(16 * 1024))  # 16 KiB that gzip cannot shrink
    monkeypatch.setattr(paper_bundle, "MAX_ARCHIVE_BYTES", 8 * 1024)
    with pytest.raises(paper_bundle.BundleError) as e:
        paper_bundle.pack(tmp_path / "runs", tmp_path / "out", 8, [1, 0])
    assert one_line(e).startswith("paper-resnet8-seed1.tar.gz would be ")
    assert one_line(e).endswith("(packed: paper-resnet8-seed0.tar.gz)")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["paper-resnet8-seed0.tar.gz"]


def test_an_older_archive_does_not_move_the_bank_back(tmp_path):
    """Banking is by progress: a finished run beats any checkpoint, a later checkpoint an earlier one."""
    bank, results = tmp_path / "bank", tmp_path / "results"
    bank.mkdir()
    archives = {}
    for label, finished, checkpoints in (("early", False, ((1, 0),)), ("later", False, ((2, 5),)),
                                         ("done", True, ((3, 0),))):
        fake_run(tmp_path / label, finished=finished, checkpoints=checkpoints)
        [archives[label]] = paper_bundle.pack(tmp_path / label, tmp_path / f"out-{label}", 8, [0])
    paper_bundle.bank(archives["later"], bank, results)
    with pytest.raises(paper_bundle.BundleError) as e:
        paper_bundle.bank(archives["early"], bank, results)
    assert one_line(e) == (f"{archives['early']}: the bank's resnet8-seed0 is at epoch 2, step 5 of the next, "
                           f"the archive's only at epoch 1, step 0 of the next: an older archive (remove "
                           f"{bank / 'resnet8-seed0'} to bank it anyway)")
    paper_bundle.bank(archives["later"], bank, results)  # the same again: allowed
    paper_bundle.bank(archives["done"], bank, results)
    with pytest.raises(paper_bundle.BundleError, match="the bank's resnet8-seed0 is finished"):
        paper_bundle.bank(archives["later"], bank, results)
    assert rundir.is_finished(bank / "resnet8-seed0")


def test_refusals_are_one_line(tmp_path, monkeypatch):
    fake_run(tmp_path / "runs")
    monkeypatch.setattr(paper_bundle, "MAX_ARCHIVE_BYTES", 100)
    with pytest.raises(paper_bundle.BundleError) as e:
        paper_bundle.pack(tmp_path / "runs", tmp_path / "out", 8, [0])
    assert one_line(e).startswith("paper-resnet8-seed0.tar.gz would be ")
    assert not list((tmp_path / "out").glob("*"))  # nothing half-written

    stray = tmp_path / "stray.tar.gz"
    with tarfile.open(stray, "w:gz") as tar:
        tar.add(tmp_path / "runs" / "resnet8-seed0" / "log.txt", arcname="log.txt")
    with pytest.raises(paper_bundle.BundleError) as e:
        paper_bundle.bank(stray, tmp_path / "bank", tmp_path / "results")
    assert one_line(e).startswith(f"{stray} is not a paper-run archive")
    assert not (tmp_path / "bank").exists()


@pytest.mark.slow
def test_a_run_stopped_on_one_machine_is_finished_on_the_next(tmp_path, config_dir, synthetic_root):  # noqa: F811
    """reproduce.py's deadline stops the run with a checkpoint; its archive is banked; a fresh folder (the
    next machine) gets it back, and the same reproduce.py call there finishes it as one more segment."""
    bank, results = tmp_path / "bank", tmp_path / "results"
    first, second = tmp_path / "machine1", tmp_path / "machine2"
    args = driver_args(first, config_dir, synthetic_root, train__epochs=EPOCHS_TO_BRIDGE)
    for tries, deadline in enumerate((6, 12, 24, 48), 1):  # as in test_reproduce: until a checkpoint exists
        stopped = call([*args, "--deadline", str(deadline), "--min-start", "0", "--grace", "120"])
        assert stopped.returncode == 0, stopped.stderr[-3000:]
        if ckpt.latest_checkpoint(first / "runs" / "resnet8-seed0"):
            break
    else:
        pytest.fail("no checkpoint even with a 48 s deadline")
    latest = ckpt.latest_checkpoint(first / "runs" / "resnet8-seed0")
    [archive] = paper_bundle.pack(first / "runs", first / "archives", 8, [0], results=first / "out")
    assert paper_bundle.bank(archive, bank, results) == f"resnet8-seed0: unfinished, resumes from {latest.name}"
    assert paper_bundle.restore(bank, second / "runs", 8, [0]) == [
        f"resnet8-seed0: restored at epoch {ckpt.latest_epoch(latest.parent)}"]

    finished = call(driver_args(second, config_dir, synthetic_root, train__epochs=EPOCHS_TO_BRIDGE))
    assert finished.returncode == 0, finished.stderr[-3000:]
    [archive] = paper_bundle.pack(second / "runs", second / "archives", 8, [0], results=second / "out")
    assert paper_bundle.bank(archive, bank, results).startswith("resnet8-seed0: finished, final top-1 ")
    [result_file] = results.glob("*_paper_resnet8_seed0.json")
    result = json.loads(result_file.read_text())
    assert result["segments"] == tries + 1  # the resume on the second machine is one more
    assert [p["epoch"] for p in result["curve"]] == list(range(1, EPOCHS_TO_BRIDGE + 1))  # each epoch once
    assert ckpt.latest_checkpoint(bank / "resnet8-seed0") is None and (bank / "resnet8-seed0.pt").is_file()
    weights = ckpt.load_checkpoint(bank / "resnet8-seed0.pt")
    final = ckpt.load_checkpoint(second / "runs" / "resnet8-seed0" / f"checkpoint_epoch{EPOCHS_TO_BRIDGE:04d}.pt")
    assert weights.keys() == final["model"].keys()
    assert all((weights[k] == final["model"][k]).all() for k in weights)
    assert paper_bundle.unfinished(bank, 8, [0]) == []
