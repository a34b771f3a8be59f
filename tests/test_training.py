import json
import os

import pytest
import torch
from conftest import assert_same_weights, final_weights, tiny_config, warnings_of

from fastcifar import config as config_lib
from fastcifar.errors import CheckpointError, ConfigError
from fastcifar.models import build_model
from fastcifar.training import Trainer
from fastcifar.training import checkpoint as ckpt
from fastcifar.training.engine import TrainStep, build_optimizer, resolve_runtime
from fastcifar.training.schedule import LRSchedule
from fastcifar.pipelines import LOADERS


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_tiny_run_loss_falls_and_writes_outputs(synthetic_root, tmp_path):
    cfg = tiny_config(synthetic_root, tmp_path / "run", train__epochs=3)
    summary = Trainer(cfg).fit()
    epochs = [r for r in records(tmp_path / "run") if "train_loss" in r]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert epochs[-1]["train_loss"] < 0.8 * epochs[0]["train_loss"]
    assert all(0 <= r["top1"] <= 100 and r["test_images"] == 200 for r in epochs)
    steps = [r for r in records(tmp_path / "run") if "loss" in r]
    assert steps and all({"step", "epoch", "loss", "lr", "images_per_s"} <= set(r) for r in steps)
    assert summary["epochs"] == 3 and summary["final_top1"] == epochs[-1]["top1"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == summary
    assert config_lib.load(tmp_path / "run" / "config.yaml") == cfg
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "checkpoint_epoch0003.pt"


@pytest.mark.slow
def test_summary_reports_setup_and_compile_seconds(synthetic_root, tmp_path, monkeypatch):
    """Where a run's time goes: its setup, and what torch.compile spent during it (null when off: see
    test_time_to_accuracy_*). The compile itself is stubbed, a real one is too slow for CPU tests."""
    from fastcifar.training import trainer as trainer_lib

    before = trainer_lib.compile_seconds()
    torch.compile(lambda x: x.sin(), backend="eager")(torch.ones(2))
    assert trainer_lib.compile_seconds() > before  # the counter dynamo keeps, which the summary reads
    spent = iter([10.0, 12.5])  # when the trainer starts, when it ends
    monkeypatch.setattr(trainer_lib, "compile_seconds", lambda: next(spent))
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: model)
    cfg = tiny_config(synthetic_root, tmp_path / "compiled", train__epochs=1, train__compile="true")
    summary = Trainer(cfg).fit()
    assert summary["compile"] is True and summary["compile_seconds"] == 2.5 and summary["setup_seconds"] > 0


@pytest.mark.parametrize("backend", [n for n in ("torch-gpu", "dali") if n in LOADERS])
@pytest.mark.slow
def test_loss_falls_on_every_backend(synthetic_root, tmp_path, backend):
    cfg = tiny_config(synthetic_root, tmp_path / backend, loader__name=backend, loader__device="cpu",
                      train__epochs=3)
    epochs = []
    Trainer(cfg).fit(epochs.append)
    assert epochs[-1]["train_loss"] < 0.8 * epochs[0]["train_loss"]


@pytest.mark.slow
def test_deterministic_runs_give_identical_weights(synthetic_root, tmp_path):
    for name in ("a", "b"):
        Trainer(tiny_config(synthetic_root, tmp_path / name, train__deterministic=True)).fit()
    assert_same_weights(final_weights(tmp_path / "a"), final_weights(tmp_path / "b"))


