"""Process-group setup from torchrun's environment: NCCL on CUDA, gloo on CPU."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from fastcifar.config import DeviceName, choices
from fastcifar.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_from_env() -> int:
    return int(os.environ.get("RANK", "0"))


DEVICE_CHOICES = choices(DeviceName)


def resolve_device(preference: str = "auto", local_rank: int = 0, key: str = "train.device") -> torch.device:
    """The one place a device choice becomes a device, for training, evaluation and benchmarks.

    'auto' is CUDA when present, else the CPU; CUDA means GPU `local_rank` modulo the visible GPUs.
    Asking for CUDA without it, or any other value, is a one-line ConfigError naming `key` (the
    config key or command-line option the value came from)."""
    if preference not in DEVICE_CHOICES:
        raise ConfigError(f"{key}: {preference!r} is not one of {', '.join(DEVICE_CHOICES)}")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"{key}: 'cuda' needs CUDA, which is not available here; use cpu (or auto)")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def setup(device_preference: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); a no-op alone."""
    world_size = world_size_from_env()
    rank = rank_from_env()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=timedelta(minutes=30), **kwargs)
    return DistInfo(rank, local_rank, world_size, device)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj, src: int = 0):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup(finished: bool = False) -> None:
    """Tear the process group down. finished: every rank got here normally, so first wait for the
    others: a rank that exits while a peer still talks to it can make gloo abort that peer at exit
    ("terminate called without an active exception"). Never wait after an error: a rank that
    failed alone would then hang instead of exiting, and torchrun would not notice."""
    if dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()
