"""The pieces of a training step, shared by the trainer and the benchmarks: one code path for
autocast, channels_last, torch.compile and DDP, each switched by config."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from fastcifar.config import OptimConfig, TrainConfig
from fastcifar.errors import ConfigError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None
    compile: bool
    compile_mode: str
    channels_last: bool

    @property
    def memory_format(self):
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def resolve_runtime(train: TrainConfig, device: torch.device) -> Runtime:
    """'auto' means the fast settings on CUDA and fp32 eager on CPU, where AMP and compile cost
    more than they give."""
    cuda = device.type == "cuda"
    amp = train.amp if train.amp != "auto" else ("bf16" if cuda else "none")
    if amp == "fp16" and not cuda:
        raise ConfigError("train.amp: 'fp16' needs CUDA; use --train.amp=none (or bf16) on CPU")
    compile_ = train.compile == "true" or (train.compile == "auto" and cuda)
    return Runtime(device, AMP_DTYPES[amp], compile_, train.compile_mode, train.channels_last)


def prepare_model(model: nn.Module, runtime: Runtime, distributed: bool):
    """-> (compiled, train_model): compiled is used for evaluation, train_model (DDP-wrapped
    when distributed) for training. The plain `model` stays the one whose state is saved."""
    model.to(runtime.device, memory_format=runtime.memory_format)
    compiled = torch.compile(model, mode=runtime.compile_mode) if runtime.compile else model
    train_model = compiled
    if distributed:
        ids = [runtime.device] if runtime.device.type == "cuda" else None
        # BN buffers are not broadcast each step: each rank keeps its own running statistics,
        # and they are averaged before evaluation and saving (see average_buffers).
        train_model = DDP(compiled, device_ids=ids, broadcast_buffers=False)
    return compiled, train_model


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.SGD:
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            exempt = cfg.no_wd_bn_bias and (name == "bias" or isinstance(module, nn.modules.batchnorm._BatchNorm))
            (no_decay if exempt else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


class TrainStep:
    """Forward, loss, backward and update for one batch. No host sync: returns the loss tensor."""

    def __init__(self, train_model: nn.Module, optimizer: torch.optim.Optimizer,
                 runtime: Runtime, label_smoothing: float = 0.0):
        self.model, self.optimizer, self.runtime = train_model, optimizer, runtime
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with self.runtime.autocast():
            loss = self.criterion(self.model(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()


@torch.no_grad()
def average_buffers(model: nn.Module, world_size: int) -> None:
    """Average BN running statistics over ranks (they drift apart with broadcast_buffers=False)."""
    if world_size <= 1:
        return
    for buf in model.buffers():
        if buf.is_floating_point():
            torch.distributed.all_reduce(buf)
            buf.div_(world_size)


@torch.no_grad()
def evaluate(model: nn.Module, loader, runtime: Runtime) -> dict:
    """Exact top-1/top-5 counts and mean loss over every image of the loader on all ranks."""
    from fastcifar.distributed import all_reduce_sum

    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=runtime.device)  # top1, top5, n, loss sum
    for images, labels in loader:
        with runtime.autocast():
            logits = model(images)
        logits = logits.float()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top5 == labels[:, None]
        totals[0] += hits[:, 0].sum()
        totals[1] += hits.any(dim=1).sum()
        totals[2] += labels.numel()
        totals[3] += F.cross_entropy(logits, labels, reduction="sum")
    top1, top5, n, loss = all_reduce_sum(totals).tolist()
    model.train()
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "test_loss": loss / n,
            "test_images": int(n)}
