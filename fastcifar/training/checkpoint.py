"""Checkpoints: written atomically, free of DDP/compile prefixes, loaded with weights_only=True.

Two kinds, told apart by name: ``checkpoint_epochNNNN.pt`` after NNNN whole epochs, and
``checkpoint_midepochNNNN_stepSSSSSS.pt`` after NNNN whole epochs and SSSSSS steps of the next
(a stop by signal, a recovery checkpoint by time, the end of a run cut short by train.max_steps).
At most one mid-epoch file is kept: each checkpoint written removes the older ones.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from fastcifar.errors import CheckpointError
from fastcifar.files import fsync_dir

_PREFIXES = ("module.", "_orig_mod.")
_NAME = re.compile(r"checkpoint_(?:epoch(\d+)|midepoch(\d+)_step(\d+))\.pt$")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP and torch.compile wrappers, in any nesting."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def clean_state_dict(state: dict) -> dict:
    """Strip 'module.' and '_orig_mod.' wherever they lead a key (checkpoints from other tools)."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if key.startswith(p):
                    key, changed = key[len(p):], True
        out[key] = value
    return out


def model_state(model: nn.Module) -> dict:
    return clean_state_dict(unwrap(model).state_dict())


def load_model_state(model: nn.Module, state: dict) -> None:
    """Strict load into a plain, compiled or DDP-wrapped model alike."""
    unwrap(model).load_state_dict(clean_state_dict(state), strict=True)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restores rng_state(); its tensors may have been loaded onto any device with data (numpy and
    torch.set_rng_state take CPU tensors only)."""
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy(), *rest))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        # a checkpoint from a machine with more GPUs (or other CUDA_VISIBLE_DEVICES) restores those seen here
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"][:torch.cuda.device_count()]])


def _python_rng_tuple(state):
    # weights_only loading turns tuples into lists; random.setstate wants tuples back
    return (state[0], tuple(state[1]), state[2])


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Temp file in the same folder, fsync, rename, fsync the folder: a crash never leaves a half
    checkpoint, and a failed save (disk full, Ctrl-C) leaves no temp file either."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        # torch's first line can run to hundreds of characters (zip internals): the cause's gist
        detail = (str(e).splitlines() or [""])[0]
        detail = detail if len(detail) <= 100 else detail[:97] + "..."
        raise CheckpointError(f"checkpoint {path} could not be read: truncated or not a checkpoint "
                              f"({type(e).__name__}: {detail})") from None
    if isinstance(state, dict) and "rng" in state:
        state["rng"]["python"] = _python_rng_tuple(state["rng"]["python"])
    return state


def checkpoint_path(run_dir: str | Path, epoch: int, epoch_step: int = 0) -> Path:
    """The file for a state after `epoch` whole epochs and `epoch_step` steps of the next."""
    if epoch_step:
        return Path(run_dir) / f"checkpoint_midepoch{epoch:04d}_step{epoch_step:06d}.pt"
    return Path(run_dir) / f"checkpoint_epoch{epoch:04d}.pt"


def position(path: str | Path) -> tuple[int, int] | None:
    """(whole epochs, steps of the next) that a checkpoint's name says it holds, else None."""
    m = _NAME.search(Path(path).name)
    if m is None:
        return None
    return (int(m.group(1)), 0) if m.group(1) is not None else (int(m.group(2)), int(m.group(3)))


def _positioned(run_dir: str | Path) -> list[tuple[tuple[int, int], Path]]:
    return sorted((pos, p) for p in Path(run_dir).glob("checkpoint_*.pt") if (pos := position(p)))


def checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(whole epochs, path) of every checkpoint in run_dir, mid-epoch ones included, oldest first."""
    return [(pos[0], path) for pos, path in _positioned(run_dir)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1][1] if found else None


def latest_epoch(run_dir: str | Path) -> int | None:
    """The whole epochs the newest checkpoint holds."""
    found = checkpoints(run_dir)
    return found[-1][0] if found else None


def remove_older_midepoch(run_dir: str | Path, newest: Path) -> None:
    """After writing `newest`: a mid-epoch checkpoint older than it is of no more use."""
    limit = position(newest)
    for pos, path in _positioned(run_dir):
        if pos[1] and pos < limit:
            path.unlink(missing_ok=True)


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` whole-epoch checkpoints (keep 0: delete none)."""
    if keep <= 0:
        return
    whole = [path for pos, path in _positioned(run_dir) if not pos[1]]
    for path in whole[:-keep]:
        path.unlink(missing_ok=True)


def gather_buffers(model: nn.Module, world_size: int) -> torch.Tensor | None:
    """Every rank's floating-point buffers (BN running statistics), one float64 row per rank, on
    the CPU; None alone. Ranks' buffers drift apart between averagings (DDP does not sync them),
    so a mid-epoch checkpoint keeps each rank's own for an exact resume. A collective: every rank
    calls it."""
    if world_size <= 1:
        return None
    bufs = [b.detach().reshape(-1).to(torch.float64) for b in unwrap(model).buffers() if b.is_floating_point()]
    flat = torch.cat(bufs)
    rows = [torch.empty_like(flat) for _ in range(world_size)]
    torch.distributed.all_gather(rows, flat)
    return torch.stack(rows).cpu()


def set_buffers(model: nn.Module, row: torch.Tensor) -> None:
    """Loads one rank's row of gather_buffers() back into the model's floating-point buffers."""
    offset = 0
    with torch.no_grad():
        for b in unwrap(model).buffers():
            if b.is_floating_point():
                b.copy_(row[offset:offset + b.numel()].view(b.shape).to(b.dtype))
                offset += b.numel()
