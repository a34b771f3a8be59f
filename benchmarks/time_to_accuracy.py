#!/usr/bin/env python
"""Wall time for each CIFAR ResNet depth to reach a test accuracy (default 92% top-1).

For each depth, a fixed fast recipe (configs/fast/resnet<depth>.yml, or --config) is trained to its
end --seeds times, evaluating every epoch. The time to the target is the wall time of a recipe whose
MEAN FINAL accuracy over the seeds reaches the target (the fastest such recipe when --epochs names
several lengths); it never stops a run at the epoch where the test set first says "reached", since
that would select on the test set. That first crossing is recorded too, labelled as such. A depth
whose recipes all end below the target is "not reached", with its best mean final accuracy and the
time to the paper's accuracy for that depth instead.

    python benchmarks/time_to_accuracy.py --depths 20 56 --seeds 3
    python benchmarks/time_to_accuracy.py --depths 56 --epochs 30 40 50 --train.batch_size=1024 --optim.lr=0.8
    torchrun --nproc_per_node=8 benchmarks/time_to_accuracy.py --depths 110 1202

Any --section.key=value argument overrides that key of every recipe (see run.py --help).
Under torchrun every rank runs this script; only rank 0 writes the JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed

from benchmarks import common  # noqa: E402
from fastcifar import distributed as dist_lib  # noqa: E402
from fastcifar.errors import FastcifarError, stderr_line  # noqa: E402
from fastcifar.training.stopping import STOPPED_EXIT  # noqa: E402

SCHEMA_VERSION = 1
RECIPES = common.REPO / "configs" / "fast"

COMPILE_ESTIMATE = (
    "compile_seconds_estimate = (first_step_seconds - typical step) + (first epoch's evaluation "
    "seconds - median evaluation seconds of later epochs); typical step = median over epochs 2.. "
    "of epoch_time_s / steps per epoch (epoch 1 without its first step when there is only one "
    "epoch); evaluation seconds of an epoch = its wall-time increase minus its epoch_time_s "
    "(checkpoint writes included). With one epoch the evaluation part is 0 (unknown). "
    "wall_seconds_without_compile = wall_seconds - compile_seconds_estimate. Trainer construction "
    "(data, loaders, model) is setup_seconds, outside wall_seconds."
)


def build_parser() -> argparse.ArgumentParser:
    from fastcifar.models import PAPER_DEPTHS

    p = argparse.ArgumentParser(
        prog="time_to_accuracy.py", description=__doc__,
        epilog="Other arguments of the form --section.key=value override recipe keys.",
        formatter_class=common.HelpFormatter)
    p.add_argument("--depths", type=common.depth, nargs="+", default=list(PAPER_DEPTHS),
                   help="ResNet depths (6n+2)")
    p.add_argument("--seeds", type=common.positive_int, default=3, help="runs per recipe (seeds 0..N-1)")
    p.add_argument("--target", type=common.percentage, default=92.0, help="test top-1 accuracy, percent")
    p.add_argument("--epochs", type=common.positive_int, nargs="+", default=None,
                   help="recipe lengths to try (default: the recipe's train.epochs); the fastest whose "
                        "mean final accuracy reaches the target counts")
    p.add_argument("--config", type=Path, default=None,
                   help="one recipe for every depth (model.name is set per depth); default: "
                        "configs/fast/resnet<depth>.yml")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="default: the recipe's train.device (auto: CUDA when present)")
    p.add_argument("--data", choices=("cifar10", "synthetic"), default="cifar10",
                   help="CIFAR-10, or a learnable synthetic set (for smoke tests)")
    p.add_argument("--data-root", default=None, help="default: the recipe's data.root")
    p.add_argument("--synthetic-size", type=common.positive_int, default=50_000,
                   help="synthetic train images")
    p.add_argument("--synthetic-test-size", type=common.positive_int, default=10_000,
                   help="synthetic test images")
    p.add_argument("--loader", default=None, help="loader backend (default: the recipe's loader.name)")
    p.add_argument("--run-root", type=Path, default=None,
                   help="run directories go under it, one fresh one per run "
                        "(default: runs/time_to_accuracy/<UTC time>)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file (default: benchmarks/results/time_to_accuracy-<device>.json)")
    return p


def parse_args(argv: list[str] | None):
    parser = build_parser()
    args = common.parse_with_overrides(parser, argv)
    if args.epochs:
        args.epochs = list(dict.fromkeys(args.epochs))  # a repeated length would reuse run dirs
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: CUDA is not available on this machine; use --device cpu")
    if args.config is not None and not args.config.is_file():
        parser.error(f"--config {args.config}: no such file")
    if args.config is None:
        missing = [d for d in args.depths if not recipe_path(None, d).is_file()]
        if missing:
            parser.error(f"no fast recipe for depth {missing[0]}: {recipe_path(None, missing[0])} "
                         "does not exist (pass --config FILE)")
    return args


def recipe_path(config: Path | None, depth: int) -> Path:
    return config if config is not None else RECIPES / f"resnet{depth}.yml"


def display_path(path: Path) -> str:
    try:
        return Path(path).resolve().relative_to(common.REPO).as_posix()
    except ValueError:
        return str(path)


# ---- plan ------------------------------------------------------------------------------------------
def run_overrides(args, depth: int, epochs: int | None, seed: int, run_dir: Path, data_root) -> list[str]:
    """Script defaults, then the user's overrides, then what the benchmark must control."""
    forced = {"model__name": f"resnet{depth}", "train__seed": seed, "train__run_dir": run_dir,
              "train__eval_every": 1, "train__resume": False}
    if epochs is not None:
        forced["train__epochs"] = epochs
    if args.device is not None:
        forced["train__device"] = args.device
    if args.loader is not None:
        forced["loader__name"] = args.loader
    if data_root is not None:
        forced["data__root"] = data_root
    if args.data == "synthetic":
        forced["data__download"] = False
    return [*common.overrides(train__progress=False), *args.overrides, *common.overrides(**forced)]


