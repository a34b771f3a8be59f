"""Wall time for each depth to reach a test top-1: the mean over --seeds of the fastest recipe
(configs/fast/resnet<depth>.yml, lengths --epochs) whose MEAN FINAL accuracy reaches it. Only the final
epoch is evaluated (--curves: every epoch); compile time, cold each run, is reported apart.
--section.key=value overrides that key of every recipe.

    python benchmarks/time_to_accuracy.py --depths 56 --epochs 30 40 --train.batch_size=1024 --optim.lr=0.8
    torchrun --nproc_per_node=8 -m fastcifar.bench.time_to_accuracy --depths 110 1202    # rank 0 writes
"""

import dataclasses
import datetime as dt
import itertools
import os
import sys
from pathlib import Path

from fastcifar.bench import common, report
from fastcifar.bench.tta_records import RECIPE_KEYS, combine, depth_record, recipe_of_runs, stat, time_to  # noqa: F401
from fastcifar import config as config_lib
from fastcifar import distributed as dist_lib
from fastcifar.errors import Diverged, FastcifarError, stderr_line
from fastcifar.models import PAPER_DEPTHS
from fastcifar.synthetic import write_npz
from fastcifar.training import Trainer
from fastcifar.training.stopping import DIVERGED_EXIT, STOPPED_EXIT

SCHEMA_VERSION = 2
RECIPES = config_lib.RECIPES / "fast"
COMPILE = ("compile_seconds: the trainer's (torch._dynamo's compilation_time_metrics), a fresh inductor "
           "cache per run (every seed cold); null with compile off; inside wall_seconds, not setup_seconds")
SELECTION = ("time_to_target: the fastest recipe whose mean final test top-1 over the seeds is >= target; "
             "first_crossing (--curves): the first epoch at >= target, which selects on the test set (reference only)")


def parse_args(argv):
    p = common.parser("time_to_accuracy.py", __doc__)
    common.add_run_options(p, ("cifar10", "synthetic"), PAPER_DEPTHS)
    p.add_argument("--seeds", type=common.positive_int, default=3, help="runs per recipe (seeds K..K+N-1)")
    p.add_argument("--first-seed", type=common.non_negative_int, default=0, metavar="K",
                   help="the first seed; results of other seeds of the same settings combine in report.py")
    p.add_argument("--target", type=common.percentage, default=92.0, help="test top-1, percent")
    p.add_argument("--epochs", type=common.positive_int, nargs="+",
                   help="recipe lengths to try (default: the recipe's train.epochs)")
    p.add_argument("--curves", action="store_true", help="evaluate every epoch (default: the final one only)")
    p.add_argument("--config", type=Path, help="one recipe for every depth (model.name set per depth)")
    p.add_argument("--synthetic-test-size", type=common.positive_int, default=10_000)
    p.add_argument("--run-root", type=Path, help="default: runs/time_to_accuracy/<UTC time>")
    args = common.parse_with_overrides(p, argv)
    args.epochs = list(dict.fromkeys(args.epochs)) if args.epochs else None  # a repeat would reuse run dirs
    args.recipes = {depth: args.config or RECIPES / f"resnet{depth}.yml" for depth in args.depths}
    missing = [path for path in args.recipes.values() if not path.is_file()]
    if missing:
        p.error(f"no recipe {missing[0]} (pass --config FILE)")
    return args


def plan(args, run_root: Path, data_root, world_size: int) -> dict[tuple[int, int], list]:
    """Every run's config by (depth, epochs), built and validated before the first one starts (hours may follow)."""
    runs = {}
    for depth, epochs, seed in itertools.product(args.depths, args.epochs or [None], range(args.first_seed, args.first_seed + args.seeds)):
        forced = {"model__name": f"resnet{depth}", "train__seed": seed, "train__resume": False,
                  "train__run_dir": run_root / f"resnet{depth}" / f"e{epochs or 'recipe'}" / f"seed{seed}",
                  "train__epochs": epochs, "train__device": None if args.device == "auto" else args.device,
                  "data__root": data_root, "data__download": False if data_root else None}
        values = [*common.overrides(train__progress=False), *args.overrides,
                  *common.overrides(**{k: v for k, v in forced.items() if v is not None})]
        cfg = config_lib.load(args.recipes[depth], values, world_size)
        # the final epoch is always evaluated; the others only for curves
        train = dataclasses.replace(cfg.train, eval_every=1 if args.curves else cfg.train.epochs)
        runs.setdefault((depth, cfg.train.epochs), []).append(dataclasses.replace(cfg, train=train))
    return runs


