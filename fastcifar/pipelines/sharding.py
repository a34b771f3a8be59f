"""Which images each rank sees, shared by every backend so they shuffle and shard identically."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DistributedSampler


class _Range:
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def train_indices(n: int, seed: int, epoch: int, rank: int, world_size: int) -> list[int]:
    """This rank's shuffled indices for an epoch: torch's DistributedSampler, tail dropped so
    every rank gets n // world_size images."""
    sampler = DistributedSampler(_Range(n), num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    return list(sampler)


def train_steps(n: int, local_batch: int, world_size: int) -> int:
    """Steps per epoch, the same on every rank: the last partial batch is dropped."""
    return (n // world_size) // local_batch


def eval_indices(n: int, rank: int, world_size: int) -> list[int]:
    """Every image exactly once over all ranks, in order; ranks may differ by one image."""
    return list(range(rank, n, world_size))


def batch_key(seed: int, epoch: int, rank: int, step: int) -> int:
    """A seed for one batch's augmentation draws, independent of workers and of resuming."""
    return int(np.random.SeedSequence([seed, epoch, rank, step]).generate_state(1, np.uint64)[0] >> 1)


def index_tensor(indices: list[int], device: torch.device) -> torch.Tensor:
    """An epoch's order on `device`; to CUDA through pinned memory, so the upload does not wait
    for the GPU's queue."""
    if device.type != "cuda":
        return torch.as_tensor(indices, dtype=torch.int64, device=device)
    return torch.tensor(indices, dtype=torch.int64).pin_memory().to(device, non_blocking=True)


class EpochPlan:
    """The batches of one rank in one epoch, shared by every backend: how many steps, in which
    order. Train: shuffled by (seed, epoch), full batches only. Eval: in order, last batch partial.
    An epoch may start at a step (a run resumed mid-epoch): the batches before it are skipped,
    the rest are the ones an unbroken epoch yields, as each is keyed by its step."""

    def __init__(self, spec):
        self.spec, self.epoch, self.start = spec, 0, 0
        n = len(spec.data)
        if spec.train:
            self.steps = train_steps(n, spec.batch_size, spec.world_size)
        else:
            self.steps = -(-len(eval_indices(n, spec.rank, spec.world_size)) // spec.batch_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The next iteration yields the epoch's batches from step `start` on (len() stays the
        epoch's whole count)."""
        if not 0 <= start <= self.steps:
            raise ValueError(f"start step {start} is outside an epoch of {self.steps} steps")
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.steps

    def order(self) -> list[int]:
        s, n = self.spec, len(self.spec.data)
        if s.train:
            return train_indices(n, s.seed, self.epoch, s.rank, s.world_size)
        return eval_indices(n, s.rank, s.world_size)

    def key(self, step: int) -> int:
        return batch_key(self.spec.seed, self.epoch, self.spec.rank, step)