def plan(args, run_root: Path, data_root, world_size: int) -> list[dict]:
    """Every run's config, built and validated before the first one starts (hours may follow)."""
    runs = []
    for depth in args.depths:
        path = recipe_path(args.config, depth)
        for epochs in args.epochs or [None]:
            for seed in range(args.seeds):
                tag = f"e{epochs}" if epochs is not None else "recipe"
                run_dir = run_root / f"resnet{depth}" / tag / f"seed{seed}"
                values = run_overrides(args, depth, epochs, seed, run_dir, data_root)
                cfg = common.load_config(path, values, world_size)
                runs.append({"depth": depth, "config": path, "epochs": cfg.train.epochs, "seed": seed,
                             "cfg": cfg})
    return runs


# ---- one run ---------------------------------------------------------------------------------------
class Stopped(Exception):
    """Every rank's run saw the same stop request: the script ends with status 3."""


def train_one(cfg, dist, target: float, paper: float | None) -> dict:
    from fastcifar.training import Trainer

    common.release(dist.device)  # each run compiles afresh, as a user's single run would
    start = time.perf_counter()
    trainer = Trainer(cfg, dist)
    setup_seconds = time.perf_counter() - start
    records: list[dict] = []
    summary = trainer.fit(on_epoch_end=records.append)
    if summary["stop_requested"]:  # SIGTERM or Ctrl-C: a shortened run must not count as a recipe's result
        raise Stopped(f"time_to_accuracy.py: stopped by a signal during {cfg.train.run_dir} after epoch "
                      f"{summary['epochs']}/{cfg.train.epochs}; depths finished before it are in the result file")
    return run_record(cfg, summary, records, setup_seconds, len(trainer.train_loader), target, paper)


def compile_estimate(records: list[dict], first_step: float | None, steps_per_epoch: int) -> float:
    """See COMPILE_ESTIMATE."""
    if first_step is None or not records:
        return 0.0
    if len(records) > 1:
        typical = statistics.median(r["epoch_time_s"] / steps_per_epoch for r in records[1:])
    elif steps_per_epoch > 1:
        typical = (records[0]["epoch_time_s"] - first_step) / (steps_per_epoch - 1)
    else:
        typical = first_step
    train_part = max(0.0, first_step - typical)
    evals, previous = [], 0.0
    for r in records:
        evals.append(max(0.0, r["wall_seconds"] - previous - r["epoch_time_s"]))
        previous = r["wall_seconds"]
    eval_part = max(0.0, evals[0] - statistics.median(evals[1:])) if len(evals) > 1 else 0.0
    return train_part + eval_part


