"""Synthetic CIFAR-shaped data, for the tests and the benchmarks: one generator, so both see the
same images."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def synthetic_arrays(n: int, num_classes: int = 10, seed: int = 0, learnable: bool = True):
    """uint8 NHWC images and int64 labels. Random pixels measure speed; `learnable` gives each
    class its own colour and a bright stripe, so a tiny ResNet's accuracy rises within an epoch."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % num_classes
    rng.shuffle(labels)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    if learnable:
        # class colours from a fixed seed, so the train and test splits (other seeds) agree
        colours = np.random.default_rng(2016).integers(0, 256, size=(num_classes, 3))
        mixed = images.astype(np.int32) // 4 + colours[labels][:, None, None, :] * 3 // 4
        for c in range(num_classes):
            row = (c * 3) % 30
            mixed[labels == c, row:row + 3] = 255
        images = mixed.clip(0, 255).astype(np.uint8)
    return images, labels


def synthetic_split(n: int, num_classes: int = 10, seed: int = 0, learnable: bool = True):
    from fastcifar.data import CifarSplit

    return CifarSplit(*synthetic_arrays(n, num_classes, seed, learnable), num_classes)


def write_npz(root: Path | str, dataset: str, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A learnable set where fastcifar.data.load_cifar looks first (<root>/<dataset>/{train,test}.npz)."""
    from fastcifar.data import num_classes

    folder = Path(root) / dataset
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        images, labels = synthetic_arrays(n, num_classes(dataset), s)
        np.savez(folder / f"{split}.npz", images=images, labels=labels)
    return Path(root)
