"""What the benchmark scripts share: options, timing and statistics, output."""

import argparse
import functools
import re
import statistics
import sys
import time
from pathlib import Path

import torch

from fastcifar.distributed import DEVICE_CHOICES

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
BASE_CONFIG = REPO / "configs" / "resnet20.yml"  # lists every key; model and loader are set per figure
# He et al. 2016, Table 6: CIFAR-10 test error -> top-1 accuracy, for the depths the paper trained.
PAPER_TOP1 = {20: 91.25, 32: 92.49, 44: 92.83, 56: 93.03, 110: 93.39, 1202: 92.07}
PAPER_TABLE_DEPTHS = (20, 32, 44, 56, 110)
OVERRIDE = re.compile(r"^--[A-Za-z_]\w*\.[A-Za-z_]\w*=")  # --section.key=value
log = functools.partial(print, file=sys.stderr, flush=True)


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=Formatter, allow_abbrev=False)


def parse_with_overrides(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args, rest = p.parse_known_args(argv)
    bad = [a for a in rest if not OVERRIDE.match(a)]
    if bad:
        p.error(f"unrecognized argument {bad[0]!r} (config overrides look like --train.epochs=10)")
    args.overrides = rest
    return args


def arg_type(convert, ok, what: str):
    def parse(text: str):
        try:
            if ok(value := convert(text)):
                return value
        except ValueError:
            pass
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")

    parse.__name__ = what  # argparse names the type in some messages
    return parse


positive_int = arg_type(int, lambda v: v > 0, "a positive integer")
non_negative_int = arg_type(int, lambda v: v >= 0, "an integer >= 0")
seconds = arg_type(float, lambda v: v >= 0, "seconds >= 0")
percentage = arg_type(float, lambda v: 0 < v <= 100, "a percentage in (0, 100]")


def depth(text: str) -> int:
    from fastcifar.errors import ConfigError
    from fastcifar.models import blocks_per_stage  # the one depth check

    try:
        return blocks_per_stage(int(text)) * 6 + 2
    except (ValueError, ConfigError) as e:
        raise argparse.ArgumentTypeError(str(e) if isinstance(e, ConfigError) else f"expected a depth, got {text!r}")


def add_run_options(p: argparse.ArgumentParser, data: tuple[str, str], depths) -> None:
    """The options throughput.py and time_to_accuracy.py share; `data` lists the choices, default first."""
    p.add_argument("--depths", type=depth, nargs="+", default=list(depths), help="depths (6n+2)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument("--data", choices=data, default=data[0], help="synthetic: random, or learnable for training")
    p.add_argument("--synthetic-size", type=positive_int, default=50_000, help="synthetic train images")
    p.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/<kind>-<device>.json")


def overrides(**values) -> list[str]:
    """--section.key=value from keywords written section__key=value."""
    text = {True: "true", False: "false"}
    return [f"--{k.replace('__', '.')}={text.get(v, v) if isinstance(v, bool) else v}" for k, v in values.items()]


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


# ---- timing and statistics -----------------------------------------------------------------------
def timed(run, device: torch.device, repeats: int = 1) -> list[float]:
    """Seconds of each call of run(), between two device syncs (wall clock: loaders work partly on the host)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda _device: None
    out = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        out.append(time.perf_counter() - start)
    return out


def summarize(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": list(values)}


def mean_std(values: list[float]) -> tuple[float, float]:  # sample std; 0 for one value
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def release(device: torch.device) -> None:
    """Between models: dynamo keeps a bounded number of graphs per code object (every depth shares
    CifarResNet.forward) and past it silently runs eager; then return cached memory."""
    import gc

    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- output --------------------------------------------------------------------------------------
def error_text(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def result(kind: str, schema_version: int, **fields) -> dict:
    """A result file's head: its kind, schema and what the figures depend on (fastcifar.environment)."""
    from fastcifar.environment import environment

    return {"kind": kind, "schema_version": schema_version, **fields, "environment": environment()}


def write_json(path: Path | str, data: dict) -> Path:
    from fastcifar.files import json_text, write_text_atomic  # a crash mid-write never leaves half a file

    return write_text_atomic(path, json_text(data, indent=2) + "\n")  # strict: null, never NaN


def slug(text: str | None) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    out = "".join(c if c.isalnum() else "-" for c in (text or "cpu").lower())
    return "-".join(part for part in out.split("-") if part) or "cpu"


def out_path(kind: str, device: torch.device, suffix: str = "") -> Path:
    return RESULTS_DIR / f"{kind}-{slug(device_name(device))}{suffix}.json"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows])
