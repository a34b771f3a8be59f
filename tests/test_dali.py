"""DALI backend specifics: same draws as torch-gpu, alignment over ranks, errors, and CUDA checks."""

import dataclasses
import sys

import numpy as np
import pytest
import torch
from conftest import import_dali
from test_loaders import batches, make_cfg, split

from fastcifar.data import CifarSplit
from fastcifar.errors import ConfigError
from fastcifar.pipelines import LOADERS, build_loader

import_dali()

FULL = dict(crop_padding=4, flip_p=0.5, erase_p=0.5)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def all_images(cfg, data, device="cpu", epoch=0, which="train"):
    loader = build_loader(cfg, which, data, torch.device(device))
    loader.set_epoch(epoch)
    out = [(x.float().cpu(), y.cpu()) for x, y in loader]
    return torch.cat([x for x, _ in out]), torch.cat([y for _, y in out])


def test_dali_equals_torch_gpu_for_the_same_draws():
    data = split(300)
    x_dali, y_dali = all_images(make_cfg(backend="dali", batch=64, **FULL), data, epoch=2)
    x_torch, y_torch = all_images(make_cfg(backend="torch-gpu", batch=64, **FULL), data, epoch=2)
    assert torch.equal(y_dali, y_torch)
    assert (x_dali - x_torch).abs().max().item() <= 1e-6
    erased = (x_dali == 0.0).all(1)  # fill 0: some pixels erased, in both alike
    assert erased.any() and torch.equal(erased, (x_torch == 0.0).all(1))


@pytest.mark.parametrize("backend", ["dali", "torch-gpu"])
def test_float16_output_matches_float32(backend):
    data = split(128)
    full = make_cfg(backend=backend, batch=64, **FULL)
    half = dataclasses.replace(full, loader=dataclasses.replace(full.loader, dtype="float16"))
    x16, _ = all_images(half, data)
    x32, _ = all_images(full, data)
    assert build_loader(half, "train", data, torch.device("cpu")).__iter__().__next__()[0].dtype == torch.float16
    assert (x16 - x32).abs().max().item() < 1e-2


