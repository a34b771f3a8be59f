"""Images/s of each depth, batch size and loader: the model alone, the loader alone, end to end (flagged
above 1.1x the model alone) and a seed-style baseline; compile time apart, cold and warm. --section.key=value
sets that config key for every figure but the baseline's (e.g. --train.cuda_graph=true). The JSON is written
again as each figure is done: a run killed by a time limit keeps every figure it measured ("complete": false).

    python benchmarks/throughput.py --depths 20 56 --batch-sizes 128 1024 --loaders torch-gpu
"""

import itertools
import statistics
import sys
import time

import torch

from fastcifar import pipelines
from fastcifar.bench import common, report
from fastcifar.bench.common import log
from fastcifar import flops
from fastcifar.config import load
from fastcifar.data import load_cifar
from fastcifar.distributed import resolve_device
from fastcifar.errors import FastcifarError
from fastcifar.models import build_model
from fastcifar.synthetic import synthetic_split
from fastcifar.threads import loader_threads
from fastcifar.training.engine import TrainStep, build_optimizer, prepare_model, resolve_runtime
from fastcifar.training.graph import build_train_step
from fastcifar.training.prefetch import prefetch

SCHEMA_VERSION = 2
BASE_CONFIG = common.REPO / "configs" / "resnet20.yml"  # lists every key; model and loader are set per figure
SUSPECT_RATIO = 1.1  # end to end can at best equal the model alone; beyond noise, a figure is wrong
SEED_STYLE = {"amp": "none", "compile": False, "channels_last": False, "cuda_graph": False}
TIMING = ("first step timed apart, then `warmup` untimed steps (loader-fed: at least an epoch), then `repeats` "
          "timings of `steps` steps between two device syncs (time.perf_counter); images_per_s: median, min, max "
          "over the repeats. compile_seconds = first step - median step, cold (fresh TORCHINDUCTOR_CACHE_DIR) "
          "and warm (dynamo reset, same cache); null when compile is off.")


def parse_args(argv):
    p = common.throughput_parser(__doc__)
    args = common.parse_with_overrides(p, argv)
    if args.baseline_only and args.no_baseline:
        p.error("--baseline-only and --no-baseline exclude each other")
    too_big = [b for b in [*args.batch_sizes, args.baseline_batch_size] if b > args.synthetic_size]
    if args.data == "synthetic" and too_big:
        p.error(f"batch {too_big[0]} is larger than --synthetic-size {args.synthetic_size}")
    try:  # a bad override or missing data fails now, not after an hour; no check depends on the batch size
        args.device = resolve_device(args.device)
        args.fast = make_config(args, args.depths[0], args.loaders[0], args.batch_sizes[0])
        args.runtime = resolve_runtime(args.fast.train, args.device, implementation=args.fast.optim.implementation)
    except FastcifarError as e:
        p.error(str(e))
    args.split = train_split(p, args, args.fast)
    args.save = lambda: None  # main() sets it: the output is written after every figure
    args.out = args.out or common.out_path("throughput", args.device)
    args.peak = flops.peak_bandwidth(common.device_name(args.device))  # bytes/s; None when unknown
    args.baseline = None if args.no_baseline else {**SEED_STYLE, "batch_size": args.baseline_batch_size,
                                                   "workers": args.baseline_workers}
    return args


def train_split(p, args, cfg):
    """The images a benchmark trains on: CIFAR-10's train split where cfg.data says, or --synthetic-size
    random ones; a failure (no data set there) is one line, not a usage error."""
    try:
        data = cfg.data
        return (load_cifar("cifar10", data.root, "train", data.download) if args.data == "cifar10"
                else synthetic_split(args.synthetic_size, seed=args.seed, learnable=False))
    except FastcifarError as e:
        p.exit(2, f"{p.prog}: error: {e}\n")


def make_config(args, depth: int, loader: str, batch: int, seed_style: bool = False):
    forced = {"model__name": f"resnet{depth}", "loader__name": loader, "train__batch_size": batch,
              "train__device": args.device.type, "train__seed": args.seed}
    if seed_style:
        forced.update({f"train__{k}": v for k, v in SEED_STYLE.items()}, loader__workers=args.baseline_workers)
    return load(BASE_CONFIG, [*([] if seed_style else args.overrides), *common.overrides(**forced)])


