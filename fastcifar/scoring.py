"""Test accuracy of a model through the same normalisation and evaluation code as training, and
what scoring needs from the run that trained it; shared by the evaluate command and the export of
shipped weights (each imports it, neither the other)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fastcifar.config import CIFAR10_MEAN, CIFAR10_STD
from fastcifar.errors import FastcifarError


def evaluate_model(model: torch.nn.Module, data_root: str | Path, limit: int | None = None,
                   device: str | torch.device = "cpu", batch_size: int = 1000, download: bool = False,
                   dataset: str = "cifar10", mean: tuple[float, ...] = CIFAR10_MEAN,
                   std: tuple[float, ...] = CIFAR10_STD) -> dict:
    """Top-1/top-5 (%) over the test set of `dataset`, or its first `limit` images, normalised with
    the run's `mean` and `std`, in fp32 without compile (the torch-gpu loader's eval path). The
    model is left in the train/eval mode it was in."""
    from fastcifar.config import AugmentConfig, Config, DataConfig, LoaderConfig, TrainConfig
    from fastcifar.data import CifarSplit, load_cifar
    from fastcifar.training.engine import evaluate, resolve_runtime
    from fastcifar.pipelines import build_loader

    data = load_cifar(dataset, data_root, "test", download)
    if limit is not None:
        data = CifarSplit(data.images[:limit], data.labels[:limit], data.num_classes)
    device = torch.device(device)
    train = TrainConfig(device=device.type, amp="none", compile="false", channels_last=False)
    cfg = Config(data=DataConfig(dataset=dataset), augment=AugmentConfig(mean=tuple(mean), std=tuple(std)),
                 loader=LoaderConfig(name="torch-gpu", device="auto", eval_batch_size=batch_size), train=train)
    runtime = resolve_runtime(train, device)
    modes = [(m, m.training) for m in model.modules()]  # per module: some may be frozen in eval
    model = model.to(runtime.device)
    try:
        result = evaluate(model, build_loader(cfg, "test", data, runtime.device), runtime)
    finally:
        for m, training in modes:  # evaluate() ends in train mode, as the training loop wants
            m.train(training)
    return {"top1": result["top1"], "top5": result["top5"], "images": result["test_images"]}


@dataclass(frozen=True)
class Scoring:
    """What scoring a model needs from the run that trained it."""

    model: str  # registry name, e.g. resnet56
    shortcut: str
    dataset: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


def run_scoring(tree: dict | None, source: Path) -> Scoring:
    """The model, data set and normalisation of a saved config tree (None: the defaults). Keys the
    tree lacks keep their defaults, keys this version does not know are ignored; a bad value is
    one line naming the key and the file."""
    from fastcifar import config as config_lib

    wanted = {"model": ("name", "shortcut"), "data": ("dataset",), "augment": ("mean", "std")}
    tree = tree or {}
    picked = {section: {k: v for k, v in (tree.get(section) or {}).items() if k in keys}
              for section, keys in wanted.items() if isinstance(tree.get(section) or {}, dict)}
    try:
        cfg = config_lib.from_dict(picked)
        config_lib.validate(cfg)  # the model name, 3 means and 3 positive stds among the rest
    except FastcifarError as e:
        raise FastcifarError(f"{source}: {e}") from None
    return Scoring(cfg.model.name, cfg.model.shortcut, cfg.data.dataset, cfg.augment.mean, cfg.augment.std)