def first_crossing(curve: list[dict], target: float, compile_s: float) -> dict | None:
    for point in curve:
        if point["top1"] is not None and point["top1"] >= target:
            return {"epoch": point["epoch"], "wall_seconds": point["wall_seconds"],
                    "wall_seconds_without_compile": max(0.0, point["wall_seconds"] - compile_s),
                    "top1": point["top1"]}
    return None


def run_record(cfg, summary: dict, records: list[dict], setup_seconds: float, steps_per_epoch: int,
               target: float, paper: float | None = None) -> dict:
    curve = [{"epoch": r["epoch"], "wall_seconds": r["wall_seconds"], "train_seconds": r["train_seconds"],
              "epoch_time_s": r["epoch_time_s"], "top1": r.get("top1"), "train_loss": r["train_loss"]}
             for r in records]
    compile_s = compile_estimate(records, summary["first_step_seconds"], steps_per_epoch)
    wall = records[-1]["wall_seconds"]
    top1s = [p["top1"] for p in curve if p["top1"] is not None]
    return {
        "seed": cfg.train.seed, "run_dir": str(cfg.train.run_dir), "epochs": summary["epochs"],
        "steps": summary["steps"], "setup_seconds": setup_seconds,
        "wall_seconds": wall, "train_seconds": summary["train_seconds"],
        "first_step_seconds": summary["first_step_seconds"], "compile_seconds_estimate": compile_s,
        "wall_seconds_without_compile": max(0.0, wall - compile_s),
        "final_top1": summary["final_top1"], "best_top1": max(top1s) if top1s else None,
        # the first evaluated epoch at or above the target: selects on the test set, reference only
        "first_crossing": first_crossing(curve, target, compile_s),
        "first_crossing_paper": first_crossing(curve, paper, compile_s) if paper is not None else None,
        "device": summary["device"], "world_size": summary["world_size"],
        "amp": summary["amp"], "compile": summary["compile"], "channels_last": summary["channels_last"],
        "curve": curve,
    }


# ---- aggregation -----------------------------------------------------------------------------------
def stat(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "std": None, "values": []}
    mean, std = common.mean_std(values)
    return {"mean": mean, "std": std, "values": list(values)}


def crossing_stats(runs: list[dict], target: float) -> dict:
    """First epoch at which the test accuracy reached `target`: selected on the test set."""
    hits = [c for c in (first_crossing(r["curve"], target, r["compile_seconds_estimate"]) for r in runs) if c]
    out = stat([c["wall_seconds"] for c in hits])
    out.update(count=len(hits), runs=len(runs),
               epoch_mean=statistics.fmean(c["epoch"] for c in hits) if hits else None)
    return out


def recipe_record(config: Path, cfg, runs: list[dict], target: float) -> dict:
    return {
        "config": display_path(config), "epochs": cfg.train.epochs, "batch_size": cfg.train.batch_size,
        "lr": cfg.optim.lr, "schedule": cfg.schedule.name, "loader": cfg.loader.name,
        "seeds": len(runs), "runs": runs,
        "final_top1": stat([r["final_top1"] for r in runs]),
        "wall_seconds": stat([r["wall_seconds"] for r in runs]),
        "wall_seconds_without_compile": stat([r["wall_seconds_without_compile"] for r in runs]),
        "compile_seconds_estimate": stat([r["compile_seconds_estimate"] for r in runs]),
        "first_crossing_seconds": crossing_stats(runs, target),
    }


def time_to(recipes: list[dict], target: float | None) -> dict | None:
    """The fastest recipe whose mean final accuracy reaches `target`, or 'not reached'."""
    if target is None:
        return None
    scored = [(i, r) for i, r in enumerate(recipes) if r["final_top1"]["mean"] is not None]
    best = max((r["final_top1"]["mean"] for _, r in scored), default=None)
    reached = [(i, r) for i, r in scored if r["final_top1"]["mean"] >= target]
    block = {"target": target, "status": "not reached", "recipe": None, "wall_seconds": None,
             "wall_seconds_without_compile": None, "best_mean_final_top1": best,
             "first_crossing_seconds": None}
    if reached:
        i, r = min(reached, key=lambda item: item[1]["wall_seconds"]["mean"])
        block.update(status="reached", recipe=i, wall_seconds=r["wall_seconds"],
                     wall_seconds_without_compile=r["wall_seconds_without_compile"])
    chosen = recipes[block["recipe"]] if block["recipe"] is not None else (
        max(scored, key=lambda item: item[1]["final_top1"]["mean"])[1] if scored else None)
    if chosen is not None:
        block["first_crossing_seconds"] = crossing_stats(chosen["runs"], target)
    return block


