"""DALI with one DALI sample per batch and K batches per run: exact output for the same draws,
distributions against torchvision's own transforms, runs that do not divide the epoch, abandoned
epochs and resume, the default loader, and (on CUDA) no host synchronisation."""

import dataclasses
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import REPO, import_dali, tiny_overrides
from test_loaders import make_cfg, split

from fastcifar.data import CifarSplit
from fastcifar.pipelines import build_loader
from fastcifar.pipelines.sharding import batch_key, eval_indices, train_indices
from fastcifar.pipelines.torch_gpu import draw

import_dali()

FULL = dict(crop_padding=4, flip_p=0.5, erase_p=0.5)
IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def loader_cfg(cfg, **loader):
    return dataclasses.replace(cfg, loader=dataclasses.replace(cfg.loader, **loader))


def reference(images: np.ndarray, d, a) -> torch.Tensor:
    """Crop from the zero-padded image, mirror, normalise as torchvision does, erase: per image."""
    p, out = a.crop_padding, []
    padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
    mean, std = np.array(a.mean, np.float32), np.array(a.std, np.float32)
    for i in range(len(images)):
        oy, ox = d.offsets[i].tolist()
        x = padded[i, oy:oy + 32, ox:ox + 32]
        if d.flip[i]:
            x = x[:, ::-1]
        x = (x.astype(np.float32) / np.float32(255) - mean) / std
        top, left, h, w = (int(v) for v in d.erase_box[i])
        x[top:top + h, left:left + w] = a.erase_value
        out.append(x)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("dtype,crop", [("float32", "multi_paste"), ("float16", "multi_paste"),
                                        ("bfloat16", "multi_paste"), ("float32", "warp_affine")])
def test_output_equals_the_reference_for_the_same_draws(dtype, crop):
    """7 steps in runs of 3 (3, 3, 1): every batch equals crop window, mirror, normalisation (1e-6)
    and erased rectangle computed image by image from the batch's keyed draws, whichever operator
    (loader.dali_crop) crops and flips."""
    n, batch, epoch = 7 * 64 + 13, 64, 3
    data = split(n)
    cfg = loader_cfg(make_cfg(backend="dali", batch=batch, erase_value=0.25, **FULL),
                     dali_batches_per_run=3, dtype=dtype, dali_crop=crop)
    loader = build_loader(cfg, "train", data, torch.device("cpu"))
    loader.set_epoch(epoch)
    order = train_indices(n, 3, epoch, 0, 1)
    got = list(loader)
    assert len(got) == 7
    erased = 0
    for step, (x, y) in enumerate(got):
        idx = order[step * batch:(step + 1) * batch]
        d = draw(cfg.augment, batch, torch.Generator().manual_seed(batch_key(3, epoch, 0, step)), "cpu")
        ref = reference(data.images[idx], d, cfg.augment)
        assert x.dtype == getattr(torch, dtype) and torch.equal(y, torch.from_numpy(data.labels[idx]))
        in_box = (ref == 0.25).all(1)
        assert torch.equal((x == 0.25).all(1), in_box), "the erased rectangles"
        erased += int(in_box.flatten(1).any(1).sum())
        if dtype == "float32":
            assert (x - ref).abs().max().item() <= 1e-6
        else:  # DALI's float16 cast and torch's bfloat16 cast of its float32: at most one ulp apart
            ulp = 2.0 ** (-10 if dtype == "float16" else -7)
            assert ((x.float() - ref.to(x.dtype).float()).abs() <= ref.abs() * ulp + 1e-6).all()
    assert 0.35 * 7 * batch < erased < 0.65 * 7 * batch


