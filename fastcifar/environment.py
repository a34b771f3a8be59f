"""What a measured figure depends on (versions, devices, the commit), and nothing that names the machine."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=REPO)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _version(prefix: str) -> str | None:
    """An installed distribution's version without importing it (DALI's import is slow)."""
    from importlib import metadata

    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith(prefix):
            return f"{name} {dist.version}"
    return None


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, as DataLoader counts them)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_model() -> str | None:
    """The CPU's model name (platform.processor() is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


# The commit a tree without its .git was copied from, given on the command line where git cannot tell it:
# FASTCIFAR_COMMIT=<sha> python3 benchmarks/gpu_suite.py ...
COMMIT_VARIABLE = "FASTCIFAR_COMMIT"


def is_commit(text: str) -> bool:
    """A git commit id as `git rev-parse` writes it, or abbreviated (7 hex digits or more)."""
    return re.fullmatch(r"[0-9a-f]{7,40}", text) is not None


def environment() -> dict:
    """Recorded with every benchmark result; no hostname, no user."""
    import torchvision

    cuda = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]) if cuda else None
    commit = _run(["git", "rev-parse", "HEAD"])
    dirty = bool(_run(["git", "status", "--porcelain", "--untracked-files=no"])) if commit else None
    git = {"commit": commit, "dirty": dirty}
    given = os.environ.get(COMMIT_VARIABLE)
    if commit is None and given:  # a copy of the tree without .git (a GPU machine)
        git = {"commit": given if is_commit(given) else None, "dirty": None, "source": COMMIT_VARIABLE,
               **({} if is_commit(given) else {"not_a_commit": given})}
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "git": git, "python": platform.python_version(),
        "platform": platform.platform(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "dali": _version("nvidia-dali"), "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "driver": driver.splitlines()[0] if driver else None,
        "gpu": gpus[0] if gpus else None, "gpu_count": len(gpus), "gpus": gpus,
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "cpu_count_usable": usable_cpus(),
        "torch_threads": torch.get_num_threads(),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),  # > 1 under torchrun
    }
