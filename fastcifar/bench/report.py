"""Tables and throughput plots from benchmark results into report.md and the README's sections between
<!-- BEGIN GENERATED: K --> and <!-- END GENERATED: K --> (K: throughput, time_to_accuracy, paper, and pretrained from
fastcifar/weights/manifest.json); training curves.

    python benchmarks/report.py --readme README.md       # benchmarks/results/*.json -> report.md, PNGs, README
    python benchmarks/report.py --runs runs/resnet56 runs/resnet20 --curves curves.png   # training curves
"""

import os
import statistics
import sys
from pathlib import Path

from fastcifar.bench import common
from fastcifar import manifest, rundir
from fastcifar.files import write_text_atomic

# result kind -> (README marker, report.md title)
SECTIONS = {"throughput": ("throughput", "Throughput"), "time_to_accuracy": ("time_to_accuracy", "Time to accuracy"),
            "paper_run": ("paper", "Reproducing the paper's table")}
DASH = "—"
# CIFAR-10 test top-1 (%) of akamaster/pytorch_resnet_cifar10's best epochs; this project's finals aim at them.
AKAMASTER_TOP1 = {20: 91.73, 32: 92.63, 44: 93.10, 56: 93.39, 110: 93.68}
GOAL_TOP1 = {depth: round(top1, 1) for depth, top1 in AKAMASTER_TOP1.items()}


def num(value, digits: int = 0, suffix: str = "") -> str:
    return DASH if value is None else f"{value:,.{digits}f}{suffix}"


def mean_std(stat: dict | None, digits: int, unit: str = "") -> str:
    """A {mean, std} record; a std of None (a single value) shows as a dash."""
    if not stat or stat["mean"] is None:
        return DASH
    return f"{num(stat['mean'], digits)} ± {num(stat['std'], digits)}{unit}"


def rate(fig) -> str:
    """A figure's median (min–max) images/s, or its error."""
    if not fig or "images_per_s" not in fig:
        return f"error: {fig['error']}"[:90] if fig and fig.get("error") else DASH
    r = fig["images_per_s"]
    return f"{num(r['median'])} ({num(r['min'])}–{num(r['max'])})"


def tflops(fig) -> str:
    return num(fig["tflops"]["median"], 1) if fig and fig.get("tflops") else DASH


def header(result: dict) -> str:
    env = result.get("environment", {})
    git, device = env.get("git") or {}, env.get("gpu") or env.get("cpu") or "cpu"
    count = f"{env['gpu_count']} x " if env.get("gpu_count", 0) > 1 else ""
    versions = [f"torch {env.get('torch', '?')}", env.get("cuda") and f"CUDA {env['cuda']}",
                env.get("driver") and f"driver {env['driver']}", env.get("dali")]
    return (f"**{count}{device}**, {', '.join(filter(None, versions))}; {env.get('date', '?')}, commit "
            f"{(git.get('commit') or 'unknown')[:10]}{' (dirty)' if git.get('dirty') else ''}"
            f"{'' if result.get('complete', True) else ' (incomplete run)'}.  \n`{env.get('command', '?')}`")


# ---- throughput ------------------------------------------------------------------------------------
def batches(result: dict, r: dict) -> list[dict]:
    """Per batch size; a schema-1 file measured one, and estimated its compile time."""
    if "batches" in r:
        return r["batches"]
    return [{"batch_size": result["settings"]["batch_size"], "loaders": r["loaders"], "model_alone": r["model_alone"]}]