class Killed(Exception):
    pass


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(synthetic_root, tmp_path):
    extra = dict(train__epochs=3, train__deterministic=True, schedule__name="cosine",
                 augment__erase_p=0.5)
    Trainer(tiny_config(synthetic_root, tmp_path / "whole", **extra)).fit()

    def kill_in_epoch_two(record):
        if record["epoch"] == 2:  # before epoch 2's checkpoint: resumes from epoch 1
            raise Killed

    with pytest.raises(Killed):
        Trainer(tiny_config(synthetic_root, tmp_path / "broken", **extra)).fit(kill_in_epoch_two)
    assert ckpt.latest_checkpoint(tmp_path / "broken").name == "checkpoint_epoch0001.pt"
    with pytest.raises(ConfigError, match="--resume"):  # never silently overwrite a run
        Trainer(tiny_config(synthetic_root, tmp_path / "broken", **extra))
    resumed = Trainer(tiny_config(synthetic_root, tmp_path / "broken", train__resume=True, **extra))
    assert (resumed.epoch, resumed.step) == (1, 10)
    resumed.fit()
    assert_same_weights(final_weights(tmp_path / "whole"), final_weights(tmp_path / "broken"))
    log = records(tmp_path / "broken")
    assert any(r.get("event") == "resume" for r in log)
    assert [r["epoch"] for r in log if "train_loss" in r] == [1, 2, 2, 3]  # appended, not overwritten
    assert (tmp_path / "broken" / "config.resume-epoch0001.yaml").is_file()


def test_resume_without_checkpoint_is_a_clear_error(synthetic_root, tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint to resume from"):
        Trainer(tiny_config(synthetic_root, tmp_path / "empty", train__resume=True))


@pytest.mark.slow
def test_resume_refuses_another_recipe_but_not_another_way_to_run_it(synthetic_root, tmp_path):
    Trainer(tiny_config(synthetic_root, tmp_path / "run", train__epochs=2)).fit(lambda r: None)
    for key, value in (("optim__lr", 0.5), ("train__epochs", 3), ("augment__erase_p", 0.0)):
        with pytest.raises(ConfigError, match=rf"another recipe \({key.replace('__', '.')}: "):
            Trainer(tiny_config(synthetic_root, tmp_path / "run", train__resume=True,
                                **{"train__epochs": 2, key: value}))
    resumed = Trainer(tiny_config(synthetic_root, tmp_path / "run", train__resume=True, train__epochs=2,
                                  train__log_every=7, loader__workers=1, train__keep_checkpoints=1))
    assert resumed.epoch == 2


def test_checkpoint_is_atomic_prefix_free_and_weights_only(tmp_path):
    model = build_model("resnet8")
    path = tmp_path / "c.pt"
    ckpt.save_checkpoint(path, {"model": ckpt.model_state(torch.compile(model))})
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind
    state = ckpt.load_checkpoint(path)["model"]
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in state)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="could not be read"):
        ckpt.load_checkpoint(path)


def test_text_files_are_replaced_whole_or_not_at_all(tmp_path):
    from fastcifar.files import write_text_atomic

    path = write_text_atomic(tmp_path / "deep" / "summary.json", "old\n")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(path, "half written, then \udc80 cannot be encoded")
    assert path.read_text() == "old\n"
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]


def test_checkpoint_loads_into_plain_compiled_and_ddp_models(single_process_group):
    torch.manual_seed(1)
    source = build_model("resnet8")
    state = ckpt.model_state(source)
    prefixed = {f"module._orig_mod.{k}": v for k, v in state.items()}  # as other tools save
    x = torch.randn(2, 3, 32, 32)
    expected = source.eval()(x)
    targets = {
        "plain": build_model("resnet8"),
        "compiled": torch.compile(build_model("resnet8")),
        "ddp": torch.nn.parallel.DistributedDataParallel(build_model("resnet8")),
    }
    for name, target in targets.items():
        for saved in (state, prefixed):
            ckpt.load_model_state(target, saved)
            torch.testing.assert_close(ckpt.unwrap(target).eval()(x), expected, msg=name)
    with pytest.raises(RuntimeError):  # strict: a wrong architecture is refused
        ckpt.load_model_state(build_model("resnet14"), state)


