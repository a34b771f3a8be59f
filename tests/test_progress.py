"""What a run shows (issue #22, part 3) and how many CPU threads it takes (part 2): the start line,
the progress bar or its plain lines, TensorBoard scalars read back from the event files, and the
thread sizing."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re

import pytest
import torch

from conftest import tiny_config
from fastcifar import threads
from fastcifar.training import Trainer
from fastcifar.training.progress import Progress, total_steps


@pytest.fixture(scope="module")
def shown_run(synthetic_root, tmp_path_factory):
    """One tiny run with the lines and TensorBoard on: 10 steps an epoch, cut at 4, logged every 2."""
    run_dir = tmp_path_factory.mktemp("shown") / "run"
    cfg = tiny_config(synthetic_root, run_dir, train__progress=True, train__tensorboard=True, train__max_steps=4,
                      train__log_every=2, train__threads=1)
    out, err = io.StringIO(), io.StringIO()  # not terminals: lines, no bar frames
    before = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            trainer = Trainer(cfg)
            trainer.fit()
        applied = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"stdout": out.getvalue(), "stderr": err.getvalue(), "records": records, "run_dir": run_dir,
            "threads": applied}


def test_start_line_names_device_world_loader_precision_compile_threads_and_run_dir(shown_run):
    first = shown_run["stderr"].splitlines()[0]
    assert "torch threads" not in shown_run["stdout"]  # stdout holds the epochs' results only
    for part in ("resnet8: device cpu", "world size 1", "loader torchvision (in-process)", "fp32", "compile off",
                 "1 torch threads (train.threads)", f"run dir {shown_run['run_dir']}"):
        assert part in first, (part, first)
    assert shown_run["threads"] == 1  # train.threads was applied


def test_without_a_terminal_one_line_per_log_every_and_no_bar_frames(shown_run):
    err = shown_run["stderr"]
    assert "\r" not in err and "|" not in err  # no tqdm frames
    lines = [line for line in err.splitlines() if line.startswith("step ")]
    # the run is 4 steps (train.max_steps, not 2 epochs x 10), logged at steps 2 and 4
    assert [line.split()[1] for line in lines] == ["2/4", "4/4"], err
    logged = [r for r in shown_run["records"] if "loss" in r and "event" not in r]
    for line, record in zip(lines, logged, strict=True):
        assert f"loss {record['loss']:.4f}" in line and "img/s (epoch average)" in line
        assert re.search(r"ETA \d+:\d\d:\d\d$", line)
    assert lines[-1].endswith("ETA 0:00:00")


def test_tensorboard_event_files_hold_the_jsonl_scalars(shown_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = shown_run["run_dir"] / "tensorboard"
    acc = EventAccumulator(str(folder))
    acc.Reload()

    def scalars(tag):
        return [(e.step, e.value) for e in acc.Scalars(tag)]

    steps = [r for r in shown_run["records"] if "loss" in r and "event" not in r]
    epochs = [r for r in shown_run["records"] if "train_loss" in r]
    assert len(steps) == 2 and len(epochs) == 1  # the JSONL, the source of truth
    for tag, key, records in (("train/loss", "loss", steps), ("train/lr", "lr", steps),
                              ("train/images_per_s", "images_per_s", steps),
                              ("epoch/train_loss", "train_loss", epochs), ("test/top1", "top1", epochs),
                              ("test/top5", "top5", epochs), ("test/loss", "test_loss", epochs)):
        assert scalars(tag) == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in records], tag


def test_tensorboard_off_by_default_writes_no_event_files(synthetic_root, tmp_path):
    cfg = tiny_config(synthetic_root, tmp_path / "run", train__max_steps=1, train__epochs=1)
    assert cfg.train.tensorboard is False
    with contextlib.redirect_stdout(io.StringIO()):
        Trainer(cfg).fit()
    assert not (tmp_path / "run" / "tensorboard").exists()


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_bar_on_a_terminal_counts_the_whole_run_and_shows_the_epoch_average(synthetic_root, tmp_path):
    cfg = tiny_config(synthetic_root, tmp_path, train__epochs=3, train__max_steps=25)
    assert total_steps(cfg, 10) == 25  # train.max_steps before 3 x 10 steps
    assert total_steps(tiny_config(synthetic_root, tmp_path, train__epochs=3), 10) == 30
    screen = FakeTerminal()
    progress = Progress(cfg, 10, shown=True, stream=screen)
    progress.start_epoch(epoch=1, step=10)  # as after a resume at epoch 1
    for _ in range(4):
        progress.step()
    progress.epoch_start -= 2.0  # 4 steps of 64 images in (at least) 2 seconds: at most 128 img/s
    progress.window(14, loss=1.5, lr=0.1)
    images_per_s, left = progress.rate(14)
    assert 100 < images_per_s <= 128 and left == pytest.approx((25 - 14) * 2.0 / 4, rel=0.1)
    progress.end_epoch()
    text = screen.getvalue()
    assert "14/25" in text and "epoch 2/3" in text and "img_s=" in text


def test_threads_sized_to_this_process_share_of_the_usable_cpus(monkeypatch, synthetic_root, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(threads, "busy_cpus", lambda: 0)  # an idle machine (below: a busy one)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cfg = tiny_config(synthetic_root, tmp_path, loader__workers=16)
    assert threads.torch_threads(cfg.train).count == 8 and threads.loader_threads(cfg.loader) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun, 4 processes on this node: 2 CPUs each
    assert threads.torch_threads(cfg.train) == threads.TorchThreads(2, "8 usable CPUs / 4 processes")
    assert threads.loader_threads(cfg.loader) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as torchrun sets it: kept
    assert threads.torch_threads(cfg.train) == threads.TorchThreads(1, "OMP_NUM_THREADS")
    pinned = tiny_config(synthetic_root, tmp_path, train__threads=3, loader__workers=1)
    assert threads.torch_threads(pinned.train) == threads.TorchThreads(3, "train.threads")
    assert threads.loader_threads(pinned.loader) == 1


def test_threads_leave_the_cpus_other_processes_keep_busy(monkeypatch, synthetic_root, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(threads, "busy_cpus", lambda: 1)  # one competing CPU-bound process on 2 cores
    cfg = tiny_config(synthetic_root, tmp_path)
    assert threads.torch_threads(cfg.train) == threads.TorchThreads(1, "2 usable CPUs, 1 busy with other work")
    monkeypatch.setattr(threads, "busy_cpus", lambda: 5)  # never below one thread
    assert threads.torch_threads(cfg.train).count == 1
    # deterministic runs do not look: their thread count must not depend on the machine's load
    exact = tiny_config(synthetic_root, tmp_path, train__deterministic=True)
    assert threads.torch_threads(exact.train) == threads.TorchThreads(2, "2 usable CPUs")


def test_busy_cpus_reads_the_runnable_tasks_besides_this_one(monkeypatch):
    from pathlib import Path

    readings = iter(["0.50 0.40 0.30 3/200 1234\n", "0.50 0.40 0.30 2/200 1234\n", "0.50 0.40 0.30 4/200 1234\n"])
    monkeypatch.setattr(Path, "read_text", lambda self: next(readings))
    assert threads.busy_cpus(samples=3, interval=0) == 1  # the fewest: 2 runnable, one of them this process

    def missing(self):
        raise OSError("no /proc")

    monkeypatch.setattr(Path, "read_text", missing)
    assert threads.busy_cpus(samples=3, interval=0) == 0
