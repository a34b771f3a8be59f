"""Where the time of a training step goes: the trainer's own step (throughput.py builds it the same way) for one
depth, batch size and loader, under torch.profiler, the model alone on one fixed batch and end to end with
the loader. Per step: wall time (between device syncs), the time the device was busy (the sum of its
kernels and copies), hence its idle share (a host- or launch-bound step), kernels launched, the time spent
waiting for the next batch; and the operators that take the most device time and host time.

    python benchmarks/profile_step.py --depth 110 --batch-size 1024 --loader torch-gpu --out OUT/profile.json
    python benchmarks/profile_step.py --depth 20 --batch-size 128 --train.cuda_graph=true ...

Steps: the first (compile, autotuning) and --warmup more run unprofiled, then --steps profiled. Writes the
JSON summary and, with --trace, the profiler's Chrome trace (gzip; open in chrome://tracing or Perfetto).
On the CPU there is no device time: its fields are null and only host time is reported. A whole-step CUDA
graph runs as one graph launch: its kernels are still timed, but the host shows only the launch.
"""

from __future__ import annotations

import gzip
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from fastcifar import pipelines
from fastcifar.bench import common, report
from fastcifar.bench.throughput import build_step, endless, make_config, train_split
from fastcifar.config import LoaderName, choices
from fastcifar.distributed import resolve_device
from fastcifar.errors import FastcifarError
from fastcifar.training.prefetch import prefetch

SCHEMA_VERSION = 1
TOP = 15  # operators listed per table


def parse_args(argv):
    p = common.parser("profile_step.py", __doc__)
    p.add_argument("--depth", type=common.depth, default=20)
    p.add_argument("--batch-size", type=common.positive_int, default=128)
    p.add_argument("--loader", choices=choices(LoaderName), default="torch-gpu", help="for the end-to-end part")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--data", choices=("cifar10", "synthetic"), default="synthetic")
    p.add_argument("--synthetic-size", type=common.positive_int, default=10_000)
    p.add_argument("--steps", type=common.positive_int, default=20, help="profiled steps of each part")
    p.add_argument("--warmup", type=common.non_negative_int, default=10, help="unprofiled steps after the first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trace", type=Path, help="also write the Chrome trace of the end-to-end part here (.json.gz)")
    p.add_argument("--out", type=Path, required=True, help="the JSON summary")
    args = common.parse_with_overrides(p, argv)
    if args.data == "synthetic" and args.batch_size > args.synthetic_size:
        p.error(f"--batch-size {args.batch_size} is larger than --synthetic-size {args.synthetic_size}")
    try:
        args.device = resolve_device(args.device, key="--device")
        args.cfg = make_config(args, args.depth, args.loader, args.batch_size)
    except FastcifarError as e:
        p.error(str(e))
    args.split = train_split(p, args, args.cfg)
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def self_device_us(event) -> float:
    return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)) or 0.0)


def summary(prof, steps: int, wall_seconds: float, cuda: bool) -> dict:
    """Per step: wall, device-busy and host times, the device's idle share, kernels; the top operators."""
    events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    device_us = sum(self_device_us(e) for e in events)
    kernels = sum(e.count for e in events if self_device_us(e) > 0)
    wall_ms = 1000 * wall_seconds / steps
    by_device = sorted((e for e in events if self_device_us(e) > 0), key=self_device_us, reverse=True)[:TOP]
    by_host = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:TOP]
    data = next((e for e in events if e.key == "next batch"), None)
    busy_ms = device_us / 1000 / steps if cuda else None
    return {
        "steps": steps, "wall_ms_per_step": wall_ms,
        "device_busy_ms_per_step": busy_ms,
        "device_idle_fraction": None if busy_ms is None else max(0.0, 1 - busy_ms / wall_ms),
        "device_ops_per_step": kernels / steps if cuda else None,
        "waiting_for_data_ms_per_step": data.cpu_time_total / 1000 / steps if data else None,
        "top_device": [{"op": e.key, "calls_per_step": e.count / steps, "ms_per_step": self_device_us(e) / 1000 / steps,
                        "share": self_device_us(e) / device_us if device_us else None} for e in by_device] if cuda else [],
        "top_host": [{"op": e.key, "calls_per_step": e.count / steps,
                      "ms_per_step": e.self_cpu_time_total / 1000 / steps} for e in by_host],
    }


def profiled(run, steps: int, device: torch.device, trace: Path | None = None) -> tuple:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            run()
        sync(device)
        wall = time.perf_counter() - start
    if trace is not None:
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "trace.json"
            prof.export_chrome_trace(str(raw))
            with open(raw, "rb") as f, gzip.open(trace, "wb") as g:
                shutil.copyfileobj(f, g)
    return prof, wall


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.benchmark = args.device.type == "cuda"  # as the trainer runs
    cfg, device, cuda = args.cfg, args.device, args.device.type == "cuda"
    step = build_step(cfg, device)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=gen).to(device, memory_format=step.runtime.memory_format)
    y = torch.randint(0, 10, (args.batch_size,), generator=gen).to(device)
    out = common.result("profile_step", SCHEMA_VERSION, cpu=not cuda, settings={
        "depth": args.depth, "batch_size": args.batch_size, "loader": args.loader, "data": args.data,
        "steps": args.steps, "warmup": args.warmup, "overrides": args.overrides, "device": device.type,
        "device_name": common.device_name(device),
        "runtime": {k: str(getattr(step.runtime, k)) for k in ("amp_dtype", "compile", "compile_mode", "cuda_graph",
                                                               "channels_last")}}, parts={})
    sync(device)
    start = time.perf_counter()
    step(x, y)
    sync(device)
    out["first_step_seconds"] = time.perf_counter() - start  # compile and autotuning
    for _ in range(args.warmup):
        step(x, y)
    prof, wall = profiled(lambda: step(x, y), args.steps, device)
    out["parts"]["model alone"] = summary(prof, args.steps, wall, cuda)
    common.write_json(args.out, out)

    loader = pipelines.build_loader(cfg, "train", args.split, device, 0, 1)
    batches = endless(prefetch(loader, device))

    def end_to_end():
        with record_function("next batch"):
            images, labels = next(batches)
        step(images, labels)

    for _ in range(max(args.warmup, len(loader))):  # an epoch at least: the loader's own warm-up
        end_to_end()
    prof, wall = profiled(end_to_end, args.steps, device, args.trace)
    batches.close()
    out["parts"]["end to end"] = summary(prof, args.steps, wall, cuda)
    if args.trace is not None:
        out["trace"] = {"file": args.trace.name, "bytes": args.trace.stat().st_size}
    common.write_json(args.out, out)
    print(report.profile_parts_markdown(out["parts"]))
    common.log(f"profile_step.py: wrote {args.out}" + (f" and {args.trace}" if args.trace else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