def throughput_markdown(result: dict) -> str:
    s = result["settings"]
    cfg, bw = s.get("config", s), s.get("peak_bandwidth")  # schema 1: the config in the settings
    on = {k: "on" if cfg.get(k) in (True, "true") else "off" for k in ("compile", "channels_last", "cuda_graph")}
    model_rows, loader_rows = [], []
    for r in result["results"]:
        base, bs = r.get("seed_style"), batches(result, r)
        for b in bs:
            m, c = b["model_alone"], b["model_alone"].get("compile_seconds")
            estimate = num(m.get("compile_seconds_estimate"), 1, " (estimate)")  # schema 1
            compile_ = f"{c['cold']:.1f} / {c['warm']:.1f}" if c else estimate
            model_rows.append([r["depth"], b["batch_size"], num(r["params"]), f"{r['macs_per_image'] / 1e6:,.1f} M",
                               rate(m), tflops(m), num(b.get("bytes_per_image") and b["bytes_per_image"] / 1e6, 2),
                               num(m.get("bandwidth_fraction") and 100 * m["bandwidth_fraction"], 0, "%"), compile_,
                               num(m.get("peak_memory_bytes") and m["peak_memory_bytes"] / 2**30, 2)])
            for name, e in b["loaders"].items():
                speed = (base or {}).get("speedup_end_to_end", {}).get(name) if b is bs[0] else None
                rel = num(e.get("ratio_end_to_end_to_model"), 2, " (suspect)" if e.get("suspect") else "")
                loader_rows.append([r["depth"], b["batch_size"], name, rate(e["loader_alone"]) if not e.get("error")
                                    else f"unavailable: {e['error']}"[:90], rate(e["end_to_end"]), rel,
                                    tflops(e["end_to_end"]), num(speed, 1, "x")])
        if base:
            st, e2e = base["setting"], base["end_to_end"]
            loader_rows.append([r["depth"], st["batch_size"], f"seed-style (torchvision, {st['workers']} workers, "
                                f"fp32, NCHW, eager; model alone {rate(base['model_alone'])})", DASH, rate(e2e),
                                num(base.get("ratio_end_to_end_to_model"), 2), tflops(e2e), "1.0x"])
    return "\n".join([
        header(result), "", f"amp {cfg['amp']}, compile {on['compile']}, channels_last {on['channels_last']}, CUDA "
        f"graph {on['cuda_graph']}, {s['workers']} torchvision workers, {s['data']} data; median (min–max) images/s "
        f"over {s['repeats']} x {s['steps']} steps after {s['warmup']} warm-up steps (loader-fed: at least an epoch). "
        "TFLOP/s counts 3x the forward FLOPs; MB/image is an estimate (see the JSON's bytes_convention), against a "
        f"peak bandwidth of {num(bw and bw / 1e12, 2, ' TB/s') if bw else 'unknown'}. Compile: first step minus a "
        "typical one, cold / warm inductor cache; empty when off.", "",
        common.markdown_table(["depth", "batch", "params", "MACs/image", "model alone (img/s)", "TFLOP/s",
                               "MB/image (est.)", "of peak bandwidth", "compile (s)", "peak GiB"], model_rows), "",
        common.markdown_table(["depth", "batch", "loader", "loader alone (img/s)", "end to end (img/s)",
                               "end to end / model alone", "TFLOP/s", "vs seed-style"], loader_rows)])


def throughput_plot(result: dict, path: Path) -> Path:
    from matplotlib.figure import Figure  # no pyplot: no display, nothing global to close

    groups = [(f"ResNet-{r['depth']}\nbatch {b['batch_size']}", b) for r in result["results"]
              for b in batches(result, r)]
    series = {"model alone": [b["model_alone"] for _, b in groups], **{
        f"{n} end to end": [b["loaders"].get(n, {}).get("end_to_end") for _, b in groups]
        for n in result["settings"]["loaders"]}}
    series = {k: [(j, f["images_per_s"]) for j, f in enumerate(v) if f and "images_per_s" in f]
              for k, v in series.items()}
    series = {k: v for k, v in series.items() if v}  # an unavailable loader: no bars
    fig = Figure(figsize=(max(6, 1.6 * len(groups) + 2), 4.5))
    ax = fig.subplots()
    width = 0.8 / max(1, len(series))
    for i, (label, pts) in enumerate(series.items()):
        ax.bar([j + (i - (len(series) - 1) / 2) * width for j, _ in pts], [r["median"] for _, r in pts], width,
               yerr=[[r["median"] - r["min"] for _, r in pts], [r["max"] - r["median"] for _, r in pts]], label=label)
    ax.set_xticks(range(len(groups)), [g for g, _ in groups])
    ax.set_yscale("log")  # ResNet-20 and ResNet-1202 differ by ~70x
    ax.set(ylabel="images / s (median, min–max)", title=f"Training throughput, {result['settings']['device_name']}")
    ax.legend(fontsize=8)
    return save(fig, path)


# ---- time to accuracy ------------------------------------------------------------------------------
def time_cell(block: dict | None, key: str = "wall_seconds") -> str:
    if block and block["status"] != "reached":
        return f"not reached (best mean final {block['best_mean_final_top1']:.2f}%)"
    return mean_std(block and block[key], 0, " s")


