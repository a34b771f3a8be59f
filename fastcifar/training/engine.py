"""The pieces of a training step, shared by the trainer and the benchmarks: one code path for
autocast, channels_last, torch.compile and DDP, each switched by config."""

from __future__ import annotations

import contextlib
import inspect
import sys
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
    cuda_graph: bool = False  # the whole training step (and the eval forward) replayed as CUDA graphs

    @property
    def memory_format(self):
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, cache: bool = True):
        """cache=False inside CUDA graph capture: autocast's cast cache would hand later replays
        copies made during capture, not of the current weights."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=cache)


# torch.use_deterministic_algorithms(True) raises inside the first step on CUDA, for the loss's
# nll_loss (outside the compiled model) and AdaptiveAvgPool2d's backward: refused before anything runs
DETERMINISTIC_ON_CUDA = ("train.deterministic: true is not available on CUDA (the loss and the average "
                         "pool's backward have no deterministic CUDA kernels); bit-exact reruns are a CPU "
                         "feature: use --train.deterministic=false, or --train.device=cpu")

# compile modes that capture CUDA graphs themselves: a whole-step graph cannot contain them
GRAPHED_COMPILE_MODES = ("reduce-overhead", "max-autotune")


def resolve_runtime(train: TrainConfig, device: torch.device, distributed: bool = False,
                    announce: bool = False, implementation: str = "auto") -> Runtime:
    """'auto' means the fast settings on CUDA and fp32 eager on CPU, where AMP and compile cost
    more than they give. train.cuda_graph=auto captures where it can and otherwise quietly runs
    the eager/compiled step; 'true' where it cannot is an error, except under DDP, where it
    falls back with one line (printed when `announce`)."""
    cuda = device.type == "cuda"
    if train.deterministic and cuda:
        raise ConfigError(DETERMINISTIC_ON_CUDA)
    amp = train.amp if train.amp != "auto" else ("bf16" if cuda else "none")
    if amp == "fp16" and not cuda:
        raise ConfigError("train.amp: 'fp16' needs CUDA; use --train.amp=none (or bf16) on CPU")
    compile_ = train.compile == "true" or (train.compile == "auto" and cuda)
    graph = train.cuda_graph == "true"
    if graph:
        if not cuda:
            raise ConfigError("train.cuda_graph: 'true' needs CUDA; use --train.cuda_graph=false "
                              "(auto captures only on CUDA)")
        require_no_grad_scaler(AMP_DTYPES[amp])
        if compile_ and train.compile_mode in GRAPHED_COMPILE_MODES:
            raise ConfigError(f"train.cuda_graph: train.compile_mode={train.compile_mode} already "
                              "captures CUDA graphs; use one or the other")
        if not fused_tensor_lr_available():
            raise ConfigError(f"train.cuda_graph: torch {torch.__version__} has no fused SGD with a "
                              "tensor learning rate, which capture needs; use --train.cuda_graph=false")
        require_fused(sgd_implementation(implementation, device))
    elif train.cuda_graph == "auto":  # implementation: optim.implementation; capture needs fused SGD
        graph = (cuda and amp != "fp16" and fused_tensor_lr_available()
                 and sgd_implementation(implementation, device) == "fused"
                 and not (compile_ and train.compile_mode in GRAPHED_COMPILE_MODES))
    if graph and distributed:
        # DDP's all-reduce inside a captured backward needs NCCL and DDP set up for it (its
        # async error handling off, DDP built on a side stream, 11 eager warm-up steps); not done here
        if announce and train.cuda_graph == "true":
            print("train.cuda_graph: whole-step capture is not supported under DDP here; "
                  "training with the eager/compiled step", file=sys.stderr, flush=True)
        graph = False
    return Runtime(device, AMP_DTYPES[amp], compile_, train.compile_mode, train.channels_last, graph)


def fused_tensor_lr_available() -> bool:
    """Whether fused SGD takes the learning rate as a device tensor (read by its kernel, so a
    captured step sees each new rate without recapture)."""
    return hasattr(torch.ops.aten._fused_sgd_, "tensor_lr")


def prepare_model(model: nn.Module, runtime: Runtime, distributed: bool):
    """-> (compiled, train_model): compiled is used for evaluation, train_model (DDP-wrapped
    when distributed) for training. The plain `model` stays the one whose state is saved."""
    model.to(runtime.device, memory_format=runtime.memory_format)
    # dynamic=False: every batch has one shape (train loaders drop the last partial batch, evaluation
    # pads it), so a second shape (the eval batch after the train batch) must be a second static
    # graph, not Dynamo's automatic dynamic-shape graph with a symbolic batch size for both
    compiled = torch.compile(model, mode=runtime.compile_mode, dynamic=False) if runtime.compile else model
    train_model = compiled
    if distributed:
        ids = [runtime.device] if runtime.device.type == "cuda" else None
        # BN buffers are not broadcast each step: each rank keeps its own running statistics,
        # and they are averaged before evaluation and saving (see average_buffers).
        train_model = DDP(compiled, device_ids=ids, **_no_forward_buffer_sync())
    return compiled, train_model


def _no_forward_buffer_sync() -> dict:
    """torch 2.13 renamed DDP's broadcast_buffers (now a FutureWarning) to forward_sync_buffers;
    the new name still syncs buffers once at construction, which is harmless here (every rank
    builds the same model from the same seed)."""
    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def sgd_implementation(choice: str, device: torch.device) -> str:
    """optim.implementation resolved: auto is fused where torch has fused SGD kernels for the
    device (CUDA; CPU too in recent torch), else foreach. All three keep the same state
    (one momentum_buffer per parameter), so checkpoints load across them."""
    if choice != "auto":
        return choice
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        fused_devices = _get_fused_kernels_supported_devices()
    except ImportError:  # a private helper: if it moves, CUDA is the device fused SGD has had longest
        fused_devices = ["cuda"]
    return "fused" if device.type in fused_devices else "foreach"


def require_no_grad_scaler(amp_dtype) -> None:
    if amp_dtype == torch.float16:
        raise ConfigError("train.cuda_graph: cannot capture with train.amp=fp16 (GradScaler "
                          "checks for inf on the host); use --train.amp=bf16 or none")


def require_fused(implementation: str) -> None:
    if implementation != "fused":
        raise ConfigError(f"optim.implementation: {implementation!r} cannot run in a captured CUDA "
                          "graph (it reads the learning rate on the host); use fused or auto, or "
                          "--train.cuda_graph=false")


def _implementation_flags(implementation: str) -> dict:
    return {"fused": implementation == "fused", "foreach": implementation == "foreach"}


def build_optimizer(model: nn.Module, cfg: OptimConfig, runtime: Runtime | None = None) -> torch.optim.SGD:
    """SGD over the model's parameters, on their device. Under a CUDA graph runtime it must be
    fused (the kernel reads a device learning rate; foreach would read it on the host)."""
    device = next(model.parameters()).device
    implementation = sgd_implementation(cfg.implementation, device)
    if runtime is not None and runtime.cuda_graph:  # for runtimes resolved without the implementation
        require_fused(implementation)
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            exempt = cfg.no_wd_bn_bias and (name == "bias" or isinstance(module, nn.modules.batchnorm._BatchNorm))
            (no_decay if exempt else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           **_implementation_flags(implementation))


class TrainStep:
    """Forward, loss, backward and update for one batch. No host sync: returns the loss tensor.

    With a fused optimizer the learning rate lives in a device tensor (`self.lr`) that set_lr
    fills in place: the fused kernel reads it on the device, so a new rate costs no host sync and
    a captured graph (GraphedTrainStep) sees it at each replay. Other implementations keep a
    Python float, which they need on the host anyway."""

    def __init__(self, train_model: nn.Module, optimizer: torch.optim.Optimizer,
                 runtime: Runtime, label_smoothing: float = 0.0, tensor_lr: bool | None = None):
        self.model, self.optimizer, self.runtime = train_model, optimizer, runtime
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)
        fused = all(g.get("fused") for g in optimizer.param_groups)
        if tensor_lr and not fused:
            raise ValueError("tensor_lr needs a fused optimizer: foreach and for-loop SGD read the rate on the host")
        self.lr = None
        if fused if tensor_lr is None else tensor_lr:
            first = optimizer.param_groups[0]["params"][0]
            self.lr = torch.tensor(float(optimizer.param_groups[0]["lr"]), dtype=torch.float32, device=first.device)
        self._flags = {k: optimizer.param_groups[0].get(k) for k in ("fused", "foreach")}
        self._install_lr()

    def _install_lr(self) -> None:
        if self.lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr

    def set_lr(self, lr: float) -> None:
        if self.lr is not None:
            self.lr.fill_(lr)
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = lr

    def step(self, images: torch.Tensor, labels: torch.Tensor, autocast_cache: bool = True) -> torch.Tensor:
        with self.runtime.autocast(autocast_cache):
            loss = self.criterion(self.model(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.step(images, labels)

    # ---- state: the same format whatever the implementation, graph or learning-rate kind ----
    def state_dict(self) -> dict:
        """The optimizer's state with float learning rates (a device tensor would tie the
        checkpoint to a device and to the fused implementation). Read at checkpoints only."""
        state = self.optimizer.state_dict()
        for group in state["param_groups"]:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"] = group["lr"].item()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Load an optimizer state saved by any implementation. torch's load_state_dict takes the
        saved groups' lr and fused/foreach flags too: ours are put back."""
        self.optimizer.load_state_dict(state)
        for param, param_state in self.optimizer.state.items():
            buf = param_state.get("momentum_buffer")
            if buf is not None and buf.stride() != param.stride():
                # saved under the other train.channels_last: fused kernels want the param's layout
                param_state["momentum_buffer"] = torch.empty_like(param).copy_(buf)
        saved_lr = self.optimizer.param_groups[0]["lr"]
        for group in self.optimizer.param_groups:
            group.update(self._flags)
        if self.lr is not None:
            self.lr.fill_(float(saved_lr))
        self._install_lr()


