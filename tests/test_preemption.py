"""Preemption: a signal stops a run at the next step with a checkpoint of that exact state, a
recovery checkpoint is written within an epoch by time, --resume continues either to the weights of
an unbroken run, and --resume=auto serves a requeued job."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, assert_same_weights, final_weights, tiny_config, tiny_overrides, warnings_of

from fastcifar import cli
from fastcifar.data import CifarSplit
from fastcifar.errors import CheckpointError, ConfigError
from fastcifar.pipelines import LOADERS, build_loader
from fastcifar.synthetic import synthetic_arrays
from fastcifar.training import Trainer
from fastcifar.training import checkpoint as ckpt

BACKENDS = [n for n in ("torchvision", "torch-gpu", "dali") if n in LOADERS]
# 10 steps an epoch (640 images, batch 64); cosine and erasing, so that the learning rate and
# the augmentation draws of a resumed run must be the unbroken run's to give the same weights
EXACT = dict(train__epochs=2, train__deterministic=True, schedule__name="cosine", augment__erase_p=0.5,
             train__checkpoint_every=100, train__checkpoint_minutes=0)


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def names(run_dir):
    return sorted(p.name for p in run_dir.glob("checkpoint_*.pt"))


@pytest.fixture
def default_signals():
    """SIGTERM and SIGINT as a terminal leaves them, whatever pytest was started under (nohup
    ignores SIGINT): the code under test must see them."""
    previous = {s: signal.signal(s, h) for s, h in ((signal.SIGTERM, signal.SIG_DFL),
                                                    (signal.SIGINT, signal.default_int_handler))}
    yield
    for s, h in previous.items():
        signal.signal(s, h)


def child_signals():
    """preexec_fn of a child that is to be signalled: default dispositions, its own session."""
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_DFL)
    os.setsid()


@pytest.fixture(scope="module")
def unbroken(synthetic_root, tmp_path_factory):
    """The weights of the unbroken in-process run that the resumed ones must reach."""
    run_dir = tmp_path_factory.mktemp("unbroken") / "run"
    Trainer(tiny_config(synthetic_root, run_dir, **EXACT)).fit()
    return final_weights(run_dir)


def at_step(trainer, step, action):
    """Calls action() as the step after `step` optimizer updates begins (its forward)."""
    def hook(module, inputs):
        if module.training and trainer.step == step:
            action()

    trainer.model.register_forward_pre_hook(hook)


# ---- loaders -----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_loader_starts_an_epoch_at_a_step_with_the_unbroken_batches(tmp_path, backend):
    images, labels = synthetic_arrays(96, 10, 0)
    data = CifarSplit(images, labels, 10)
    cfg = tiny_config(tmp_path, tmp_path / "run", loader__name=backend, loader__device="cpu",
                      train__batch_size=16, loader__dali_batches_per_run=4, augment__erase_p=0.5)
    loader = build_loader(cfg, "train", data, torch.device("cpu"))
    assert len(loader) == 6
    loader.set_epoch(3)
    whole = [(x.clone(), y.clone()) for x, y in loader]
    loader.set_epoch(3, 4)  # steps 4 and 5 only: the second of two runs of K=4 for dali
    tail = [(x.clone(), y.clone()) for x, y in loader]
    loader.set_epoch(3)  # and back to a whole epoch
    again = [(x.clone(), y.clone()) for x, y in loader]
    assert len(whole) == 6 and len(tail) == 2 and len(again) == 6
    for (x, y), (x2, y2) in zip(whole[4:], tail):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(whole, again))
    assert not torch.equal(whole[3][0], tail[0][0])
    with pytest.raises(ValueError, match="start step 7 is outside an epoch of 6 steps"):
        loader.set_epoch(3, 7)


# ---- stop at the next step, exact resume (fast: in process) -------------------------------------
def test_sigterm_mid_epoch_stops_at_the_next_step_and_resume_is_exact(synthetic_root, tmp_path, unbroken,
                                                                      default_signals, capsys):
    run_dir = tmp_path / "run"
    trainer = Trainer(tiny_config(synthetic_root, run_dir, **EXACT))
    at_step(trainer, 13, lambda: os.kill(os.getpid(), signal.SIGTERM))  # in epoch 2's 4th step
    summary = trainer.fit()
    assert (summary["status"], summary["epochs"], summary["epoch_step"], summary["steps"]) == ("stopped", 1, 4, 14)
    assert "SIGTERM: stopping at the next step with a checkpoint" in capsys.readouterr().err
    # checkpoint_every 100: the one checkpoint can only be the stop's, of step 14
    assert names(run_dir) == ["checkpoint_midepoch0001_step000004.pt"]
    [stopped] = [r for r in records(run_dir) if r.get("event") == "stopped"]
    assert (stopped["signal"], stopped["step"], stopped["epoch_step"]) == ("SIGTERM", 14, 4)
    assert 0 <= stopped["signal_to_checkpoint_s"] < 10
    assert not [r for r in records(run_dir) if "train_loss" in r and r["epoch"] > 1]  # no partial epoch record

    resumed = Trainer(tiny_config(synthetic_root, run_dir, train__resume=True, **EXACT))
    assert (resumed.epoch, resumed.epoch_step, resumed.step) == (1, 4, 14)
    assert "resuming from checkpoint_midepoch0001_step000004.pt: continuing at epoch 2/2, step 4/10 of it " \
           "(step 14 in all)" in capsys.readouterr().out
    assert resumed.fit()["status"] == "finished"
    assert_same_weights(unbroken, final_weights(run_dir))
    assert names(run_dir) == ["checkpoint_epoch0002.pt"]  # the mid-epoch file is of no more use
    epochs = [r for r in records(run_dir) if "train_loss" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]


def test_recovery_checkpoint_by_time_survives_a_kill_and_resumes_exactly(synthetic_root, tmp_path, unbroken,
                                                                        monkeypatch):
    """checkpoint_minutes so small that one is due after every step; the process dies (an exception
    stands in for kill -9 here, a real one is in the slow tests) as step 15 begins."""

    class Killed(Exception):
        pass

    def kill():
        raise Killed

    run_dir = tmp_path / "run"
    recovering = {**EXACT, "train__checkpoint_minutes": 1e-9}
    trainer = Trainer(tiny_config(synthetic_root, run_dir, **recovering))
    written = []
    real_save = ckpt.save_checkpoint
    monkeypatch.setattr(ckpt, "save_checkpoint", lambda path, state: (written.append(path.name),
                                                                       real_save(path, state)))
    at_step(trainer, 14, kill)
    with pytest.raises(Killed):
        trainer.fit()
    monkeypatch.undo()
    # one per step but the epoch's last (steps 1-9, 11-14), and only the newest is kept
    assert written == [f"checkpoint_midepoch0000_step{s:06d}.pt" for s in range(1, 10)] + [
        f"checkpoint_midepoch0001_step{s:06d}.pt" for s in range(1, 5)]
    assert names(run_dir) == ["checkpoint_midepoch0001_step000004.pt"]
    assert not list(run_dir.glob(".*tmp*")) and not (run_dir / "summary.json").exists()
    resumed = Trainer(tiny_config(synthetic_root, run_dir, train__resume=True, **EXACT))
    assert (resumed.epoch, resumed.epoch_step, resumed.step) == (1, 4, 14)
    resumed.fit()
    assert_same_weights(unbroken, final_weights(run_dir))


def test_second_ctrl_c_during_the_stop_exits_130_with_one_line(synthetic_root, tmp_path, monkeypatch, capsys,
                                                               default_signals):
    """The first Ctrl-C comes as training runs, the second while the stop's checkpoint is written."""
    import fastcifar.training.stopping as stopping

    def ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)

    first = iter([ctrl_c])
    monkeypatch.setattr(stopping.RecoveryClock, "due", lambda self: next(first, lambda: None)() or False)
    real_save = ckpt.save_checkpoint
    monkeypatch.setattr(ckpt, "save_checkpoint", lambda path, state: (ctrl_c(), real_save(path, state)))
    run_dir = tmp_path / "run"
    code = cli.train(["configs/resnet20.yml", *tiny_overrides(synthetic_root, run_dir)], prog="run.py")
    err = capsys.readouterr().err
    assert code == 130
    assert "SIGINT: stopping at the next step" in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("run.py: interrupted")
    assert not list(run_dir.glob(".*tmp*")) and not names(run_dir)