def time_to_accuracy_markdown(result: dict) -> str:
    s, rows = result["settings"], []
    for d in result["depths"]:
        t, recipes = d["time_to_target"], [r for r in d["recipes"] if r["final_top1"].get("mean") is not None]
        chosen = d["recipes"][t["recipe"]] if t["recipe"] is not None else max(
            recipes, key=lambda r: r["final_top1"]["mean"], default=None) or {}
        name = chosen and f"{Path(chosen['config']).name}, {chosen['epochs']} epochs, batch {chosen['batch_size']}"
        rows.append([d["depth"], name or DASH, chosen.get("seeds", 0), mean_std(chosen.get("final_top1"), 2, "%"),
                     time_cell(t), time_cell(t, "wall_seconds_without_compile") if t["status"] == "reached" else DASH,
                     mean_std(chosen.get("compile_seconds"), 0, " s"), num(d.get("paper_top1"), 2),
                     time_cell(d.get("time_to_paper"))])
    return "\n".join([header(result), "", f"Target {s['target']}% test top-1 on {s['data']}, {s['seeds']} seed(s) per "
                      f"recipe, {s['world_size']} process(es). Time to target: wall time of the fastest recipe whose "
                      "MEAN FINAL accuracy reaches it (mean ± std over seeds), with and without compile time "
                      "(measured, cold cache each run).", "", common.markdown_table(
                          ["depth", "recipe", "seeds", "final top-1", f"time to {s['target']:g}%", "without compile",
                           "compile", "paper top-1", "time to paper top-1"], rows)])


# ---- the paper's table -----------------------------------------------------------------------------
def paper_runs(results: list[dict]) -> dict[int, list[dict]]:
    """CIFAR-10 runs by depth, one per (depth, seed): the latest when a seed was run again."""
    latest = {(r["depth"], r["seed"]): r for r in sorted(results, key=lambda r: r.get("finished_at", ""))
              if r.get("dataset", "cifar10") == "cifar10"}
    by_depth: dict[int, list[dict]] = {}
    for (depth, _seed), r in sorted(latest.items()):
        by_depth.setdefault(depth, []).append(r)
    return by_depth


def paper_markdown(results: list[dict]) -> str:
    by_depth, rows = paper_runs(results), []

    def final(values: list[float]) -> str:  # mean ± sample std; a single run has no std
        mean, std = common.mean_std(values)
        return mean_std({"mean": mean, "std": std if len(values) > 1 else None}, 2)

    for depth in sorted({*common.PAPER_TABLE_DEPTHS, *by_depth}):
        runs, goal = by_depth.get(depth, []), GOAL_TOP1.get(depth)
        ref = [num(common.PAPER_TOP1.get(depth), 2), num(AKAMASTER_TOP1.get(depth), 2), num(goal, 1)]
        if not runs:
            rows.append([depth, *["not measured"] * 4, *ref, *["not measured"] * 3])
            continue
        top1, best = [r["final_top1"] for r in runs], [r["best_top1_seen"] for r in runs if r.get("best_top1_seen")]
        gap = DASH if goal is None else f"{statistics.fmean(top1) - goal:+.2f}".replace("-0.00", "+0.00")
        rows.append([depth, f"{len(runs)} ({', '.join(str(r['seed']) for r in runs)})", final(top1),
                     final([r["final_top5"] for r in runs]), num(statistics.fmean(best) if best else None, 2), *ref,
                     gap, ", ".join(dict.fromkeys(r.get("device") or "?" for r in runs)),
                     num(statistics.median(r["train_seconds"] / 60 for r in runs), 1)])
    return ("CIFAR-10 test accuracy (%) of `benchmarks/reproduce.py` runs: the FINAL epoch of each run, mean ± sample "
            "std over seeds; no epoch or run is selected on the test set. The best top-1 seen during a run is shown "
            "for comparison with best-of-run figures only. Paper: He et al. 2016, Table 6; akamaster: "
            "pytorch_resnet_cifar10, best epoch of a run.\n\n" + common.markdown_table(
                ["depth", "runs (seeds)", "final top-1", "final top-5", "best-seen top-1 mean (not used for selection)",
                 "paper", "akamaster best-of-run", "goal", "mean − goal", "GPU", "median train min/run"], rows))