def test_eval_is_normalisation_only_with_the_partial_last_batch_alone():
    n = 250  # eval batches of 48: 5 full ones in runs of 2 (2, 2, 1), then 10 images in a run alone
    data = split(n)
    cfg = loader_cfg(make_cfg(backend="dali", **FULL), dali_batches_per_run=2)
    out = list(build_loader(cfg, "test", data, torch.device("cpu")))
    assert [len(y) for _, y in out] == [48] * 5 + [10]
    images = torch.cat([x for x, _ in out])
    mean = torch.tensor(cfg.augment.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.augment.std).view(1, 3, 1, 1)
    expected = (torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    assert (images - expected).abs().max().item() <= 1e-6
    assert torch.equal(torch.cat([y for _, y in out]), torch.from_numpy(data.labels[eval_indices(n, 0, 1)]))


def epochs(loader, plan):
    """(epoch, stop_after) pairs: every batch until stop_after (None: the whole epoch)."""
    seen = []
    for epoch, stop in plan:
        loader.set_epoch(epoch)
        for i, (x, y) in enumerate(loader):
            seen.append((epoch, x.clone(), y.clone()))
            if stop is not None and i + 1 == stop:
                break
    return seen


@pytest.mark.parametrize("which", ["train", "test"])
def test_batches_do_not_depend_on_runs_prefetch_abandoned_epochs_or_resume(which):
    """K = 1, 3, 8 batches per run and 0 or 2 runs queued give the same batches, also after an
    epoch left mid-way (its queued runs are drained); a loader built afresh for a later epoch
    (a resumed run) gives that epoch's batches too."""
    data = split(7 * 40 + 5)
    base = make_cfg(backend="dali", batch=40, **FULL)
    plan = [(0, None), (1, 2), (1, None), (2, 5), (3, None)]
    runs = {}
    for k, prefetch in ((1, 0), (3, 0), (3, 2), (8, 1)):
        cfg = loader_cfg(base, dali_batches_per_run=k, dali_prefetch=prefetch)
        runs[k, prefetch] = epochs(build_loader(cfg, which, data, torch.device("cpu")), plan)
    first = runs[1, 0]
    assert len(first) == (7 + 2 + 7 + 5 + 7 if which == "train" else 6 + 2 + 6 + 5 + 6)
    for other in runs.values():
        assert len(other) == len(first)
        for (e0, x0, y0), (e1, x1, y1) in zip(first, other):
            assert e0 == e1 and torch.equal(y0, y1) and torch.equal(x0, x1)
    resumed = epochs(build_loader(loader_cfg(base, dali_batches_per_run=3), which, data, torch.device("cpu")),
                     [(3, None)])
    for (_, x0, y0), (_, x1, y1) in zip([r for r in first if r[0] == 3], resumed, strict=True):
        assert torch.equal(y0, y1) and torch.equal(x0, x1)
    if which == "train":  # the epochs differ from each other
        assert not torch.equal(first[0][1], [r for r in first if r[0] == 3][0][1])


# ---- distributions against torchvision's own transforms ------------------------------------------
ERASE_FILL = 7.0  # no coded pixel reaches it


def coded_images(n: int) -> np.ndarray:
    """Each pixel holds its own (row + 1, col + 1) and a marker; padding reads 0 everywhere."""
    images = np.empty((n, 32, 32, 3), np.uint8)
    images[..., 0] = np.arange(1, 33)[None, :, None]
    images[..., 1] = np.arange(1, 33)[None, None, :]
    images[..., 2] = 200
    return images


def decode(x: torch.Tensor) -> dict:
    """The crop offset, flip and erased box of every image, checked to be exactly one of each."""
    erased = (x == ERASE_FILL).all(1)
    px = (x * 255).round().long()
    valid = ~erased & (px[:, 2] == 200)
    rows, cols = torch.arange(32).view(1, 32, 1), torch.arange(32).view(1, 1, 32)
    oy = px[:, 0] - 1 + 4 - rows
    ox_plain = px[:, 1] - 1 + 4 - cols
    ox_flip = px[:, 1] - 1 + 4 - 31 + cols

    def constant(v):
        hi = torch.where(valid, v, -100).flatten(1).amax(1)
        lo = torch.where(valid, v, 100).flatten(1).amin(1)
        return hi, hi == lo

    oy, oy_ok = constant(oy)
    plain, plain_ok = constant(ox_plain)
    mirrored, flip = constant(ox_flip)
    assert valid.flatten(1).any(1).all() and oy_ok.all() and (plain_ok ^ flip).all()
    ox = torch.where(flip, mirrored, plain)
    assert ((oy >= 0) & (oy <= 8) & (ox >= 0) & (ox <= 8)).all()
    # the padding is exactly the part of the window outside the image
    inside_r = (rows + oy.view(-1, 1, 1) - 4 >= 0) & (rows + oy.view(-1, 1, 1) - 4 < 32)
    col = torch.where(flip.view(-1, 1, 1), 31 - cols, cols) + ox.view(-1, 1, 1) - 4
    inside = inside_r & (col >= 0) & (col < 32)
    assert torch.equal(inside | erased, (px[:, 2] == 200) | erased)
    h, w = erased.any(2).sum(1), erased.any(1).sum(1)
    assert torch.equal(erased.flatten(1).sum(1), h * w), "one erased rectangle per image"
    top, left = erased.any(2).float().argmax(1), erased.any(1).float().argmax(1)
    return dict(oy=oy, ox=ox, flip=flip, erased=h > 0, h=h, w=w, top=top, left=left)


def chi2_critical(df: int, z: float = 3.09) -> float:
    """Upper 0.001 point of chi-square (Wilson-Hilferty; within 1% for df >= 3)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def homogeneous(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Two samples of small integers from one distribution: chi-square over the values both hit
    at least 10 times together, p = 0.001."""
    values = torch.cat([a, b]).unique()
    table = torch.stack([torch.stack([(a == v).sum(), (b == v).sum()]) for v in values]).double()
    table = table[table.sum(1) >= 10]
    expected = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / table.sum()
    return ((table - expected) ** 2 / expected).sum().item() < chi2_critical(len(table) - 1)


def uniform_counts(values: torch.Tensor, k: int) -> bool:
    counts = torch.bincount(values, minlength=k).double()
    expected = len(values) / k
    return ((counts - expected) ** 2 / expected).sum().item() < chi2_critical(k - 1)


def same_rate(a: torch.Tensor, b: torch.Tensor) -> bool:
    pa, pb = a.float().mean(), b.float().mean()
    p = torch.cat([a, b]).float().mean()
    z = (pa - pb) / torch.sqrt(p * (1 - p) * (1 / len(a) + 1 / len(b)))
    return abs(z.item()) < 3.29


def uniform_given_size(start: torch.Tensor, size: torch.Tensor, g: torch.Generator) -> bool:
    """start uniform on 0..32-size: (start + U) / (33 - size) is then uniform on [0, 1] (KS)."""
    u = ((start + torch.rand(len(start), generator=g, dtype=torch.float64)) / (33 - size)).sort().values
    n = len(u)
    grid = torch.arange(1, n + 1, dtype=torch.float64) / n
    d = torch.maximum(grid - u, u - (grid - 1 / n)).max().item()
    return d < 1.95 / math.sqrt(n)


@pytest.mark.slow
def test_distributions_match_torchvision_over_10240_images():
    """Crop offsets uniform over 0..8, flip and erase rates, erased height, width and area, and
    top/left uniform given the size: DALI's images against torchvision's RandomCrop(32, padding=4),
    RandomHorizontalFlip and RandomErasing applied to the same 10,240 coded images."""
    from torchvision import transforms as T

    n = 10240
    images = coded_images(n)
    cfg = make_cfg(backend="dali", batch=512, erase_value=ERASE_FILL, **FULL, **IDENTITY)
    data = CifarSplit(images, np.zeros(n, np.int64), 10)
    ours = decode(torch.cat([x for x, _ in build_loader(cfg, "train", data, torch.device("cpu"))]))
    torch.manual_seed(0)  # torchvision draws from torch's global generator
    a = cfg.augment
    tv = T.Compose([T.RandomCrop(32, padding=a.crop_padding), T.RandomHorizontalFlip(a.flip_p),
                    T.RandomErasing(a.erase_p, scale=a.erase_scale, ratio=a.erase_ratio, value=ERASE_FILL)])
    source = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    theirs = decode(torch.stack([tv(img) for img in source]))

    for key in ("oy", "ox"):
        assert uniform_counts(ours[key], 9) and uniform_counts(theirs[key], 9), key
        assert homogeneous(ours[key], theirs[key]), key
    assert uniform_counts(ours["oy"] * 9 + ours["ox"], 81)
    for key in ("flip", "erased"):
        assert same_rate(ours[key], theirs[key]), key
        assert abs(ours[key].float().mean().item() - 0.5) < 3.29 * 0.5 / math.sqrt(n), key
    e, f = ours["erased"], theirs["erased"]
    for key in ("h", "w"):
        assert homogeneous(ours[key][e], theirs[key][f]), key
    area_ours, area_theirs = (ours["h"] * ours["w"])[e], (theirs["h"] * theirs["w"])[f]
    edges = torch.quantile(torch.cat([area_ours, area_theirs]).double(), torch.linspace(0, 1, 11)[1:-1].double())
    assert homogeneous(torch.bucketize(area_ours, edges), torch.bucketize(area_theirs, edges)), "area"
    g = torch.Generator().manual_seed(1)
    for d, m in ((ours, e), (theirs, f)):
        assert uniform_given_size(d["top"][m], d["h"][m], g) and uniform_given_size(d["left"][m], d["w"][m], g)


# ---- the default loader --------------------------------------------------------------------------
def run_cli(args, extra_code="pass"):
    code = (f"import sys, runpy; {extra_code}; sys.argv = ['run.py', *{args!r}]; "
            "runpy.run_path('run.py', run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def default_loader_args(root, run_dir):
    return ["configs/resnet20.yml", *[o for o in tiny_overrides(root, run_dir, **{"train.epochs": 1})
                                      if not o.startswith("--loader.name=")]]


def test_default_loader_is_dali_in_cpu_mode_without_cuda(monkeypatch, tmp_path):
    from fastcifar import config as config_lib
    from fastcifar.pipelines.dali import DaliLoader

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = default_loader_args(tmp_path, tmp_path / "run")
    cfg = config_lib.load(args[0], [a for a in args[1:] if not a.startswith("--train.device=")])
    assert (cfg.loader.name, cfg.loader.device, cfg.train.device) == ("dali", "auto", "auto")
    from fastcifar.distributed import resolve_device

    loader = build_loader(cfg, "train", split(128), resolve_device(cfg.train.device))
    assert isinstance(loader, DaliLoader) and loader.device == "cpu"
    x, y = next(iter(loader))
    assert x.shape == (64, 3, 32, 32) and len(y) == 64


@pytest.mark.slow
def test_default_loader_without_dali_stops_with_one_line(synthetic_root, tmp_path):
    result = run_cli(default_loader_args(synthetic_root, tmp_path / "run"), "sys.modules['nvidia.dali'] = None")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("run.py: error: loader 'dali' needs DALI")
    for hint in ("pip install -e '.[dali]'", ".[dali-cuda130]", "--loader.name=torch-gpu",
                 "--loader.name=torchvision"):
        assert hint in lines[0]


# ---- CUDA ------------------------------------------------------------------------------------------
@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype,crop", [("float32", "multi_paste"), ("bfloat16", "multi_paste"),
                                        ("float32", "warp_affine")])
