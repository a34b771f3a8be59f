"""Backend 'torch-gpu': the four augmentations as batched torch ops on the training device (or on
the device loader.device names: cpu, or gpu).

The uint8 NHWC data set is uploaded once; each batch is gathered by index on the device. Crop and
flip are one gather from the zero-padded batch (per-sample row/column index maps); normalisation
works on the gathered pixels; random erasing is a mask built from per-sample rectangles drawn
as torchvision's RandomErasing draws them (up to 10 tries of area and log-uniform aspect ratio).
All draws for a batch come from one generator seeded with (seed, epoch, rank, step), so they do not
depend on anything a resumed run could see differently. No host syncs: nothing is read back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fastcifar.config import AugmentConfig
from fastcifar.pipelines.base import LoaderSpec, host_to_device, loader_device, register_loader
from fastcifar.pipelines.sharding import EpochPlan, index_tensor

ERASE_TRIES = 10  # torchvision's RandomErasing tries 10 rectangles before giving up


@dataclass
class Draws:
    """One batch's augmentation draws, per sample."""

    offsets: torch.Tensor  # int64 [n, 2]: crop window start (row, col) in the padded image
    flip: torch.Tensor  # bool [n]
    erase_box: torch.Tensor  # float32 [n, 4]: top, left, height, width; height 0 = no erasing


def draw(augment: AugmentConfig, n: int, g: torch.Generator | None, device) -> Draws:
    """Every random number of a batch, drawn in one fixed order from one generator."""
    a = augment
    offsets = torch.randint(0, 2 * a.crop_padding + 1, (n, 2), device=device, generator=g)
    flip = torch.rand(n, device=device, generator=g) < a.flip_p
    # random erasing as torchvision draws it: up to 10 tries of area and log-uniform aspect ratio
    area = 32 * 32 * torch.empty(n, ERASE_TRIES, device=device).uniform_(*a.erase_scale, generator=g)
    log_r = torch.empty(n, ERASE_TRIES, device=device).uniform_(
        math.log(a.erase_ratio[0]), math.log(a.erase_ratio[1]), generator=g)
    ratio = log_r.exp()
    h = (area * ratio).sqrt().round()
    w = (area / ratio).sqrt().round()
    fits = (h < 32) & (w < 32)
    first = fits.float().argmax(dim=1, keepdim=True)  # the first try that fits
    h, w = h.gather(1, first), w.gather(1, first)
    apply = fits.any(dim=1, keepdim=True) & (torch.rand(n, 1, device=device, generator=g) < a.erase_p)
    u = torch.rand(n, 2, device=device, generator=g)
    top = (u[:, :1] * (33 - h)).floor()  # uniform integer in [0, 32 - h]
    left = (u[:, 1:] * (33 - w)).floor()
    box = torch.cat([top, left, h, w], dim=1) * apply
    return Draws(offsets, flip, box)


class BatchAugment:
    """Crop (zero padding), flip, normalise and erase a uint8 NHWC batch on its device."""

    def __init__(self, spec: LoaderSpec, device: torch.device):
        a = spec.augment
        self.augment, self.train, self.dtype = a, spec.train, spec.dtype
        self.mean = torch.tensor(a.mean, device=device)
        self.std = torch.tensor(a.std, device=device)
        # a 0-dim tensor on the device, not the number 255: CUDA turns division by a Python number
        # into multiplication by its reciprocal (one ulp off for about half the pixel values), CPU
        # divides; by a device tensor both divide, so CPU and CUDA batches are equal to the bit
        self.scale = torch.tensor(255.0, device=device)
        self.arange = torch.arange(32, device=device)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        d = draw(self.augment, x.shape[0], generator, x.device) if self.train else None
        if d is not None:
            x = self.crop_and_flip(x, d)
        out = (x.float() / self.scale - self.mean) / self.std  # torchvision's arithmetic, to the bit
        if d is not None and self.augment.erase_p > 0:
            out = self.erase(out, d)
        return out.to(self.dtype)

    def crop_and_flip(self, x: torch.Tensor, d: Draws) -> torch.Tensor:
        """One gather from the zero-padded batch through per-sample row and column maps."""
        a, n = self.augment, x.shape[0]
        p = a.crop_padding
        rows = self.arange.expand(n, 32)
        cols = self.arange.expand(n, 32)
        if p > 0:
            x = torch.nn.functional.pad(x, (0, 0, p, p, p, p))  # NHWC: pad W and H with zeros
            rows = rows + d.offsets[:, :1]
            cols = cols + d.offsets[:, 1:]
        if a.flip_p > 0:
            cols = torch.where(d.flip[:, None], cols.flip(1), cols)
        batch = torch.arange(n, device=x.device)[:, None, None]
        return x[batch, rows[:, :, None], cols[:, None, :]]

    def erase(self, out: torch.Tensor, d: Draws) -> torch.Tensor:
        top, left, h, w = d.erase_box.unbind(1)
        r = self.arange[None, :]
        in_rows = (r >= top[:, None]) & (r < (top + h)[:, None])  # h = 0: no row inside
        in_cols = (r >= left[:, None]) & (r < (left + w)[:, None])
        mask = in_rows[:, :, None] & in_cols[:, None, :]
        return out.masked_fill(mask[..., None], self.augment.erase_value)


class TorchGpuLoader(EpochPlan):
    def __init__(self, spec: LoaderSpec):
        super().__init__(spec)
        self.device = device = loader_device(spec)
        self.images = torch.from_numpy(spec.data.images).to(device)  # uploaded once
        self.labels = torch.from_numpy(spec.data.labels).to(device)
        self.augment = BatchAugment(spec, device)

    def __iter__(self):
        s = self.spec
        order = index_tensor(self.order(), self.device)  # one upload per epoch, sliced on the device
        generator = torch.Generator(device=self.device) if s.train else None
        for step in range(self.start, self.steps):
            idx = order[step * s.batch_size:(step + 1) * s.batch_size]
            if generator is not None:
                generator.manual_seed(self.key(step))
            images = self.augment(self.images[idx], generator).permute(0, 3, 1, 2)  # NCHW view
            # no-ops when augmenting on the training device (loader.device auto)
            images = host_to_device(images, s.device)
            if not s.channels_last:
                images = images.contiguous()
            yield images, host_to_device(self.labels[idx], s.device)


@register_loader("torch-gpu")
def build_torch_gpu(spec: LoaderSpec) -> TorchGpuLoader:
    return TorchGpuLoader(spec)