@torch.no_grad()
def average_buffers(model: nn.Module, world_size: int) -> None:
    """Average BN running statistics over ranks (they drift apart without forward buffer sync):
    one all-reduce per dtype over the flattened buffers, not one per buffer."""
    if world_size <= 1:
        return
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for buf in model.buffers():
        if buf.is_floating_point():
            by_dtype.setdefault(buf.dtype, []).append(buf)
    for bufs in by_dtype.values():
        flat = _flatten_dense_tensors(bufs)
        torch.distributed.all_reduce(flat)
        # by a device tensor: a Python-number divisor is a reciprocal multiply on CUDA (torch_gpu.py)
        flat.div_(torch.tensor(world_size, dtype=flat.dtype, device=flat.device))
        for buf, averaged in zip(bufs, _unflatten_dense_tensors(flat, bufs)):
            buf.copy_(averaged)


class Evaluator:
    """Exact top-1/top-5 counts and mean loss over every image of a loader, on all ranks.

    Every batch is run at one shape, the first batch's: a shorter last batch is padded and its
    padding masked out of the counts, so a compiled model never recompiles for it and, under a
    CUDA graph runtime, one eval forward graph (captured at the first evaluation, warmed on a side
    stream) serves every batch. The graph reads the weights in place, so it stays valid as they
    train and as checkpoints are loaded into them."""

    def __init__(self, model: nn.Module, runtime: Runtime):
        self.model, self.runtime = model, runtime
        self.graph = None
        self.static_images = self.static_logits = None

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.runtime.cuda_graph:
            with self.runtime.autocast():
                return self.model(images)
        if self.graph is None or images.shape != self.static_images.shape:
            self._capture(images)
        self.static_images.copy_(images)
        self.graph.replay()
        return self.static_logits

    def _capture(self, images: torch.Tensor) -> None:
        from fastcifar.training.capture import capture

        self.static_images = images.clone()

        def forward():
            with self.runtime.autocast(cache=False):
                return self.model(self.static_images)

        self.graph, self.static_logits = capture(forward, warmup=2)

    @torch.no_grad()
    def __call__(self, loader) -> dict:
        from fastcifar.distributed import all_reduce_sum

        self.model.eval()
        totals = torch.zeros(4, dtype=torch.float64, device=self.runtime.device)  # top1, top5, n, loss sum
        size = None
        for images, labels in loader:
            n = labels.shape[0]
            size = size or n
            if n > size:
                raise ValueError(f"evaluation batch of {n} after a first batch of {size}: only the last may differ")
            if n < size:
                images = pad_batch(images, size)
                labels = pad_batch(labels, size)
            logits = self._forward(images).float()
            valid = (torch.arange(size, device=labels.device) < n).to(logits.dtype)
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = (top5 == labels[:, None]).to(logits.dtype) * valid[:, None]
            totals[0] += hits[:, 0].sum()
            totals[1] += hits.sum()  # at most one of the top 5 can match
            totals[2] += n
            totals[3] += (F.cross_entropy(logits, labels, reduction="none") * valid).sum()
        top1, top5, n, loss = all_reduce_sum(totals).tolist()
        self.model.train()
        return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "test_loss": loss / n,
                "test_images": int(n)}


def pad_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """x with zero rows appended up to `size` rows, in x's memory format (zero images and
    label 0: the counts mask them out)."""
    out = x.new_zeros((size, *x.shape[1:]))
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    out[: x.shape[0]] = x
    return out


def evaluate(model: nn.Module, loader, runtime: Runtime) -> dict:
    """One evaluation pass (Evaluator keeps its eval graph across passes; this does not)."""
    return Evaluator(model, runtime)(loader)
