"""Helpers shared by the benchmark scripts: environment capture, timing, statistics, FLOPs,
synthetic data, config building and output.

Import it as ``from benchmarks import common`` after putting the repository root on sys.path
(each script does that first, since ``benchmarks`` is not an installed package).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
BASE_CONFIG = REPO / "configs" / "resnet20.yml"  # every key listed; loaders read augment/loader from it

# He et al. 2016, Table 6: CIFAR-10 test error -> top-1 accuracy, for the depths the paper trained.
PAPER_TOP1 = {20: 91.25, 32: 92.49, 44: 92.83, 56: 93.03, 110: 93.39, 1202: 92.07}
PAPER_TABLE_DEPTHS = (20, 32, 44, 56, 110)  # benchmarks/reproduce.py's table (ResNet-1202 aside)

# The backends this project knows of. They register in pipelines.LOADERS when their module imports;
# one that has not (not written yet, or its import failed) is reported as an error entry, not a crash.
KNOWN_LOADERS = ("torchvision", "dali", "torch-gpu")

FLOPS_CONVENTION = (
    "forward FLOPs per image are counted by torch.utils.flop_counter.FlopCounterMode on one image "
    "(convolutions and the linear layer; 2 FLOPs per multiply-accumulate; BatchNorm, ReLU, "
    "pooling and the optimizer are not counted); macs_per_image = forward FLOPs / 2; a training "
    "step costs 3x the forward FLOPs (backward ~= 2x forward), so "
    "TFLOP/s = images_per_s * 3 * 2 * macs_per_image / 1e12"
)


# ---- argparse -------------------------------------------------------------------------------------
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and '(default: X)' only where X says something."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


OVERRIDE = re.compile(r"^--[A-Za-z_]\w*\.[A-Za-z_]\w*=")  # --section.key=value


def parse_with_overrides(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The parser's own options, plus config overrides (--section.key=value) in args.overrides."""
    args, rest = parser.parse_known_args(argv)
    bad = [a for a in rest if not OVERRIDE.match(a)]
    if bad:
        parser.error(f"unrecognized argument {bad[0]!r} (config overrides look like --train.epochs=10)")
    args.overrides = rest
    return args


def arg_type(convert, ok, what: str):
    """An argparse type: convert the text, then check it; either failure says what was expected."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


positive_int = arg_type(int, lambda v: v > 0, "a positive integer")
non_negative_int = arg_type(int, lambda v: v >= 0, "an integer >= 0")
non_negative_seconds = arg_type(float, lambda v: v >= 0, "seconds >= 0")
percentage = arg_type(float, lambda v: 0 < v <= 100, "a percentage in (0, 100]")


def depth(text: str) -> int:
    """A CIFAR ResNet depth, 6n+2 with n >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a depth such as 20 or 56, got {text!r}") from None
    if value < 8 or (value - 2) % 6:
        raise argparse.ArgumentTypeError(
            f"depth {value} is not 6n+2 with n >= 1 (e.g. 20, 32, 44, 56, 110, 1202)")
    return value


def resolve_device(choice: str | None, parser: argparse.ArgumentParser) -> torch.device:
    """None picks CUDA when present; asking for CUDA without it is a one-line usage error."""
    if choice is None:
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine; use --device cpu")
    return torch.device("cuda", torch.cuda.current_device()) if choice == "cuda" else torch.device("cpu")


# ---- environment ---------------------------------------------------------------------------------
def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=REPO)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _driver_version() -> str | None:
    try:
        import pynvml  # nvidia-ml-py: no subprocess, and present on most CUDA images

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else version
    except Exception:  # not installed, or no driver: fall back to nvidia-smi
        out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        return out.splitlines()[0].strip() if out else None


def _distribution_version(prefix: str) -> str | None:
    """The installed version of the first distribution whose name starts with prefix, without
    importing it (DALI's import is slow and needs CUDA libraries)."""
    from importlib import metadata

    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith(prefix):
            return f"{name} {dist.version}"
    return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def git_state() -> dict:
    commit = _run(["git", "rev-parse", "HEAD"])
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    return {"commit": commit, "dirty": bool(status) if commit else None}


def environment() -> dict:
    """What a figure depends on, and nothing that names the machine (no hostname, no user)."""
    import torchvision

    cuda = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    try:
        cpus_usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus_usable = os.cpu_count()
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "git": git_state(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "dali": _distribution_version("nvidia-dali"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "driver": _driver_version() if cuda else None,
        "gpu": gpus[0] if gpus else None,
        "gpu_count": len(gpus),
        "gpus": gpus,
        "gpu_memory_bytes": torch.cuda.get_device_properties(0).total_memory if cuda else None,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_count_usable": cpus_usable,
        "torch_threads": torch.get_num_threads(),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),  # > 1 under torchrun
    }


