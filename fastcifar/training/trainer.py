"""The training loop: epochs of TrainSteps, evaluation, JSONL metrics, checkpoints and resume.

It never branches on the loader backend: every loader yields ready (images, labels) batches.
"""

from __future__ import annotations

import itertools
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

from fastcifar import config as config_lib
from fastcifar import distributed as dist_lib
from fastcifar.config import Config
from fastcifar.data import load_cifar
from fastcifar.errors import CheckpointError, ConfigError, DataError, Diverged, stderr_line
from fastcifar.files import json_text, write_text_atomic
from fastcifar.models import build_model
from fastcifar.training import checkpoint as ckpt
from fastcifar.training.engine import (
    Evaluator,
    average_buffers,
    build_optimizer,
    prepare_model,
    resolve_runtime,
)
from fastcifar.training.graph import build_train_step
from fastcifar.training.prefetch import prefetch
from fastcifar.training.progress import Progress, start_line
from fastcifar.training.schedule import LRSchedule
from fastcifar.training.stopping import GracefulStop, RecoveryClock
from fastcifar.training.tensorboard_log import TensorBoardLog
from fastcifar.pipelines import build_loader
from fastcifar.threads import apply_torch_threads, loader_threads


def seed_everything(seed: int, deterministic: bool) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic


def compile_seconds() -> float:
    """Seconds torch.compile has spent in this process so far: frame compiles and the backward
    graphs compiled lazily at the first backward pass."""
    from torch._dynamo.utils import compilation_time_metrics as metrics

    return sum(sum(metrics.get(k, [])) for k in ("_compile.compile_inner", "backward._backward_impl"))


