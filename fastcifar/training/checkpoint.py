"""Checkpoints: written atomically, free of DDP/compile prefixes, loaded with weights_only=True."""

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
_NAME = re.compile(r"checkpoint_epoch(\d+)\.pt$")


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
        raise CheckpointError(f"checkpoint {path} could not be read ({type(e).__name__}: {detail})") from None
    if isinstance(state, dict) and "rng" in state:
        state["rng"]["python"] = _python_rng_tuple(state["rng"]["python"])
    return state


def checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    return Path(run_dir) / f"checkpoint_epoch{epoch:04d}.pt"


def checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(epoch, path) of every checkpoint in run_dir, oldest first."""
    return sorted((int(m.group(1)), p) for p in Path(run_dir).glob("checkpoint_epoch*.pt")
                  if (m := _NAME.search(p.name)))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1][1] if found else None


def latest_epoch(run_dir: str | Path) -> int | None:
    found = checkpoints(run_dir)
    return found[-1][0] if found else None


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (keep 0: delete none)."""
    if keep <= 0:
        return
    for _epoch, path in checkpoints(run_dir)[:-keep]:
        path.unlink(missing_ok=True)
