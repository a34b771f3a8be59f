"""Ship each depth's median paper run (reproduce.py; by final top-1, lower middle, ties by seed) as pretrained
weights named fastcifar-seed<S>, beside any others of that model (fastcifar.hub.export_weights):   python benchmarks/export_weights.py --weights-from runs/paper --data-root data
"""

import sys
from pathlib import Path

from fastcifar.bench import common, report
from fastcifar import hub
from fastcifar.errors import FastcifarError


def main(argv: list[str] | None = None) -> int:
    p = common.parser("export_weights.py", __doc__)
    p.add_argument("--weights-from", type=Path, required=True, help="folder of resnet<D>-seed<S>.pt files")
    p.add_argument("--data-root", required=True, help="CIFAR-10, for the accuracy recorded in the manifest")
    p.add_argument("--results-dir", type=Path, default=common.RESULTS_DIR)
    p.add_argument("--weights-dir", type=Path, default=hub.WEIGHTS_DIR)
    p.add_argument("--depths", type=common.depth, nargs="+", default=None, help="default: every depth with results")
    p.add_argument("--min-seeds", type=common.positive_int, default=3)
    args = p.parse_args(argv)
    found = report.load_results(sorted(args.results_dir.glob("*.json")))["paper_run"]
    runs = report.paper_runs([{**data, "result": path.name} for path, data in found])  # the manifest names its file
    chosen = []  # every depth checked before the first (slow) export
    for depth in args.depths or sorted(runs) or p.error(f"no paper_run results in {args.results_dir}"):
        ranked = sorted(runs.get(depth, []), key=lambda r: (r["final_top1"], r["seed"]))
        if len(ranked) < args.min_seeds:
            p.error(f"resnet{depth}: {len(ranked)} finished run(s) in {args.results_dir}, need {args.min_seeds}")
        run = ranked[(len(ranked) - 1) // 2]
        source = args.weights_from / f"resnet{depth}-seed{run['seed']}.pt"
        if not source.is_file():
            p.error(f"resnet{depth}: the median run (seed {run['seed']}) has no weights at {source}")
        try:  # the run's config, from its result file: trained as the hub's models are used
            hub.check_shippable(run.get("config"), args.results_dir / run["result"])
        except FastcifarError as e:
            p.error(str(e))
        chosen.append((depth, ranked, run, source))
    for depth, ranked, run, source in chosen:
        record = {"seed": run["seed"], "seeds": sorted(r["seed"] for r in ranked), "result": run["result"],
                  "final_top1_in_training": run["final_top1"], "final_top5_in_training": run["final_top5"]}
        try:
            entry = hub.export_weights(source, f"cifar10_resnet{depth}", args.data_root, args.weights_dir, record,
                                       weight=f"fastcifar-seed{run['seed']}")
        except FastcifarError as e:
            p.error(str(e))
        print(f"cifar10_resnet{depth}: seed {run['seed']} -> {entry['file']}: CPU fp32 top-1 "
              f"{entry['test']['top1']:.2f}% (training's final evaluation: {run['final_top1']:.2f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