def build_step(cfg, device: torch.device) -> TrainStep:
    """The trainer's own step (a whole-step CUDA graph under --train.cuda_graph=true)."""
    runtime = resolve_runtime(cfg.train, device, implementation=cfg.optim.implementation)
    model = build_model(cfg.model.name, 10, cfg.model.shortcut)  # a new module: in training mode
    _, train_model = prepare_model(model, runtime, distributed=False)
    return build_train_step(train_model, build_optimizer(model, cfg.optim, runtime), runtime, cfg.optim.label_smoothing)


def endless(loader):
    """Batches across epoch boundaries (set_epoch each epoch), as training sees them."""
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


def timed(run, device: torch.device, calls: int = 1) -> float:
    """Wall-clock seconds of `calls` calls of run() between device syncs (loaders work partly on the host)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda _device: None
    sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        run()
    sync(device)
    return time.perf_counter() - start


def summarize(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": list(values)}


def error_text(exc: BaseException) -> str:  # the type and the message's first line
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}".rstrip(": ")


def dtype_bytes(step) -> int:
    return (step.runtime.amp_dtype or torch.float32).itemsize


def measure(what: str, run, batch: int, args, warmup: int, counts: dict | None = None, step=None) -> dict:
    """One figure of run(), a batch a call; given the step it runs and its model's counts, TFLOP/s and bytes/s
    too. A failure (OOM, a backend that cannot run here) becomes an error entry."""
    device = args.device
    try:
        if device.type == "cuda":  # the allocator's statistics are kept on the host: no sync needed
            torch.cuda.reset_peak_memory_stats(device)
        first = timed(run, device)
        warm = timed(run, device, warmup)
        seconds = [timed(run, device, args.steps) for _ in range(args.repeats)]
    except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the run
        log(f"  {what}: FAILED: {error_text(e)}")
        return {"error": error_text(e)}
    rates = [args.steps * batch / s for s in seconds]
    fig = {"images_per_s": summarize(rates), "step_ms": summarize([1000 * s / args.steps for s in seconds]),
           "first_step_seconds": first, "warmup_seconds": warm,
           "batch_size": batch, "steps": args.steps, "warmup": warmup, "repeats": args.repeats}
    if device.type == "cuda":  # no CUDA fields on the CPU
        fig["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))
    if step is not None:
        moved = flops.bytes_per_image(counts, batch, dtype_bytes(step))
        fig["tflops"] = summarize([flops.train_tflops(v, counts["macs_per_image"]) for v in rates])
        fig["bytes_per_s"] = summarize([v * moved for v in rates])
        if args.peak:  # a known GPU's peak memory bandwidth
            fig["bandwidth_fraction"] = fig["bytes_per_s"]["median"] / args.peak
    log(f"  {what}: {fig['images_per_s']['median']:,.0f} images/s")
    return fig


def ratio(num: dict | None, den: dict | None) -> float | None:
    ok = all(isinstance(f, dict) and "images_per_s" in f for f in (num, den))
    return num["images_per_s"]["median"] / den["images_per_s"]["median"] if ok else None


def model_alone(args, cfg, counts: dict):
    """-> (step, figure) on a random batch; compiled, the step is built again on the warm cache and kept."""
    step, batch = build_step(cfg, args.device), cfg.train.batch_size
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(batch, 3, 32, 32, generator=gen).to(args.device, memory_format=step.runtime.memory_format)
    y = torch.randint(0, 10, (batch,), generator=gen).to(args.device)
    fig = measure("model alone", lambda: step(x, y), batch, args, args.warmup, counts, step)
    if "error" in fig:
        return None, fig
    fig["compile_seconds"] = None
    if step.runtime.compile:
        common.release(args.device)  # the inductor cache on disk stays: the next compile is warm
        step = build_step(cfg, args.device)
        firsts = {"cold": fig["first_step_seconds"], "warm": timed(lambda: step(x, y), args.device)}
        fig["compile_seconds"] = {k: max(0.0, s - fig["step_ms"]["median"] / 1000) for k, s in firsts.items()}
    return step, fig


def bench_loader(args, cfg, step, counts: dict, alone: bool = True, entry: dict | None = None) -> dict:
    """Loader alone and end to end for one backend, filled into entry (already in the result, which
    args.save writes after each figure); one that cannot be built here is an error entry."""
    name, batch = cfg.loader.name, cfg.train.batch_size
    entry = entry if entry is not None else {}
    entry.update({"error": None, "loader_alone": None, "end_to_end": None})
    try:
        loader = pipelines.build_loader(cfg, "train", args.split, args.device, 0, 1)
    except Exception as e:  # noqa: BLE001 - DALI not installed, no CUDA, not registered, ...
        entry["error"] = error_text(e)
        log(f"  {name}: unavailable: {entry['error']}")
        return entry
    warmup, total = max(args.warmup, len(loader)), torch.zeros((), device=args.device)
    batches = endless(prefetch(loader, args.device))  # as the trainer iterates it: one batch ahead on CUDA

    def touch():  # every pixel reduced on the device, so lazy pipelines finish their work
        total.add_(sum(t.float().sum() for t in next(batches)))

    if alone:
        entry["loader_alone"] = measure(f"{name} loader alone", touch, batch, args, warmup)
        args.save()
    if step is not None:
        entry["end_to_end"] = measure(f"{name} end to end", lambda: step(*next(batches)), batch, args, warmup,
                                      counts, step)
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


def bench_depth(args, depth: int, result: dict) -> dict:
    """Fills result (already in the output, so that args.save keeps each figure as it is done)."""
    from torch._inductor.utils import fresh_inductor_cache  # a new TORCHINDUCTOR_CACHE_DIR, memory caches cleared

    counts = flops.count(f"resnet{depth}")
    result.update({"depth": depth, "model": f"resnet{depth}", **counts, "batches": [], "seed_style": None})
    for batch in [] if args.baseline_only else args.batch_sizes:
        entry = {"batch_size": batch, "model_alone": None, "loaders": {}, "bytes_per_image": None}
        result["batches"].append(entry)
        with fresh_inductor_cache():  # each (depth, batch) starts cold
            step, model = model_alone(args, make_config(args, depth, args.loaders[0], batch), counts)
            entry["model_alone"] = model
            entry["bytes_per_image"] = flops.bytes_per_image(counts, batch, dtype_bytes(step)) if step else None
            args.save()
            for name in args.loaders:
                loader = entry["loaders"][name] = {}
                flag(bench_loader(args, make_config(args, depth, name, batch), step, counts, entry=loader), model)
                args.save()
        del step
        common.release(args.device)
    if args.baseline is None:
        return result
    log("  seed-style baseline")
    cfg = make_config(args, depth, "torchvision", args.baseline_batch_size, seed_style=True)
    step, model = model_alone(args, cfg, counts)
    e2e = bench_loader(args, cfg, step, counts, alone=False)
    base = flag({"setting": args.baseline, "model_alone": model, "end_to_end": e2e["end_to_end"] or e2e}, model)
    first = result["batches"][0] if result["batches"] else {"model_alone": None, "loaders": {}}
    base["speedup_model_alone"] = ratio(first["model_alone"], model)
    base["speedup_end_to_end"] = {n: ratio(e["end_to_end"], base["end_to_end"])
                                  for n, e in first["loaders"].items()}
    result["seed_style"] = base
    args.save()
    del step
    common.release(args.device)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.benchmark = args.device.type == "cuda"  # as the trainer runs
    rt, name = args.runtime, common.device_name(args.device)
    config = {k: getattr(rt, k) for k in ("compile", "compile_mode", "channels_last", "cuda_graph")}
    settings = {k: getattr(args, k) for k in ("depths", "loaders", "batch_sizes", "steps", "warmup", "repeats",
                                              "overrides", "data", "seed")}
    cuda, torchvision = args.device.type == "cuda", "torchvision" in args.loaders
    if not cuda:
        config.pop("cuda_graph")
    out = common.result("throughput", SCHEMA_VERSION, cpu=not cuda, complete=False, settings={
        **settings, "device": args.device.type, "device_name": name,
        **({"peak_bandwidth": args.peak} if cuda else {}),  # only the fields that apply here
        "config": {"amp": str(rt.amp_dtype or "none").removeprefix("torch."), **config},
        **({"workers": loader_threads(args.fast.loader)} if torchvision else {}),
        "data_size": len(args.split), "seed_style": args.baseline},
        timing=TIMING, flops_convention=flops.FLOPS_CONVENTION, bytes_convention=flops.BYTES_CONVENTION, results=[])
    args.save = lambda: common.write_json(args.out, out)  # after every figure: a killed run keeps what it measured
    for depth in args.depths:
        log(f"resnet{depth}:")
        out["results"].append({"depth": depth})
        bench_depth(args, depth, out["results"][-1])
        out["complete"] = len(out["results"]) == len(args.depths)
        args.save()
    log(f"wrote {args.out}")
    print(report.throughput_markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
