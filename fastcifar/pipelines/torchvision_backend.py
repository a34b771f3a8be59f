"""Backend 'torchvision': a DataLoader with CPU workers and torchvision transforms, the usual
setup and the point of comparison for the GPU backends.

Each batch's augmentation draws are seeded from (seed, epoch, rank, step), so they do not depend
on the number of workers, and a resumed run sees the same augmented images as an unbroken one.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms as T

from fastcifar.threads import loader_threads
from fastcifar.pipelines.base import LoaderSpec, register_loader, to_model_input
from fastcifar.pipelines.sharding import EpochPlan


def build_transform(spec: LoaderSpec):
    """uint8 CHW tensor -> normalised float CHW tensor, with the train augmentations."""
    a = spec.augment
    steps = []
    if spec.train and a.crop_padding > 0:
        steps.append(T.RandomCrop(32, padding=a.crop_padding, fill=0))
    if spec.train and a.flip_p > 0:
        steps.append(T.RandomHorizontalFlip(a.flip_p))
    steps += [T.ConvertImageDtype(torch.float32), T.Normalize(a.mean, a.std)]
    if spec.train and a.erase_p > 0:
        steps.append(T.RandomErasing(a.erase_p, tuple(a.erase_scale), tuple(a.erase_ratio), a.erase_value))
    return T.Compose(steps)


class AugmentedCifar(Dataset):
    """Fetches whole batches (``__getitems__``) so one seed covers one batch's draws."""

    def __init__(self, spec: LoaderSpec):
        self.images = torch.from_numpy(spec.data.images).permute(0, 3, 1, 2)  # CHW views
        self.labels = torch.from_numpy(spec.data.labels)
        self.transform = build_transform(spec)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]

    def __getitems__(self, batch):
        key, indices = batch
        # torchvision's transforms draw from the default CPU generator and take no other, so that
        # one is the batch's generator, seeded alone and restored after: torch.manual_seed would
        # also reseed every CUDA generator, which fork_rng(devices=[]) does not restore.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(key)
            return [(self.transform(self.images[i]), self.labels[i]) for i in indices]


class EpochBatchSampler(EpochPlan, Sampler):
    """Yields (seed key, indices) per batch from the shared epoch plan."""

    def __iter__(self):
        indices, size = self.order(), self.spec.batch_size
        for step in range(self.start, self.steps):
            yield self.key(step), indices[step * size:(step + 1) * size]


class TorchvisionLoader:
    def __init__(self, spec: LoaderSpec):
        self.spec = spec
        self.sampler = EpochBatchSampler(spec)
        # The configs' default of 4 workers would oversubscribe a small machine (fastcifar/threads.py),
        # and DataLoader warns about it once per loader; the batches do not depend on the worker count.
        workers = loader_threads(spec.loader)
        self.dataloader = DataLoader(
            AugmentedCifar(spec), batch_sampler=self.sampler, num_workers=workers,
            pin_memory=spec.device.type == "cuda", persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            # each epoch's iterator draws a base seed for its workers: from this generator, not
            # the process's (no batch depends on it, each batch is reseeded by its key)
            generator=torch.Generator().manual_seed(spec.seed),
        )

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.sampler.set_epoch(epoch, start)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for images, labels in self.dataloader:
            yield to_model_input(images, self.spec), labels.to(self.spec.device, non_blocking=True)


@register_loader("torchvision")
def build_torchvision(spec: LoaderSpec) -> TorchvisionLoader:
    return TorchvisionLoader(spec)
