#!/usr/bin/env python
"""Ship the median-seed model of each depth as pretrained weights (fastcifar/weights/).

    python benchmarks/export_weights.py --weights-from DIR --data-root DATA [--depths 20 56]

For each depth, the paper runs in benchmarks/results (``kind: paper_run``, written by
benchmarks/reproduce.py) are ranked by their FINAL-epoch test top-1; the median one (of an even
number, the lower middle; ties by seed) is exported from ``DIR/resnet{D}-seed{S}.pt`` (the run's
final fp32 weights, which reproduce.py saves) with fastcifar.hub.export_weights, which checks a
strict load, names the file by its sha256 and records its CPU fp32 accuracy in the manifest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed

from benchmarks import common  # noqa: E402

MIN_SEEDS = 3


def paper_runs(results_dir: Path) -> dict[int, list[tuple[Path, dict]]]:
    """(file, result) of the CIFAR-10 paper runs by depth, chosen as report.py's table chooses them."""
    from benchmarks import report

    items = report.load_results(sorted(results_dir.glob("*.json")))["paper_run"]
    path_of = {id(data): path for path, data in items}
    return {depth: [(path_of[id(r)], r) for r in runs]
            for depth, runs in report.paper_runs([data for _path, data in items]).items()}


def median_run(runs: list[tuple[Path, dict]]) -> tuple[Path, dict]:
    ranked = sorted(runs, key=lambda item: (item[1]["final_top1"], item[1]["seed"]))
    return ranked[(len(ranked) - 1) // 2]


def main(argv: list[str] | None = None) -> int:
    from fastcifar import hub
    from fastcifar.errors import FastcifarError

    p = argparse.ArgumentParser(prog="export_weights.py", description=__doc__, formatter_class=common.HelpFormatter)
    p.add_argument("--weights-from", type=Path, required=True, help="folder of resnet{D}-seed{S}.pt files")
    p.add_argument("--data-root", required=True, help="CIFAR-10, for the accuracy recorded in the manifest")
    p.add_argument("--results-dir", type=Path, default=common.RESULTS_DIR)
    p.add_argument("--weights-dir", type=Path, default=hub.WEIGHTS_DIR)
    p.add_argument("--depths", type=common.depth, nargs="+", default=None, help="default: every depth with results")
    p.add_argument("--min-seeds", type=common.positive_int, default=MIN_SEEDS)
    args = p.parse_args(argv)
    runs = paper_runs(args.results_dir)
    depths = args.depths or sorted(runs)
    if not depths:
        p.error(f"no paper_run results in {args.results_dir}")
    chosen = []  # every depth checked before the first (slow) export
    for depth in depths:
        found = runs.get(depth, [])
        if len(found) < args.min_seeds:
            p.error(f"resnet{depth}: {len(found)} finished run(s) in {args.results_dir}, need {args.min_seeds}")
        path, run = median_run(found)
        source = args.weights_from / f"resnet{depth}-seed{run['seed']}.pt"
        if not source.is_file():
            p.error(f"resnet{depth}: the median run (seed {run['seed']}) has no weights at {source}")
        chosen.append((depth, found, path, run, source))
    for depth, found, path, run, source in chosen:
        record = {"seed": run["seed"], "seeds": sorted(r["seed"] for _, r in found),
                  "final_top1_in_training": run["final_top1"], "final_top5_in_training": run["final_top5"],
                  "result": path.name}
        try:
            entry = hub.export_weights(source, f"cifar10_resnet{depth}", args.data_root, args.weights_dir, record)
        except FastcifarError as e:
            p.error(str(e))
        print(f"cifar10_resnet{depth}: seed {run['seed']} -> {entry['file']}: CPU fp32 top-1 "
              f"{entry['test']['top1']:.2f}% (training's final evaluation: {run['final_top1']:.2f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
