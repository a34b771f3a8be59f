"""Batches prepared one step ahead, off the training step's critical path.

On CUDA the loader's work for batch i+1 (host-to-device copies, GPU augmentation, DALI's output
copy, all of which run on torch's current stream) is issued on a side stream before batch i is
handed to the step, so it overlaps the step instead of preceding it. On other devices there is no
second stream to overlap with: the wrapper hands the loader's batches through untouched.
"""

from __future__ import annotations

import torch


class Prefetcher:
    """Wraps any loader (the contract in pipelines/base.py) and keeps it: len(), set_epoch() and
    the batches themselves are the loader's."""

    def __init__(self, loader, device: torch.device):
        self.loader = loader
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.loader.set_epoch(epoch, start)

    def __getattr__(self, name):  # anything else a backend offers (e.g. its spec)
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self):
        if self.stream is None:
            yield from self.loader
            return
        batches = iter(self.loader)
        ready = self._next(batches)
        while ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.stream)  # batch i's copies and augmentation are done...
            for t in ready:  # ...and its memory is not reused while the step still reads it
                if isinstance(t, torch.Tensor) and t.device.type == "cuda":
                    t.record_stream(current)
            following = self._next(batches)  # issued now: runs while batch i's step runs
            yield ready
            ready = following

    def _next(self, batches):
        # the side stream first waits for what is queued so far (the steps before this one),
        # so the loader never reads a buffer an earlier step is still writing
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            return next(batches, None)


def prefetch(loader, device: torch.device):
    """The loader the trainer iterates: Prefetcher-wrapped (a passthrough off CUDA)."""
    return Prefetcher(loader, device)
