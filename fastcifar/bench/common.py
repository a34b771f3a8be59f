"""What the benchmark scripts share: options, statistics, output."""

import argparse
import functools
import gc
import re
import statistics
import sys
from pathlib import Path

import torch

from fastcifar.distributed import DEVICE_CHOICES
from fastcifar.environment import REPO, environment
from fastcifar.errors import FastcifarError
from fastcifar.files import json_text, write_text_atomic  # a crash mid-write never leaves half a file
from fastcifar.models import blocks_per_stage

# a clone's benchmarks/results; where the package is installed, ./benchmarks/results
RESULTS_DIR = (REPO if (REPO / "benchmarks").is_dir() else Path()) / "benchmarks" / "results"
# He et al. 2016, Table 6: CIFAR-10 test error -> top-1 accuracy, for the depths the paper trained.
PAPER_TOP1 = {20: 91.25, 32: 92.49, 44: 92.83, 56: 93.03, 110: 93.39, 1202: 92.07}
PAPER_TABLE_DEPTHS = (20, 32, 44, 56, 110)
log = functools.partial(print, file=sys.stderr, flush=True)


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=Formatter, allow_abbrev=False)


def parse_with_overrides(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args, rest = p.parse_known_args(argv)
    bad = [a for a in rest if not re.match(r"--[A-Za-z_]\w*\.[A-Za-z_]\w*=", a)]  # --section.key=value
    if bad:
        p.error(f"unrecognized argument {bad[0]!r} (config overrides look like --train.epochs=10)")
    args.overrides = rest
    return args


def arg_type(convert, ok, what: str):
    """convert(text), accepted when ok(value) is true; a FastcifarError from ok() is the message."""
    def parse(text: str):
        try:
            if ok(value := convert(text)):
                return value
        except ValueError:
            pass
        except FastcifarError as e:
            raise argparse.ArgumentTypeError(str(e))
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")

    return parse


positive_int = arg_type(int, lambda v: v > 0, "a positive integer")
non_negative_int = arg_type(int, lambda v: v >= 0, "an integer >= 0")
seconds = arg_type(float, lambda v: v >= 0, "seconds >= 0")
percentage = arg_type(float, lambda v: 0 < v <= 100, "a percentage in (0, 100]")
depth = arg_type(int, blocks_per_stage, "a depth")  # the one depth check: n >= 1 for 6n+2, else ConfigError


def add_run_options(p: argparse.ArgumentParser, data: tuple[str, str], depths) -> None:
    """The options throughput.py and time_to_accuracy.py share; `data` lists the choices, default first."""
    p.add_argument("--depths", type=depth, nargs="+", default=list(depths), help="depths (6n+2)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument("--data", choices=data, default=data[0], help="synthetic: random, or learnable for training")
    p.add_argument("--synthetic-size", type=positive_int, default=50_000, help="synthetic train images")
    p.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/<kind>-<device>.json")


def throughput_parser(doc: str | None = None) -> argparse.ArgumentParser:
    """throughput.py's options; here, so that report.py can check a recorded command against them."""
    from fastcifar.config import LoaderName, choices
    from fastcifar.models import PAPER_DEPTHS

    p = parser("throughput.py", doc)
    add_run_options(p, ("synthetic", "cifar10"), PAPER_DEPTHS)
    p.add_argument("--loaders", nargs="+", default=list(choices(LoaderName)), choices=choices(LoaderName))
    p.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[512])
    p.add_argument("--steps", type=positive_int, default=50, help="timed steps per repeat")
    p.add_argument("--warmup", type=non_negative_int, default=10, help="untimed steps after the first")
    p.add_argument("--repeats", type=positive_int, default=5, help="timings per figure")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-baseline", action="store_true", help="skip the seed-style baseline")
    p.add_argument("--baseline-batch-size", type=positive_int, default=128)
    p.add_argument("--baseline-workers", type=non_negative_int, default=4)
    p.add_argument("--baseline-only", action="store_true", help="only the seed-style baseline (cpu_side_by_side.py)")
    return p


class _Rejected(Exception):
    pass


def rejection(p: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """Why p rejects argv (the first line of its error), or None when today's options accept it."""
    def error(message):
        raise _Rejected(message)

    p.error = error  # argparse would print usage and exit
    try:
        parse_with_overrides(p, argv)
    except _Rejected as e:
        return str(e).splitlines()[0]
    return None


def overrides(**values) -> list[str]:
    """--section.key=value from keywords written section__key=value."""
    return [f"--{k.replace('__', '.')}={str(v).lower() if isinstance(v, bool) else v}" for k, v in values.items()]


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def mean_std(values: list[float]) -> tuple[float, float]:  # sample std; 0 for one value
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def release(device: torch.device) -> None:
    """Between models: dynamo keeps a bounded number of graphs per code object (every depth shares
    CifarResNet.forward) and past it silently runs eager; then return cached memory."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


CUDA_ENVIRONMENT = ("cuda", "cudnn", "driver", "gpu", "gpu_count", "gpus")  # left out of a CPU result


def result(kind: str, schema_version: int, cpu: bool = False, **fields) -> dict:
    """A result file's head: its kind, schema and what the figures depend on (fastcifar.environment);
    for figures measured on a CPU, without the CUDA fields."""
    env = {k: v for k, v in environment().items() if not (cpu and k in CUDA_ENVIRONMENT)}
    return {"kind": kind, "schema_version": schema_version, **fields, "environment": env}


def write_json(path: Path | str, data: dict) -> Path:
    return write_text_atomic(path, json_text(data, indent=2) + "\n")  # strict: null, never NaN


def slug(text: str | None) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return "-".join(re.findall(r"[^\W_]+", (text or "cpu").lower())) or "cpu"


def out_path(kind: str, device: torch.device, suffix: str = "") -> Path:
    return RESULTS_DIR / f"{kind}-{slug(device_name(device))}{suffix}.json"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows])
