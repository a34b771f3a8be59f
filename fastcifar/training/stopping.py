"""Stopping a run cleanly: SIGTERM (a scheduler's preemption, a time limit) or Ctrl-C asks the
trainer to stop at the next step it polls (every step alone; under DDP every train.log_every
steps, where the ranks already exchange the loss), after saving a checkpoint of that exact state,
so that ``--resume`` loses nothing. A second Ctrl-C stops at once, as Python normally does.
RecoveryClock says when a mid-epoch recovery checkpoint is due (train.checkpoint_minutes)."""

from __future__ import annotations

import os
import signal
import threading
import time

import torch

from fastcifar import distributed as dist_lib
from fastcifar.errors import stderr_line

SIGNALS = (signal.SIGTERM, signal.SIGINT)
STOPPED_EXIT = 3  # the exit status of a script stopped this way (run.py, time_to_accuracy.py)
DIVERGED_EXIT = 4  # run.py: the loss became NaN or infinite; the last good checkpoint is kept
INTERRUPTED_EXIT = 130  # run.py: a second Ctrl-C, as a shell reports a process killed by SIGINT


class GracefulStop:
    """Context manager: while inside, SIGTERM and SIGINT set a flag instead of killing the process.
    Only the main thread can install signal handlers; elsewhere (e.g. a notebook's worker thread)
    the signals keep their usual effect."""

    def __init__(self, announce: bool = True, when: str = "at the next step"):
        self.signal_name: str | None = None
        self.signalled_at: float | None = None  # time.monotonic() of the first signal
        self.announce = announce  # rank 0 says what happens; the other ranks stay quiet
        self.when = when  # where the trainer looks at the flag, for the announcement
        self._previous: dict = {}
        self._pid = os.getpid()

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                if signal.getsignal(sig) is signal.SIG_IGN:  # e.g. nohup: the caller wants it ignored
                    continue
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            # None: a handler installed from C, which Python cannot reinstall; the default is closest
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:
            # a forked DataLoader worker inherits this handler; a terminal's Ctrl-C reaches it too,
            # but stopping is the main process's decision (it shuts its workers down)
            return
        first = self.signal_name is None
        if first:
            self.signalled_at = time.monotonic()
        self.signal_name = signal.Signals(signum).name
        if signal.SIGINT in self._previous and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: stop now
        if first and self.announce:
            stderr_line(f"\n{self.signal_name}: stopping {self.when} with a checkpoint "
                        "(Ctrl-C again to stop at once)")

    def requested(self, device: torch.device) -> bool:
        """Whether any rank was signalled: every rank must stop at the same step, or the others
        would wait for it forever in the next collective. Under DDP a collective and a host sync:
        the step loop folds the flag into its loss all-reduce instead."""
        if not torch.distributed.is_initialized():  # alone: no tensor, no host sync
            return self.signal_name is not None
        flag = torch.tensor(1.0 if self.signal_name else 0.0, device=device)
        return bool(dist_lib.all_reduce_sum(flag).item() > 0)


class RecoveryClock:
    """When a mid-epoch recovery checkpoint is due: `minutes` after the last checkpoint of any
    kind (0: never). Reading it is one monotonic clock read, cheap enough for every step."""

    def __init__(self, minutes: float):
        self.seconds = minutes * 60
        self.reset()

    def reset(self) -> None:
        self.last = time.monotonic()

    def due(self) -> bool:
        return self.seconds > 0 and time.monotonic() - self.last >= self.seconds
