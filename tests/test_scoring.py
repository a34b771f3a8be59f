"""Scoring by hand: top-1/top-5/loss counts on crafted logits where top-1, top-3 and top-5 all
differ, a padded last batch, every test image counted once over ranks (in process and over two
gloo ranks with an uneven test set), and a run's own normalisation reaching the model."""

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import write_npz

from fastcifar.config import AugmentConfig, Config, LoaderConfig, TrainConfig
from fastcifar.data import CifarSplit
from fastcifar.pipelines import build_loader
from fastcifar.pipelines.sharding import eval_indices
from fastcifar.scoring import evaluate_model, run_scoring
from fastcifar.training.engine import Evaluator, resolve_runtime

CPU = torch.device("cpu")
RUNTIME = resolve_runtime(TrainConfig(device="cpu", amp="none", compile="false", channels_last=False), CPU)
# image i has label i % 10, ranked RANKS[i]-th by its logits: top-1 3/10, top-3 6/10, top-5 8/10
RANKS = [1, 1, 2, 3, 4, 5, 6, 1, 3, 10]


def logit_row(label: int, rank: int) -> list[float]:
    """Ten distinct scores with `label` at place `rank` (1 = the highest)."""
    order = [c for c in range(10) if c != label]
    order.insert(rank - 1, label)
    row = [0.0] * 10
    for place, c in enumerate(order):
        row[c] = 2.0 - 0.5 * place
    return row


def hand_counts(indices) -> dict:
    rows = [(logit_row(i % 10, RANKS[i % 10]), i % 10, RANKS[i % 10]) for i in indices]
    loss = sum(math.log(sum(math.exp(v) for v in row)) - row[y] for row, y, _ in rows) / len(rows)
    return {"top1": 100 * sum(r == 1 for *_, r in rows) / len(rows),
            "top5": 100 * sum(r <= 5 for *_, r in rows) / len(rows), "test_loss": loss, "test_images": len(rows)}


class IndexModel(nn.Module):
    """Logits looked up by the index an image carries in its first pixel; `decode` undoes what
    the loader did to that pixel."""

    def __init__(self, decode=lambda pixel: pixel):
        super().__init__()
        self.decode = decode
        self.table = torch.tensor([logit_row(i % 10, RANKS[i % 10]) for i in range(10)])

    def forward(self, x):
        index = self.decode(x[:, 0, 0, 0].float()).round().long() % 10
        return self.table[index]


def test_top1_top5_and_loss_are_counted_as_by_hand_with_a_padded_last_batch():
    """Batches of 4, 4 and 2 (padded to 4 with image 0's index and label 0, a top-1 hit if the
    padding were counted)."""
    images = torch.arange(10.0).view(10, 1, 1, 1)
    labels = torch.arange(10) % 10
    loader = [(images[i:i + 4], labels[i:i + 4]) for i in range(0, 10, 4)]
    got = Evaluator(IndexModel(), RUNTIME)(loader)
    want = hand_counts(range(10))
    assert (want["top1"], want["top5"]) == (30.0, 80.0)  # the crafted ranks, and not top-3's 60
    assert got["test_images"] == 10, "padding counted as images"
    for key in ("top1", "top5", "test_loss"):
        assert got[key] == pytest.approx(want[key], rel=1e-6), f"{key}: {got[key]}, by hand {want[key]}"


def index_data(n: int) -> CifarSplit:
    images = np.zeros((n, 32, 32, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(n)  # the index, read back by IndexModel
    return CifarSplit(images, np.arange(n) % 10, 10)


def eval_config(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), batch: int = 4) -> Config:
    return Config(augment=AugmentConfig(mean=mean, std=std),
                  loader=LoaderConfig(name="torch-gpu", device="auto", eval_batch_size=batch),
                  train=TrainConfig(device="cpu", amp="none", compile="false", channels_last=False))


def decode_unit(pixel):  # a loader normalised with mean 0, std 1 hands the model pixel / 255
    return pixel * 255


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_test_image_is_seen_once_over_the_ranks(world):
    n = 10
    seen = []
    for rank in range(world):
        for images, _labels in build_loader(eval_config(batch=4), "test", index_data(n), CPU, rank, world):
            seen += decode_unit(images[:, 0, 0, 0]).round().long().tolist()
    assert sorted(seen) == list(range(n)), f"world {world}: images seen {sorted(seen)}"
    assert sorted(i for r in range(world) for i in eval_indices(n, r, world)) == list(range(n))


def _rank_main(rank: int, world: int, port: int, out: str):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    loader = build_loader(eval_config(batch=4), "test", index_data(7), CPU, rank, world)
    result = Evaluator(IndexModel(decode_unit), RUNTIME)(loader)
    torch.save(result, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_count_an_uneven_test_set_once(tmp_path):
    """7 images over 2 ranks (4 and 3; batch 2 a rank, the last padded on rank 1): both ranks
    report the counts of the 7 images, by hand."""
    import torch.multiprocessing as mp
    from conftest import free_port

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_rank_main, args=(2, free_port(), str(tmp_path)), nprocs=2)
    want = hand_counts(range(7))
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["test_images"] == 7, f"rank {rank} counted {got['test_images']} images"
        for key in ("top1", "top5", "test_loss"):
            assert got[key] == pytest.approx(want[key], rel=1e-6), f"rank {rank} {key}: {got[key]}, by hand {want[key]}"


class Probe(nn.Module):
    """Records what it is fed; answers class 0."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        self.seen.append(x.clone())
        return torch.zeros(len(x), 10) + self.dummy


def test_a_run_with_its_own_mean_and_std_is_scored_with_them(tmp_path):
    """The normalisation a run trained with (not the defaults, not ImageNet's) reaches the model
    through run_scoring and evaluate_model: the inputs are (pixel / 255 - mean) / std by hand."""
    mean, std = (0.2, 0.3, 0.4), (0.1, 0.2, 0.3)
    tree = {"model": {"name": "resnet8"}, "augment": {"mean": list(mean), "std": list(std)}}
    run = run_scoring(tree, tmp_path / "config.yaml")
    assert (run.mean, run.std) == (mean, std)
    root = write_npz(tmp_path / "data", "cifar10", 10, 30)
    probe = Probe()
    result = evaluate_model(probe, root, batch_size=30, dataset=run.dataset, mean=run.mean, std=run.std)
    images = np.load(root / "cifar10" / "test.npz")["images"]
    expected = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) \
        / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(torch.cat(probe.seen), expected, rtol=1e-5, atol=1e-5,
                               msg=lambda m: f"scored inputs are not normalised with the run's mean/std: {m}")
    labels = np.load(root / "cifar10" / "test.npz")["labels"]
    assert result["top1"] == pytest.approx(100 * (labels == 0).mean()) and result["images"] == 30
