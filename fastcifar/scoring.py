"""Test accuracy of a model through the same normalisation and evaluation code as training, shared
by the evaluate command and the export of shipped weights (each imports it, neither the other)."""

from __future__ import annotations

from pathlib import Path

import torch


def evaluate_model(model: torch.nn.Module, data_root: str | Path, limit: int | None = None,
                   device: str = "cpu", batch_size: int = 1000, download: bool = False) -> dict:
    """Top-1/top-5 (%) over the CIFAR-10 test set, or its first `limit` images, through the same
    normalisation and evaluation code as training (the torch-gpu loader's eval path)."""
    from fastcifar.config import Config, LoaderConfig, TrainConfig
    from fastcifar.data import CifarSplit, load_cifar
    from fastcifar.training.engine import evaluate, resolve_runtime
    from pipelines import build_loader

    data = load_cifar("cifar10", data_root, "test", download)
    if limit is not None:
        data = CifarSplit(data.images[:limit], data.labels[:limit], data.num_classes)
    train = TrainConfig(device=device, amp="none", compile="false", channels_last=False)
    cfg = Config(loader=LoaderConfig(name="torch-gpu", device="auto", eval_batch_size=batch_size), train=train)
    runtime = resolve_runtime(train, torch.device(device))
    model = model.to(runtime.device)
    loader = build_loader(cfg, "test", data, runtime.device)
    result = evaluate(model, loader, runtime)
    return {"top1": result["top1"], "top5": result["top5"], "images": result["test_images"]}