def depth_record(depth: int, recipes: list[dict], target: float) -> dict:
    paper = common.PAPER_TOP1.get(depth)
    return {"depth": depth, "model": f"resnet{depth}", "paper_top1": paper, "recipes": recipes,
            "time_to_target": time_to(recipes, target), "time_to_paper": time_to(recipes, paper)}


# ---- main ------------------------------------------------------------------------------------------
def prepare_data(args, run_root: Path, dist) -> str | None:
    """The data root to force, if any: a synthetic set written once by rank 0."""
    if args.data != "synthetic":
        return args.data_root
    root = run_root / "synthetic-data"
    if dist.is_main:
        common.write_synthetic_npz(root, args.synthetic_size, args.synthetic_test_size)
    dist_lib.barrier()
    return str(root)


def default_out(device) -> Path:
    name = common.device_name(device) if device.type == "cuda" else "cpu"
    world = dist_lib.world_size_from_env()
    suffix = f"-x{world}" if world > 1 else ""
    return common.RESULTS_DIR / f"time_to_accuracy-{common.slug(name)}{suffix}.json"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        dist = dist_lib.setup(args.device or "auto")
    except FastcifarError as e:
        stderr_line(f"time_to_accuracy.py: error: {e}")
        return 2
    try:
        code = run(args, dist)
        dist_lib.cleanup(finished=True)
        return code
    except Stopped as e:
        dist_lib.cleanup(finished=True)  # every rank got here: the teardown barrier is safe
        if dist.is_main:
            stderr_line(str(e))
        return STOPPED_EXIT
    except FastcifarError as e:
        stderr_line(f"time_to_accuracy.py: error: {e}")
        return 2
    finally:
        dist_lib.cleanup()


def run(args, dist) -> int:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    # one name on every rank: rank 0's clock decides
    run_root = dist_lib.broadcast_object(args.run_root or Path("runs") / "time_to_accuracy" / stamp)
    data_root = prepare_data(args, run_root, dist)
    runs = plan(args, run_root, data_root, dist.world_size)
    out_path = args.out or default_out(dist.device)
    result = {
        "kind": "time_to_accuracy", "schema_version": SCHEMA_VERSION, "complete": False,
        "environment": common.environment(),
        "settings": {"target": args.target, "seeds": args.seeds, "depths": args.depths, "epochs": args.epochs,
                     "config": display_path(args.config) if args.config else None,
                     "device": dist.device.type, "device_name": common.device_name(dist.device),
                     "world_size": dist.world_size, "data": args.data, "loader": args.loader,
                     "overrides": args.overrides, "run_root": str(run_root)},
        "compile_estimate": COMPILE_ESTIMATE,
        "selection": "time_to_target: the fastest recipe whose mean final test top-1 over the seeds is "
                     ">= target (its mean wall time); first_crossing_seconds: the first evaluated epoch "
                     "with test top-1 >= target, which selects on the test set (reference only)",
        "depths": [],
    }
    for depth in args.depths:
        recipes = []
        for epochs in dict.fromkeys(r["epochs"] for r in runs if r["depth"] == depth):
            group = [r for r in runs if r["depth"] == depth and r["epochs"] == epochs]
            records = []
            for r in group:
                if dist.is_main:
                    print(f"== resnet{depth}, {epochs} epochs, seed {r['seed']} -> {r['cfg'].train.run_dir}",
                          flush=True)
                records.append(train_one(r["cfg"], dist, args.target, common.PAPER_TOP1.get(depth)))
            recipes.append(recipe_record(group[0]["config"], group[0]["cfg"], records, args.target))
            write_partial(result, depth, recipes, args.target, out_path, dist)
    result["complete"] = True
    if dist.is_main:
        common.write_json(out_path, result)
        from benchmarks import report

        print(report.time_to_accuracy_markdown(result))
        print(f"wrote {out_path}", file=sys.stderr)
    return 0


def write_partial(result: dict, depth: int, recipes: list[dict], target: float, out_path: Path, dist) -> None:
    """Replace this depth's entry and write, so a long run that dies keeps what finished."""
    result["depths"] = [d for d in result["depths"] if d["depth"] != depth]
    result["depths"].append(depth_record(depth, recipes, target))
    if dist.is_main:
        common.write_json(out_path, result)


if __name__ == "__main__":
    sys.exit(main())