def run_record(cfg, summary: dict, records: list[dict], target: float | None) -> dict:
    curve = [{k: r.get(k) for k in ("epoch", "wall_seconds", "train_seconds", "top1", "train_loss")}
             for r in records]
    crossed = [p for p in curve if target is not None and p["top1"] is not None and p["top1"] >= target]
    wall, compile_s = records[-1]["wall_seconds"], summary["compile_seconds"]
    return {
        "seed": cfg.train.seed, "run_dir": str(cfg.train.run_dir), "epochs": summary["epochs"],
        "steps": summary["steps"], "setup_seconds": summary["setup_seconds"], "wall_seconds": wall,
        "train_seconds": summary["train_seconds"], "first_step_seconds": summary["first_step_seconds"],
        "compile_seconds": compile_s, "wall_seconds_without_compile": wall - (compile_s or 0.0),
        "final_top1": summary["final_top1"], "evaluated_epochs": sum(p["top1"] is not None for p in curve),
        "first_crossing": {k: crossed[0][k] for k in ("epoch", "wall_seconds", "top1")} if crossed else None,
        **{k: summary[k] for k in ("device", "world_size", "amp", "compile", "channels_last")}, "curve": curve,
    }


def recipe_record(config: Path, cfg, runs: list[dict]) -> dict:
    return recipe_of_runs({
        "config": Path(os.path.relpath(config.resolve(), common.REPO)).as_posix(), "epochs": cfg.train.epochs,
        "batch_size": cfg.train.batch_size, "lr": cfg.optim.lr, "schedule": cfg.schedule.name,
        "loader": cfg.loader.name, "recipe_digest": config_lib.recipe_digest(cfg)}, runs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        dist = dist_lib.setup(args.device)
        code = run(args, dist)
        dist_lib.cleanup(finished=True)  # every rank is here, a stopped one too: the barrier is safe
        return code
    except Diverged as e:  # every rank saw the same reduced loss, so every rank is here
        if dist.is_main:
            stderr_line(f"time_to_accuracy.py: diverged: {e}")
        return DIVERGED_EXIT
    except FastcifarError as e:
        stderr_line(f"time_to_accuracy.py: error: {e}")
        return 2
    finally:
        dist_lib.cleanup()


def run(args, dist) -> int:
    from torch._inductor.utils import fresh_inductor_cache

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_root = dist_lib.broadcast_object(args.run_root or Path("runs") / "time_to_accuracy" / stamp)  # rank 0's clock
    data_root = None
    if args.data == "synthetic":
        data_root = str(run_root / "synthetic-data")
        if dist.is_main:
            write_npz(data_root, "cifar10", args.synthetic_size, args.synthetic_test_size)
        dist_lib.barrier()
    groups = plan(args, run_root, data_root, dist.world_size)
    world = f"-x{dist.world_size}" if dist.world_size > 1 else ""
    out_path = args.out or common.out_path("time_to_accuracy", dist.device, world)
    settings = {k: getattr(args, k) for k in ("target", "seeds", "first_seed", "depths", "epochs", "curves", "data",
                                              "overrides")}
    result = common.result("time_to_accuracy", SCHEMA_VERSION, complete=False, settings={
        **settings, "config": str(args.config) if args.config else None, "device": dist.device.type,
        "device_name": common.device_name(dist.device), "world_size": dist.world_size, "run_root": str(run_root)},
        compile=COMPILE, selection=SELECTION, depths=[])
    recipes: dict[int, list[dict]] = {}
    for done, ((depth, epochs), group) in enumerate(groups.items(), 1):
        records = []
        for cfg in group:
            if dist.is_main:
                print(f"== resnet{depth}, {epochs} epochs, seed {cfg.train.seed} -> {cfg.train.run_dir}", flush=True)
            common.release(dist.device)  # each run compiles afresh, as a user's single run would
            curve: list[dict] = []
            with fresh_inductor_cache():
                summary = Trainer(cfg, dist).fit(on_epoch_end=curve.append)
            if summary["stop_requested"]:  # reduced over the ranks: every rank stops here
                if dist.is_main:  # a shortened run must not count as a recipe's result
                    done = f"recipes done are in {out_path}" if result["depths"] else "no recipe was finished"
                    stderr_line(f"time_to_accuracy.py: stopped by a signal during {cfg.train.run_dir} (epoch "
                                f"{summary['epochs']}/{cfg.train.epochs}); {done}")
                return STOPPED_EXIT
            records.append(run_record(cfg, summary, curve, args.target if args.curves else None))
            # after every run: a command that is killed keeps the seeds that finished (complete: false)
            partial = {**recipes, depth: [*recipes.get(depth, []), recipe_record(args.recipes[depth], group[0], records)]}
            result["depths"] = [depth_record(d, found, args.target) for d, found in partial.items()]
            result["complete"] = done == len(groups) and len(records) == len(group)
            if dist.is_main:
                common.write_json(out_path, result)
        recipes.setdefault(depth, []).append(recipe_record(args.recipes[depth], group[0], records))
    if dist.is_main:
        print(report.time_to_accuracy_markdown(result))
        common.log(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
