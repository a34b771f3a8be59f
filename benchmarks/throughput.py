"""Images/s of each depth, batch size and loader: the model alone, the loader alone, end to end (flagged
above 1.1x the model alone) and a seed-style baseline; compile time apart, cold and warm. --section.key=value
sets that config key for every figure but the baseline's (e.g. --train.cuda_graph=true).

    python benchmarks/throughput.py --depths 20 56 --batch-sizes 128 1024 --loaders torch-gpu

--dali-previous COMMIT instead times DALI's CPU mode, loader alone: COMMIT's pipelines/dali.py beside the current
one in one process, an epoch of each in turn per repeat (issue #11; see benchmarks/results/README.md).
"""

import contextlib
import dataclasses
import itertools
import os
import subprocess
import sys
import types

import torch

import pipelines
from benchmarks import common, report
from benchmarks.common import log
from fastcifar import config as config_lib
from fastcifar import flops
from fastcifar.config import LoaderName, choices
from fastcifar.distributed import resolve_device
from fastcifar.errors import FastcifarError, stderr_line
from fastcifar.flops import peak_bandwidth
from fastcifar.models import PAPER_DEPTHS, build_model
from fastcifar.training.engine import TrainStep, build_optimizer, prepare_model, resolve_runtime
from fastcifar.training.graph import build_train_step
from fastcifar.training.prefetch import prefetch

SCHEMA_VERSION = 2
SUSPECT_RATIO = 1.1  # end to end can at best equal the model alone; beyond noise, a figure is wrong
SEED_STYLE = {"amp": "none", "compile": False, "channels_last": False, "cuda_graph": False}
TIMING = ("first step timed apart, then `warmup` untimed steps (loader-fed: at least an epoch), then `repeats` "
          "timings of `steps` steps between two device syncs (time.perf_counter); images_per_s: median, min, max "
          "over the repeats. compile_seconds = first step - median step, cold (fresh TORCHINDUCTOR_CACHE_DIR) "
          "and warm (dynamo reset, same cache); null when compile is off.")


def parse_args(argv):
    p = common.parser("throughput.py", __doc__)
    common.add_run_options(p, ("synthetic", "cifar10"), PAPER_DEPTHS)
    p.add_argument("--loaders", nargs="+", default=list(choices(LoaderName)), choices=choices(LoaderName))
    p.add_argument("--batch-sizes", type=common.positive_int, nargs="+", default=[512])
    p.add_argument("--steps", type=common.positive_int, default=50, help="timed steps per repeat")
    p.add_argument("--warmup", type=common.non_negative_int, default=10, help="untimed steps after the first")
    p.add_argument("--repeats", type=common.positive_int, default=5, help="timings per figure")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-baseline", action="store_true", help="skip the seed-style baseline")
    p.add_argument("--baseline-batch-size", type=common.positive_int, default=128)
    p.add_argument("--baseline-workers", type=common.non_negative_int, default=4)
    p.add_argument("--dali-previous", metavar="COMMIT", default=None, help="compare DALI designs (CPU mode)")
    args = common.parse_with_overrides(p, argv)
    try:
        args.device = resolve_device(args.device)
        for batch in args.batch_sizes:  # a bad override fails now, not after an hour
            args.fast = make_config(args, args.depths[0], args.loaders[0], batch)
            args.runtime = resolve_runtime(args.fast.train, args.device, implementation=args.fast.optim.implementation)
    except FastcifarError as e:
        p.error(str(e))
    too_big = [b for b in [*args.batch_sizes, args.baseline_batch_size] if b > args.synthetic_size]
    if args.data == "synthetic" and too_big:
        p.error(f"batch {too_big[0]} is larger than --synthetic-size {args.synthetic_size}")
    args.out = args.out or common.out_path("throughput", args.device)
    args.baseline = {**SEED_STYLE, "batch_size": args.baseline_batch_size, "workers": args.baseline_workers}
    return args


def make_config(args, depth: int, loader: str, batch: int, seed_style: bool = False):
    forced = {"model__name": f"resnet{depth}", "loader__name": loader, "train__batch_size": batch,
              "train__device": args.device.type, "train__seed": args.seed}
    if seed_style:
        forced.update({f"train__{k}": v for k, v in SEED_STYLE.items()}, loader__workers=args.baseline_workers)
    return config_lib.load(common.BASE_CONFIG, [*([] if seed_style else args.overrides), *common.overrides(**forced)])