# ---- training curves and files ---------------------------------------------------------------------
def curves_plot(run_dirs: list[Path], path: Path) -> Path:
    """Train loss and learning rate (every logged step) and test top-1 (evaluated epochs) of each run."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4))
    axes = fig.subplots(1, 3)
    for i, run_dir in enumerate(run_dirs):
        records = rundir.records(run_dir)
        steps, evals = [r for r in records if "event" not in r and "loss" in r], rundir.epochs(records)
        losses = [(r["epoch"], r["loss"]) for r in steps] or [(r["epoch"], r["train_loss"]) for r in evals]
        for ax, pts in ((axes[0], losses),
                        (axes[1], [(r["epoch"], r["lr"]) for r in steps or evals if "lr" in r]),
                        (axes[2], [(r["epoch"], r["top1"]) for r in evals if r.get("top1") is not None])):
            if pts:
                ax.plot(*zip(*pts), color=f"C{i}", marker="o" if ax is axes[2] else None, ms=3, label=run_dir.name)
    for ax, what in zip(axes, ("train loss", "learning rate", "test top-1 (%)")):
        ax.set(xlabel="epoch", ylabel=what)
    axes[2].legend(fontsize=8)
    return save(fig, path)


def save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def load_results(paths: list[Path]) -> dict[str, list[tuple[Path, dict]]]:
    """Results by kind, newest first; other files are skipped, with a note unless reproduce.py's status."""
    found: dict[str, list] = {k: [] for k in SECTIONS}
    for path in paths:
        data = rundir.read_json(path)
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind in found:
            found[kind].append((path, data))
        elif kind != "paper_status":
            common.log(f"report.py: skipping {path}: not a benchmark result (kind {kind!r})")
    for items in found.values():
        items.sort(key=lambda item: item[1].get("environment", {}).get("date", ""), reverse=True)
    return found


def section(kind: str, results: list, plots: dict, link_from: Path) -> str:
    if kind == "paper_run":
        return paper_markdown([data for _path, data in results])
    parts = [(throughput_markdown if kind == "throughput" else time_to_accuracy_markdown)(data) + (
        f"\n\n![{kind.replace('_', ' ')}: {path.stem}]({Path(os.path.relpath(plots[path], link_from)).as_posix()})"
        if path in plots else "") for path, data in results]
    return "\n\n".join(parts) or "Not measured yet."


def main(argv: list[str] | None = None) -> int:
    p = common.parser("report.py", __doc__)
    p.add_argument("files", nargs="*", type=Path, help="result JSON files (default: --results-dir/*.json)")
    p.add_argument("--results-dir", type=Path, default=common.RESULTS_DIR)
    p.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR, help="where report.md and the plots go")
    p.add_argument("--readme", type=Path, default=None, help="rewrite this file's GENERATED sections")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--runs", type=Path, nargs="+", default=[], help="run directories whose curves --curves draws")
    p.add_argument("--curves", type=Path, default=None, help="PNG of the --runs' training curves")
    args = p.parse_args(argv)
    missing = [f for f in [*args.files, *(r / "metrics.jsonl" for r in args.runs), args.readme]
               if f and not f.is_file()]
    if missing or bool(args.runs) != bool(args.curves):
        p.error(f"{missing[0]}: no such file" if missing else "--runs and --curves go together")
    if args.curves:
        print(f"report.py: training curves -> {curves_plot(args.runs, args.curves)}")
        if not args.files and args.readme is None:
            return 0
    found = load_results(args.files or sorted(args.results_dir.glob("*.json")))
    try:
        plots = {} if args.no_plots else {
            path: throughput_plot(data, args.out_dir / f"{path.stem}.png") for path, data in found["throughput"]}
    except ImportError as e:  # matplotlib is optional: the tables are still written
        common.log(f"report.py: no plots ({e})")
        plots = {}
    text = args.readme.read_text() if args.readme else ""
    bodies = {marker: section(kind, found[kind], plots, args.readme.resolve().parent)
              for kind, (marker, _title) in SECTIONS.items()} if args.readme else {}
    if args.readme:  # the shipped weights' table, from their manifest rather than a result file
        bodies["pretrained"] = manifest.readme_markdown(manifest.read_manifest())
    for marker, body in bodies.items():
        begin, end = f"<!-- BEGIN GENERATED: {marker} -->", f"<!-- END GENERATED: {marker} -->"
        head, _, rest = text.partition(begin)
        if end not in rest:
            p.error(f"{args.readme} has no '{begin}' ... '{end}' markers")
        text = f"{head}{begin}\n{body}\n{end}{rest.partition(end)[2]}"
    write_text_atomic(args.out_dir / "report.md", "# Benchmark results\n\nGenerated by `python benchmarks/report.py` "
                      "from the JSON files beside this one.\n" + "".join(
                          f"\n## {title}\n\n{section(k, found[k], plots, args.out_dir.resolve())}\n"
                          for k, (_marker, title) in SECTIONS.items()))
    if args.readme:
        write_text_atomic(args.readme, text)
    print(f"report.py: {', '.join(f'{len(v)} {k}' for k, v in found.items())} -> {args.out_dir / 'report.md'}"
          + (f", {args.readme}" if args.readme else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
