#!/usr/bin/env python
"""Images per second of each CIFAR ResNet depth with each loader backend.

Three figures per (depth, loader), each the median (and min, max) over --repeats timings of
--steps batches after warm-up:
  loader alone  the train loader with every augmentation, each batch reduced on the device;
  model alone   train steps (forward, backward, SGD update) on one fixed batch already on the device;
                it depends only on the depth, so it is measured once per depth;
  end to end    train steps fed by the loader;
plus end to end / model alone (1.0 = the loader costs nothing). A "seed-style" baseline is measured
in the same run: fp32, contiguous NCHW, eager, the torchvision loader with 4 workers, batch 128 (the
seed recipe in configs/resnet*.yml), as the usual public CIFAR trainers run.

Compilation and autotuning land in the first step, which is timed apart and reported as
first_step_seconds / compile_seconds_estimate, never inside images/s.

    python benchmarks/throughput.py                                   # all depths and loaders, on CUDA
    python benchmarks/throughput.py --depths 20 56 --loaders torchvision torch-gpu --steps 100
    python benchmarks/throughput.py --device cpu --depths 20 --loaders torchvision --no-compile --amp none
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed

import torch  # noqa: E402

from benchmarks import common  # noqa: E402
from fastcifar.errors import FastcifarError  # noqa: E402

SCHEMA_VERSION = 1
DEFAULT_BATCH = 512  # the global batch of the fast recipes in configs/fast/
SEED_STYLE_BATCH = 128  # the seed recipe's batch (configs/resnet*.yml)
SEED_STYLE_WORKERS = 4  # torchvision DataLoader workers in the usual public trainers


@dataclasses.dataclass(frozen=True)
class Setting:
    """How the model runs and how the torchvision loader is fed, for one side of the comparison."""

    name: str
    batch_size: int
    amp: str  # bf16 | fp16 | none
    compile: bool
    channels_last: bool
    workers: int

    def describe(self) -> dict:
        return dataclasses.asdict(self)


def loader_choices() -> list[str]:
    import pipelines

    return list(dict.fromkeys([*common.KNOWN_LOADERS, *pipelines.LOADERS]))


def build_parser() -> argparse.ArgumentParser:
    from fastcifar.config import TrainConfig, choices
    from fastcifar.models import PAPER_DEPTHS

    p = argparse.ArgumentParser(
        prog="throughput.py", description=__doc__,
        formatter_class=common.HelpFormatter)
    p.add_argument("--depths", type=common.depth, nargs="+", default=list(PAPER_DEPTHS),
                   help="ResNet depths (6n+2)")
    p.add_argument("--loaders", nargs="+", default=list(common.KNOWN_LOADERS), choices=loader_choices(),
                   help="loader backends; one that is not registered or cannot be built is "
                        "reported as an error entry")
    p.add_argument("--batch-size", type=common.positive_int, default=DEFAULT_BATCH,
                   help="batch per step (the fast recipes' global batch)")
    p.add_argument("--steps", type=common.positive_int, default=50, help="timed steps per repeat")
    p.add_argument("--warmup", type=common.non_negative_int, default=10,
                   help="untimed steps after the first (compile) step")
    p.add_argument("--repeats", type=common.positive_int, default=5, help="timings per figure")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on CUDA only)")
    p.add_argument("--compile-mode", default="default", choices=choices(typing.get_type_hints(TrainConfig)["compile_mode"]))
    p.add_argument("--amp", choices=("bf16", "fp16", "none"), default=None,
                   help="autocast dtype (default: bf16 on CUDA, none on CPU)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--workers", type=common.non_negative_int, default=min(8, os.cpu_count() or 1),
                   help="torchvision loader workers (fast setting)")
    p.add_argument("--dali-prefetch", type=common.non_negative_int, default=0,
                   help="dali loader: runs queued besides the next one (loader.dali_prefetch)")
    p.add_argument("--dali-batches-per-run", type=common.positive_int, default=8,
                   help="dali loader: batches per pipeline run, one DALI sample each (loader.dali_batches_per_run)")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="default: cuda when available, else cpu")
    p.add_argument("--data", choices=("synthetic", "cifar10"), default="synthetic",
                   help="random uint8 images in memory, or the CIFAR-10 train split")
    p.add_argument("--data-root", default="data", help="where CIFAR-10 is (or is downloaded to)")
    p.add_argument("--synthetic-size", type=common.positive_int, default=50_000,
                   help="number of synthetic training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-baseline", action="store_true", help="skip the seed-style baseline")
    p.add_argument("--baseline-batch-size", type=common.positive_int, default=SEED_STYLE_BATCH)
    p.add_argument("--baseline-workers", type=common.non_negative_int, default=SEED_STYLE_WORKERS)
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file (default: benchmarks/results/throughput-<device>.json)")
    return p


def parse_args(argv: list[str] | None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.device = common.resolve_device(args.device, parser)
    cuda = args.device.type == "cuda"
    args.amp = args.amp or ("bf16" if cuda else "none")
    args.compile = cuda if args.compile is None else args.compile
    if args.amp == "fp16" and not cuda:
        parser.error("--amp fp16: needs CUDA; use --amp none (or bf16) on the CPU")
    if args.data == "synthetic":
        for flag, batch in (("--batch-size", args.batch_size),
                            ("--baseline-batch-size", args.baseline_batch_size)):
            if batch > args.synthetic_size:
                parser.error(f"{flag} {batch} is larger than --synthetic-size {args.synthetic_size}")
    if args.out is None:
        args.out = common.RESULTS_DIR / f"throughput-{common.slug(common.device_name(args.device))}.json"
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- building --------------------------------------------------------------------------------------
def make_config(args, depth: int, loader: str, s: Setting):
    return common.load_config(common.BASE_CONFIG, common.overrides(
        model__name=f"resnet{depth}", loader__name=loader, loader__workers=s.workers,
        loader__dali_prefetch=args.dali_prefetch, loader__dali_batches_per_run=args.dali_batches_per_run,
        train__batch_size=s.batch_size, train__device=args.device.type, train__amp=s.amp,
        train__compile=s.compile, train__compile_mode=args.compile_mode,
        train__channels_last=s.channels_last, train__seed=args.seed))


def build_train_step(cfg, device: torch.device):
    """The trainer's own step (fastcifar.training.engine), so the figures are the trainer's."""
    from fastcifar.models import build_model
    from fastcifar.training.engine import TrainStep, build_optimizer, prepare_model, resolve_runtime

    runtime = resolve_runtime(cfg.train, device)
    model = build_model(cfg.model.name, 10, cfg.model.shortcut)
    _, train_model = prepare_model(model, runtime, distributed=False)
    train_model.train()
    return TrainStep(train_model, build_optimizer(model, cfg.optim), runtime, cfg.optim.label_smoothing)


def build_train_loader(cfg, data, device: torch.device):
    import pipelines

    loader = pipelines.build_loader(cfg, "train", data, device, 0, 1)
    if len(loader) == 0:
        raise RuntimeError(f"batch {cfg.train.batch_size} is larger than the {len(data)} images")
    return loader


def unregistered(name: str) -> str | None:
    """Why `name` cannot be used (not registered: not written yet, or its module failed to import)."""
    import pipelines

    if name in pipelines.LOADERS:
        return None
    return (f"loader {name!r} is not registered in pipelines.LOADERS "
            f"(registered: {', '.join(pipelines.LOADERS)})")


def endless(loader):
    """Batches across epoch boundaries (set_epoch each epoch), as training sees them."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        count = 0
        for batch in loader:
            count += 1
            yield batch
        if count == 0:
            raise RuntimeError("the loader yielded no batches")
        epoch += 1


