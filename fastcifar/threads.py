"""CPU threads of a run, sized to the CPUs this process may use: torch's intra-op pool, DALI's CPU
threads and the torchvision loader's worker processes.

On a small or shared machine, more busy threads than cores costs far more than it gives: torch's
OpenMP pool waits at every operator for its slowest thread, and a thread that has lost its core to
a loader worker or another process holds up the rest. So each process takes its share of the usable
CPUs (its affinity mask divided among the processes torchrun started on this node), and a launcher's
or user's OMP_NUM_THREADS (torchrun sets 1) is kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from fastcifar.config import LoaderConfig, TrainConfig
from fastcifar.environment import usable_cpus


def cpu_share() -> int:
    """This process's share of the usable CPUs: all of them, or a 1/LOCAL_WORLD_SIZE part under torchrun."""
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, usable_cpus() // local)


def loader_threads(loader: LoaderConfig) -> int:
    """loader.workers, at most this process's share: torchvision's worker processes (0: in-process)."""
    return min(loader.workers, cpu_share())


@dataclass(frozen=True)
class TorchThreads:
    count: int
    source: str  # what decided it: train.threads, OMP_NUM_THREADS or the usable CPUs


def torch_threads(train: TrainConfig) -> TorchThreads:
    if train.threads > 0:
        return TorchThreads(train.threads, "train.threads")
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return TorchThreads(int(omp), "OMP_NUM_THREADS")
    return TorchThreads(cpu_share(), f"{usable_cpus()} usable CPUs" +
                        (f" / {os.environ['LOCAL_WORLD_SIZE']} processes" if cpu_share() < usable_cpus() else ""))


def apply_torch_threads(train: TrainConfig) -> TorchThreads:
    """Sets torch's intra-op threads for this process; the choice, for the start line."""
    chosen = torch_threads(train)
    if torch.get_num_threads() != chosen.count:
        torch.set_num_threads(chosen.count)
    return chosen
