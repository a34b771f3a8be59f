"""The loader contract and the registry of backends.

A loader is an iterable of ``(images, labels)``: images float on the training device, normalised,
NCHW (channels_last memory format when configured), in the agreed dtype; labels int64 on the same
device. It has ``len()`` (batches per epoch on this rank) and ``set_epoch(epoch, start=0)``: the
next iteration yields that epoch's batches from step ``start`` on, the same ones as an unbroken
epoch (a run resumed mid-epoch). Train loaders
shuffle with (seed, epoch) and give every rank the same number of full batches; eval loaders give
every image exactly once over all ranks, the last batch possibly partial.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch

from fastcifar.config import AugmentConfig, Config, LoaderConfig
from fastcifar.data import CifarSplit
from fastcifar.errors import ConfigError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class Loader(Protocol):
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int, start: int = 0) -> None: ...


@dataclass(frozen=True)
class LoaderSpec:
    """Everything a backend needs to build one split's loader."""

    data: CifarSplit
    train: bool  # shuffle, augment, drop the last partial batch
    batch_size: int  # per rank
    augment: AugmentConfig
    loader: LoaderConfig
    device: torch.device  # the training device
    channels_last: bool
    dtype: torch.dtype
    seed: int
    rank: int = 0
    world_size: int = 1


def loader_device(spec: LoaderSpec) -> torch.device:
    """Where a backend augments: loader.device, where auto is the training device."""
    wanted = spec.loader.device
    if wanted == "auto":
        return spec.device
    if wanted == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"loader.device: 'gpu' needs CUDA, which is not available here; "
                          f"use --loader.device=cpu (or auto) for the {spec.loader.name} loader")
    return spec.device if spec.device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())


LOADERS: dict[str, Callable[[LoaderSpec], Loader]] = {}


def register_loader(name: str):
    def wrap(factory):
        LOADERS[name] = factory
        return factory

    return wrap


def build_loader(cfg: Config, split: str, data: CifarSplit, device: torch.device,
                 rank: int = 0, world_size: int = 1) -> Loader:
    train = split == "train"
    global_batch = cfg.train.batch_size if train else cfg.loader.eval_batch_size
    spec = LoaderSpec(
        data=data, train=train, batch_size=max(1, global_batch // world_size),
        augment=cfg.augment, loader=cfg.loader, device=torch.device(device),
        channels_last=cfg.train.channels_last, dtype=DTYPES[cfg.loader.dtype],
        seed=cfg.train.seed, rank=rank, world_size=world_size,
    )
    return LOADERS[cfg.loader.name](spec)


def host_to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """t on the training device. From the CPU to an accelerator the copy goes through pinned memory:
    from pageable memory a `non_blocking=True` CUDA copy is staged by the driver and returns only
    once the stream reaches it, and a loader's stream (the prefetcher's side stream) waits for the
    step in progress, so the host would stall every batch. The pinned block comes from torch's
    caching host allocator, reused once the copy that read it is done (the copy records an event on
    its stream): no allocation and no wait in the steady state. pin_memory keeps t's strides
    (channels_last views stay so). From an accelerator to the CPU the copy is finished before the
    CPU may read it: blocking."""
    if t.device == device or device.type == "cpu":
        return t.to(device)
    if t.device.type != "cpu" or device.type not in PINNED_COPY_DEVICES:
        return t.to(device, non_blocking=True)  # device to device: ordered on the stream
    return t.pin_memory().to(device, non_blocking=True)


PINNED_COPY_DEVICES = ("cuda",)  # where host_to_device stages through pinned memory (the tests add 'meta')


def to_model_input(images: torch.Tensor, spec: LoaderSpec) -> torch.Tensor:
    """NCHW images on the device in the agreed dtype and memory format."""
    fmt = torch.channels_last if spec.channels_last else torch.contiguous_format
    return images.to(spec.device, dtype=spec.dtype, memory_format=fmt, non_blocking=True)
