"""Every loader backend: the contract the trainer relies on, and the augmentation statistics.

Each test runs once per registered backend (DALI in its CPU mode), so all of them are held to the
same rules."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import synthetic_arrays

from fastcifar.config import AugmentConfig, Config, LoaderConfig, TrainConfig
from fastcifar.data import CifarSplit
from fastcifar.pipelines import LOADERS, build_loader
from fastcifar.pipelines.sharding import train_indices

BACKENDS = [name for name in ("torchvision", "torch-gpu", "dali") if name in LOADERS]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param

IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # outputs are x / 255
OFF = dict(crop_padding=0, flip_p=0.0, erase_p=0.0)


def make_cfg(batch=32, workers=0, backend="torchvision", **augment) -> Config:
    return Config(
        augment=AugmentConfig(**augment),
        loader=LoaderConfig(name=backend, device="cpu", workers=workers, eval_batch_size=48),
        train=TrainConfig(batch_size=batch, device="cpu", seed=3),
    )


def split(n=256, seed=0) -> CifarSplit:
    images, labels = synthetic_arrays(n, 10, seed, learnable=False)
    return CifarSplit(images, labels, 10)


def batches(cfg, data, which="train", epoch=0, rank=0, world=1):
    loader = build_loader(cfg, which, data, torch.device("cpu"), rank, world)
    loader.set_epoch(epoch)
    return list(loader)


def test_contract_shapes_dtype_memory_format(backend):
    data = split(200)
    cfg = make_cfg(backend=backend, batch=32)
    out = batches(cfg, data)
    assert len(out) == 200 // 32 == len(build_loader(cfg, "train", data, "cpu"))
    images, labels = out[0]
    assert images.shape == (32, 3, 32, 32) and images.dtype == torch.float32
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert labels.dtype == torch.int64
    cfg16 = dataclasses.replace(cfg, loader=dataclasses.replace(cfg.loader, dtype="bfloat16"),
                                train=dataclasses.replace(cfg.train, channels_last=False))
    images16, _ = batches(cfg16, data)[0]
    assert images16.dtype == torch.bfloat16 and images16.is_contiguous()


def test_no_augmentation_is_plain_normalisation_in_sampler_order(backend):
    data = split(128)
    cfg = make_cfg(backend=backend, **OFF)
    order = train_indices(128, seed=3, epoch=5, rank=0, world_size=1)
    images, labels = torch.cat([b[0] for b in batches(cfg, data, epoch=5)]), torch.cat([b[1] for b in batches(cfg, data, epoch=5)])
    mean = torch.tensor(cfg.augment.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.augment.std).view(1, 3, 1, 1)
    expected = (torch.from_numpy(data.images[order]).permute(0, 3, 1, 2).float() / 255 - mean) / std
    torch.testing.assert_close(images, expected, atol=1e-6, rtol=0)
    assert labels.tolist() == data.labels[order].tolist()


def test_shuffle_depends_on_seed_and_epoch_only(backend):
    data = split(128)
    cfg = make_cfg(backend=backend)
    a = batches(cfg, data, epoch=1)
    b = batches(cfg, data, epoch=1)
    c = batches(cfg, data, epoch=2)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])


def test_workers_do_not_change_the_batches():
    data = split(128)
    serial = batches(make_cfg(workers=0), data, epoch=4)
    parallel = batches(make_cfg(workers=2), data, epoch=4)
    for (x0, y0), (x1, y1) in zip(serial, parallel, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_torchvision_draws_leave_the_process_generators_alone(monkeypatch):
    """workers=0 runs the transforms in this process: each batch's seed must not touch the global
    CPU state nor reseed any CUDA generator, and a key must still give the draws it always gave."""
    from fastcifar.pipelines.torchvision_backend import build_transform

    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: seeded.append(("all", seed)))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: seeded.append(("one", seed)))
    data = split(64)
    cfg = make_cfg(batch=32)
    loader = build_loader(cfg, "train", data, torch.device("cpu"))
    loader.set_epoch(2)
    torch.manual_seed(1234)
    seeded.clear()
    before = torch.random.get_rng_state()
    out = list(loader)
    assert seeded == []
    assert torch.equal(torch.random.get_rng_state(), before)

    key, indices = next(iter(loader.sampler))  # the draws of torch.manual_seed(key), as before
    transform = build_transform(loader.spec)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(key)
        expected = torch.stack([transform(torch.from_numpy(data.images[i]).permute(2, 0, 1)) for i in indices])
    assert torch.equal(out[0][0], expected.contiguous(memory_format=torch.channels_last))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torchvision_loader_keeps_the_cuda_generator_state():
    data = split(64)
    loader = build_loader(make_cfg(batch=32), "train", data, torch.device("cuda"))
    torch.cuda.manual_seed(99)
    before = torch.cuda.get_rng_state()
    out = list(loader)
    assert out[0][0].device.type == "cuda"
    assert torch.equal(torch.cuda.get_rng_state(), before)


def test_torch_gpu_augments_where_loader_device_says():
    from fastcifar.errors import ConfigError

    data = split(64)
    cfg = make_cfg(backend="torch-gpu", batch=32)
    on = lambda device: dataclasses.replace(cfg, loader=dataclasses.replace(cfg.loader, device=device))
    # a 'meta' training device stands in for a GPU: batches made on the CPU must be moved to it
    loader = build_loader(on("cpu"), "train", data, torch.device("meta"))
    assert loader.images.device.type == "cpu"
    images, labels = next(iter(loader))
    assert images.device.type == labels.device.type == "meta"
    assert images.shape == (32, 3, 32, 32) and images.is_contiguous(memory_format=torch.channels_last)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError) as e:
            build_loader(on("gpu"), "train", data, torch.device("cpu"))
        assert str(e.value).startswith("loader.device: 'gpu' needs CUDA") and "\n" not in str(e.value)


@pytest.mark.parametrize("gpu_backend", [b for b in ("torch-gpu", "dali") if b in LOADERS])
def test_cpu_augmented_batches_reach_an_accelerator_through_pinned_memory(gpu_backend, monkeypatch):
    """loader.device=cpu for a GPU training device ('meta' stands in for it): every batch's images
    (and torch-gpu's labels, gathered on the CPU) are copied through pinned memory, so the copy does
    not make the host wait for the step in progress (the CUDA test below times that)."""
    import fastcifar.pipelines.base as base

    pinned = []

    def pin_memory(t):  # CPU torch cannot pin: record what would be, and hand over a copy
        pinned.append((tuple(t.shape), t.stride()))
        return t.clone()

    monkeypatch.setattr(base, "PINNED_COPY_DEVICES", ("cuda", "meta"))
    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    cfg = make_cfg(backend=gpu_backend, batch=32)
    out = list(build_loader(cfg, "train", split(96), torch.device("meta")))
    assert len(out) == 3 and all(x.device.type == y.device.type == "meta" for x, y in out)
    assert all(x.is_contiguous(memory_format=torch.channels_last) for x, _ in out)
    images = [p for p in pinned if len(p[0]) > 1]
    assert len(images) == (3 if gpu_backend == "torch-gpu" else 1)  # dali: one run of K = 8 batches
    if gpu_backend == "torch-gpu":
        assert images[0] == ((32, 3, 32, 32), (3072, 1, 96, 3))  # the channels_last view, as it is
        assert [p for p in pinned if len(p[0]) == 1] == [((32,), (1,))] * 3  # the labels


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("gpu_backend", [b for b in ("torch-gpu", "dali") if b in LOADERS])
def test_cpu_augmenting_loaders_do_not_wait_for_the_gpu(gpu_backend):
    """loader.device=cpu, prefetched for a CUDA model as the trainer does: with torch's stream busy
    for about a second, the next batches are still handed out at once (a pageable non_blocking copy
    would wait for the stream)."""
    import time

    from fastcifar.training.prefetch import prefetch

    cfg = make_cfg(backend=gpu_backend, batch=64)  # dali: a pipeline run, and so a copy, per batch
    cfg = dataclasses.replace(cfg, loader=dataclasses.replace(cfg.loader, dali_batches_per_run=1))
    loader = prefetch(build_loader(cfg, "train", split(64 * 24), torch.device("cuda")), torch.device("cuda"))
    loader.set_epoch(0)
    batches = iter(loader)
    first = next(batches)
    assert first[0].device.type == "cuda"
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)  # ~1 s of spinning at 2 GHz
    start = time.perf_counter()
    for _ in range(4):
        next(batches)
    host = time.perf_counter() - start
    busy = not torch.cuda.current_stream().query()
    torch.cuda.synchronize()
    assert busy, "the GPU finished spinning before the batches were taken: the host waited for it"
    assert host < 0.5, f"the loader waited for the GPU ({host:.2f} s)"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_gpu_on_the_cpu_feeds_a_cuda_model_the_same_images_without_augmentation():
    data = split(64)
    cfg = make_cfg(backend="torch-gpu", batch=32, **OFF)
    on = lambda device: dataclasses.replace(cfg, loader=dataclasses.replace(cfg.loader, device=device))
    host = build_loader(on("cpu"), "train", data, torch.device("cuda"))
    gpu = build_loader(on("gpu"), "train", data, torch.device("cuda"))
    assert host.images.device.type == "cpu" and gpu.images.device.type == "cuda"
    for (x0, y0), (x1, y1) in zip(host, gpu, strict=True):
        assert x0.device.type == y0.device.type == "cuda"
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def every_pixel_value() -> CifarSplit:
    """256 images, image v filled with the value v: every uint8 value the normalisation sees."""
    images = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None, None, None], (256, 32, 32, 3)).copy()
    return CifarSplit(images, np.zeros(256, np.int64), 10)


def torch_gpu_eval_values(device: str) -> torch.Tensor:
    cfg = make_cfg(backend="torch-gpu", **IDENTITY)
    cfg = dataclasses.replace(cfg, loader=dataclasses.replace(cfg.loader, device="auto"))
    return torch.cat([x[:, 0, 0, 0] for x, _ in batches_on(cfg, every_pixel_value(), device)]).cpu()


def batches_on(cfg, data, device, which="test"):
    return list(build_loader(cfg, which, data, torch.device(device)))


def test_torch_gpu_normalises_by_true_division():
    """x / 255 as torchvision computes it on the CPU: IEEE division, correctly rounded, for every
    value. CUDA's division by a Python number is a multiplication by its reciprocal, which is one
    ulp off for many values (the control below); the loader divides by a device tensor instead,
    and the CUDA test below checks CUDA gives these very values."""
    values = torch.arange(256, dtype=torch.float64)
    exact = (values / 255).float()  # float64 division, then one rounding: the correctly rounded quotient
    assert torch.equal(torch_gpu_eval_values("cpu"), exact)
    reciprocal = values.float() * torch.tensor(1 / 255, dtype=torch.float32)
    assert (reciprocal != exact).sum() > 50  # the control: this test tells the two apart


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_gpu_normalises_every_value_alike_on_cpu_and_cuda():
    assert torch.equal(torch_gpu_eval_values("cuda"), torch_gpu_eval_values("cpu"))


def test_workers_are_at_most_the_usable_cpus(monkeypatch):
    """The configs ask for 4 workers; on a smaller machine that is clamped, without warnings."""
    import os
    import warnings

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    data = split(64)
    loader = build_loader(make_cfg(workers=4), "train", data, torch.device("cpu"))
    assert loader.dataloader.num_workers == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = list(loader)
    assert not [w for w in caught if "worker" in str(w.message)], [str(w.message) for w in caught]
    assert len(out) == 2
    assert build_loader(make_cfg(workers=0), "train", data, "cpu").dataloader.num_workers == 0


def test_train_shards_are_disjoint_complete_and_equal_length(backend):
    n, world = 250, 2
    shards = [train_indices(n, 3, 0, r, world) for r in range(world)]
    assert len(shards[0]) == len(shards[1]) == n // world
    assert not set(shards[0]) & set(shards[1])
    assert len(set(shards[0]) | set(shards[1])) == n - n % world
    data = split(n)
    cfg = make_cfg(backend=backend, batch=64)  # 32 per rank
    steps = [len(batches(cfg, data, rank=r, world=world)) for r in range(world)]
    assert steps == [(n // world) // 32] * world


@pytest.mark.parametrize("world", [1, 3])
def test_eval_sees_every_image_once(world, backend):
    n = 101
    images = np.zeros((n, 32, 32, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(n)  # the index, readable back after normalisation
    data = CifarSplit(images, np.arange(n) % 10, 10)
    cfg = make_cfg(backend=backend, **IDENTITY)
    seen = []
    for rank in range(world):
        for x, y in batches(cfg, data, "test", rank=rank, world=world):
            seen += (x[:, 0, 0, 0] * 255).round().long().tolist()
            assert torch.equal(y, torch.tensor(seen[-len(y):]) % 10)
    assert sorted(seen) == list(range(n))


@pytest.mark.slow
def test_crop_offsets_are_uniform_in_pad_range(backend):
    n = 400
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, size=(n, 32, 32, 3), dtype=np.uint8)  # no zeros: padding shows
    data = CifarSplit(images, np.zeros(n, np.int64), 10)
    cfg = make_cfg(backend=backend, batch=50, crop_padding=4, flip_p=0.0, erase_p=0.0, **IDENTITY)
    counts = np.zeros((9, 9))
    for epoch in range(3):
        order = train_indices(n, 3, epoch, 0, 1)
        out = torch.cat([b[0] for b in batches(cfg, data, epoch=epoch)])
        out = (out * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for img, idx in zip(out, order):
            padded = np.pad(images[idx], ((4, 4), (4, 4), (0, 0)))
            hits = [(dy, dx) for dy in range(9) for dx in range(9)
                    if np.array_equal(padded[dy:dy + 32, dx:dx + 32], img)]
            assert len(hits) == 1, "each output is exactly one shifted, zero-padded input"
            counts[hits[0]] += 1
    expected = counts.sum() / 81
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 124.84  # chi-square, 80 degrees of freedom, p = 0.001


def test_flip_rate_and_exact_mirror(backend):
    n = 512
    data = split(n)
    cfg = make_cfg(backend=backend, batch=64, crop_padding=0, flip_p=0.5, erase_p=0.0, **IDENTITY)
    order = train_indices(n, 3, 0, 0, 1)
    out = (torch.cat([b[0] for b in batches(cfg, data)]) * 255).round().to(torch.uint8)
    src = torch.from_numpy(data.images[order]).permute(0, 3, 1, 2)  # compared as pixels
    same = (out == src).flatten(1).all(1)
    mirrored = (out == src.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all()
    assert 0.42 < mirrored.float().mean().item() < 0.58  # 512 draws: 3.6 sigma


def test_erasing_rate_area_ratio_and_fill(backend):
    n, p, fill = 600, 0.5, 7.0  # a fill no normalised pixel reaches
    data = split(n)
    scale, ratio = (0.05, 0.3), (0.5, 2.0)
    cfg = make_cfg(backend=backend, batch=100, crop_padding=0, flip_p=0.0, erase_p=p, erase_scale=scale,
                   erase_ratio=ratio, erase_value=fill, **IDENTITY)
    out = torch.cat([b[0] for b in batches(cfg, data)])
    erased = 0
    for img in out:
        mask = (img == fill).all(0)
        if not mask.any():
            continue
        erased += 1
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        h, w = len(rows), len(cols)
        assert rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w
        assert mask.sum() == h * w, "one filled rectangle"
        assert scale[0] * 1024 * 0.8 <= h * w <= scale[1] * 1024 * 1.2  # rounding of h and w
        assert ratio[0] * 0.7 <= h / w <= ratio[1] * 1.4
    assert 0.43 < erased / n < 0.57