def test_dali_gpu_equals_cpu_mode_with_runs_that_do_not_divide_the_epoch(dtype, crop):
    """The GPU operators against the CPU ones (themselves checked against the reference above)."""
    data = split(7 * 128 + 50)
    base = loader_cfg(make_cfg(backend="dali", batch=128, **FULL), dali_batches_per_run=3, dtype=dtype,
                      dali_crop=crop)
    outs = {}
    for device in ("cpu", "gpu"):
        loader = build_loader(loader_cfg(base, device=device), "train", data, torch.device("cuda"))
        outs[device] = epochs(loader, [(0, 4), (1, None)])
    assert len(outs["gpu"]) == 4 + 7
    for (_, x0, y0), (_, x1, y1) in zip(outs["cpu"], outs["gpu"]):
        assert x1.device.type == "cuda" and x1.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(y0, y1) and torch.equal((x0 == 0).all(1), (x1 == 0).all(1))
        assert (x0.float() - x1.float()).abs().max().item() < (1e-5 if dtype == "float32" else 1e-2)


@pytest.mark.cuda
@cuda
def test_dali_gpu_steady_state_does_not_wait_for_the_gpu():
    """With the GPU busy for about a second on torch's stream, the loader keeps handing out batches
    (within an epoch and across its end): nothing in it waits for the GPU."""
    data = split(16 * 256)
    cfg = loader_cfg(make_cfg(backend="dali", batch=256, **FULL), device="gpu", dali_batches_per_run=4,
                     dali_prefetch=1)
    loader = build_loader(cfg, "train", data, torch.device("cuda"))
    loader.set_epoch(0)
    batches = iter(loader)
    for _ in range(6):
        next(batches)
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)  # ~1 s of spinning at 2 GHz
    start = time.perf_counter()
    for _ in range(10):
        next(batches)
    loader.set_epoch(1)
    for _ in zip(range(6), loader):
        pass
    host = time.perf_counter() - start
    busy = not torch.cuda.current_stream().query()
    torch.cuda.synchronize()
    assert busy and host < 0.3, f"the loader waited for the GPU ({host:.2f} s)"
