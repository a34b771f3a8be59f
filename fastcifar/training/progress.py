"""What a run shows on rank 0: one start line, then a progress bar on a terminal or, when stderr is a
file or a pipe, one plain line every train.log_every steps (a log file gets no bar frames).

The bar counts the whole run (train.epochs, or train.max_steps when that comes first), so its ETA is
for the run, and its images/s are the epoch's average so far: images since the epoch began over the
seconds since then. Nothing here waits for the device: the figures are read where the trainer
already syncs, every log_every steps.
"""

from __future__ import annotations

import datetime as dt
import sys
import time

import torch
from tqdm import tqdm

from fastcifar.config import Config
from fastcifar.environment import cpu_model


def total_steps(cfg: Config, steps_per_epoch: int) -> int:
    """Optimizer steps of the whole run: its epochs, cut at train.max_steps when that is set and smaller."""
    total = steps_per_epoch * cfg.train.epochs
    return min(total, cfg.train.max_steps) if cfg.train.max_steps > 0 else total


def _loader_text(cfg: Config, device: torch.device, threads: int) -> str:
    name, where = cfg.loader.name, cfg.loader.device
    if name == "torchvision":
        return f"torchvision ({threads} CPU worker processes)" if threads else "torchvision (in-process)"
    if name == "dali":
        on = "gpu" if where == "gpu" or (where == "auto" and device.type == "cuda") else "cpu"
        return f"dali on {on}" + (f" ({threads} CPU threads)" if on == "cpu" else "")
    return f"{name} on {device.type}"


def start_line(cfg: Config, runtime, device: torch.device, world_size: int, threads, loader_threads: int) -> str:
    """device, world size, loader (and where it runs), precision, compile, CPU threads, run directory."""
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    precision = str(runtime.amp_dtype).removeprefix("torch.") + " autocast" if runtime.amp_dtype else "fp32"
    compiled = f"compile on ({runtime.compile_mode})" if runtime.compile else "compile off"
    graph = ", whole-step CUDA graph" if runtime.cuda_graph else ""
    return (f"{cfg.model.name}: device {device}" + (f" ({what})" if what else "") +
            f", world size {world_size}, loader {_loader_text(cfg, device, loader_threads)}, {precision}, "
            f"{compiled}{graph}, {threads.count} torch threads ({threads.source}), run dir {cfg.train.run_dir}")


def _clock(seconds: float) -> str:
    return str(dt.timedelta(seconds=round(seconds)))


class Progress:
    """One per run. shown: rank 0 with train.progress on; stream: where the bar or the lines go."""

    def __init__(self, cfg: Config, steps_per_epoch: int, shown: bool, stream=None):
        self.cfg, self.steps_per_epoch = cfg, steps_per_epoch
        self.total = total_steps(cfg, steps_per_epoch)
        self.stream = stream or sys.stderr
        self.shown = shown
        self.terminal = shown and self.stream.isatty()
        self.bar = None

    def start_epoch(self, epoch: int, step: int) -> None:
        """epoch: completed epochs so far; step: optimizer steps completed so far (a resume's too)."""
        self.epoch, self.epoch_start, self.epoch_step = epoch, time.perf_counter(), step
        if self.terminal:  # a bar per epoch, closed before the epoch's line is printed; it counts the run
            self.bar = tqdm(total=self.total, initial=step, desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}",
                            unit="step", file=self.stream, leave=False, dynamic_ncols=True, smoothing=0)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def rate(self, step: int) -> tuple[float, float]:
        """(images/s averaged over this epoch so far, seconds left in the run at that rate)."""
        seconds = max(time.perf_counter() - self.epoch_start, 1e-9)
        steps = step - self.epoch_step
        return steps * self.cfg.train.batch_size / seconds, (self.total - step) * seconds / max(steps, 1)

    def window(self, step: int, loss: float, lr: float) -> None:
        """Every log_every steps, where the trainer has synced: the bar's figures, or one line."""
        if not self.shown:
            return
        images_per_s, left = self.rate(step)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.4g}", img_s=f"{images_per_s:,.0f}")
            return
        epoch = self.epoch + (step - self.epoch_step) / self.steps_per_epoch
        print(f"step {step}/{self.total} (epoch {epoch:.2f}/{self.cfg.train.epochs}): loss {loss:.4f}, "
              f"lr {lr:.4g}, {images_per_s:,.0f} img/s (epoch average), ETA {_clock(left)}",
              file=self.stream, flush=True)

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