# ---- measuring -------------------------------------------------------------------------------------
def measure(step_fn, batch_size: int, args, first: str, estimate: str, macs: int | None,
            warmup_steps: int | None = None) -> dict:
    """Time step_fn(): once apart (compile, worker start-up), `warmup_steps` (--warmup) more, then
    --repeats x --steps. Peak GPU memory covers all of it. `first` and `estimate` name the first
    call's time and its excess over a typical call (compile for the model, start-up for loaders)."""
    device = args.device
    warmup_steps = args.warmup if warmup_steps is None else warmup_steps
    common.reset_peak_memory(device)
    first_seconds = common.timed_once(step_fn, device)
    warmup = common.timed_once(lambda: [step_fn() for _ in range(warmup_steps)], device)
    seconds = common.time_repeats(lambda: [step_fn() for _ in range(args.steps)], args.repeats, device)
    images = common.rate(seconds, args.steps * batch_size)
    typical_step = min(seconds) / args.steps
    figure = {
        "images_per_s": images,
        "step_ms": common.summarize([1000 * s / args.steps for s in seconds]),
        first: first_seconds,
        estimate: max(0.0, first_seconds - typical_step),
        "warmup_seconds": warmup,
        "peak_memory_bytes": common.peak_memory_bytes(device),
        "batch_size": batch_size, "steps": args.steps, "warmup": warmup_steps, "repeats": args.repeats,
    }
    if macs is not None:
        tflops = [common.train_tflops(v, macs) for v in images["values"]]
        figure["tflops"] = common.summarize(tflops)
    return figure


