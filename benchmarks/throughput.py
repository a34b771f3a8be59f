#!/usr/bin/env python
"""Images per second of each CIFAR ResNet depth, batch size and loader: the model alone (train steps on
one batch on the device), the loader alone and end to end (a ratio to the model alone above 1.1 cannot
be right and is flagged), and a seed-style baseline (fp32, NCHW, eager, torchvision, batch 128). The
first step is timed apart; with compile on, its excess over a typical step is the compile time, cold
(empty inductor cache) and warm (built again), never inside images/s. --section.key=value sets that
config key for every figure but the baseline's (e.g. --train.cuda_graph=true, --loader.workers=16).

    python benchmarks/throughput.py --depths 20 56 --batch-sizes 128 1024 --loaders torch-gpu
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import sys
from pathlib import Path

import torch

import pipelines
from benchmarks import common
from fastcifar import config as config_lib
from fastcifar import flops
from fastcifar.config import LoaderName, choices
from fastcifar.distributed import resolve_device
from fastcifar.environment import environment
from fastcifar.errors import FastcifarError
from fastcifar.models import PAPER_DEPTHS, build_model
from fastcifar.training.engine import TrainStep, build_optimizer, prepare_model, resolve_runtime
from fastcifar.training.graph import build_train_step
from fastcifar.training.prefetch import prefetch

SCHEMA_VERSION = 2
SUSPECT_RATIO = 1.1  # end to end can at best equal the model alone; beyond noise, a figure is wrong
SEED_STYLE = {"amp": "none", "compile": False, "channels_last": False, "cuda_graph": False}
# Peak memory bandwidth (bytes/s) by part of the device name, most specific first (vendor data sheets).
PEAK_BANDWIDTH = {"H200": 4.8e12, "H100 NVL": 3.9e12, "H100 PCIe": 2.0e12, "H100": 3.35e12,
                  "A100-SXM4-80GB": 2.039e12, "A100 80GB PCIe": 1.935e12, "A100": 1.555e12}
log = functools.partial(print, file=sys.stderr, flush=True)
TIMING = ("first step timed apart, then `warmup` untimed steps (loader-fed: at least an epoch), then `repeats` "
          "timings of `steps` steps between two torch.cuda.synchronize() calls (time.perf_counter); images_per_s: "
          "median, min, max over the repeats. compile_seconds = first step - median step, cold (fresh "
          "TORCHINDUCTOR_CACHE_DIR) and warm (dynamo reset, same cache); null when compile is off.")


def peak_bandwidth(name: str) -> float | None:
    return next((bw for key, bw in PEAK_BANDWIDTH.items() if key.lower() in name.lower()), None)


def parse_args(argv):
    p = common.parser("throughput.py", __doc__)
    p.add_argument("--depths", type=common.depth, nargs="+", default=list(PAPER_DEPTHS), help="depths (6n+2)")
    p.add_argument("--loaders", nargs="+", default=list(choices(LoaderName)), choices=choices(LoaderName))
    p.add_argument("--batch-sizes", type=common.positive_int, nargs="+", default=[512])
    p.add_argument("--steps", type=common.positive_int, default=50, help="timed steps per repeat")
    p.add_argument("--warmup", type=common.non_negative_int, default=10, help="untimed steps after the first")
    p.add_argument("--repeats", type=common.positive_int, default=5, help="timings per figure")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--data", choices=("synthetic", "cifar10"), default="synthetic")
    p.add_argument("--synthetic-size", type=common.positive_int, default=50_000, help="synthetic train images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-baseline", action="store_true", help="skip the seed-style baseline")
    p.add_argument("--baseline-batch-size", type=common.positive_int, default=128)
    p.add_argument("--baseline-workers", type=common.non_negative_int, default=4)
    p.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/throughput-<device>.json")
    args = common.parse_with_overrides(p, argv)
    try:
        args.device = resolve_device(args.device)
        for batch in args.batch_sizes:  # a bad override fails now, not after an hour
            args.fast = make_config(args, args.depths[0], args.loaders[0], batch)
            args.runtime = resolve_runtime(args.fast.train, args.device)
    except FastcifarError as e:
        p.error(str(e))
    too_big = [b for b in [*args.batch_sizes, args.baseline_batch_size] if b > args.synthetic_size]
    if args.data == "synthetic" and too_big:
        p.error(f"batch {too_big[0]} is larger than --synthetic-size {args.synthetic_size}")
    args.out = args.out or common.RESULTS_DIR / f"throughput-{common.slug(common.device_name(args.device))}.json"
    args.baseline = {**SEED_STYLE, "batch_size": args.baseline_batch_size, "workers": args.baseline_workers}
    return args


def make_config(args, depth: int, loader: str, batch: int, seed_style: bool = False):
    forced = {"model__name": f"resnet{depth}", "loader__name": loader, "train__batch_size": batch,
              "train__device": args.device.type, "train__seed": args.seed}
    if seed_style:
        forced.update({f"train__{k}": v for k, v in SEED_STYLE.items()}, loader__workers=args.baseline_workers)
    return config_lib.load(common.BASE_CONFIG, [*([] if seed_style else args.overrides), *common.overrides(**forced)])


def build_step(cfg, device: torch.device) -> TrainStep:
    """The trainer's own step (fastcifar.training.engine; a whole-step CUDA graph under
    --train.cuda_graph=true), so the figures are the trainer's."""
    runtime = resolve_runtime(cfg.train, device)
    model = build_model(cfg.model.name, 10, cfg.model.shortcut)
    _, train_model = prepare_model(model, runtime, distributed=False)
    train_model.train()
    return build_train_step(train_model, build_optimizer(model, cfg.optim, runtime), runtime, cfg.optim.label_smoothing)