class Trainer:
    def __init__(self, cfg: Config, dist: dist_lib.DistInfo | None = None):
        start = time.perf_counter()
        self.cfg = cfg = config_lib.resolve_run_dir(cfg)  # a Config built in code may hold runs/{model.name}
        self.dist = dist or dist_lib.setup(cfg.train.device)
        self.main = self.dist.is_main
        config_lib.validate(cfg, self.dist.world_size)
        self.threads = apply_torch_threads(cfg.train)
        self.tensorboard = TensorBoardLog(cfg.train.run_dir, cfg.train.tensorboard and self.main)
        self.runtime = resolve_runtime(cfg.train, self.dist.device, self.dist.distributed, announce=self.main,
                                       implementation=cfg.optim.implementation)
        # compiles happen lazily, in fit(): the summary reports this trainer's share apart
        self.compile_base = compile_seconds() if self.runtime.compile else None
        self.run_dir = Path(cfg.train.run_dir)
        seed_everything(cfg.train.seed, cfg.train.deterministic)

        train_data, test_data = self._load_data()
        self.num_classes = train_data.num_classes
        device, rank, world = self.dist.device, self.dist.rank, self.dist.world_size
        self.train_loader = prefetch(build_loader(cfg, "train", train_data, device, rank, world), device)
        self.test_loader = prefetch(build_loader(cfg, "test", test_data, device, rank, world), device)
        if len(self.train_loader) == 0:
            raise ConfigError(f"train.batch_size: {cfg.train.batch_size} is larger than the "
                              f"{len(train_data)} training images split over {world} rank(s)")

        self.model = build_model(cfg.model.name, self.num_classes, cfg.model.shortcut)
        self.eval_model, self.train_model = prepare_model(self.model, self.runtime, self.dist.distributed)
        self.optimizer = build_optimizer(self.model, cfg.optim, self.runtime)
        self.step_fn = build_train_step(self.train_model, self.optimizer, self.runtime, cfg.optim.label_smoothing)
        self.evaluator = Evaluator(self.eval_model, self.runtime)
        self.schedule = LRSchedule(cfg.optim, cfg.schedule, len(self.train_loader), cfg.train.epochs)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer updates completed
        self.epoch_step = 0  # steps done of the epoch in progress (a mid-epoch checkpoint's)
        self.epoch_loss_before = 0.0  # that epoch's loss sum before a mid-epoch resume, over ranks
        self.stop_signalled_at = None  # time.monotonic() of a stop signal to this process
        self.train_seconds = 0.0
        self.first_step_seconds = None  # of this process: compile time shows here
        self._prepare_run_dir()
        self.progress = Progress(cfg, len(self.train_loader), self.main and cfg.train.progress)
        if self.main:  # on stderr, with the bar and the log lines: stdout keeps the epochs' results
            print(start_line(cfg, self.runtime, self.dist.device, self.dist.world_size, self.threads,
                             loader_threads(cfg.loader)), file=sys.stderr, flush=True)
        self.setup_seconds = time.perf_counter() - start  # data, model, run dir, a resume's checkpoint

    # ---- setup -------------------------------------------------------------------------------
    def _load_data(self):
        d = self.cfg.data

        def load():
            return (load_cifar(d.dataset, d.root, "train", d.download),
                    load_cifar(d.dataset, d.root, "test", d.download))

        # rank 0 downloads/extracts first, so ranks never race on the same files; its error, if
        # any, reaches every rank, so none waits for a rank that has stopped
        error, data = None, None
        if self.main:
            try:
                data = load()
            except DataError as e:
                error = str(e)
        error = dist_lib.broadcast_object(error)
        if error is not None:
            raise DataError(error)
        return data if self.main else load()

    def _prepare_run_dir(self) -> None:
        latest = ckpt.latest_checkpoint(self.run_dir) if self.run_dir.is_dir() else None
        mode = self.cfg.train.resume
        if mode == "auto":  # a requeued job runs the same command: continue when there is a run
            if latest is None:
                self._refuse_another_recipe(self.run_dir / "config.yaml")
            resume = latest is not None
        else:
            resume = mode == "true"
        if resume:
            if latest is None:
                raise ConfigError(f"train.resume: no checkpoint to resume from in {self.run_dir}")
            latest, state = self._newest_readable_checkpoint()
            change = config_lib.recipe_change(state["config"], self.cfg) if "config" in state else None
            if change is not None:
                raise ConfigError(f"train.resume: {latest} was trained with another recipe ({change}); "
                                  "resume with its settings, or start a new --train.run_dir")
            self.load_state(state)
            self.log_event({"event": "resume", "checkpoint": latest.name, "epoch": self.epoch,
                            "epoch_step": self.epoch_step, "step": self.step})
            if self.main:
                print(f"resuming from {latest.name}: {self._position()}", flush=True)
            name = f"config.resume-epoch{self.epoch:04d}.yaml"
        else:
            if latest is not None:
                raise ConfigError(f"train.run_dir: {self.run_dir} already holds {latest.name}; "
                                  "pass --resume to continue it, or choose another --train.run_dir")
            name = "config.yaml"
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # summary.json says how the last process ended: a crash of this one must not leave
            # an earlier "stopped" or "finished" standing
            (self.run_dir / "summary.json").unlink(missing_ok=True)
            config_lib.save(self.cfg, self.run_dir / name)

    def _position(self) -> str:
        """Where training continues, in the words of the resume line."""
        cfg = self.cfg.train
        if self.epoch >= cfg.epochs:
            return f"all {cfg.epochs} epochs done (step {self.step})"
        return (f"continuing at epoch {self.epoch + 1}/{cfg.epochs}, step {self.epoch_step}/"
                f"{len(self.train_loader)} of it (step {self.step} in all)")

    def _refuse_another_recipe(self, saved: Path) -> None:
        """train.resume=auto in a run directory with no checkpoint: starting afresh there is right
        for this recipe's run killed before its first checkpoint, wrong for another recipe's."""
        change = config_lib.saved_recipe_change(saved, self.cfg)
        if change is not None:
            raise ConfigError(f"train.resume: {self.run_dir} holds a run of another recipe ({saved.name}: "
                              f"{change}); start it in another --train.run_dir")

    def _newest_readable_checkpoint(self) -> tuple[Path, dict]:
        """The newest checkpoint that loads, warning of each newer one skipped (truncated by a full
        disk, a copy cut off). Loaded to CPU, whatever the device: the RNG states must stay CPU
        tensors, and load_state puts weights and optimizer state where the model lives."""
        found = [path for _epoch, path in reversed(ckpt.checkpoints(self.run_dir))]
        skipped = []
        for k, path in enumerate(found):
            try:
                state = ckpt.load_checkpoint(path, map_location="cpu")
            except CheckpointError as e:
                skipped.append(path.name)
                if self.main and k + 1 < len(found):  # an older one is promised only where there is one
                    stderr_line(f"warning: {e}; skipped, trying the older {found[k + 1].name}")
                continue
            return path, state
        raise CheckpointError(f"train.resume: no readable checkpoint in {self.run_dir} "
                              f"({', '.join(reversed(skipped))}: truncated or not checkpoints); start a new "
                              "--train.run_dir, or restore one of them")

    # ---- state -------------------------------------------------------------------------------
    def state_dict(self, epoch_loss: float = 0.0, rank_buffers: torch.Tensor | None = None) -> dict:
        """epoch_loss: the loss sum over ranks of the epoch's steps so far; rank_buffers: every
        rank's BN statistics (ckpt.gather_buffers); both for a mid-epoch checkpoint."""
        state = {
            "model": ckpt.model_state(self.model),
            "optimizer": self.step_fn.state_dict(),
            "scaler": self.step_fn.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "epoch_step": self.epoch_step,
            "epoch_loss": epoch_loss,
            "world_size": self.dist.world_size,
            "train_seconds": self.train_seconds,
            "rng": ckpt.rng_state(),
            "config": config_lib.to_dict(self.cfg),
        }
        if rank_buffers is not None:
            state["rank_buffers"] = rank_buffers
        return state

    def load_state(self, state: dict) -> None:
        ckpt.load_model_state(self.model, state["model"])
        self.step_fn.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty when saved without fp16; an enabled GradScaler refuses an empty state
            self.step_fn.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.epoch_step = state.get("epoch_step", 0)  # absent: written before mid-epoch checkpoints
        self.epoch_loss_before = state.get("epoch_loss", 0.0)
        self.train_seconds = state.get("train_seconds", 0.0)
        ckpt.set_rng_state(state["rng"])
        steps, world = len(self.train_loader), self.dist.world_size
        if self.epoch_step >= steps:
            raise CheckpointError(f"train.resume: the checkpoint is at step {self.epoch_step} of an epoch, "
                                  f"which has {steps} steps here; resume with its train.batch_size and world size")
        saved_world = state.get("world_size", world)
        if "rank_buffers" in state and saved_world == world:
            ckpt.set_buffers(self.model, state["rank_buffers"][self.dist.rank])
        elif self.epoch_step and saved_world != world and self.main:
            stderr_line(f"warning: the checkpoint was written mid-epoch by {saved_world} process(es), resumed by "
                        f"{world}: the rest of epoch {self.epoch + 1} shards the images otherwise, so this "
                        "run is no longer the unbroken one")

    def save_checkpoint(self) -> None:
        """At the end of an epoch: BN statistics averaged over ranks, as evaluation sees them."""
        average_buffers(self.model, self.dist.world_size)
        if self.main:
            path = ckpt.checkpoint_path(self.run_dir, self.epoch)
            ckpt.save_checkpoint(path, self.state_dict())
            ckpt.prune_checkpoints(self.run_dir, self.cfg.train.keep_checkpoints)
            ckpt.remove_older_midepoch(self.run_dir, path)

    def save_midepoch_checkpoint(self, epoch_loss: float) -> Path:
        """Inside an epoch: the exact state, so that a resume continues as the unbroken run does.
        Nothing is averaged (that would change the run), each rank's BN statistics are kept
        instead. Called by every rank at the same step (a collective); rank 0 writes."""
        self.check_weights()
        buffers = ckpt.gather_buffers(self.model, self.dist.world_size)
        path = ckpt.checkpoint_path(self.run_dir, self.epoch, self.epoch_step)
        if self.main:
            ckpt.save_checkpoint(path, self.state_dict(epoch_loss, buffers))
            ckpt.remove_older_midepoch(self.run_dir, path)
        return path

    # ---- logging -----------------------------------------------------------------------------
    def log_event(self, record: dict) -> None:
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / "metrics.jsonl", "a") as f:  # appended: resumes keep history
                f.write(json_text(record) + "\n")
            self.tensorboard.write(record)

    # ---- loop --------------------------------------------------------------------------------
    def train_epoch(self, stop: GracefulStop, clock: RecoveryClock) -> dict:
        """The epoch in progress, from self.epoch_step on, to its end, to train.max_steps or to a
        stop; "halt" in the record says which ("end", "cut", "stopped")."""
        cfg, loader, device, world = self.cfg.train, self.train_loader, self.dist.device, self.dist.world_size
        steps, first = len(loader), self.epoch_step
        loader.set_epoch(self.epoch, first)
        self.train_model.train()
        window_loss = torch.zeros((), device=device)
        # the steps before a mid-epoch resume count in the epoch's loss: their sum, shared over ranks
        epoch_loss = torch.full((), self.epoch_loss_before / world, device=device)
        self.epoch_loss_before = 0.0
        self.progress.start_epoch(self.epoch, self.step)
        start = window_start = time.perf_counter()
        window_steps, halt = 0, "end"
        for i, (images, labels) in enumerate(loader, first):
            lr = self.schedule(self.step)
            self.step_fn.set_lr(lr)
            loss = self.step_fn(images, labels)
            if self.first_step_seconds is None:  # compile and autotuning land here: timed apart
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                self.first_step_seconds = time.perf_counter() - start
            window_loss += loss
            epoch_loss += loss
            self.step += 1
            self.epoch_step = i + 1
            window_steps += 1
            self.progress.step()
            cut = self.step_limit_reached()
            # Alone, the stop flag and the recovery clock are read every step: plain Python reads,
            # no host sync. Under DDP the ranks must agree, so they are read at the logging sync.
            polled = world == 1 and (stop.signal_name is not None or clock.due())
            if (i + 1) % cfg.log_every == 0 or i + 1 == steps or cut or polled:
                # the one host sync per window; summed over ranks first, so that every rank sees
                # the same loss and a divergence stops them all at the same step, and with it
                # whether any rank was signalled or is due for a recovery checkpoint
                flags = torch.tensor([stop.signal_name is not None, clock.due()], dtype=window_loss.dtype,
                                     device=device)
                total, signalled, due = dist_lib.all_reduce_sum(torch.cat([window_loss.reshape(1), flags])).tolist()
                mean_loss = total / (window_steps * world)
                self.check_finite("training loss", mean_loss)
                now = time.perf_counter()
                ips = window_steps * cfg.batch_size / (now - window_start)
                # time: seconds since the epoch (Unix), so that concurrent runs can be lined up in time
                self.log_event({"step": self.step, "epoch": self.epoch + (i + 1) / steps,
                                "loss": mean_loss, "lr": lr, "images_per_s": ips, "time": time.time()})
                self.progress.window(self.step, mean_loss, lr)
                window_loss.zero_()
                window_start, window_steps = now, 0
                if signalled:
                    halt = "stopped"
                    break
                if due and not cut and i + 1 < steps:  # an epoch's end has its own checkpoint
                    self.save_midepoch_checkpoint(dist_lib.all_reduce_sum(epoch_loss.clone()).item())
                    clock.reset()
            if cut:  # train.max_steps: the epoch in progress ends here
                halt = "cut"
                break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        self.progress.end_epoch()
        done = self.epoch_step - first  # by this process
        loss_sum = dist_lib.all_reduce_sum(epoch_loss).item()
        self.train_seconds += seconds
        record = {"train_loss": loss_sum / (self.epoch_step * world), "epoch_time_s": seconds,
                  "images_per_s": done * cfg.batch_size / seconds}
        self.check_finite("training loss", record["train_loss"])
        return {**record, "halt": halt, "loss_sum": loss_sum}

    def step_limit_reached(self) -> bool:
        return 0 < self.cfg.train.max_steps <= self.step

    def check_finite(self, what: str, value: float) -> None:
        """Raises Diverged for a NaN or infinite value. Every rank must see the same value (a
        reduced one, or weights that DDP keeps equal), so that all stop together."""
        if not math.isfinite(value):
            raise Diverged(f"{what} is {value} at step {self.step} (epoch {self.epoch + 1}): the run "
                           "diverged; lower optim.lr or lengthen schedule.warmup_epochs")

    def check_weights(self) -> None:
        """Before a checkpoint: a step can turn weights non-finite after the last loss was checked,
        and such a checkpoint would replace a good one. One host sync per checkpoint."""
        params = [p.detach() for p in self.model.parameters()]
        finite = torch.stack([torch.isfinite(p).all() for p in params]).all().item()
        if not finite:
            raise Diverged(f"a weight is NaN or infinite at step {self.step} (epoch {self.epoch}): the run "
                           "diverged; lower optim.lr or lengthen schedule.warmup_epochs")

    def evaluate(self) -> dict:
        """The test loss and accuracy. Cut short by train.max_steps, on as many test images as
        the run trained on (whole batches, at most the test set): a smoke run on real data then
        ends in seconds, and its summary says cut_short, so its accuracy is not read as a result."""
        average_buffers(self.model, self.dist.world_size)
        self.test_loader.set_epoch(self.epoch)
        loader = self.test_loader
        if self.step_limit_reached():
            trained = self.cfg.train.max_steps * self.cfg.train.batch_size
            batches = -(-trained // self.cfg.loader.eval_batch_size)  # the same count on every rank
            loader = itertools.islice(loader, batches)
        result = self.evaluator(loader)
        self.check_finite("test loss", result["test_loss"])
        return result

    def fit(self, on_epoch_end=None) -> dict:
        """Train to train.epochs, or to train.max_steps. on_epoch_end(record), if given, sees each
        epoch's record.

        SIGTERM or Ctrl-C stops the run at the next step polled (every step alone, every
        train.log_every steps under DDP) with a checkpoint of that exact state; the summary then
        says finished: false, status "stopped", and --resume continues it as if unbroken. Within
        an epoch a recovery checkpoint is written every train.checkpoint_minutes.
        stop_requested says whether a signal came at all, also one in the last epoch of a run
        that finished. A NaN or infinite loss raises Diverged after writing a summary with
        status "diverged"; no checkpoint of the diverged state is saved. summary.json is written
        at every one of these ends (by rank 0), so that a script can tell them from a crash."""
        cfg = self.cfg.train
        last = {}
        start = time.perf_counter()
        stop_requested = False
        try:
            if self.epoch >= cfg.epochs or self.step_limit_reached():
                # resumed after its last step: report the final model again
                last = {**self.evaluate(), "epoch": self.epoch}
                if self.main:
                    cut = " (cut short at train.max_steps)" if self.epoch < cfg.epochs else ""
                    print(f"epoch {self.epoch}/{cfg.epochs}{cut}, done before this resume: test top-1 "
                          f"{last['top1']:.2f}%, top-5 {last['top5']:.2f}%", flush=True)
            when = "at the next step" if self.dist.world_size == 1 else f"within {cfg.log_every} steps"
            clock = RecoveryClock(cfg.checkpoint_minutes)
            with GracefulStop(announce=self.main, when=when) as stop:
                while self.epoch < cfg.epochs and not self.step_limit_reached():
                    record = self.train_epoch(stop, clock)
                    halt, loss_sum = record.pop("halt"), record.pop("loss_sum")
                    steps = len(self.train_loader)
                    whole = self.epoch_step == steps
                    if halt == "stopped" and not whole:
                        # mid-epoch: no evaluation, no epoch record; the exact state, and out
                        self._stop(stop, self.save_midepoch_checkpoint(loss_sum))
                        break
                    if whole:
                        self.epoch += 1
                        self.epoch_step = 0
                    limited = self.step_limit_reached()
                    final = self.epoch == cfg.epochs or limited
                    if final or self.epoch % cfg.eval_every == 0:
                        record.update(self.evaluate())
                    epoch = self.epoch if whole else self.epoch + self.epoch_step / steps
                    record.update(epoch=epoch, step=self.step, lr=self.schedule(self.step - 1),
                                  train_seconds=self.train_seconds,
                                  wall_seconds=time.perf_counter() - start)  # this process, eval included
                    self.log_event(record)
                    if on_epoch_end is not None:
                        on_epoch_end(record)
                    if self.main:
                        acc = f", test top-1 {record['top1']:.2f}%" if "top1" in record else ""
                        cut_short = limited and self.epoch < cfg.epochs
                        cut = f" (cut short at train.max_steps={cfg.max_steps})" if cut_short else ""
                        shown = self.epoch if whole else f"{epoch:.2f}"
                        print(f"epoch {shown}/{cfg.epochs}{cut}: loss {record['train_loss']:.4f}, "
                              f"{record['images_per_s']:,.0f} img/s{acc}", flush=True)
                    # a signal during the evaluation counts too: asked on every rank
                    stopping = not final and (halt == "stopped" or stop.requested(self.dist.device))
                    saved = None
                    if whole and (final or stopping or self.epoch % cfg.checkpoint_every == 0):
                        self.check_weights()
                        self.save_checkpoint()
                        saved = ckpt.checkpoint_path(self.run_dir, self.epoch)
                    elif not whole:  # cut short by train.max_steps: its final state, for evaluate and the hub
                        saved = self.save_midepoch_checkpoint(loss_sum)
                    if saved is not None:
                        clock.reset()
                    last = record
                    if limited:
                        self.log_event({"event": "cut_short", "max_steps": cfg.max_steps,
                                        "epoch": epoch, "step": self.step})
                    if stopping:
                        self._stop(stop, saved)
                        break
                # asked once more, on every rank: a signal in the last epoch ends no run, but a caller
                # that runs several (time_to_accuracy.py) must stop before the next
                stop_requested = stop.requested(self.dist.device)
        except Diverged as e:
            self.log_event({"event": "diverged", "error": str(e), "epoch": self.epoch, "step": self.step})
            self.write_summary({**self.summary(last, "diverged"), "stop_requested": stop_requested})
            raise
        status = ("finished" if self.epoch >= cfg.epochs else
                  "cut_short" if self.step_limit_reached() else "stopped")
        summary = {**self.summary(last, status), "stop_requested": stop_requested}
        self.write_summary(summary)
        return summary

    def _stop(self, stop: GracefulStop, saved: Path) -> None:
        """Logs a stop, with the seconds from the signal (to this process) to its checkpoint."""
        self.stop_signalled_at = stop.signalled_at
        seconds = None if stop.signalled_at is None else time.monotonic() - stop.signalled_at
        self.log_event({"event": "stopped", "signal": stop.signal_name or "another rank's",
                        "epoch": self.epoch, "epoch_step": self.epoch_step, "step": self.step,
                        "checkpoint": saved.name, "signal_to_checkpoint_s": seconds})

    def write_summary(self, summary: dict) -> None:
        self.tensorboard.close()  # every end of a run writes a summary
        if self.main:
            write_text_atomic(self.run_dir / "summary.json", json_text(summary, indent=2) + "\n")

    def summary(self, last: dict, status: str) -> dict:
        """status: finished, cut_short (train.max_steps), stopped (a signal) or diverged."""
        return {
            "model": self.cfg.model.name,
            "dataset": self.cfg.data.dataset,
            "loader": self.cfg.loader.name,
            "status": status,
            "epochs": self.epoch,  # whole ones: a run cut short or stopped may have trained part of one more
            "epoch_step": self.epoch_step,  # steps of that one
            "finished": status == "finished",
            "cut_short": status == "cut_short",
            "steps": self.step,
            "final_top1": last.get("top1"),
            "final_top5": last.get("top5"),
            "final_train_loss": last.get("train_loss"),
            "train_seconds": self.train_seconds,
            "first_step_seconds": self.first_step_seconds,  # it, setup and compile: this process's only
            "setup_seconds": self.setup_seconds,
            "compile_seconds": None if self.compile_base is None else compile_seconds() - self.compile_base,
            "world_size": self.dist.world_size,
            "device": torch.cuda.get_device_name(self.dist.device) if self.dist.device.type == "cuda" else platform.processor() or "cpu",
            "amp": str(self.runtime.amp_dtype).replace("torch.", "") if self.runtime.amp_dtype else "none",
            "compile": self.runtime.compile,
            "cuda_graph": self.runtime.cuda_graph,
            "channels_last": self.runtime.channels_last,
            "torch": torch.__version__,
            "torch_threads": self.threads.count,
        }