def model_alone(step, batch_size: int, args, macs: int) -> dict:
    gen = torch.Generator().manual_seed(args.seed)
    fmt = step.runtime.memory_format
    images = torch.randn(batch_size, 3, 32, 32, generator=gen).to(args.device, memory_format=fmt)
    labels = torch.randint(0, 10, (batch_size,), generator=gen).to(args.device)
    return measure(lambda: step(images, labels), batch_size, args,
                   "first_step_seconds", "compile_seconds_estimate", macs)


def loader_warmup(loader, args) -> int:
    """At least one epoch of batches: loaders prefetch while they start (torchvision: workers x
    prefetch_factor batches), and a short warm-up would time that buffer instead of the loader.
    One epoch drains any buffer and passes one epoch boundary."""
    return max(args.warmup, len(loader))


def loader_alone(loader, batch_size: int, args) -> dict:
    batches = endless(loader)
    total = torch.zeros((), dtype=torch.float32, device=args.device)

    def one():
        images, labels = next(batches)
        # touch every pixel on the device, so lazy or asynchronous pipelines finish their work
        total.add_(torch.sum(images, dtype=torch.float32)).add_(labels.sum())

    try:
        return measure(one, batch_size, args, "first_batch_seconds", "startup_seconds_estimate", None,
                       loader_warmup(loader, args))
    finally:
        batches.close()


def end_to_end(step, loader, batch_size: int, args, macs: int) -> dict:
    batches = endless(loader)

    def one():
        step(*next(batches))

    try:
        # a loader's first batch and any recompile for its batches' layout land in the first step
        return measure(one, batch_size, args, "first_step_seconds", "startup_seconds_estimate", macs,
                       loader_warmup(loader, args))
    finally:
        batches.close()


def guarded(what: str, fn, args) -> dict:
    """Run one measurement; a failure (OOM, a backend that cannot run here) becomes an error entry."""
    try:
        figure = fn()
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the run
        common.free_memory(args.device)
        log(f"  {what}: FAILED: {common.error_text(e)}")
        return {"error": common.error_text(e)}
    log(f"  {what}: {figure['images_per_s']['median']:,.0f} images/s")
    return figure


def bench_loader(args, depth: int, name: str, setting: Setting, step, data, macs: int,
                 with_loader_alone: bool = True) -> dict:
    """Loader alone and end to end for one backend; a backend that is missing or cannot be built
    here (DALI not installed, no CUDA) gives {"error": ...} and the run goes on."""
    entry = {"error": unregistered(name), "loader_alone": None, "end_to_end": None}
    if entry["error"] is None:
        try:
            loader = build_train_loader(make_config(args, depth, name, setting), data, args.device)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001
            entry["error"] = common.error_text(e)
    if entry["error"] is not None:
        log(f"  {name}: unavailable: {entry['error']}")
        return entry
    try:
        if with_loader_alone:
            entry["loader_alone"] = guarded(f"{name} loader alone",
                                            lambda: loader_alone(loader, setting.batch_size, args), args)
        if step is None:
            entry["end_to_end"] = {"error": "skipped: the train step could not be built"}
        else:
            entry["end_to_end"] = guarded(
                f"{name} end to end", lambda: end_to_end(step, loader, setting.batch_size, args, macs), args)
    finally:
        del loader  # DataLoader workers and GPU pipelines go before the next backend starts
        common.free_memory(args.device)
    return entry


def try_train_step(args, depth: int, setting: Setting):
    """-> (step, None) or (None, error)."""
    try:
        return build_train_step(make_config(args, depth, "torchvision", setting), args.device), None
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001
        return None, common.error_text(e)