def endless(loader):
    """Batches across epoch boundaries (set_epoch each epoch), as training sees them."""
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


def measure(step_fn, batch: int, args, warmup: int, counts: dict | None = None, dtype_bytes: int = 4) -> dict:
    device = args.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    first = common.timed(step_fn, device)[0]
    warm = common.timed(lambda: [step_fn() for _ in range(warmup)], device)[0]
    seconds = common.timed(lambda: [step_fn() for _ in range(args.steps)], device, args.repeats)
    fig = {"images_per_s": common.summarize([args.steps * batch / s for s in seconds]),
           "step_ms": common.summarize([1000 * s / args.steps for s in seconds]),
           "first_step_seconds": first, "warmup_seconds": warm,
           "peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
           "batch_size": batch, "steps": args.steps, "warmup": warmup, "repeats": args.repeats}
    if counts is not None:
        rates = fig["images_per_s"]["values"]
        fig["tflops"] = common.summarize([flops.train_tflops(v, counts["macs_per_image"]) for v in rates])
        fig["bytes_per_s"] = common.summarize([v * flops.bytes_per_image(counts, batch, dtype_bytes) for v in rates])
        peak = peak_bandwidth(common.device_name(device))
        fig["bandwidth_fraction"] = fig["bytes_per_s"]["median"] / peak if peak else None
    return fig


def guarded(what: str, fn) -> dict:
    """One figure; a failure (OOM, a backend that cannot run here) becomes an error entry."""
    try:
        fig = fn()
    except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the run
        log(f"  {what}: FAILED: {common.error_text(e)}")
        return {"error": common.error_text(e)}
    log(f"  {what}: {fig['images_per_s']['median']:,.0f} images/s")
    return fig


def ratio(num: dict | None, den: dict | None) -> float | None:
    ok = all(isinstance(f, dict) and "images_per_s" in f for f in (num, den))
    return num["images_per_s"]["median"] / den["images_per_s"]["median"] if ok else None


def dtype_bytes(step) -> int:
    return torch.finfo(step.runtime.amp_dtype).bits // 8 if step.runtime.amp_dtype is not None else 4


def model_alone(args, cfg, counts: dict, compiled: bool):
    """-> (step, figure). Compiled: built twice, cold then warm cache; the warm step is returned."""
    step, batch = build_step(cfg, args.device), cfg.train.batch_size
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(batch, 3, 32, 32, generator=gen).to(args.device, memory_format=step.runtime.memory_format)
    y = torch.randint(0, 10, (batch,), generator=gen).to(args.device)
    fig = guarded("model alone", lambda: measure(lambda: step(x, y), batch, args, args.warmup, counts, dtype_bytes(step)))
    if "error" in fig:
        return None, fig
    typical, fig["compile_seconds"] = fig["step_ms"]["median"] / 1000, None
    if compiled:
        common.release(args.device)  # the inductor cache on disk stays: the next compile is warm
        step = build_step(cfg, args.device)
        warm = common.timed(lambda: step(x, y), args.device)[0]
        fig["compile_seconds"] = {"cold": max(0.0, fig["first_step_seconds"] - typical), "warm": max(0.0, warm - typical)}
    return step, fig


def bench_loader(args, cfg, step, data, counts: dict, alone: bool = True) -> dict:
    """Loader alone and end to end for one backend; one that cannot be built here is an error entry."""
    name, batch = cfg.loader.name, cfg.train.batch_size
    entry = {"error": None, "loader_alone": None, "end_to_end": None}
    try:
        if name not in pipelines.LOADERS:
            raise LookupError(f"loader {name!r} is not registered (registered: {', '.join(pipelines.LOADERS)})")
        loader = pipelines.build_loader(cfg, "train", data, args.device, 0, 1)
    except Exception as e:  # noqa: BLE001 - DALI not installed, no CUDA, ...
        entry["error"] = common.error_text(e)
        log(f"  {name}: unavailable: {entry['error']}")
        return entry
    warmup, total = max(args.warmup, len(loader)), torch.zeros((), device=args.device)
    batches = endless(prefetch(loader, args.device))  # as the trainer iterates it: one batch ahead on CUDA

    def touch():  # every pixel reduced on the device, so lazy pipelines finish their work
        total.add_(sum(t.float().sum() for t in next(batches)))

    if alone:
        entry["loader_alone"] = guarded(f"{name} loader alone", lambda: measure(touch, batch, args, warmup))
    if step is not None:
        entry["end_to_end"] = guarded(f"{name} end to end", lambda: measure(
            lambda: step(*next(batches)), batch, args, warmup, counts, dtype_bytes(step)))
    batches.close()  # workers and GPU pipelines go before the next backend starts
    return entry