def test_schedule_shapes():
    from fastcifar.config import OptimConfig, ScheduleConfig

    optim = OptimConfig(lr=0.1)
    multi = LRSchedule(optim, ScheduleConfig(warmup_epochs=2, warmup_start_lr=0.0, milestones=(4, 6)), 10, 8)
    assert multi(0) == 0.0 and multi(10) == pytest.approx(0.05) and multi(20) == pytest.approx(0.1)
    assert multi(39) == pytest.approx(0.1) and multi(40) == pytest.approx(0.01) and multi(79) == pytest.approx(0.001)
    cos = LRSchedule(optim, ScheduleConfig(name="cosine", warmup_epochs=0, final_lr=0.0), 10, 10)
    assert cos(0) == pytest.approx(0.1) and cos(50) == pytest.approx(0.05) and cos(100) == pytest.approx(0.0)
    one = LRSchedule(optim, ScheduleConfig(name="onecycle", warmup_epochs=2, warmup_start_lr=0.0), 10, 10)
    assert one(10) == pytest.approx(0.05) and one(20) == pytest.approx(0.1) and one(60) == pytest.approx(0.05)


def test_no_weight_decay_for_bn_and_bias():
    from fastcifar.config import OptimConfig

    model = build_model("resnet8")
    groups = build_optimizer(model, OptimConfig(no_wd_bn_bias=True)).param_groups
    n_bn_and_bias = sum(1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)) * 2 + 1
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]
    assert len(groups[1]["params"]) == n_bn_and_bias
    assert len(build_optimizer(model, OptimConfig()).param_groups) == 1


@pytest.mark.slow
def test_compile_smoke_matches_eager():
    """One small torch.compile training step on CPU gives the eager step's loss."""
    from fastcifar.config import TrainConfig

    runtime = resolve_runtime(TrainConfig(device="cpu", amp="none", compile="false"), torch.device("cpu"))
    compiled_rt = resolve_runtime(TrainConfig(device="cpu", amp="none", compile="true"), torch.device("cpu"))
    assert not runtime.compile and compiled_rt.compile
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    losses = []
    for rt in (runtime, compiled_rt):
        torch.manual_seed(0)
        model = build_model("resnet8")
        net = torch.compile(model) if rt.compile else model
        step = TrainStep(net, build_optimizer(model, config_lib.OptimConfig()), rt)
        losses.append([step(x, y).item() for _ in range(2)])
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), rtol=1e-4, atol=1e-4)