def model_figure(args, step, error: str | None, setting: Setting, macs: int) -> dict:
    if step is None:
        log(f"  model alone: FAILED: {error}")
        return {"error": error}
    return guarded("model alone", lambda: model_alone(step, setting.batch_size, args, macs), args)


def bench_depth(args, depth: int, data) -> dict:
    from fastcifar.models import build_model

    macs = common.forward_macs(depth)
    params = sum(p.numel() for p in build_model(f"resnet{depth}").parameters())
    result = {"depth": depth, "model": f"resnet{depth}", "params": params, "macs_per_image": macs,
              "train_flops_per_image": 6 * macs, "model_alone": None, "loaders": {}, "seed_style": None}

    fast = Setting("fast", args.batch_size, args.amp, args.compile, args.channels_last, args.workers)
    step, error = try_train_step(args, depth, fast)
    result["model_alone"] = model_figure(args, step, error, fast, macs)
    for name in args.loaders:
        entry = bench_loader(args, depth, name, fast, step, data, macs)
        entry["ratio_end_to_end_to_model"] = common.median_ratio(entry["end_to_end"], result["model_alone"])
        result["loaders"][name] = entry
    del step
    common.release(args.device, args.compile)

    if not args.no_baseline:
        seed = Setting("seed-style", args.baseline_batch_size, "none", False, False, args.baseline_workers)
        log(f"  seed-style baseline: {seed.describe()}")
        step, error = try_train_step(args, depth, seed)
        base = {"setting": seed.describe(), "loader": "torchvision",
                "model_alone": model_figure(args, step, error, seed, macs)}
        entry = bench_loader(args, depth, "torchvision", seed, step, data, macs, with_loader_alone=False)
        base["end_to_end"] = entry["end_to_end"] or {"error": entry["error"]}
        base["speedup_model_alone"] = common.median_ratio(result["model_alone"], base["model_alone"])
        base["speedup_end_to_end"] = {name: common.median_ratio(e["end_to_end"], base["end_to_end"])
                                      for name, e in result["loaders"].items()}
        result["seed_style"] = base
        del step
        common.release(args.device, args.compile)
    return result


# ---- output ----------------------------------------------------------------------------------------
TIMING = (
    "per figure: the first step (first batch for loader alone) is timed apart (it holds "
    "torch.compile, cudnn autotuning, worker or pipeline start-up); then `warmup` untimed steps "
    "(for figures fed by a loader at least one epoch of batches, so that batches prefetched during "
    "start-up are not timed as loader speed); "
    "then `repeats` timings of `steps` steps, each between two torch.cuda.synchronize() calls "
    "(wall clock, time.perf_counter); images_per_s = steps * batch_size / seconds, with the median, "
    "min and max over the repeats; batches run across epoch boundaries (set_epoch each epoch); "
    "peak_memory_bytes = torch.cuda.max_memory_allocated over the figure, reset before it (null on CPU)"
)


def settings(args, data_size: int) -> dict:
    return {
        "device": args.device.type, "device_name": common.device_name(args.device),
        "depths": args.depths, "loaders": args.loaders,
        "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
        "amp": args.amp, "compile": args.compile, "compile_mode": args.compile_mode,
        "channels_last": args.channels_last, "workers": args.workers, "dali_prefetch": args.dali_prefetch,
        "dali_batches_per_run": args.dali_batches_per_run,
        "data": args.data, "data_size": data_size, "seed": args.seed,
        "cudnn_benchmark": args.device.type == "cuda",
        "seed_style": None if args.no_baseline else Setting(
            "seed-style", args.baseline_batch_size, "none", False, False, args.baseline_workers).describe(),
    }


def load_data(args):
    if args.data == "synthetic":
        return common.synthetic_split(args.synthetic_size, seed=args.seed)
    from fastcifar.data import load_cifar

    return load_cifar("cifar10", args.data_root, "train", download=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the trainer runs (train.deterministic=false)
    try:
        data = load_data(args)
    except FastcifarError as e:
        print(f"throughput.py: error: {e}", file=sys.stderr)
        return 2
    out = {"kind": "throughput", "schema_version": SCHEMA_VERSION, "complete": False,
           "environment": common.environment(), "settings": settings(args, len(data)),
           "timing": TIMING, "flops_convention": common.FLOPS_CONVENTION, "results": []}
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