# ---- timing and statistics -----------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_repeats(run, repeats: int, device: torch.device) -> list[float]:
    """Seconds of each of `repeats` calls of run(), each between two device syncs.

    Wall clock after a full sync, rather than CUDA events: the loaders' work happens partly on the
    host (workers, Python), which events recorded on one stream would not see; the sync makes the
    interval cover all queued GPU work too.
    """
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def timed_once(run, device: torch.device) -> float:
    return time_repeats(run, 1, device)[0]


def summarize(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": list(values)}


def rate(seconds: list[float], images_per_repeat: int) -> dict:
    """images/s statistics from the seconds each repeat took."""
    return summarize([images_per_repeat / s for s in seconds])


def has_rate(figure) -> bool:
    """A measured figure (not None, not an {"error": ...} entry)."""
    return isinstance(figure, dict) and "images_per_s" in figure


def median_ratio(num: dict | None, den: dict | None) -> float | None:
    """Ratio of two figures' median images/s; None when either was not measured."""
    if not (has_rate(num) and has_rate(den)):
        return None
    return num["images_per_s"]["median"] / den["images_per_s"]["median"]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# ---- GPU memory ----------------------------------------------------------------------------------
def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def free_memory(device: torch.device) -> None:
    """Return cached blocks between configurations (after an OOM above all)."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def release(device: torch.device, compiled: bool = True) -> None:
    """Between models: drop compiled graphs, then cached memory. Dynamo keeps a bounded number of
    graphs per code object (every depth shares CifarResNet.forward), and past that bound it
    silently runs eager."""
    if compiled:
        torch._dynamo.reset()
    free_memory(device)


# ---- FLOPs ---------------------------------------------------------------------------------------
def forward_macs(depth_: int, num_classes: int = 10) -> int:
    """Multiply-accumulates of one image's forward pass, counted on the CPU in fp32."""
    from torch.utils.flop_counter import FlopCounterMode

    from fastcifar.models import build_model

    model = build_model(f"resnet{depth_}", num_classes).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 32, 32))
    return counter.get_total_flops() // 2


def train_tflops(images_per_s: float, macs_per_image: int) -> float:
    return images_per_s * 3 * 2 * macs_per_image / 1e12


# ---- data and config -----------------------------------------------------------------------------
def synthetic_arrays(n: int, num_classes: int = 10, seed: int = 0, learnable: bool = False):
    """uint8 NHWC images and int64 labels. Random pixels measure speed; `learnable` gives each
    class its own colour and a bright stripe, so accuracy rises within an epoch or two."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % num_classes
    rng.shuffle(labels)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    if learnable:
        # class colours from a fixed seed, so the train and test splits (other seeds) agree
        colours = np.random.default_rng(2016).integers(0, 256, size=(num_classes, 3))
        mixed = images.astype(np.int32) // 4 + colours[labels][:, None, None, :] * 3 // 4
        for c in range(num_classes):
            row = (c * 3) % 30
            mixed[labels == c, row:row + 3] = 255
        images = mixed.clip(0, 255).astype(np.uint8)
    return images, labels


def synthetic_split(n: int, num_classes: int = 10, seed: int = 0, learnable: bool = False):
    from fastcifar.data import CifarSplit

    images, labels = synthetic_arrays(n, num_classes, seed, learnable)
    return CifarSplit(images, labels, num_classes)


def write_synthetic_npz(root: Path, n_train: int, n_test: int, dataset: str = "cifar10") -> Path:
    """A learnable synthetic data set where fastcifar.data.load_cifar looks first."""
    from fastcifar.data import num_classes

    folder = Path(root) / dataset
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = synthetic_arrays(n, num_classes(dataset), seed, learnable=True)
        np.savez(folder / f"{split}.npz", images=images, labels=labels)
    return Path(root)


def load_config(path: Path | str, overrides: list[str], world_size: int = 1):
    from fastcifar import config

    return config.load(path, overrides, world_size)


def overrides(**values) -> list[str]:
    """--section.key=value strings from keyword arguments written section__key=value."""
    def text(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v)

    return [f"--{k.replace('__', '.')}={text(v)}" for k, v in values.items()]


# ---- errors and output ---------------------------------------------------------------------------
def error_text(exc: BaseException) -> str:
    """One line: the exception's type and the first line of its message."""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0] if message else ''}".rstrip(": ")


def write_json(path: Path | str, data: dict) -> Path:
    """Atomically (temporary file + rename): a crash mid-write never leaves half a file."""
    from fastcifar.files import write_text_atomic

    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def slug(text: str | None) -> str:
    """A file-name-safe lower-case form, e.g. 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    out = "".join(c if c.isalnum() else "-" for c in (text or "cpu").lower())
    return "-".join(part for part in out.split("-") if part) or "cpu"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