@pytest.mark.parametrize("backend", [n for n in ("torchvision", "torch-gpu", "dali") if n in LOADERS])
def test_labels_stay_aligned_over_shuffles_and_ranks(backend):
    """Each image's pixels encode its own index; after crop, flip and shuffling, on 2 ranks,
    every image arrives once per epoch with its own label."""
    n = 300
    idx = np.arange(n)
    images = np.zeros((n, 32, 32, 3), np.uint8)
    images[..., 0], images[..., 1] = (idx // 256)[:, None, None], (idx % 256)[:, None, None]
    data = CifarSplit(images, idx % 10, 10)
    cfg = make_cfg(backend=backend, batch=20, crop_padding=4, flip_p=0.5, erase_p=0.0,
                   mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            for x, y in batches(cfg, data, epoch=epoch, rank=rank, world=2):
                centre = (x[:, :2, 16, 16] * 255).round().long()  # never reached by padding
                index = centre[:, 0] * 256 + centre[:, 1]
                assert torch.equal(y, index % 10)
                seen += index.tolist()
        assert sorted(seen) == list(range(n))


def test_gpu_device_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = make_cfg(backend="dali")
    cfg = dataclasses.replace(cfg, loader=dataclasses.replace(cfg.loader, device="gpu"))
    with pytest.raises(ConfigError, match="--loader.device=cpu"):
        build_loader(cfg, "train", split(64), torch.device("cpu"))


def test_missing_dali_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[dali\]'.*\.\[dali-cuda130\].*--loader\.name=torch-gpu"):
        build_loader(make_cfg(backend="dali"), "train", split(64), torch.device("cpu"))


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_dali_gpu_equals_dali_cpu(dtype):
    data = split(600)
    base = make_cfg(backend="dali", batch=128, **FULL)
    outs = {}
    for device in ("cpu", "gpu"):
        cfg = dataclasses.replace(base, loader=dataclasses.replace(base.loader, device=device, dtype=dtype))
        loader = build_loader(cfg, "train", data, torch.device("cuda"))
        loader.set_epoch(1)
        xs, ys = zip(*loader)
        assert xs[0].device.type == "cuda" and xs[0].is_contiguous(memory_format=torch.channels_last)
        assert xs[0].dtype == getattr(torch, dtype)
        outs[device] = torch.cat(xs).float().cpu(), torch.cat(ys).cpu()
    assert torch.equal(outs["cpu"][1], outs["gpu"][1])
    tol = 1e-5 if dtype == "float32" else 1e-2
    assert (outs["cpu"][0] - outs["gpu"][0]).abs().max().item() < tol


def on_gpu(cfg):
    """make_cfg pins loader.device to cpu; on a CUDA training device, auto augments there."""
    return dataclasses.replace(cfg, loader=dataclasses.replace(cfg.loader, device="auto"))


@pytest.mark.cuda
@cuda
def test_torch_gpu_on_cuda_matches_cpu_and_counts_eval_once():
    data = split(500)
    off = make_cfg(backend="torch-gpu", batch=64, crop_padding=0, flip_p=0.0, erase_p=0.0)
    x_cpu, y_cpu = all_images(off, data, "cpu")
    x_gpu, y_gpu = all_images(on_gpu(off), data, "cuda")
    assert torch.equal(y_cpu, y_gpu) and (x_cpu - x_gpu).abs().max().item() < 1e-5
    for backend in ("torch-gpu", "dali"):
        _, labels = all_images(on_gpu(make_cfg(backend=backend, **FULL)), data, "cuda", which="test")
        assert torch.equal(labels, torch.from_numpy(data.labels))
    # statistics on the GPU's own generator: flip rate and exact mirrors
    flip = make_cfg(backend="torch-gpu", batch=100, crop_padding=0, flip_p=0.5, erase_p=0.0,
                    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    x, y = all_images(on_gpu(flip), data, "cuda")
    from fastcifar.pipelines.sharding import train_indices

    src = torch.from_numpy(data.images[train_indices(500, 3, 0, 0, 1)]).permute(0, 3, 1, 2)
    px = (x * 255).round().to(torch.uint8)
    mirrored = (px == src.flip(-1)).flatten(1).all(1)
    assert ((px == src).flatten(1).all(1) | mirrored).all()
    assert 0.4 < mirrored.float().mean().item() < 0.6


def with_prefetch(cfg, prefetch: int, device: str = "cpu"):
    return dataclasses.replace(cfg, loader=dataclasses.replace(cfg.loader, dali_prefetch=prefetch, device=device))


def epochs_of(loader, epochs, stop_early_in=None, churn=False, hold=False):
    """Every batch of each epoch; in epoch `stop_early_in` the loop is left after two batches.
    churn: allocate and fill batch-sized tensors between batches, so freed memory is reused at once
    (a buffer still read or written by DALI would then show up as wrong pixels).
    hold: keep the batches as the loader handed them over and copy them to the host only at the end,
    so a batch that aliased a buffer DALI reuses for later runs would show the later run's pixels."""
    seen = []
    for epoch in epochs:
        loader.set_epoch(epoch)
        for i, (x, y) in enumerate(loader):
            if churn:
                junk = [torch.full_like(x, float("nan")) for _ in range(3)]
                junk += [torch.full(x.shape, 255, dtype=torch.uint8, device=x.device) for _ in range(3)]
                del junk
            seen.append((epoch, x, y) if hold else (epoch, x.float().cpu(), y.cpu()))
            if epoch == stop_early_in and i == 1:
                break
    return [(e, x.float().cpu(), y.cpu()) for e, x, y in seen] if hold else seen


@pytest.mark.parametrize("which", ["train", "test"])
def test_queued_runs_give_the_same_batches(which):
    """dali_prefetch > 0 queues more runs ahead; the trainer must see exactly what it sees without,
    also after an epoch it left before the end, and with the eval split's partial last batch."""
    data = split(300)
    base = make_cfg(backend="dali", batch=64, **FULL)
    runs = {}
    for prefetch in (0, 2, 3):
        loader = build_loader(with_prefetch(base, prefetch), which, data, torch.device("cpu"))
        runs[prefetch] = epochs_of(loader, [0, 1, 1, 2], stop_early_in=1)
    assert len(runs[0]) == len(runs[2]) == len(runs[3]) > 8
    for prefetch in (2, 3):
        for (e0, x0, y0), (e1, x1, y1) in zip(runs[0], runs[prefetch]):
            assert e0 == e1 and torch.equal(y0, y1) and torch.equal(x0, x1)


def test_negative_prefetch_or_zero_batches_per_run_is_a_clear_error(tmp_path):
    from fastcifar import config as config_lib

    with pytest.raises(ConfigError, match=r"^loader.dali_prefetch: -1 is invalid: expected an integer >= 0$"):
        config_lib.load(None, ["--loader.dali_prefetch=-1"])
    with pytest.raises(ConfigError, match=r"^loader.dali_batches_per_run: 0 is invalid: expected an integer > 0$"):
        config_lib.load(None, ["--loader.dali_batches_per_run=0"])


def test_crop_padding_of_a_whole_image_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"^augment.crop_padding: 32 is too large for loader 'dali': expected < 32$"):
        build_loader(make_cfg(backend="dali", crop_padding=32), "train", split(64), torch.device("cpu"))


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("prefetch", [0, 2])
def test_dali_gpu_batches_held_over_later_runs_stay_intact(prefetch):
    """Two epochs of 4 batches in runs of 2, every GPU batch held (not copied) until the end, with
    memory churn between batches, against DALI's CPU mode (copied at once): DALI reuses its output
    buffers for later runs, so a batch that was a view of them would show a later run's pixels."""
    data = split(600)
    base = make_cfg(backend="dali", batch=128, **FULL)
    base = dataclasses.replace(base, loader=dataclasses.replace(base.loader, dali_batches_per_run=2))
    cpu = epochs_of(build_loader(with_prefetch(base, 0, "cpu"), "train", data, torch.device("cuda")), [0, 1])
    held = epochs_of(build_loader(with_prefetch(base, prefetch, "gpu"), "train", data, torch.device("cuda")), [0, 1],
                     churn=True, hold=True)
    assert len(held) == len(cpu) == 8
    for (e0, x0, y0), (e1, x1, y1) in zip(cpu, held):
        assert e0 == e1 and torch.equal(y0, y1)
        assert (x0 - x1).abs().max().item() < 1e-5


def test_dali_on_the_gpu_for_a_cpu_training_device_is_one_line():
    with pytest.raises(ConfigError, match=r"^loader.device: 'gpu' runs the dali loader on the training device, "
                                          r"which is cpu here"):
        build_loader(dataclasses.replace(make_cfg(backend="dali"), loader=dataclasses.replace(
            make_cfg(backend="dali").loader, device="gpu")), "train", split(64), torch.device("cpu"))
