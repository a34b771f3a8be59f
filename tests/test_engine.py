"""The training step's fast paths: the learning rate as a device tensor, fused/foreach SGD, the
static-buffer (CUDA graph) step, prefetching, padded evaluation and the one-all-reduce buffer
average. CPU tests check everything that is not CUDA-specific; the cuda-marked ones run on a GPU."""

import copy
import dataclasses
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

from fastcifar import config as config_lib
from fastcifar.config import OptimConfig, TrainConfig
from fastcifar.errors import ConfigError
from fastcifar.models import build_model
from fastcifar.training import checkpoint as ckpt
from fastcifar.training.engine import (
    Evaluator,
    Runtime,
    TrainStep,
    average_buffers,
    build_optimizer,
    evaluate,
    prepare_model,
    resolve_runtime,
    sgd_implementation,
)
from fastcifar.training.graph import GraphedTrainStep, build_train_step
from fastcifar.training.prefetch import Prefetcher, prefetch

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def cpu_runtime() -> Runtime:
    return resolve_runtime(TrainConfig(device="cpu", amp="none", compile="false"), CPU)


def batches(n: int, size: int = 8, device=CPU, seed: int = 0, channels_last: bool = False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(size, 3, 32, 32, generator=g)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append((x.to(device), torch.randint(0, 10, (size,), generator=g).to(device)))
    return out


def lrs(n: int):
    return [0.1 * (1 - i / n) + 0.01 for i in range(n)]  # changes every step, as the schedule does


def run_steps(step, data, rates):
    losses = []
    for (x, y), lr in zip(data, rates):
        step.set_lr(lr)
        losses.append(step(x, y))
    return torch.stack(losses)


def fresh(implementation: str = "auto", seed: int = 0, device=CPU, **optim):
    torch.manual_seed(seed)
    model = build_model("resnet8").to(device)
    opt = build_optimizer(model, OptimConfig(implementation=implementation, nesterov=True, **optim))
    return model, opt


def assert_same_state(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def momentum(opt):
    return [opt.state[p]["momentum_buffer"] for g in opt.param_groups for p in g["params"]]


# ---- item 1: the learning rate as a device tensor, fused / foreach SGD -------------------------
@pytest.mark.slow
def test_sgd_implementation_choice():
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    cpu_auto = "fused" if "cpu" in _get_fused_kernels_supported_devices() else "foreach"
    assert sgd_implementation("auto", CPU) == cpu_auto
    assert sgd_implementation("auto", torch.device("cuda")) == "fused"
    for explicit in ("fused", "foreach", "for-loop"):
        assert sgd_implementation(explicit, torch.device("cuda")) == explicit
    for implementation, fused, foreach in (("fused", True, False), ("foreach", False, True),
                                           ("for-loop", False, False)):
        _, opt = fresh(implementation)
        assert all(g["fused"] is fused and g["foreach"] is foreach for g in opt.param_groups)
    # a captured step needs the fused kernel, which reads the rate on the device
    graph_rt = Runtime(torch.device("cuda"), torch.bfloat16, False, "default", True, cuda_graph=True)
    with pytest.raises(ConfigError, match=r"^optim.implementation: 'foreach' cannot run in a captured"):
        build_optimizer(build_model("resnet8"), OptimConfig(implementation="foreach"), graph_rt)


@pytest.mark.slow
def test_tensor_lr_updates_are_bit_identical_to_float_lr():
    """The same 6 updates, with a rate changing every step: the fused kernel reading a tensor
    rate gives exactly what it gives with a float. foreach and for-loop (which fma differently
    from the fused kernel) agree with each other exactly and with fused to rounding."""
    data, rates = batches(6), lrs(6)
    results = {}
    for name, implementation, tensor_lr in (("fused-tensor", "fused", True), ("fused-float", "fused", False),
                                            ("foreach", "foreach", None), ("for-loop", "for-loop", None)):
        model, opt = fresh(implementation)
        step = TrainStep(model, opt, cpu_runtime(), label_smoothing=0.1, tensor_lr=tensor_lr)
        assert (step.lr is not None) == (name == "fused-tensor")
        losses = run_steps(step, data, rates)
        results[name] = (model, opt, losses)
    ref_opt = results["fused-tensor"][1]
    assert isinstance(ref_opt.param_groups[0]["lr"], torch.Tensor)
    assert ref_opt.param_groups[0]["lr"].item() == pytest.approx(rates[-1])
    for a, b in (("fused-tensor", "fused-float"), ("foreach", "for-loop")):
        (model_a, opt_a, losses_a), (model_b, opt_b, losses_b) = results[a], results[b]
        assert torch.equal(losses_a, losses_b), (a, b)
        assert_same_state(model_a, model_b)
        assert all(torch.equal(x, y) for x, y in zip(momentum(opt_a), momentum(opt_b))), (a, b)
    for x, y in zip(results["fused-tensor"][0].state_dict().values(), results["foreach"][0].state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_fused_steps_default_to_a_tensor_lr_and_foreach_to_a_float():
    model, opt = fresh("fused")
    step = TrainStep(model, opt, cpu_runtime())
    lr = step.lr
    step.set_lr(0.25)
    assert step.lr is lr and lr.item() == 0.25 and all(g["lr"] is lr for g in opt.param_groups)
    model, opt = fresh("foreach")
    step = TrainStep(model, opt, cpu_runtime())
    step.set_lr(0.25)
    assert step.lr is None and all(g["lr"] == 0.25 for g in opt.param_groups)
    with pytest.raises(ValueError, match="tensor_lr needs a fused optimizer"):
        TrainStep(model, opt, cpu_runtime(), tensor_lr=True)


@pytest.mark.parametrize("saved_by,loaded_by", [("fused", "foreach"), ("foreach", "fused"), ("fused", "for-loop")])
@pytest.mark.slow
def test_optimizer_state_loads_across_implementations(tmp_path, saved_by, loaded_by):
    """A checkpoint's optimizer state holds float rates and no implementation of its own: loaded
    into another implementation, training continues exactly as the saving one would have."""
    data, rates = batches(6), lrs(6)
    model, opt = fresh(saved_by)
    step = TrainStep(model, opt, cpu_runtime())
    run_steps(step, data[:3], rates[:3])
    state = step.state_dict()
    assert all(isinstance(g["lr"], float) for g in state["param_groups"])
    ckpt.save_checkpoint(tmp_path / "c.pt", {"model": ckpt.model_state(model), "optimizer": state})
    run_steps(step, data[3:], rates[3:])

    saved = ckpt.load_checkpoint(tmp_path / "c.pt")  # weights_only, as resume loads it
    other, other_opt = fresh(loaded_by, seed=1)
    other_step = TrainStep(other, other_opt, cpu_runtime())
    ckpt.load_model_state(other, saved["model"])
    other_step.load_state_dict(saved["optimizer"])
    flags = {"fused": loaded_by == "fused", "foreach": loaded_by == "foreach"}
    assert all(g["fused"] == flags["fused"] and g["foreach"] == flags["foreach"] for g in other_opt.param_groups)
    if other_step.lr is not None:  # our tensor back in the groups, holding the saved rate
        assert all(g["lr"] is other_step.lr for g in other_opt.param_groups)
        assert other_step.lr.item() == pytest.approx(rates[2])
    run_steps(other_step, data[3:], rates[3:])
    for (name, x), y in zip(other.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)  # fused fmas: rounding apart


def test_momentum_saved_in_one_memory_format_loads_into_the_other():
    """train.channels_last may change on resume: the buffers take their parameters' layout."""
    data = batches(2)
    model, opt = fresh("fused")
    step = TrainStep(model, opt, cpu_runtime())
    run_steps(step, data, lrs(2))
    state = step.state_dict()
    other, other_opt = fresh("fused")
    other.to(memory_format=torch.channels_last)
    other_step = TrainStep(other, other_opt, cpu_runtime())
    other_step.load_state_dict(state)
    conv = next(p for p in other.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    for saved_p, p in zip(model.parameters(), other.parameters()):
        buf = other_opt.state[p]["momentum_buffer"]
        assert buf.stride() == p.stride()
        assert torch.equal(buf, opt.state[saved_p]["momentum_buffer"])


# ---- item 1: the static-buffer step (the CUDA graph's path, without capture) ---------------------
@pytest.mark.parametrize("implementation", ["fused", "foreach"])
@pytest.mark.slow
def test_static_buffer_step_equals_the_plain_step(implementation):
    data, rates = batches(5, channels_last=True), lrs(5)
    plain_model, plain_opt = fresh(implementation)
    plain = TrainStep(plain_model, plain_opt, cpu_runtime(), label_smoothing=0.1)
    static_model, static_opt = fresh(implementation)
    static = GraphedTrainStep(static_model, static_opt, cpu_runtime(), label_smoothing=0.1, capture=False)
    expected = run_steps(plain, data, rates)
    got = []
    for (x, y), lr in zip(data, rates):
        static.set_lr(lr)
        got.append(static(x, y))
        if len(got) == 1:
            buffers = (static.static_images.data_ptr(), static.static_labels.data_ptr())
        assert (static.static_images.data_ptr(), static.static_labels.data_ptr()) == buffers  # reused
        assert torch.equal(static.static_images, x) and static.static_images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(torch.stack(got), expected)
    assert_same_state(static_model, plain_model)  # BN running statistics included
    x, y = batches(1, size=4)[0]  # another shape: new buffers
    static(x, y)
    assert static.static_images.shape[0] == 4


def test_build_train_step_follows_the_runtime():
    model, opt = fresh("fused")
    assert type(build_train_step(model, opt, cpu_runtime())) is TrainStep
    graph_rt = Runtime(CPU, None, False, "default", True, cuda_graph=True)
    assert isinstance(build_train_step(model, opt, graph_rt), GraphedTrainStep)
    fp16_rt = Runtime(torch.device("cuda"), torch.float16, False, "default", True, cuda_graph=True)
    with pytest.raises(ConfigError, match=r"^train.cuda_graph: cannot capture with train.amp=fp16"):
        GraphedTrainStep(model, opt, fp16_rt)


def test_cuda_graph_settings_resolve_or_fail_in_one_line(capsys):
    cuda = torch.device("cuda")  # resolve_runtime only reads the device type: no GPU needed

    def graph(device, distributed=False, **train):
        return resolve_runtime(TrainConfig(**train), device, distributed, announce=True).cuda_graph

    with pytest.raises(ConfigError, match=r"^train.cuda_graph: 'true' needs CUDA"):
        graph(CPU, cuda_graph="true")
    assert graph(CPU, cuda_graph="auto") is False and graph(CPU, cuda_graph="false") is False
    assert graph(cuda, cuda_graph="true") is True and graph(cuda, cuda_graph="auto") is True
    assert graph(cuda, cuda_graph="false") is False
    with pytest.raises(ConfigError, match=r"^train.cuda_graph: cannot capture with train.amp=fp16"):
        graph(cuda, cuda_graph="true", amp="fp16")
    assert graph(cuda, cuda_graph="auto", amp="fp16") is False
    with pytest.raises(ConfigError, match=r"^train.cuda_graph: train.compile_mode=reduce-overhead already"):
        graph(cuda, cuda_graph="true", compile="true", compile_mode="reduce-overhead")
    assert graph(cuda, cuda_graph="auto", compile="true", compile_mode="reduce-overhead") is False
    assert graph(cuda, cuda_graph="true", compile="false", compile_mode="reduce-overhead") is True
    capsys.readouterr()
    assert graph(cuda, distributed=True, cuda_graph="true") is False
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("train.cuda_graph:") and "DDP" in err
    assert graph(cuda, distributed=True, cuda_graph="auto") is False
    assert capsys.readouterr().err == ""
    # auto with an SGD kernel that cannot be captured runs the plain step instead of failing later
    for kernel in ("foreach", "for-loop"):
        assert resolve_runtime(TrainConfig(cuda_graph="auto"), cuda, implementation=kernel).cuda_graph is False
    assert resolve_runtime(TrainConfig(cuda_graph="auto"), cuda, implementation="fused").cuda_graph is True


def test_trainer_refuses_a_cuda_graph_on_cpu(synthetic_root, tmp_path):
    from conftest import tiny_config

    from fastcifar.training import Trainer

    with pytest.raises(ConfigError, match=r"^train.cuda_graph: 'true' needs CUDA"):
        Trainer(tiny_config(synthetic_root, tmp_path / "run", train__cuda_graph="true"))


# ---- item 2: prefetching --------------------------------------------------------------------------
class ListLoader:
    def __init__(self, data):
        self.data, self.epochs = data, []

    def __iter__(self):
        return iter(self.data)

    def __len__(self):
        return len(self.data)

    def set_epoch(self, epoch, start=0):
        self.epochs.append((epoch, start))


def test_prefetch_on_cpu_hands_the_loaders_batches_through(synthetic_root, tmp_path):
    """Off CUDA the wrapper changes nothing: the very tensors of the loader, so training is
    bit-identical with or without it. len and set_epoch are the loader's."""
    from conftest import tiny_config

    from fastcifar.data import load_cifar
    from fastcifar.pipelines import build_loader

    inner = ListLoader(batches(3))
    wrapped = prefetch(inner, CPU)
    assert isinstance(wrapped, Prefetcher) and wrapped.stream is None and len(wrapped) == 3
    wrapped.set_epoch(4)
    wrapped.set_epoch(5, 2)
    assert inner.epochs == [(4, 0), (5, 2)]
    assert all(a is c and b is d for (a, b), (c, d) in zip(wrapped, inner.data))
    cfg = tiny_config(synthetic_root, tmp_path / "run")
    data = load_cifar("cifar10", str(synthetic_root), "train", False)
    direct, through = (build_loader(cfg, "train", data, CPU) for _ in range(2))
    through = prefetch(through, CPU)
    for loader in (direct, through):
        loader.set_epoch(1)
    pairs = list(zip(direct, through, strict=True))
    assert len(pairs) == len(direct) > 1
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in pairs)


# ---- item 3: evaluation at one shape, padded and masked; one all-reduce for BN buffers ----------
class Constant(nn.Module):
    """Logits that favour class 0, the label padding rows carry: unmasked, they would count."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x):
        out = self.linear(x.flatten(1))
        return out + torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 10) * 100


def test_padded_evaluation_counts_every_image_exactly_once():
    torch.manual_seed(0)
    data = batches(1, size=11)[0]
    images, labels = data
    labels[:3] = 0  # some real images of class 0 count; padding (also label 0) must not
    whole = evaluate(Constant().requires_grad_(False), ListLoader([data]), cpu_runtime())
    torch.manual_seed(0)
    model = Constant()
    shapes = []
    model.register_forward_pre_hook(lambda m, args: shapes.append(args[0].shape[0]))
    split = ListLoader([(images[:4], labels[:4]), (images[4:8], labels[4:8]), (images[8:], labels[8:])])
    parts = Evaluator(model, cpu_runtime())(split)
    assert shapes == [4, 4, 4]  # the last batch of 3 ran padded to the first's shape
    assert parts["test_images"] == whole["test_images"] == 11
    assert parts["top1"] == pytest.approx(100 * 3 / 11) and parts["top1"] == pytest.approx(whole["top1"])
    assert parts["top5"] == pytest.approx(whole["top5"])
    assert parts["test_loss"] == pytest.approx(whole["test_loss"], rel=1e-6)
    with pytest.raises(ValueError, match="only the last may differ"):
        Evaluator(model, cpu_runtime())(ListLoader([(images[:4], labels[:4]), (images[4:], labels[4:])]))


def test_bn_buffers_are_averaged_with_one_all_reduce(monkeypatch):
    """Rank 1 of two, simulated: its partner's buffers are these plus 2, so the average is these
    plus 1; every float buffer goes in one flattened all-reduce, integer counters stay."""
    torch.manual_seed(0)
    model = build_model("resnet8")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
            m.num_batches_tracked.fill_(7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def all_reduce(t, *args, **kwargs):
        calls.append(t.numel())
        t.mul_(2).add_(2)  # this rank's + (this rank's + 2)

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    average_buffers(model, 2)
    n_float = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    assert calls == [n_float]
    for name, value in model.state_dict().items():
        if "running" in name:
            torch.testing.assert_close(value, before[name] + 1)
        else:
            assert torch.equal(value, before[name]), name
    average_buffers(model, 1)
    assert len(calls) == 1  # alone: nothing to average


def test_ddp_is_built_without_deprecated_arguments(single_process_group):
    model = build_model("resnet8")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        _, ddp = prepare_model(model, cpu_runtime(), distributed=True)
    assert isinstance(ddp, nn.parallel.DistributedDataParallel)
    sync = getattr(ddp, "forward_sync_buffers", None)
    assert (sync if sync is not None else ddp.broadcast_buffers) is False


def test_deterministic_on_cuda_stops_in_one_line_before_anything_runs():
    """use_deterministic_algorithms(True) would raise inside the first CUDA step (nll_loss, and
    AdaptiveAvgPool2d's backward): resolve_runtime, which reads only the device's type, refuses it."""
    with pytest.raises(ConfigError) as e:
        resolve_runtime(TrainConfig(deterministic=True), torch.device("cuda"))
    assert str(e.value).startswith("train.deterministic: true is not available on CUDA") and "\n" not in str(e.value)
    assert resolve_runtime(TrainConfig(deterministic=True, device="cpu"), CPU).device == CPU  # CPU: allowed
    assert resolve_runtime(TrainConfig(), torch.device("cuda")).device.type == "cuda"  # off: CUDA as before


# ---- compile: static shapes, train and eval -------------------------------------------------------
def compiled_graph_inputs(monkeypatch, dynamic_override=None) -> list[bool]:
    """Train steps at batch 8, an evaluation at batch 20 (one padded), then train steps at batch 12
    (a recompile), with prepare_model's torch.compile call routed to a recording backend: for each
    graph Dynamo made, whether any input size was symbolic. dynamic_override replaces the `dynamic`
    prepare_model passes (the control: Dynamo's own default)."""
    import torch._dynamo

    real_compile, symbolic = torch.compile, []

    def record(gm, example_inputs):
        sizes = [s for t in example_inputs for s in (t.shape if isinstance(t, torch.Tensor) else [t])]
        symbolic.append(any(isinstance(s, torch.SymInt) for s in sizes))
        return gm.forward

    def spy(model, mode=None, **kwargs):
        if "backend" in kwargs:  # torch's own uses (the optimizer's), not prepare_model's
            return real_compile(model, mode=mode, **kwargs)
        if dynamic_override is not None:
            kwargs["dynamic"] = dynamic_override[0]
        return real_compile(model, backend=record, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    torch._dynamo.reset()
    runtime = resolve_runtime(TrainConfig(device="cpu", amp="none", compile="true"), CPU)
    torch.manual_seed(0)
    model = build_model("resnet8")
    eval_model, train_model = prepare_model(model, runtime, distributed=False)
    step = TrainStep(train_model, build_optimizer(model, OptimConfig(), runtime), runtime)
    run_steps(step, batches(2, size=8), lrs(2))
    Evaluator(eval_model, runtime)(ListLoader(batches(2, size=20) + [tuple(t[:7] for t in batches(1, size=20)[0])]))
    run_steps(step, batches(2, size=12), lrs(2))
    torch._dynamo.reset()
    return symbolic


@pytest.mark.slow
def test_compiled_train_and_eval_graphs_have_static_batch_sizes(monkeypatch):
    """Evaluation pads to one shape and training drops partial batches, so no graph needs a symbolic
    batch: Dynamo's automatic dynamic shapes would otherwise make the eval graph (the second batch
    size it sees) and a recompiled train step dynamic, slower than a static graph per shape."""
    static = compiled_graph_inputs(monkeypatch)
    assert len(static) >= 3 and not any(static), static  # train 8, eval 20, train 12: each static
    assert any(compiled_graph_inputs(monkeypatch, dynamic_override=(None,))), "the control: Dynamo's default"


# ---- CUDA: the captured step -----------------------------------------------------------------------
def cuda_runtime(compile_: bool = False, graph: bool = True) -> Runtime:
    train = TrainConfig(device="cuda", amp="bf16", compile="true" if compile_ else "false",
                        cuda_graph="true" if graph else "false")
    return resolve_runtime(train, torch.device("cuda"))


def cuda_step(graph: bool, compile_: bool = False, seed: int = 0):
    runtime = cuda_runtime(compile_, graph)
    torch.manual_seed(seed)
    model = build_model("resnet8")
    eval_model, train_model = prepare_model(model, runtime, distributed=False)
    opt = build_optimizer(model, OptimConfig(nesterov=True), runtime)
    cls = GraphedTrainStep if graph else TrainStep
    return model, eval_model, cls(train_model, opt, runtime, label_smoothing=0.1)


@pytest.mark.parametrize("compile_", [False, True])
@pytest.mark.cuda
@needs_cuda
def test_cuda_graph_steps_match_eager_steps(compile_):
    data = batches(20, size=64, device="cuda", channels_last=True)
    rates = lrs(20)
    eager_model, _, eager = cuda_step(graph=False, compile_=compile_)
    graph_model, _, graphed = cuda_step(graph=True, compile_=compile_)
    eager_losses = run_steps(eager, data, rates).float()
    graph_losses = run_steps(graphed, data, rates).float()
    assert graphed.graph is not None and graphed.warmed == GraphedTrainStep.WARMUP
    torch.testing.assert_close(graph_losses, eager_losses, rtol=2e-2, atol=2e-2)
    for (name, a), b in zip(graph_model.state_dict().items(), eager_model.state_dict().values()):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2, msg=name)
    # the schedule reaches the replays: a zero rate leaves the weights alone
    before = [p.detach().clone() for p in graph_model.parameters()]
    run_steps(graphed, data[:2], [0.0, 0.0])
    assert all(torch.equal(a, b) for a, b in zip(before, graph_model.parameters()))


@pytest.mark.cuda
@needs_cuda
def test_compiled_step_and_evaluation_never_recompile():
    """Without a graph Dynamo runs at every step: it compiles the train forward/backward at the first
    step and the eval forward at the first evaluation; later steps, the padded last eval batch and
    later epochs add nothing."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    model, eval_model, step = cuda_step(graph=False, compile_=True)
    evaluator = Evaluator(eval_model, step.runtime)
    data, eval_data = compile_data()

    def compiled():
        return counters["stats"]["unique_graphs"], counters["frames"]["total"]

    run_steps(step, data[:1], lrs(1))
    after_first = compiled()
    assert after_first[0] > 0  # the counters do count this model's graphs
    run_steps(step, data[1:5], lrs(4))
    assert compiled() == after_first, "recompiled after the first step"
    first = evaluator(eval_data)
    after_eval = compiled()
    run_steps(step, data[5:], lrs(20))
    again = evaluator(eval_data)
    run_steps(step, data[:3], lrs(3))
    assert compiled() == after_eval, "recompiled after the first steps"
    assert first["test_images"] == again["test_images"] == 120


def compile_data():
    """25 train batches of 64, and an eval set of 50 + 50 + 20 images (the last padded)."""
    data = batches(25, size=64, device="cuda", channels_last=True)
    last = tuple(t[:20] for t in batches(1, size=50, device="cuda", channels_last=True, seed=3)[0])
    return data, ListLoader(batches(2, size=50, device="cuda", channels_last=True, seed=2) + [last])


@pytest.mark.cuda
@needs_cuda
def test_compiled_graphs_are_captured_once_and_replay_the_current_weights(monkeypatch):
    """With the whole-step graph Dynamo is not called after capture, so what can go wrong is
    elsewhere: a second capture (the train step recaptured, or the eval graph recaptured for the
    padded last batch), compiles during warm-up that a replay would skip, and graphs that replay
    stale weights. Each is checked: one train and one eval capture in all, the same graphs after
    every evaluation and epoch, and the eval graph's results equal an eager compiled evaluation of
    the weights as they are then."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    captures = []
    begin = torch.cuda.CUDAGraph.capture_begin

    def counting_begin(graph, *args, **kwargs):
        captures.append(graph)
        return begin(graph, *args, **kwargs)

    monkeypatch.setattr(torch.cuda.CUDAGraph, "capture_begin", counting_begin)
    torch._dynamo.reset()
    model, eval_model, graphed = cuda_step(graph=True, compile_=True)
    evaluator = Evaluator(eval_model, graphed.runtime)
    eager_eval = Evaluator(eval_model, dataclasses.replace(graphed.runtime, cuda_graph=False))
    data, eval_data = compile_data()
    run_steps(graphed, data[:GraphedTrainStep.WARMUP], lrs(GraphedTrainStep.WARMUP))
    assert graphed.graph is None and captures == []
    warm = counters["frames"]["total"]
    run_steps(graphed, data[GraphedTrainStep.WARMUP:5], lrs(5 - GraphedTrainStep.WARMUP))
    train_graph = graphed.graph
    assert train_graph is not None and len(captures) == 1
    assert counters["frames"]["total"] == warm, "capture compiled something the warm-up had not"
    results = [evaluator(eval_data)]
    eval_graph = evaluator.graph
    assert eval_graph is not None and len(captures) == 2  # the padded last batch reuses the eval graph
    expected = [eager_eval(eval_data)]
    run_steps(graphed, data[5:], lrs(20))
    results.append(evaluator(eval_data))
    expected.append(eager_eval(eval_data))
    assert graphed.graph is train_graph and evaluator.graph is eval_graph and len(captures) == 2
    assert results[0]["test_loss"] != results[1]["test_loss"]  # the weights did change between them
    for got, want in zip(results, expected):
        assert got["test_images"] == want["test_images"] == 120
        assert got["test_loss"] == pytest.approx(want["test_loss"], rel=2e-2)  # bf16, two kernels' order
        assert abs(got["top1"] - want["top1"]) <= 100 * 3 / 120  # a few near-ties may flip


@pytest.mark.cuda
@needs_cuda
def test_resume_into_a_captured_step_matches_the_unbroken_run():
    data, rates = batches(20, size=64, device="cuda", channels_last=True), lrs(20)
    model, _, whole = cuda_step(graph=True)
    run_steps(whole, data[:10], rates[:10])
    # deep copies: state dicts hold the live tensors, which the next steps change
    saved = copy.deepcopy({"model": ckpt.model_state(model), "optimizer": whole.state_dict()})
    run_steps(whole, data[10:], rates[10:])

    other, _, resumed = cuda_step(graph=True, seed=1)
    run_steps(resumed, batches(5, size=64, device="cuda", channels_last=True, seed=9), lrs(5))
    graph = resumed.graph
    assert graph is not None
    params = [p for group in resumed.optimizer.param_groups for p in group["params"]]  # the state's order
    captured = {p: resumed.optimizer.state[p]["momentum_buffer"] for p in params}
    addresses = {p: buf.data_ptr() for p, buf in captured.items()}
    ckpt.load_model_state(other, saved["model"])
    resumed.load_state_dict(saved["optimizer"])
    assert resumed.graph is graph  # copied into the captured state, not recaptured
    # the graph reads the buffers it was captured with: the saved momentum must be in those, by value
    saved_momentum = [saved["optimizer"]["state"][i]["momentum_buffer"] for i in range(len(params))]
    assert len(params) == len(saved["optimizer"]["state"]) > 0
    for p, want in zip(params, saved_momentum):
        buf = resumed.optimizer.state[p]["momentum_buffer"]
        assert buf.data_ptr() == addresses[p] and buf is captured[p], "a new buffer: the graph would not see it"
        assert torch.equal(buf, want.to(buf.device)), "the saved momentum was not copied in"
    run_steps(resumed, data[10:], rates[10:])
    for (name, a), b in zip(other.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2, msg=name)
    for a, b in zip(momentum(resumed.optimizer), momentum(whole.optimizer)):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.cuda
@needs_cuda
def test_cuda_graph_trainer_trains_evaluates_and_resumes(synthetic_root, tmp_path):
    import os

    from conftest import tiny_config

    from fastcifar.training import Trainer

    extra = dict(train__device="cuda", train__amp="bf16", train__compile="false", train__cuda_graph="true",
                 train__epochs=3)
    trainer = Trainer(tiny_config(synthetic_root, tmp_path / "run", **extra))
    assert trainer.runtime.cuda_graph and isinstance(trainer.step_fn, GraphedTrainStep)
    epochs = []
    summary = trainer.fit(epochs.append)
    assert summary["cuda_graph"] is True and epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert all(r["test_images"] == 200 for r in epochs)
    eager = Trainer(tiny_config(synthetic_root, tmp_path / "run", train__resume=True,
                                **{**extra, "train__cuda_graph": "false"}))
    again = eager.fit()  # a graph run's checkpoint resumes in the eager step, and reports the same
    assert again["final_top1"] == pytest.approx(summary["final_top1"], abs=2.0)  # bf16: a few of 200 may flip
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    assert config_lib.load(tmp_path / "run" / "config.yaml").train.cuda_graph == "true"


class SlowOnItsStream:
    """A loader whose GPU work for each batch starts with ~50 ms of spinning on the stream it is
    called on (the prefetcher's side stream): its batches are written only then."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch):
        self.loader.set_epoch(epoch)

    def __iter__(self):
        for x, y in self.loader:
            torch.cuda._sleep(100_000_000)
            yield x * 1, y * 1  # new tensors, written after the spin, on this stream


@pytest.mark.cuda
@needs_cuda
def test_prefetched_cuda_batches_equal_the_loaders(synthetic_root, tmp_path):
    """On CUDA the batches are made on the side stream one step ahead; the step (on the current
    stream) must wait for them and their memory must outlive the step. Each batch's work is slowed
    on the side stream and each batch is compared on the current stream as it arrives, then
    dropped: without the wait the comparison reads the batch before it is written, and a batch
    freed too early is overwritten by the next one's allocation."""
    from conftest import tiny_config

    from fastcifar.data import load_cifar
    from fastcifar.pipelines import build_loader

    cfg = tiny_config(synthetic_root, tmp_path / "run", loader__name="torch-gpu", train__device="cuda")
    data = load_cifar("cifar10", str(synthetic_root), "train", False)
    device = torch.device("cuda")
    direct = build_loader(cfg, "train", data, device)
    through = prefetch(SlowOnItsStream(build_loader(cfg, "train", data, device)), device)
    assert through.stream is not None
    for loader in (direct, through):
        loader.set_epoch(2)
    mismatches, count = torch.zeros((), dtype=torch.int64, device=device), 0
    for (a, b), (c, d) in zip(direct, through, strict=True):
        assert c.is_contiguous(memory_format=torch.channels_last)
        mismatches += (a != c).sum() + (b != d).sum()  # queued on the current stream, no host sync
        count += 1
        del a, b, c, d  # nothing keeps a batch alive but the prefetcher's record_stream
    assert count == len(direct) > 1
    assert mismatches.item() == 0


def test_a_cuda_graph_with_a_sgd_kernel_that_cannot_be_captured_is_refused_when_resolved():
    """Found before a model is built (throughput.py checks its options with it), not inside."""
    for kernel in ("foreach", "for-loop"):
        with pytest.raises(ConfigError, match=rf"^optim.implementation: '{kernel}' cannot run in a captured"):
            resolve_runtime(TrainConfig(cuda_graph="true"), torch.device("cuda"), implementation=kernel)