def test_fp16_on_cpu_is_refused():
    from fastcifar.config import TrainConfig

    with pytest.raises(ConfigError, match="train.amp"):
        resolve_runtime(TrainConfig(amp="fp16"), torch.device("cpu"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_channels_last_compile_step(synthetic_root, tmp_path):
    cfg = tiny_config(synthetic_root, tmp_path / "cuda", train__device="cuda", train__amp="bf16",
                      train__compile="true", train__channels_last=True, train__epochs=2)
    trainer = Trainer(cfg)
    assert trainer.runtime.amp_dtype == torch.bfloat16 and trainer.runtime.compile
    epochs = []
    trainer.fit(epochs.append)
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


@pytest.mark.slow
def test_resuming_a_finished_run_reports_its_final_accuracy_again(synthetic_root, tmp_path, capsys):
    first = Trainer(tiny_config(synthetic_root, tmp_path / "run")).fit()
    capsys.readouterr()
    again = Trainer(tiny_config(synthetic_root, tmp_path / "run", train__resume=True)).fit()
    assert again["finished"] and again["epochs"] == first["epochs"]
    assert again["final_top1"] == pytest.approx(first["final_top1"])
    assert again["final_top5"] == pytest.approx(first["final_top5"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0] == "resuming from checkpoint_epoch0002.pt: all 2 epochs done (step 20)"
    assert len(printed) == 2 and printed[1].startswith("epoch 2/2")
    assert f"test top-1 {first['final_top1']:.2f}%" in printed[1]
    stored = json.loads((tmp_path / "run" / "summary.json").read_text())  # intact: still the finished run
    assert (stored["status"], stored["epochs"], stored["steps"]) == ("finished", first["epochs"], first["steps"])
    assert stored["final_top1"] == pytest.approx(first["final_top1"])


def test_stop_handler_leaves_forked_workers_and_ignored_sigint_alone():
    """A DataLoader worker forked inside the stop inherits its handler: a terminal's Ctrl-C must not
    make it announce a stop. An ignored SIGINT (nohup, a background job) stays ignored after SIGTERM."""
    import signal

    from fastcifar.training.stopping import GracefulStop

    with GracefulStop(announce=True) as stop:
        pid = os.fork()
        if pid == 0:  # the "worker"
            os.kill(os.getpid(), signal.SIGINT)
            os._exit(0 if stop.signal_name is None else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert stop.signal_name is None  # the parent was not signalled

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with GracefulStop(announce=False) as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.signal_name == "SIGTERM"
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_failed_checkpoint_save_leaves_no_temp_file_and_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_epoch0001.pt"
    ckpt.save_checkpoint(path, {"epoch": 1})

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        ckpt.save_checkpoint(path, {"epoch": 2})
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert ckpt.load_checkpoint(path)["epoch"] == 1


def test_checkpoint_save_fsyncs_the_file_and_then_its_folder(tmp_path, monkeypatch):
    import stat

    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    ckpt.save_checkpoint(tmp_path / "c.pt", {"epoch": 1})
    assert synced == ["file", "dir"]  # the folder after the rename, which made the name point at the file


@pytest.mark.slow
def test_resume_on_an_accelerator_loads_the_checkpoint_to_cpu(synthetic_root, tmp_path):
    """On a GPU, loading to the device moved the RNG states there and their restore failed. The
    meta device stands in for CUDA: nothing loaded onto it can be restored or copied."""
    import dataclasses

    Trainer(tiny_config(synthetic_root, tmp_path / "run", train__epochs=1)).fit()
    saved = ckpt.load_checkpoint(tmp_path / "run" / "checkpoint_epoch0001.pt")
    resumed = Trainer(tiny_config(synthetic_root, tmp_path / "run", train__epochs=1, train__resume=True))
    resumed.dist = dataclasses.replace(resumed.dist, device=torch.device("meta"))
    torch.manual_seed(12345)
    resumed._prepare_run_dir()
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])
    assert_same_weights(ckpt.model_state(resumed.model), saved["model"])


@pytest.mark.slow
def test_resume_skips_a_damaged_latest_checkpoint_with_one_warning(synthetic_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    Trainer(tiny_config(synthetic_root, run_dir, train__epochs=3)).fit()
    newest = run_dir / "checkpoint_epoch0003.pt"
    newest.write_bytes(newest.read_bytes()[:5000])  # a copy cut off, a full disk
    capsys.readouterr()
    resumed = Trainer(tiny_config(synthetic_root, run_dir, train__epochs=3, train__resume=True))
    assert (resumed.epoch, resumed.step) == (2, 20)
    warnings = warnings_of(capsys.readouterr().err)
    assert len(warnings) == 1 and "checkpoint_epoch0003.pt" in warnings[0] and len(warnings[0]) < 300
    assert [r["checkpoint"] for r in records(run_dir) if r.get("event") == "resume"] == ["checkpoint_epoch0002.pt"]

    for name in ("checkpoint_epoch0001.pt", "checkpoint_epoch0002.pt"):
        (run_dir / name).write_bytes(b"")
    with pytest.raises(CheckpointError) as error:
        Trainer(tiny_config(synthetic_root, run_dir, train__epochs=3, train__resume=True))
    message = str(error.value)
    assert "\n" not in message and len(message) < 400
    assert all(f"checkpoint_epoch000{e}.pt" in message for e in (1, 2, 3)) and "no readable checkpoint" in message


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run_stopped_by_sigterm_resumes(synthetic_root, tmp_path):
    import signal

    extra = dict(train__device="cuda", train__epochs=3, train__checkpoint_every=100)

    def sigterm_after_epoch_one(record):
        if record["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = Trainer(tiny_config(synthetic_root, tmp_path / "run", **extra)).fit(sigterm_after_epoch_one)
    assert (stopped["epochs"], stopped["finished"]) == (1, False)
    resumed = Trainer(tiny_config(synthetic_root, tmp_path / "run", train__resume=True, **extra))
    assert resumed.epoch == 1 and resumed.dist.device.type == "cuda"
    assert resumed.fit()["finished"]
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def strict_json(text):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_json_text_writes_non_finite_floats_as_null():
    from fastcifar.files import json_text

    value = {"loss": float("nan"), "nested": [1.5, float("inf"), {"x": -float("inf")}], "n": 3}
    assert strict_json(json_text(value)) == {"loss": None, "nested": [1.5, None, {"x": None}], "n": 3}


@pytest.mark.slow
def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(synthetic_root, tmp_path):
    """Fault injection: from step 13 (epoch 2) the weights turn NaN, as after an exploding update."""
    from fastcifar.errors import Diverged

    run_dir = tmp_path / "run"
    trainer = Trainer(tiny_config(synthetic_root, run_dir, train__epochs=3, train__log_every=3))

    def explode(module, inputs):
        if module.training and trainer.step + 1 >= 13:
            with torch.no_grad():
                next(module.parameters()).fill_(float("nan"))

    trainer.model.register_forward_pre_hook(explode)
    with pytest.raises(Diverged) as error:
        trainer.fit()
    message = str(error.value)
    assert "\n" not in message and "at step 13" in message and "nan" in message  # window 11-13
    assert [p.name for p in run_dir.glob("checkpoint_epoch*.pt")] == ["checkpoint_epoch0001.pt"]
    kept = ckpt.load_checkpoint(run_dir / "checkpoint_epoch0001.pt")["model"]
    assert all(torch.isfinite(v).all() for v in kept.values() if v.is_floating_point())
    summary = strict_json((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["finished"], summary["epochs"], summary["steps"]) == ("diverged", False, 1, 13)
    log = [strict_json(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r.get("event") == "diverged"] == [13]


@pytest.mark.slow
def test_divergence_in_evaluation_is_caught_before_the_checkpoint(synthetic_root, tmp_path):
    from fastcifar.errors import Diverged

    run_dir = tmp_path / "run"
    trainer = Trainer(tiny_config(synthetic_root, run_dir, train__epochs=1))

    def poisoned_weights(record):  # the loss was finite, the update after it was not
        with torch.no_grad():
            trainer.model.fc.weight.fill_(float("inf"))

    real_evaluate = trainer.evaluate
    trainer.evaluate = lambda: (poisoned_weights(None), real_evaluate())[1]
    with pytest.raises(Diverged, match=r"test loss is nan at step 10"):
        trainer.fit()
    assert not list(run_dir.glob("checkpoint_epoch*.pt"))


@pytest.mark.slow
def test_run_py_reports_a_real_divergence_with_its_own_exit_status(synthetic_root, tmp_path):
    import subprocess
    import sys

    from conftest import REPO, tiny_overrides

    from fastcifar.training.stopping import DIVERGED_EXIT

    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "run.py", "configs/resnet20.yml",
                             *tiny_overrides(synthetic_root, run_dir, **{"optim.lr": 1e6})],
                            cwd=REPO, capture_output=True, text=True, timeout=240,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == DIVERGED_EXIT == 4, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("run.py:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("run.py: diverged: training loss is nan at step ") or "inf at step" in lines[0]
    assert strict_json((run_dir / "summary.json").read_text())["status"] == "diverged"
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        strict_json(line)
    assert not list(run_dir.glob("checkpoint_epoch*.pt"))


@pytest.mark.slow
def test_max_steps_cuts_the_run_short_and_resume_continues_it(synthetic_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    summary = Trainer(tiny_config(synthetic_root, run_dir, train__epochs=3, train__max_steps=15)).fit()
    assert (summary["status"], summary["cut_short"], summary["finished"]) == ("cut_short", True, False)
    assert (summary["steps"], summary["epochs"]) == (15, 1) and summary["final_top1"] is not None
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    # the partial epoch 2 is evaluated and saved as it stands: --resume continues from its step
    assert sorted(p.name for p in run_dir.glob("checkpoint_*.pt")) == [
        "checkpoint_epoch0001.pt", "checkpoint_midepoch0001_step000005.pt"]
    log = records(run_dir)
    assert [r["epoch"] for r in log if "train_loss" in r] == [1, 1.5]
    assert [r["step"] for r in log if r.get("event") == "cut_short"] == [15]
    assert "epoch 1.50/3 (cut short at train.max_steps=15)" in capsys.readouterr().out

    resumed = Trainer(tiny_config(synthetic_root, run_dir, train__epochs=3, train__resume=True))
    assert (resumed.epoch, resumed.epoch_step, resumed.step) == (1, 5, 15)
    summary = resumed.fit()
    assert (summary["status"], summary["steps"], summary["epochs"]) == ("finished", 30, 3)


def test_a_run_cut_short_evaluates_on_as_many_test_images_as_it_trained_on(synthetic_root, tmp_path):
    run_dir = tmp_path / "run"
    summary = Trainer(tiny_config(synthetic_root, run_dir, train__max_steps=2, loader__eval_batch_size=50)).fit()
    assert summary["cut_short"] and summary["steps"] == 2
    assert [r["test_images"] for r in records(run_dir) if "test_images" in r] == [150]  # 2 x 64 -> 3 batches of 50


@pytest.mark.slow
def test_smoke_run_on_real_data_is_cut_short(real_cifar_root, tmp_path):
    """The README's smoke run: seconds on two CPU cores (not timed here: the CPU may be shared)."""
    import subprocess
    import sys

    from conftest import REPO

    run_dir = tmp_path / "smoke"
    result = subprocess.run([sys.executable, "run.py", "configs/resnet20.yml", f"--data.root={real_cifar_root}",
                             "--data.download=false", "--train.device=cpu", "--train.max_steps=10",
                             "--train.batch_size=64", f"--train.run_dir={run_dir}", "--train.progress=false"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(cut short at train.max_steps=10)" in result.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["steps"], summary["final_top1"] is not None) == ("cut_short", 10, True)
    assert [r["test_images"] for r in records(run_dir) if "test_images" in r] == [1000]


@pytest.mark.slow
def test_non_finite_weights_are_never_checkpointed(synthetic_root, tmp_path):
    """An update after the last checked loss can still break the weights; with no evaluation that
    epoch, the check before the checkpoint is the one that sees it."""
    from fastcifar.errors import Diverged

    run_dir = tmp_path / "run"
    trainer = Trainer(tiny_config(synthetic_root, run_dir, train__epochs=3, train__eval_every=10))

    def break_weights(record):
        with torch.no_grad():
            trainer.model.fc.bias.fill_(float("inf"))

    with pytest.raises(Diverged, match=r"a weight is NaN or infinite at step 10 \(epoch 1\)"):
        trainer.fit(break_weights)
    assert not list(run_dir.glob("checkpoint_epoch*.pt"))
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "diverged"


@pytest.mark.slow
def test_a_run_saved_without_fp16_resumes_under_an_enabled_grad_scaler(synthetic_root, tmp_path):
    """A bf16/fp32 run saves the disabled GradScaler's empty state; an enabled scaler (fp16, on
    CUDA) refuses an empty state, so resuming such a run with --train.amp=fp16 used to crash."""
    Trainer(tiny_config(synthetic_root, tmp_path / "run", train__epochs=1)).fit()
    saved = ckpt.load_checkpoint(tmp_path / "run" / "checkpoint_epoch0001.pt")
    assert saved["scaler"] == {}
    resumed = Trainer(tiny_config(synthetic_root, tmp_path / "other", train__epochs=2))
    resumed.step_fn.scaler = torch.amp.GradScaler("cpu", enabled=True)  # as train.amp=fp16 builds it on CUDA
    resumed.load_state(saved)
    assert resumed.epoch == 1 and resumed.step_fn.scaler.get_scale() == 2.0 ** 16  # a fresh scale


def test_cuda_rng_states_of_a_machine_with_more_gpus_restore_those_seen_here(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.extend)
    state = {**ckpt.rng_state(), "cuda": [torch.zeros(16, dtype=torch.uint8) for _ in range(8)]}
    ckpt.set_rng_state(state)
    assert len(restored) == 1
