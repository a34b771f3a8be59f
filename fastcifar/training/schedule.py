"""Per-step learning rate: linear warm-up, then multistep, cosine, one-cycle (linear decay) or
constant. Epoch-valued settings (warm-up, milestones) are converted to steps, so fractional
epochs work and the rate changes smoothly within an epoch."""

from __future__ import annotations

import bisect
import math

from fastcifar.config import OptimConfig, ScheduleConfig


class LRSchedule:
    def __init__(self, optim: OptimConfig, schedule: ScheduleConfig, steps_per_epoch: int, epochs: int):
        self.peak = optim.lr
        self.cfg = schedule
        self.total = steps_per_epoch * epochs
        self.warmup = round(schedule.warmup_epochs * steps_per_epoch)
        self.milestones = [round(m * steps_per_epoch) for m in schedule.milestones]

    def __call__(self, step: int) -> float:
        """The rate for the update at `step` (0-based)."""
        s = self.cfg
        if step < self.warmup:
            return s.warmup_start_lr + (self.peak - s.warmup_start_lr) * step / self.warmup
        if s.name == "constant":
            return self.peak
        if s.name == "multistep":
            return self.peak * s.gamma ** bisect.bisect_right(self.milestones, step)
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        if s.name == "cosine":
            return s.final_lr + (self.peak - s.final_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        return self.peak + (s.final_lr - self.peak) * progress  # onecycle: linear decay
