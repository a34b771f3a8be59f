"""On a CPU: run.py's end-to-end images/s against the seed-style baseline of throughput.py, side by side,
with the machine idle and with one competing CPU-bound process (issue #22: run.py must be at least as fast).

Each figure is a fresh process, as a user runs it: `run.py RECIPE` (as `python -m fastcifar train`) for one epoch (its metrics.jsonl epoch
record: the images/s of the whole epoch, first step included) per loader, and `throughput.py
--baseline-only` (torchvision with --baseline-workers, fp32, NCHW, eager; its warm-up excluded, so the
comparison favours the baseline). The repeats interleave every figure and condition, so that a drift in
the machine's load touches all of them. One JSON result, rewritten after every figure.

    python benchmarks/cpu_side_by_side.py --out benchmarks/results/cpu_side_by_side.json
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from fastcifar.bench import common
from fastcifar.synthetic import write_npz

SCHEMA_VERSION = 1
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding this fastcifar: a clone, or site-packages
CONDITIONS = ("idle", "busy")  # busy: one competing CPU-bound process for the whole figure
SPIN = "while True: pass"  # the competitor: one core's worth of pure Python work


def parse_args(argv):
    p = common.parser("cpu_side_by_side.py", __doc__)
    p.add_argument("--recipe", default="resnet20", help="run.py's config (a recipe name or a file)")
    p.add_argument("--depth", type=common.depth, default=20, help="the model, for run.py and the baseline")
    p.add_argument("--batch-size", type=common.positive_int, default=128)
    p.add_argument("--loaders", nargs="+", default=["dali", "torchvision"], choices=["dali", "torchvision"],
                   help="run.py's loaders (dali: the recipes' default)")
    p.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    p.add_argument("--images", type=common.positive_int, default=12_800,
                   help="synthetic training images: one run.py epoch, and the baseline's warm-up (an epoch)")
    p.add_argument("--baseline-steps", type=common.positive_int, default=50, help="timed baseline steps")
    p.add_argument("--baseline-workers", type=common.non_negative_int, default=2)
    p.add_argument("--repeats", type=common.positive_int, default=3)
    p.add_argument("--timeout", type=common.seconds, default=900, help="seconds any one process may take")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "cpu_side_by_side.json")
    args = common.parse_with_overrides(p, argv)
    if args.batch_size > args.images:
        p.error(f"--batch-size {args.batch_size} is larger than --images {args.images}")
    return args


@contextlib.contextmanager
def competing_process(busy: bool):
    """One CPU-bound process while the block runs (busy), else nothing."""
    proc = subprocess.Popen([sys.executable, "-c", SPIN]) if busy else None
    try:
        yield proc
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


def python(*args: str, timeout: float, cwd: Path) -> subprocess.CompletedProcess:
    """A fresh interpreter on this fastcifar, without OMP_NUM_THREADS: as a user's shell, not torchrun."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env={**env, "PYTHONPATH": str(PACKAGE_ROOT)},
                          capture_output=True, text=True, timeout=timeout)


def run_py(args, loader: str, data_root: Path, run_dir: Path) -> dict:
    """run.py for one epoch: the epoch record's images/s, and the threads it chose."""
    done = python("-m", "fastcifar", "train", args.recipe, f"--model.name=resnet{args.depth}", f"--loader.name={loader}",
                  "--train.device=cpu", "--train.epochs=1", f"--train.batch_size={args.batch_size}",
                  f"--data.root={data_root}", "--data.download=false", f"--train.run_dir={run_dir}",
                  "--loader.eval_batch_size=1000", *args.overrides, timeout=args.timeout, cwd=run_dir.parent)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    epoch = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if '"train_loss"' in line][-1]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"images_per_s": epoch["images_per_s"], "torch_threads": summary.get("torch_threads"),
            "start_line": done.stderr.splitlines()[0]}


def baseline(args, work: Path) -> dict:
    """throughput.py's seed-style baseline alone, on as many synthetic images as run.py trains on."""
    out = work / "baseline.json"
    done = python("-m", "fastcifar.bench.throughput", "--baseline-only", "--device", "cpu", "--data", "synthetic",
                  "--synthetic-size", str(args.images), "--depths", str(args.depth), "--loaders", "torchvision",
                  "--batch-sizes", str(args.batch_size),
                  "--baseline-batch-size", str(args.batch_size), "--baseline-workers", str(args.baseline_workers),
                  "--steps", str(args.baseline_steps), "--warmup", "0", "--repeats", "1", "--out", str(out),
                  timeout=args.timeout, cwd=work)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    fig = json.loads(out.read_text())["results"][0]["seed_style"]["end_to_end"]
    return {"images_per_s": fig["images_per_s"]["median"]} if "images_per_s" in fig else {"error": fig.get("error")}


def stats(samples: list[dict]) -> dict:
    values = [s["images_per_s"] for s in samples if "images_per_s" in s]
    errors = [s["error"] for s in samples if "error" in s]
    if not values:
        return {"median": None, "min": None, "max": None, "values": [], "errors": errors}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values,
            "errors": errors}


def verdicts(figures: dict) -> dict:
    """Per condition and loader: run.py's median / the baseline's, and whether it is at least 1."""
    out = {}
    for condition, by in figures.items():
        base = by["baseline"]["median"]
        for name, fig in by.items():
            if name != "baseline":
                ratio = fig["median"] / base if fig["median"] and base else None
                out[f"{condition}/{name}"] = {"ratio_to_baseline": ratio,
                                              "at_least_baseline": None if ratio is None else ratio >= 1.0}
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    figures = {c: {"baseline": None, **{f"run.py {n}": None for n in args.loaders}} for c in args.conditions}
    samples = {c: {k: [] for k in by} for c, by in figures.items()}
    out = common.result("cpu_side_by_side", SCHEMA_VERSION, cpu=True, complete=False, settings={
        k: getattr(args, k) for k in ("recipe", "depth", "batch_size", "loaders", "conditions", "images",
                                      "baseline_steps", "baseline_workers", "repeats", "overrides")},
        method=__doc__.split("\n\n")[1].replace("\n", " "), figures=figures, samples=samples, verdicts={})

    def save():
        for c, by in samples.items():
            figures[c].update({k: stats(v) for k, v in by.items()})
        out["verdicts"] = verdicts(figures)
        common.write_json(args.out, out)

    with tempfile.TemporaryDirectory(prefix="side_by_side_") as tmp:
        work = Path(tmp)
        data_root = write_npz(work / "data", "cifar10", args.images, 1000)
        for repeat in range(args.repeats):
            for condition in args.conditions:
                for name in samples[condition]:
                    common.log(f"repeat {repeat + 1}/{args.repeats}, {condition}: {name}")
                    with competing_process(condition == "busy"):
                        if name == "baseline":
                            sample = baseline(args, work)
                        else:
                            sample = run_py(args, name.split()[1], data_root, work / f"run{repeat}{condition}{name[7:]}")
                    common.log(f"  {sample.get('images_per_s', sample.get('error'))}")
                    samples[condition][name].append(sample)
                    save()
    out["complete"] = True
    save()
    for key, v in out["verdicts"].items():
        ratio = v["ratio_to_baseline"]
        print(f"{key}: {'not measured' if ratio is None else f'{ratio:.2f}x the seed-style baseline'}")
    common.log(f"wrote {args.out}")
    errors = [e for by in figures.values() for fig in by.values() for e in fig["errors"]]
    if errors:
        common.log(f"cpu_side_by_side.py: error: {len(errors)} figure(s) failed, e.g. {errors[0]}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