# ---- runs cut short, messages ----------------------------------------------------------------------
def test_a_run_cut_short_leaves_its_final_state_for_evaluate_and_the_hub(synthetic_root, tmp_path, capsys):
    from fastcifar import evaluate, hub

    run_dir = tmp_path / "smoke"
    trainer = Trainer(tiny_config(synthetic_root, run_dir, train__max_steps=3))
    summary = trainer.fit()
    assert (summary["status"], summary["steps"]) == ("cut_short", 3)
    assert names(run_dir) == ["checkpoint_midepoch0000_step000003.pt"]
    state, path, tree = hub.read_checkpoint(run_dir)
    assert path.name == "checkpoint_midepoch0000_step000003.pt" and tree["model"]["name"] == "resnet8"
    assert_same_weights(state, ckpt.model_state(trainer.model))
    capsys.readouterr()
    assert evaluate.main(["--checkpoint", str(run_dir), "--data.root", str(synthetic_root), "--device", "cpu"]) == 0
    assert "top-1" in capsys.readouterr().out


def test_damaged_checkpoint_messages_promise_an_older_one_only_when_there_is_one(synthetic_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    good = Trainer(tiny_config(synthetic_root, run_dir))
    ckpt.save_checkpoint(ckpt.checkpoint_path(run_dir, 1), good.state_dict())
    (run_dir / "checkpoint_midepoch0001_step000003.pt").write_bytes(b"cut off")
    capsys.readouterr()
    resumed = Trainer(tiny_config(synthetic_root, run_dir, train__resume=True))
    assert (resumed.epoch, resumed.step) == (0, 0)
    [warning] = warnings_of(capsys.readouterr().err)
    assert "checkpoint_midepoch0001_step000003.pt could not be read: truncated or not a checkpoint" in warning
    assert warning.endswith("skipped, trying the older checkpoint_epoch0001.pt")

    (run_dir / "checkpoint_epoch0001.pt").unlink()
    with pytest.raises(CheckpointError) as error:
        Trainer(tiny_config(synthetic_root, run_dir, train__resume=True))
    assert "older" not in capsys.readouterr().err  # nothing older to promise
    assert "no readable checkpoint" in str(error.value) and "older" not in str(error.value)
    assert "checkpoint_midepoch0001_step000003.pt: truncated or not checkpoints" in str(error.value)


# ---- --resume=auto ---------------------------------------------------------------------------------
def test_resume_auto_starts_fresh_resumes_or_refuses_another_recipe(synthetic_root, tmp_path):
    run_dir = tmp_path / "run"
    auto = dict(train__resume="auto", train__max_steps=3)
    fresh = Trainer(tiny_config(synthetic_root, run_dir, **auto))  # 1. nothing there: a fresh start
    assert (fresh.epoch, fresh.step) == (0, 0) and (run_dir / "config.yaml").is_file()
    fresh.fit()  # leaves checkpoint_midepoch0000_step000003.pt

    again = Trainer(tiny_config(synthetic_root, run_dir, train__resume="auto"))  # 2. a checkpoint: resumed
    assert (again.epoch, again.epoch_step, again.step) == (0, 3, 3)
    assert [r["checkpoint"] for r in records(run_dir) if r.get("event") == "resume"] == [
        "checkpoint_midepoch0000_step000003.pt"]

    with pytest.raises(ConfigError) as error:  # 3. another recipe's run: refused, in one line
        Trainer(tiny_config(synthetic_root, run_dir, train__resume="auto", optim__lr=0.5))
    assert "another recipe (optim.lr: 0.05 -> 0.5)" in str(error.value) and "\n" not in str(error.value)
    for path in run_dir.glob("checkpoint_*.pt"):  # killed before its first checkpoint: config.yaml tells
        path.unlink()
    with pytest.raises(ConfigError, match=r"holds a run of another recipe \(config.yaml: optim.lr: 0.05 -> 0.5\)"):
        Trainer(tiny_config(synthetic_root, run_dir, train__resume="auto", optim__lr=0.5))
    assert Trainer(tiny_config(synthetic_root, run_dir, train__resume="auto")).step == 0  # its own: afresh
    (run_dir / "config.yaml").write_text("optim: {lr: 0.05\n")  # unreadable: which recipe is unknown
    with pytest.raises(ConfigError, match=rf"^{run_dir / 'config.yaml'}: cannot be read as a saved config"):
        Trainer(tiny_config(synthetic_root, run_dir, train__resume="auto"))


def test_resume_auto_on_the_command_line(synthetic_root, tmp_path):
    from fastcifar import config as config_lib

    cfg = config_lib.load(REPO / "configs" / "resnet20.yml", ["--train.resume=auto"])
    assert cfg.train.resume == "auto"
    assert config_lib.load(REPO / "configs" / "resnet20.yml", ["--train.resume=true"]).train.resume == "true"
    with pytest.raises(ConfigError, match="train.resume: 'maybe' is not one of false, true, auto"):
        config_lib.load(REPO / "configs" / "resnet20.yml", ["--train.resume=maybe"])
    code = cli.train(["configs/resnet20.yml", *tiny_overrides(synthetic_root, tmp_path / "run"),
                      "--train.max_steps=1", "--resume=auto"], prog="run.py")
    assert code == 0 and names(tmp_path / "run") == ["checkpoint_midepoch0000_step000001.pt"]


# ---- the same in real processes: every loader, kill -9, torchrun (slow) ----------------------------
def run_py(run_dir, root, backend, *extra):
    overrides = tiny_overrides(root, run_dir, **{**EXACT, "loader.name": backend, "loader.device": "cpu",
                                                 "train.batch_size": 16})  # 40 steps an epoch
    return [sys.executable, "run.py", "configs/resnet20.yml", *overrides, *extra]


CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread count for every run: the same sums


def start(command, log):
    return subprocess.Popen(command, cwd=REPO, env=CHILD_ENV, stdout=subprocess.DEVNULL, stderr=log,
                            text=True, preexec_fn=child_signals)


def wait_for(proc, ready, log, limit=300):
    deadline = time.monotonic() + limit
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)