def flag(entry: dict, model: dict) -> dict:
    entry["ratio_end_to_end_to_model"] = r = ratio(entry["end_to_end"], model)
    entry["suspect"] = None
    if r is not None and r > SUSPECT_RATIO:
        entry["suspect"] = (f"end to end is {r:.2f}x the model alone (> {SUSPECT_RATIO}): it cannot be faster; "
                            "the machine was likely busy, or the steps too few")
        log(f"  SUSPECT: {entry['suspect']}")
    return entry


def bench_depth(args, depth: int, data) -> dict:
    from torch._inductor.utils import fresh_inductor_cache  # a new TORCHINDUCTOR_CACHE_DIR, memory caches cleared

    counts = flops.count(f"resnet{depth}")
    result = {"depth": depth, "model": f"resnet{depth}", **counts, "batches": [], "seed_style": None}
    for batch in args.batch_sizes:
        cfg = make_config(args, depth, args.loaders[0], batch)
        compiled = resolve_runtime(cfg.train, args.device).compile
        with fresh_inductor_cache() if compiled else contextlib.nullcontext():  # each (depth, batch) starts cold
            step, model = model_alone(args, cfg, counts, compiled)
            entry = {"batch_size": batch, "model_alone": model, "loaders": {},
                     "bytes_per_image": flops.bytes_per_image(counts, batch, dtype_bytes(step)) if step else None}
            for name in args.loaders:
                entry["loaders"][name] = flag(bench_loader(args, make_config(args, depth, name, batch), step, data,
                                                           counts), model)
        result["batches"].append(entry)
        del step
        common.release(args.device)
    if not args.no_baseline:
        log("  seed-style baseline")
        cfg = make_config(args, depth, "torchvision", args.baseline_batch_size, seed_style=True)
        step, model = model_alone(args, cfg, counts, compiled=False)
        e2e = bench_loader(args, cfg, step, data, counts, alone=False)
        base = flag({"setting": args.baseline, "model_alone": model, "end_to_end": e2e["end_to_end"] or e2e}, model)
        first = result["batches"][0]
        base["speedup_model_alone"] = ratio(first["model_alone"], model)
        base["speedup_end_to_end"] = {n: ratio(e["end_to_end"], base["end_to_end"]) for n, e in first["loaders"].items()}
        result["seed_style"] = base
        del step
        common.release(args.device)
    return result


def main(argv: list[str] | None = None) -> int:
    from fastcifar.data import load_cifar
    from fastcifar.synthetic import synthetic_split

    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.benchmark = args.device.type == "cuda"  # as the trainer runs
    try:
        data = (synthetic_split(args.synthetic_size, seed=args.seed, learnable=False) if args.data == "synthetic"
                else load_cifar("cifar10", args.fast.data.root, "train", download=True))
    except FastcifarError as e:
        print(f"throughput.py: error: {e}", file=sys.stderr)
        return 2
    rt, name = args.runtime, common.device_name(args.device)
    config = {"amp": str(rt.amp_dtype).removeprefix("torch.") if rt.amp_dtype else "none", "compile": rt.compile,
              "compile_mode": rt.compile_mode, "channels_last": rt.channels_last, "cuda_graph": args.fast.train.cuda_graph}
    out = {"kind": "throughput", "schema_version": SCHEMA_VERSION, "complete": False, "environment": environment(),
           "settings": {"device": args.device.type, "device_name": name, "peak_bandwidth": peak_bandwidth(name),
                        "depths": args.depths, "loaders": args.loaders, "batch_sizes": args.batch_sizes,
                        "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "overrides": args.overrides,
                        "config": config, "workers": args.fast.loader.workers, "data": args.data, "data_size": len(data),
                        "seed": args.seed, "seed_style": None if args.no_baseline else args.baseline},
           "timing": TIMING, "flops_convention": flops.FLOPS_CONVENTION, "bytes_convention": flops.BYTES_CONVENTION,
           "results": []}
    for depth in args.depths:
        log(f"resnet{depth}:")
        out["results"].append(bench_depth(args, depth, data))
        common.write_json(args.out, out)  # after every depth: a crash keeps what was measured
    out["complete"] = True
    common.write_json(args.out, out)
    log(f"wrote {args.out}")
    from benchmarks import report

    print(report.throughput_markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