def build_step(cfg, device: torch.device) -> TrainStep:
    """The trainer's own step (a whole-step CUDA graph under --train.cuda_graph=true)."""
    runtime = resolve_runtime(cfg.train, device, implementation=cfg.optim.implementation)
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
    fig = guarded("model alone", lambda: measure(lambda: step(x, y), batch, args, args.warmup, counts,
                                                 dtype_bytes(step)))
    if "error" in fig:
        return None, fig
    typical, fig["compile_seconds"] = fig["step_ms"]["median"] / 1000, None
    if compiled:
        common.release(args.device)  # the inductor cache on disk stays: the next compile is warm
        step = build_step(cfg, args.device)
        warm = common.timed(lambda: step(x, y), args.device)[0]
        cold = fig["first_step_seconds"]
        fig["compile_seconds"] = {"cold": max(0.0, cold - typical), "warm": max(0.0, warm - typical)}
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
        compiled = args.runtime.compile  # every batch size resolves alike (checked in parse_args)
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
        base["speedup_end_to_end"] = {n: ratio(e["end_to_end"], base["end_to_end"])
                                      for n, e in first["loaders"].items()}
        result["seed_style"] = base
        del step
        common.release(args.device)
    return result


def previous_dali(commit: str):
    """COMMIT's DaliLoader, from `git show`, leaving the registered (current) one in place."""
    source = subprocess.run(["git", "show", f"{commit}:pipelines/dali.py"], cwd=common.REPO,
                            capture_output=True, text=True, check=True).stdout
    current, module = pipelines.LOADERS["dali"], types.ModuleType("dali_previous")
    exec(compile(source, f"{commit}:pipelines/dali.py", "exec"), module.__dict__)
    pipelines.LOADERS["dali"] = current  # the old module registered itself under the same name
    return module.DaliLoader


def dali_redesign(args, data) -> dict:
    torch.set_num_threads(1)  # torch's spinning OpenMP threads starve DALI's on a small CPU
    cfg, batch, cpu = args.fast, args.batch_sizes[0], torch.device("cpu")
    spec = pipelines.base.LoaderSpec(data, True, batch, cfg.augment, dataclasses.replace(cfg.loader, device="cpu"),
                                     cpu, True, torch.float32, 0)
    loaders = {"previous": previous_dali(args.dali_previous)(spec), "current": pipelines.LOADERS["dali"](spec)}
    seconds = {name: [] for name in loaders}
    for repeat in range(args.repeats + 1):  # the first, untimed, warms up
        for name, loader in loaders.items():
            loader.set_epoch(repeat)
            took = common.timed(lambda: sum(1 for _ in loader), cpu)[0]
            seconds[name] += [took] if repeat else []
    steps = len(loaders["current"])
    rates = {name: common.summarize([steps * batch / s for s in values]) for name, values in seconds.items()}
    log({name: round(r["median"]) for name, r in rates.items()})
    return common.result("dali_cpu_redesign", 1, previous_commit=args.dali_previous, settings={
        "batch_size": batch, "images": len(data), "repeats": args.repeats, "steps_per_epoch": steps,
        **dataclasses.asdict(spec.loader)}, load_average_1_5_15_min=os.getloadavg(), images_per_s=rates,
        speedup_of_medians=rates["current"]["median"] / rates["previous"]["median"])


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
        stderr_line(f"throughput.py: error: {e}")
        return 2
    if args.dali_previous:
        log(f"wrote {common.write_json(args.out, dali_redesign(args, data))}")
        return 0
    rt, name = args.runtime, common.device_name(args.device)
    config = {"amp": str(rt.amp_dtype).removeprefix("torch.") if rt.amp_dtype else "none", "compile": rt.compile,
              "compile_mode": rt.compile_mode, "channels_last": rt.channels_last,
              "cuda_graph": rt.cuda_graph}
    settings = {k: getattr(args, k) for k in ("depths", "loaders", "batch_sizes", "steps", "warmup", "repeats",
                                              "overrides", "data", "seed")}
    out = common.result("throughput", SCHEMA_VERSION, complete=False, settings={
        **settings, "device": args.device.type, "device_name": name, "peak_bandwidth": peak_bandwidth(name),
        "config": config, "workers": args.fast.loader.workers, "data_size": len(data),
        "seed_style": None if args.no_baseline else args.baseline},
        timing=TIMING, flops_convention=flops.FLOPS_CONVENTION, bytes_convention=flops.BYTES_CONVENTION, results=[])
    for depth in args.depths:
        log(f"resnet{depth}:")
        out["results"].append(bench_depth(args, depth, data))
        common.write_json(args.out, out)  # after every depth: a crash keeps what was measured
    out["complete"] = True
    common.write_json(args.out, out)
    log(f"wrote {args.out}")
    print(report.throughput_markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
