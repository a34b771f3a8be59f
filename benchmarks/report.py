#!/usr/bin/env python
"""Markdown tables and PNG plots from benchmark results, and the README's generated sections.

    python benchmarks/report.py                          # benchmarks/results/*.json -> benchmarks/results/
    python benchmarks/report.py --readme README.md       # also rewrite the README's generated sections
    python benchmarks/report.py run1.json run2.json --out-dir /tmp/report --no-plots

Writes <out-dir>/report.md, one <result-file-stem>.png per result file (images/s bars per depth and
loader; accuracy-versus-time curves), and, with --readme, replaces what lies between
``<!-- BEGIN GENERATED: throughput -->`` and ``<!-- END GENERATED: throughput -->`` (and the same
for ``time_to_accuracy``, and for ``paper`` where the README has those markers). With no results a
section reads "Not measured yet."; the paper table (all paper_run files of benchmarks/reproduce.py in
one table) then still lists the published figures, with "not measured" beside them.
matplotlib is imported only to draw the plots; without it the tables are still written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed

from benchmarks import common  # noqa: E402
from fastcifar.files import write_text_atomic  # noqa: E402

KINDS = ("throughput", "time_to_accuracy", "paper_run")
IGNORED_KINDS = ("paper_status",)  # reproduce.py's progress file, beside its results
NOT_MEASURED = "Not measured yet."
DASH = "—"


# ---- formatting ------------------------------------------------------------------------------------
def cell(text) -> str:
    """Table-safe: no pipes or newlines, long error messages cut."""
    text = str(text).replace("|", "/").replace("\n", " ")
    return text if len(text) <= 90 else text[:87] + "..."


def num(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    return f"{value:,.{digits}f}"


def rate_cell(fig) -> str:
    """'median (min–max)' images/s, or the error."""
    if fig is None:
        return DASH
    if not common.has_rate(fig):
        return cell(f"error: {fig.get('error', '?')}")
    r = fig["images_per_s"]
    return f"{num(r['median'])} ({num(r['min'])}–{num(r['max'])})"


def tflops_cell(fig) -> str:
    return f"{fig['tflops']['median']:.3g}" if common.has_rate(fig) and "tflops" in fig else DASH


def ratio_cell(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return DASH if value is None else f"{value:.{digits}f}{suffix}"


def memory_cell(fig) -> str:
    peak = fig.get("peak_memory_bytes") if common.has_rate(fig) else None
    return DASH if peak is None else f"{peak / 2**30:.2f} GiB"


def mean_std_cell(stat: dict | None, digits: int | None = 1, unit: str = "") -> str:
    """'mean ± std'; digits None: 1 decimal below 100, none above (for seconds)."""
    if not stat or stat.get("mean") is None:
        return DASH
    if digits is None:
        digits = 1 if abs(stat["mean"]) < 100 else 0
    return f"{stat['mean']:,.{digits}f} ± {stat['std']:,.{digits}f}{unit}"


def header(result: dict) -> str:
    env = result.get("environment", {})
    device = env.get("gpu") or env.get("cpu") or "cpu"
    if env.get("gpu_count", 0) > 1:
        device = f"{env['gpu_count']} x {device}"
    git = env.get("git") or {}
    commit = (git.get("commit") or "unknown")[:10] + (" (dirty)" if git.get("dirty") else "")
    parts = [f"torch {env.get('torch', '?')}"]
    if env.get("cuda"):
        parts.append(f"CUDA {env['cuda']}")
    if env.get("driver"):
        parts.append(f"driver {env['driver']}")
    if env.get("dali"):
        parts.append(env["dali"])
    incomplete = "" if result.get("complete", True) else " (incomplete run)"
    return (f"**{device}**, {', '.join(parts)}; {env.get('date', '?')}, commit {commit}{incomplete}.  \n"
            f"`{env.get('command', '?')}`")


# ---- throughput ------------------------------------------------------------------------------------
def seed_style_label(setting: dict) -> str:
    return (f"seed-style (torchvision, {setting['workers']} workers, fp32, NCHW, eager, "
            f"batch {setting['batch_size']})")


def throughput_markdown(result: dict) -> str:
    s = result["settings"]
    lines = [header(result), "",
             f"Batch {s['batch_size']}, amp {s['amp']}, compile {'on' if s['compile'] else 'off'}, "
             f"channels_last {'on' if s['channels_last'] else 'off'}, {s['workers']} torchvision workers, "
             f"{s['data']} data; median (min–max) images/s over {s['repeats']} x {s['steps']} steps after "
             f"{s['warmup']} warm-up steps (at least one epoch of batches where a loader feeds the steps). "
             "TFLOP/s counts 3x the forward FLOPs per image.", ""]
    model_rows, loader_rows = [], []
    for r in result["results"]:
        model, base = r["model_alone"], r.get("seed_style")
        compile_s = num(model.get("compile_seconds_estimate"), 1) if common.has_rate(model) else DASH
        model_rows.append([
            r["depth"], num(r["params"]), f"{r['macs_per_image'] / 1e6:,.1f} M", rate_cell(model),
            tflops_cell(model), compile_s, memory_cell(model),
            rate_cell(base["model_alone"]) if base else DASH,
            ratio_cell(base["speedup_model_alone"], 1, "x") if base else DASH,
        ])
        for name, e in r["loaders"].items():
            if e.get("error"):
                loader_rows.append([r["depth"], name, cell(f"unavailable: {e['error']}"), *[DASH] * 5])
                continue
            speedup = base["speedup_end_to_end"].get(name) if base else None
            loader_rows.append([r["depth"], name, rate_cell(e["loader_alone"]), rate_cell(e["end_to_end"]),
                                ratio_cell(e.get("ratio_end_to_end_to_model")), tflops_cell(e["end_to_end"]),
                                memory_cell(e["end_to_end"]), ratio_cell(speedup, 1, "x")])
        if base:
            loader_rows.append([r["depth"], seed_style_label(base["setting"]), DASH,
                                rate_cell(base["end_to_end"]),
                                ratio_cell(common.median_ratio(base["end_to_end"], base["model_alone"])),
                                tflops_cell(base["end_to_end"]), memory_cell(base["end_to_end"]), "1.0x"])
    lines.append(common.markdown_table(
        ["depth", "params", "MACs/image", "model alone (img/s)", "TFLOP/s", "compile (s)", "peak memory",
         "seed-style model alone (img/s)", "speed-up"], model_rows))
    lines += ["", common.markdown_table(
        ["depth", "loader", "loader alone (img/s)", "end to end (img/s)", "end to end / model alone",
         "TFLOP/s", "peak memory", "vs seed-style"], loader_rows)]
    return "\n".join(lines)


def throughput_plot(result: dict, path: Path) -> Path:
    plt = pyplot()
    results = result["results"]
    series: dict[str, list] = {"model alone": [r["model_alone"] for r in results]}
    for name in result["settings"]["loaders"]:
        series[f"{name} end to end"] = [r["loaders"].get(name, {}).get("end_to_end") for r in results]
    if any(r.get("seed_style") for r in results):
        series["seed-style end to end"] = [(r.get("seed_style") or {}).get("end_to_end") for r in results]
    series = {k: v for k, v in series.items() if any(common.has_rate(f) for f in v)}  # unavailable: no bar
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(results) + 2), 4.5))
    width = 0.8 / max(1, len(series))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, figs) in enumerate(series.items()):
        xs, ys, lo, hi = [], [], [], []
        for j, f in enumerate(figs):
            if common.has_rate(f):
                r = f["images_per_s"]
                xs.append(j + (i - (len(series) - 1) / 2) * width)
                ys.append(r["median"])
                lo.append(r["median"] - r["min"])
                hi.append(r["max"] - r["median"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=label, color=colours[i % len(colours)])
    ax.set_xticks(range(len(results)), [f"ResNet-{r['depth']}" for r in results])
    ax.set_yscale("log")  # ResNet-20 and ResNet-1202 differ by ~70x
    ax.set_ylabel("images / s (median, min–max)")
    s = result["settings"]
    ax.set_title(f"Training throughput, {s['device_name']}, batch {s['batch_size']}")
    ax.legend(fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)
    return save(fig, path)


# ---- time to accuracy ------------------------------------------------------------------------------
def crossing_cell(block: dict | None) -> str:
    first = (block or {}).get("first_crossing_seconds")
    if not first or first.get("mean") is None:
        return DASH
    return f"{mean_std_cell(first, None, ' s')} ({first['count']}/{first['runs']} runs)"


def time_cell(block: dict | None, key: str = "wall_seconds") -> str:
    if not block or block.get("target") is None:
        return DASH
    if block["status"] != "reached":
        return f"not reached (best mean final {block['best_mean_final_top1']:.2f}%)"
    return mean_std_cell(block[key], None, " s")


def time_to_accuracy_markdown(result: dict) -> str:
    s = result["settings"]
    lines = [header(result), "",
             f"Target {s['target']}% test top-1 on {s['data']}, {s['seeds']} seed(s) per recipe, loader "
             f"{s['loader'] or 'from the recipe'}, {s['world_size']} process(es). Time to target = wall time "
             "of the fastest recipe whose mean final accuracy reaches the target (mean ± std over seeds), "
             "with and without the estimated compile time; the first crossing picks the epoch on the test "
             "set and is shown for reference only.", ""]
    rows = []
    for d in result["depths"]:
        recipes = d["recipes"]
        t, p = d["time_to_target"], d.get("time_to_paper")
        chosen = recipes[t["recipe"]] if t.get("recipe") is not None else best_recipe(recipes)
        rows.append([
            d["depth"], cell(recipe_label(chosen)) if chosen else DASH, chosen["seeds"] if chosen else 0,
            mean_std_cell(chosen["final_top1"], 2, "%") if chosen else DASH,
            time_cell(t), time_cell(t, "wall_seconds_without_compile") if t["status"] == "reached" else DASH,
            crossing_cell(t),
            num(d.get("paper_top1"), 2), time_cell(p) if p else DASH,
        ])
    lines.append(common.markdown_table(
        ["depth", "recipe", "seeds", "final top-1", f"time to {s['target']:g}%", "without compile",
         "first crossing (test-selected)", "paper top-1", "time to paper top-1"], rows))
    return "\n".join(lines)


def best_recipe(recipes: list[dict]) -> dict | None:
    scored = [r for r in recipes if r["final_top1"].get("mean") is not None]
    return max(scored, key=lambda r: r["final_top1"]["mean"]) if scored else None


def recipe_label(recipe: dict) -> str:
    return f"{Path(recipe['config']).name}, {recipe['epochs']} epochs, batch {recipe['batch_size']}"


def time_to_accuracy_plot(result: dict, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    seen: list[float] = []
    for i, d in enumerate(result["depths"]):
        colour = colours[i % len(colours)]
        for k, recipe in enumerate(d["recipes"]):
            label = f"ResNet-{d['depth']}" + (f", {recipe['epochs']} ep" if len(d["recipes"]) > 1 else "")
            for j, run in enumerate(recipe["runs"]):
                points = [(c["wall_seconds"], c["top1"]) for c in run["curve"] if c.get("top1") is not None]
                if points:
                    xs, ys = zip(*points)
                    seen += ys
                    ax.plot(xs, ys, color=colour, alpha=0.85 if j == 0 else 0.35, lw=1.4 if j == 0 else 0.8,
                            marker="o", ms=2.5,
                            ls=("-", "--", ":", "-.")[k % 4], label=label if j == 0 else None)
    target = result["settings"]["target"]
    ax.axhline(target, color="black", ls="--", lw=0.8, label=f"target {target:g}%")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("test top-1 (%)")
    low, high = min([*seen, target]) - 2, max([*seen, target]) + 2  # the target line stays in view
    ax.set_ylim(max(0.0, low), min(100.5, high))
    ax.set_title("Test accuracy versus time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


# ---- the paper's table -----------------------------------------------------------------------------
# CIFAR-10 test top-1 (%). He et al. 2016 (Table 6) give error rates; akamaster/pytorch_resnet_cifar10
# reports the best epoch of its runs. The goal is what this project aims at with final-epoch figures.
AKAMASTER_TOP1 = {20: 91.73, 32: 92.63, 44: 93.10, 56: 93.39, 110: 93.68}
GOAL_TOP1 = {20: 91.7, 32: 92.6, 44: 93.1, 56: 93.4, 110: 93.7}
NOT_RUN = "not measured"


def final_cell(values: list[float]) -> str:
    """'mean ± sample std' over seeds; '—' for the std of a single run."""
    mean, std = common.mean_std(values)
    return f"{mean:.2f} ± {std:.2f}" if len(values) > 1 else f"{mean:.2f} ± {DASH}"


def signed(value: float) -> str:
    return f"{value:+.2f}" if round(value, 2) else "+0.00"  # never '-0.00'


def paper_runs(results: list[dict]) -> dict[int, list[dict]]:
    """CIFAR-10 runs by depth, one per (depth, seed): the latest when a seed was run again."""
    latest: dict[tuple[int, int], dict] = {}
    for r in results:
        if r.get("dataset", "cifar10") != "cifar10":
            print(f"report.py: paper table: skipping resnet{r['depth']} seed {r['seed']} on {r['dataset']}",
                  file=sys.stderr)
            continue
        key = (r["depth"], r["seed"])
        if key in latest:
            print(f"report.py: paper table: resnet{key[0]} seed {key[1]} appears twice; the latest counts",
                  file=sys.stderr)
        if key not in latest or r.get("finished_at", "") >= latest[key].get("finished_at", ""):
            latest[key] = r
    by_depth: dict[int, list[dict]] = {}
    for (depth, _seed), r in sorted(latest.items()):
        by_depth.setdefault(depth, []).append(r)
    return by_depth


def paper_markdown(results: list[dict]) -> str:
    by_depth = paper_runs(results)
    epochs = sorted({r["epochs"] for runs in by_depth.values() for r in runs})
    lines = ["CIFAR-10 test accuracy (%) of `benchmarks/reproduce.py` runs: the FINAL epoch of each run, "
             "mean ± sample std over seeds; no epoch or run is selected on the test set. The best top-1 "
             "seen during a run is shown for comparison with best-of-run figures only, not used for "
             "selection. Paper: He et al. 2016, Table 6 (from its error rates); akamaster: "
             "pytorch_resnet_cifar10, best epoch of a run."
             + (f" Runs of {', '.join(map(str, epochs))} epochs." if epochs else ""), ""]
    rows = []
    for depth in sorted({*common.PAPER_TABLE_DEPTHS, *by_depth}):
        runs = by_depth.get(depth, [])
        goal = GOAL_TOP1.get(depth)
        reference = [num(common.PAPER_TOP1.get(depth), 2), num(AKAMASTER_TOP1.get(depth), 2), num(goal, 1)]
        if not runs:
            rows.append([depth, NOT_RUN, NOT_RUN, NOT_RUN, NOT_RUN, *reference, NOT_RUN, NOT_RUN, NOT_RUN])
            continue
        top1 = [r["final_top1"] for r in runs]
        best = [r["best_top1_seen"] for r in runs if r.get("best_top1_seen") is not None]
        minutes = statistics.median(r["train_seconds"] / 60 for r in runs)
        gpus = ", ".join(dict.fromkeys(cell(r.get("device") or "?") for r in runs))
        rows.append([
            depth, f"{len(runs)} ({', '.join(str(r['seed']) for r in runs)})", final_cell(top1),
            final_cell([r["final_top5"] for r in runs]), num(statistics.fmean(best), 2) if best else DASH,
            *reference, signed(common.mean_std(top1)[0] - goal) if goal is not None else DASH,
            gpus, num(minutes, 1)])
    lines.append(common.markdown_table(
        ["depth", "runs (seeds)", "final top-1", "final top-5", "best-seen top-1 mean (not used for selection)",
         "paper", "akamaster best-of-run", "goal", "mean − goal", "GPU", "median train min/run"], rows))
    return "\n".join(lines)


# ---- files -----------------------------------------------------------------------------------------
def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


MARKDOWN = {"throughput": throughput_markdown, "time_to_accuracy": time_to_accuracy_markdown}
ONE_TABLE = {"paper_run": paper_markdown}  # every file of these kinds in one table, without plots
PLOTS = {"throughput": throughput_plot, "time_to_accuracy": time_to_accuracy_plot}
MARKERS = {"throughput": "throughput", "time_to_accuracy": "time_to_accuracy", "paper_run": "paper"}
OPTIONAL_MARKERS = ("paper_run",)  # READMEs from before the paper table keep working


def load_results(paths: list[Path]) -> dict[str, list[tuple[Path, dict]]]:
    """Results by kind, newest first. Files of another kind (or not JSON) are skipped with a note."""
    found: dict[str, list] = {k: [] for k in KINDS}
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"report.py: skipping {path}: {e}", file=sys.stderr)
            continue
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind in IGNORED_KINDS:
            continue
        if kind not in found:
            print(f"report.py: skipping {path}: not a benchmark result (kind {kind!r})", file=sys.stderr)
            continue
        found[kind].append((path, data))
    for kind in found:
        found[kind].sort(key=lambda item: item[1].get("environment", {}).get("date", ""), reverse=True)
    return found


def section(kind: str, results: list[tuple[Path, dict]], plots: dict[Path, Path], link_from: Path) -> str:
    """Every result of one kind, with its plot linked relative to the folder of the Markdown file."""
    if kind in ONE_TABLE:
        return ONE_TABLE[kind]([data for _path, data in results])
    if not results:
        return NOT_MEASURED
    parts = []
    for path, data in results:
        text = MARKDOWN[kind](data)
        if path in plots:
            rel = Path(os.path.relpath(plots[path], link_from)).as_posix()
            text += f"\n\n![{kind.replace('_', ' ')}: {path.stem}]({rel})"
        parts.append(text)
    return "\n\n".join(parts)


def write_plots(found, out_dir: Path) -> dict[Path, Path]:
    plots = {}
    for kind, results in found.items():
        if kind not in PLOTS:
            continue
        for path, data in results:
            try:
                plots[path] = PLOTS[kind](data, out_dir / f"{path.stem}.png")
            except ImportError as e:
                print(f"report.py: no plots ({e}); install matplotlib for them", file=sys.stderr)
                return plots
    return plots


TITLES = {"throughput": "Throughput", "time_to_accuracy": "Time to accuracy",
          "paper_run": "Reproducing the paper's table"}


def report_markdown(found, plots, out_dir: Path) -> str:
    parts = ["# Benchmark results", "",
             "Generated by `python benchmarks/report.py` from the JSON files beside this one."]
    for kind in KINDS:
        parts += ["", f"## {TITLES[kind]}", "", section(kind, found[kind], plots, out_dir)]
    return "\n".join(parts) + "\n"


def rewrite_readme(readme: Path, found, plots) -> None:
    text = readme.read_text()
    for kind in KINDS:
        begin, end = f"<!-- BEGIN GENERATED: {MARKERS[kind]} -->", f"<!-- END GENERATED: {MARKERS[kind]} -->"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if not pattern.search(text) and kind in OPTIONAL_MARKERS:
            print(f"report.py: {readme} has no '{begin}' markers; its {kind} table is not written",
                  file=sys.stderr)
            continue
        if not pattern.search(text):
            raise SystemExit(f"report.py: error: {readme} has no '{begin}' ... '{end}' markers")
        body = section(kind, found[kind], plots, readme.resolve().parent)
        text = pattern.sub(lambda _m: f"{begin}\n{body}\n{end}", text, count=1)
    write_text_atomic(readme, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="report.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", type=Path, help="result JSON files (default: RESULTS_DIR/*.json)")
    p.add_argument("--results-dir", type=Path, default=common.RESULTS_DIR,
                   help="where to look for results when no files are given")
    p.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR, help="where report.md and PNGs go")
    p.add_argument("--readme", type=Path, default=None,
                   help="rewrite this file's GENERATED sections (e.g. README.md)")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    for f in args.files:
        if not f.is_file():
            p.error(f"{f}: no such file")
    if args.readme is not None and not args.readme.is_file():
        p.error(f"--readme {args.readme}: no such file")
    files = args.files or sorted(args.results_dir.glob("*.json"))
    found = load_results(files)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    plots = {} if args.no_plots else write_plots(found, args.out_dir)
    report = args.out_dir / "report.md"
    write_text_atomic(report, report_markdown(found, plots, args.out_dir.resolve()))
    if args.readme is not None:
        rewrite_readme(args.readme, found, plots)
    counts = ", ".join(f"{len(v)} {k}" for k, v in found.items())
    print(f"report.py: {counts} result(s) -> {report}" + (f", {args.readme}" if args.readme else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