def logged_step(run_dir, at_least):
    metrics = run_dir / "metrics.jsonl"
    steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    return any(s >= at_least for s in steps)


def midepoch_file(run_dir):
    return any(ckpt.position(path)[1] for path in run_dir.glob("checkpoint_*.pt"))


@pytest.fixture(scope="module")
def unbroken_processes(synthetic_root, tmp_path_factory):
    """Per launcher and loader, the final weights of an unbroken run in a child process."""
    done = {}

    def weights(key, command_for):
        if key not in done:
            run_dir = tmp_path_factory.mktemp("whole") / "run"
            result = subprocess.run(command_for(run_dir), cwd=REPO, env=CHILD_ENV, capture_output=True,
                                    text=True, timeout=900)
            assert result.returncode == 0, result.stderr[-3000:]
            done[key] = final_weights(run_dir)
        return done[key]

    return weights


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["sigterm", "kill -9"])
def test_run_py_stopped_or_killed_mid_epoch_resumes_to_the_unbroken_weights(synthetic_root, tmp_path, backend,
                                                                             how, unbroken_processes):
    whole = unbroken_processes(("run.py", backend), lambda d: run_py(d, synthetic_root, backend))
    run_dir, log_path = tmp_path / "run", tmp_path / "stderr.txt"
    extra = ["--train.checkpoint_minutes=0.0005"] if how == "kill -9" else []
    with open(log_path, "w") as log:
        proc = start(run_py(run_dir, synthetic_root, backend, *extra), log)
        if how == "sigterm":
            wait_for(proc, lambda: logged_step(run_dir, 3), log_path)
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == 3, log_path.read_text()[-3000:]
            assert time.monotonic() - sent < 30  # 10 s and a checkpoint, with a loaded machine's slack
            err = log_path.read_text()
            assert "SIGTERM: stopping at the next step" in err
            assert "s after the signal, with a checkpoint in" in err and "continue with --resume" in err
            [stopped] = [r for r in records(run_dir) if r.get("event") == "stopped"]
            assert stopped["epoch_step"] > 0 and stopped["signal_to_checkpoint_s"] < 10
            assert json.loads((run_dir / "summary.json").read_text())["status"] == "stopped"
        else:
            wait_for(proc, lambda: logged_step(run_dir, 3) and midepoch_file(run_dir), log_path)
            proc.kill()
            proc.wait(timeout=60)
            assert not (run_dir / "summary.json").exists()
    assert midepoch_file(run_dir), names(run_dir)
    result = subprocess.run(run_py(run_dir, synthetic_root, backend, "--resume"), cwd=REPO, env=CHILD_ENV,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from checkpoint_midepoch" in result.stdout
    assert_same_weights(whole, final_weights(run_dir))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm", "kill -9"])
def test_torchrun_stopped_or_killed_mid_epoch_resumes_to_the_unbroken_weights(synthetic_root, tmp_path, how,
                                                                             unbroken_processes):
    from test_ddp import TORCHRUN_ENV, torchrun_command

    def command(run_dir, *extra):  # 2 ranks of 16: 20 steps an epoch
        return torchrun_command([*tiny_overrides(synthetic_root, run_dir, **{**EXACT, "train.batch_size": 32}),
                                 *extra])

    whole = unbroken_processes(("torchrun", "torchvision"), command)
    run_dir, log_path = tmp_path / "run", tmp_path / "stderr.txt"
    extra = ["--train.checkpoint_minutes=0.0005"] if how == "kill -9" else []
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command(run_dir, *extra), cwd=REPO, env=TORCHRUN_ENV, stdout=subprocess.DEVNULL,
                                stderr=log, text=True, preexec_fn=child_signals)
        if how == "sigterm":
            wait_for(proc, lambda: logged_step(run_dir, 2), log_path)
            proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both ranks
            proc.wait(timeout=120)
            summary = json.loads((run_dir / "summary.json").read_text())
            assert (summary["status"], summary["world_size"]) == ("stopped", 2), log_path.read_text()[-3000:]
        else:
            wait_for(proc, lambda: logged_step(run_dir, 2) and midepoch_file(run_dir), log_path)
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers, at once
            proc.wait(timeout=60)
    assert midepoch_file(run_dir), names(run_dir)
    result = subprocess.run(command(run_dir, "--resume"), cwd=REPO, env=TORCHRUN_ENV, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_weights(whole, final_weights(run_dir))


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_both_at_the_same_step_mid_epoch(synthetic_root, tmp_path):
    import torch.multiprocessing as mp
    from test_ddp import free_port

    mp.spawn(_one_rank_signalled, args=(2, free_port(), str(synthetic_root), str(tmp_path)), nprocs=2)
    summaries = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert summaries[0]["steps"] == summaries[1]["steps"] == 4  # signalled in step 3, polled at step 4
    assert [(s["status"], s["epoch_step"]) for s in summaries] == [("stopped", 4), ("stopped", 4)]
    saved = ckpt.load_checkpoint(tmp_path / "run" / "checkpoint_midepoch0000_step000004.pt")
    assert saved["rank_buffers"].shape[0] == 2 and saved["world_size"] == 2


def _one_rank_signalled(rank, world, port, root, out):
    from pathlib import Path

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from fastcifar import config, distributed

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_DFL)
    cfg = config.load(REPO / "configs" / "resnet20.yml",
                      tiny_overrides(Path(root), Path(out) / "run", **{"train.epochs": 3, "train.log_every": 2}),
                      world)
    trainer = Trainer(cfg)
    if rank == 1:
        at_step(trainer, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
    summary = trainer.fit()
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(summary))
    distributed.cleanup(finished=True)


# ---- the poll itself ---------------------------------------------------------------------------
def test_recovery_clock_is_due_after_its_minutes_and_never_at_0():
    from fastcifar.training.stopping import RecoveryClock

    assert not RecoveryClock(0).due()  # 0: off
    clock = RecoveryClock(1e-9)
    assert clock.due()
    clock.seconds = 3600
    clock.reset()
    assert not clock.due()
