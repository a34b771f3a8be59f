"""CPU threads of a run, sized to the CPUs this process may use: torch's intra-op pool, DALI's CPU
threads and the torchvision loader's worker processes.

On a small or shared machine, more busy threads than cores costs far more than it gives: torch's
OpenMP pool waits at every operator for its slowest thread, and a thread that has lost its core to
a loader worker or another process holds up the rest. So each process takes its share of the usable
CPUs (its affinity mask divided among the processes torchrun started on this node), less the CPUs that
other processes keep busy when the run starts, and a launcher's or user's OMP_NUM_THREADS (torchrun sets
1) is kept. A run with train.deterministic skips the load check: its thread count, and with it the order
of its reductions, must not depend on what else ran at the time.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fastcifar.config import LoaderConfig, TrainConfig
from fastcifar.environment import usable_cpus


def cpu_share() -> int:
    """This process's share of the usable CPUs: all of them, or a 1/LOCAL_WORLD_SIZE part under torchrun."""
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, usable_cpus() // local)


def busy_cpus(samples: int = 5, interval: float = 0.02) -> int:
    """CPUs other processes keep busy now: the runnable tasks of /proc/loadavg besides this one, the fewest
    over a few samples (a task passing through is no competitor); 0 where that file is missing. It counts the
    whole machine's tasks, not only those on this process's CPUs."""
    counts = []
    try:
        for i in range(samples):
            if i:
                time.sleep(interval)
            runnable = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
            counts.append(runnable - 1)  # this process is running as it reads
    except (OSError, ValueError, IndexError):
        return 0
    return max(0, min(counts))


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
    share, usable = cpu_share(), usable_cpus()
    source = f"{usable} usable CPUs" + (f" / {os.environ['LOCAL_WORLD_SIZE']} processes" if share < usable else "")
    busy = 0 if train.deterministic else busy_cpus()
    if busy and usable - busy < share:
        return TorchThreads(max(1, usable - busy), f"{source}, {busy} busy with other work")
    return TorchThreads(share, source)


def apply_torch_threads(train: TrainConfig) -> TorchThreads:
    """Sets torch's intra-op threads for this process; the choice, for the start line."""
    chosen = torch_threads(train)
    if torch.get_num_threads() != chosen.count:
        torch.set_num_threads(chosen.count)
    return chosen
