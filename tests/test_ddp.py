"""DDP on CPU: two gloo processes, as torchrun would start them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import REPO, free_port, tiny_overrides

from fastcifar.training import checkpoint as ckpt

pytestmark = pytest.mark.slow


def _rank_main(rank: int, world: int, port: int, root: str, out: str):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from fastcifar import config, distributed
    from fastcifar.training import Trainer
    from fastcifar.training.checkpoint import model_state

    cfg = config.load(REPO / "configs" / "resnet20.yml",
                      tiny_overrides(Path(root), Path(out) / "run", **{"train.batch_size": 64}), world)
    trainer = Trainer(cfg)
    seen = [list(indices) for _key, indices in trainer.train_loader.sampler]  # epoch 0's shard
    trainer.fit()
    torch.save({"model": model_state(trainer.model), "seen": seen, "steps": trainer.step},
               Path(out) / f"rank{rank}.pt")
    distributed.cleanup(finished=True)


def test_two_process_gloo_ddp(synthetic_root, tmp_path):
    world = 2
    mp.spawn(_rank_main, args=(world, free_port(), str(synthetic_root), str(tmp_path)), nprocs=world)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 2 * (640 // world // 32)
    for key, value in ranks[0]["model"].items():
        if key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(value, ranks[1]["model"][key]), f"{key} differs between ranks"
    shards = [{i for batch in r["seen"] for i in batch} for r in ranks]
    assert not shards[0] & shards[1], "shards overlap"
    assert len(shards[0] | shards[1]) == 640, "shards do not cover the data set"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["final_top1"] is not None


TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on two cores


def torchrun_command(overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
            str(free_port()), "run.py", "configs/resnet20.yml", *overrides]


def torchrun(overrides: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_command(overrides), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=TORCHRUN_ENV)


def test_torchrun_cli_two_processes(synthetic_root, tmp_path):
    run_dir = tmp_path / "run"
    result = torchrun(tiny_overrides(synthetic_root, run_dir, **{"train.epochs": 1}), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "checkpoint_epoch0001.pt").is_file() and (run_dir / "config.yaml").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["world_size"] == 2
    assert result.stdout.count("epoch 1/1:") == 1  # only rank 0 prints


def test_missing_data_stops_every_rank_with_one_line(tmp_path):
    """Rank 0's data error reaches rank 1 at once instead of leaving it in a barrier."""
    result = torchrun(tiny_overrides(tmp_path / "no-data", tmp_path / "run"))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("run.py: error:")]
    assert len(errors) == 2 and all("CIFAR-10 not found under" in e for e in errors), result.stderr[-2000:]


def _signalled_rank_main(rank: int, world: int, port: int, root: str, out: str):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import signal

    from fastcifar import config, distributed
    from fastcifar.training import Trainer

    cfg = config.load(REPO / "configs" / "resnet20.yml",
                      tiny_overrides(Path(root), Path(out) / "run", **{"train.epochs": 3,
                                                                        "train.checkpoint_every": 100}), world)

    def signal_rank_one(record):
        if rank == 1 and record["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    summary = Trainer(cfg).fit(signal_rank_one)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(summary))
    distributed.cleanup(finished=True)


def test_sigterm_on_one_rank_stops_every_rank_after_the_same_epoch(synthetic_root, tmp_path):
    mp.spawn(_signalled_rank_main, args=(2, free_port(), str(synthetic_root), str(tmp_path)), nprocs=2)
    summaries = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(s["epochs"], s["finished"]) for s in summaries] == [(1, False), (1, False)]
    assert (tmp_path / "run" / "checkpoint_epoch0001.pt").is_file()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "stopped"


def test_sigterm_to_torchrun_leaves_a_stopped_marker_and_no_traceback_of_ours(synthetic_root, tmp_path):
    """torchrun exits 1 with its own SignalException traceback when signalled, whatever its workers
    did; summary.json's status tells a clean stop from a crash."""
    import signal
    import time

    run_dir = tmp_path / "run"
    stderr = open(tmp_path / "stderr.txt", "w+")
    overrides = tiny_overrides(synthetic_root, run_dir, **{"train.epochs": 20, "train.checkpoint_every": 100})
    proc = subprocess.Popen(
        torchrun_command(overrides), cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr, text=True, env=TORCHRUN_ENV)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and '"loss"' in metrics.read_text()):  # inside epoch 1
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr.txt").read_text()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)
    err = (tmp_path / "stderr.txt").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["finished"], summary["world_size"]) == ("stopped", False, 2), err[-3000:]
    # within train.log_every steps, mid-epoch or at an epoch's end
    assert ckpt.checkpoint_path(run_dir, summary["epochs"], summary["epoch_step"]).is_file()
    assert err.count("run.py: stopped ") == 1
    project_frames = [line for line in err.splitlines()
                      if line.strip().startswith("File ") and (str(REPO) in line or '"run.py"' in line)]
    assert not project_frames, err[-3000:]
    stopped = [json.loads(line) for line in metrics.read_text().splitlines() if '"stopped"' in line]
    assert len(stopped) == 1 and stopped[0]["signal"] == "SIGTERM"


def test_divergence_stops_every_rank_at_the_same_step(synthetic_root, tmp_path):
    """The window's loss is summed over ranks before the check: no rank trains on while another
    has stopped (it would wait in the next all-reduce until the timeout)."""
    run_dir = tmp_path / "run"
    result = torchrun(tiny_overrides(synthetic_root, run_dir, **{"optim.lr": 1e6, "train.epochs": 3}))
    assert result.returncode != 0  # torchrun reports any non-zero worker status as its own 1
    assert result.stderr.count("run.py: diverged: training loss is") == 1, result.stderr[-3000:]
    assert "exitcode  : 4" in result.stderr or "exitcode: 4" in result.stderr.replace(" ", "")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["world_size"]) == ("diverged", 2)
    assert not list(run_dir.glob("checkpoint_epoch*.pt"))


def test_error_line_is_one_write(monkeypatch):
    """Ranks share one stderr pipe: a line written in two pieces can merge with another rank's."""
    from fastcifar.errors import stderr_line

    class Recorder:
        def __init__(self):
            self.writes = []

        def write(self, text):
            self.writes.append(text)

        def flush(self):
            pass

    recorder = Recorder()
    monkeypatch.setattr(sys, "stderr", recorder)
    stderr_line("run.py: error: CIFAR-10 not found under /x")
    assert recorder.writes == ["run.py: error: CIFAR-10 not found under /x\n"]
