"""Tables and throughput plots from benchmark results into report.md and the README's sections between
<!-- BEGIN GENERATED: K --> and <!-- END GENERATED: K --> (K: throughput, time_to_accuracy, paper, cpu_side_by_side, packing, profile, airbench, and pretrained from
fastcifar/weights/manifest.json); training curves.

    python benchmarks/report.py --readme README.md       # benchmarks/results/*.json -> report.md, PNGs, README
    python benchmarks/report.py --runs runs/resnet56 runs/resnet20 --curves curves.png   # training curves
"""

import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from fastcifar.bench import common
from fastcifar import manifest, rundir
from fastcifar.files import write_text_atomic

# result kind -> (README marker, report.md title)
SECTIONS = {"throughput": ("throughput", "Throughput"), "time_to_accuracy": ("time_to_accuracy", "Time to accuracy"),
            "paper_run": ("paper", "Reproducing the paper's table"),
            "cpu_side_by_side": ("cpu_side_by_side", "run.py against the seed-style baseline on a CPU"),
            "packing": ("packing", "Several runs on one GPU"),
            "profile_step": ("profile", "Where the time goes"),
            "airbench_side_by_side": ("airbench", "Side by side with airbench")}
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


def flops_unit(result: dict) -> tuple[str, float]:
    """TFLOP/s on a GPU; GFLOP/s on a CPU, where TFLOP/s would read 0.0."""
    s = result["settings"]
    return ("GFLOP/s", 1e3) if s.get("device", s.get("device_name")) == "cpu" else ("TFLOP/s", 1.0)


def tflops(fig, scale: float = 1.0) -> str:
    return num(fig["tflops"]["median"] * scale, 1) if fig and fig.get("tflops") else DASH


def committed_in(path: Path | None) -> str | None:
    """The commit that added a result file to the repository (its code is at most that new), via git."""
    if path is None:
        return None
    try:
        out = subprocess.run(["git", "log", "--diff-filter=A", "--format=%h", "-1", "--", Path(path).resolve()],
                             capture_output=True, text=True, timeout=20, cwd=Path(path).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def stale_command(result: dict) -> str | None:
    """Why today's script rejects the result's recorded command (a renamed flag), or None."""
    words = shlex.split(result.get("environment", {}).get("command") or "")
    script = next((i for i, w in enumerate(words) if w.endswith("throughput.py") or w.endswith(".throughput")), None)
    if result.get("kind") != "throughput" or script is None:
        return None
    return common.rejection(common.throughput_parser(), words[script + 1:])


def header(result: dict, path: Path | None = None) -> str:
    env = result.get("environment", {})
    git, device = env.get("git") or {}, env.get("gpu") or env.get("cpu") or "cpu"
    count = f"{env['gpu_count']} x " if env.get("gpu_count", 0) > 1 else ""
    versions = [f"torch {env.get('torch', '?')}", env.get("cuda") and f"CUDA {env['cuda']}",
                env.get("driver") and f"driver {env['driver']}", env.get("dali")]
    commit = git.get("commit")
    added = None if commit else committed_in(path)
    made = f"{commit[:10]}" if commit else "unknown" + (f" (the result was committed in {added})" if added else "")
    stale = stale_command(result)
    code = f" with the code of {commit[:10] if commit else added}{'' if commit else ' or older'}" if commit or added else ""
    note = (f"  \nAs run then{code}; today's throughput.py rejects it: {stale}. Rerun with today's options "
            "(`--help`) to reproduce." if stale else "")
    return (f"**{count}{device}**, {', '.join(filter(None, versions))}; {env.get('date', '?')}, commit "
            f"{made}{' (dirty)' if git.get('dirty') else ''}"
            f"{'' if result.get('complete', True) else ' (incomplete run)'}.  \n`{env.get('command', '?')}`{note}")


# ---- throughput ------------------------------------------------------------------------------------
def batches(result: dict, r: dict) -> list[dict]:
    """Per batch size; a schema-1 file measured one, and estimated its compile time."""
    if "batches" in r:
        return r["batches"]
    return [{"batch_size": result["settings"]["batch_size"], "loaders": r["loaders"], "model_alone": r["model_alone"]}]


def throughput_markdown(result: dict, path: Path | None = None) -> str:
    s = result["settings"]
    cfg, bw = s.get("config", s), s.get("peak_bandwidth")  # schema 1: the config in the settings
    on = {k: "on" if cfg.get(k) in (True, "true") else "off" for k in ("compile", "channels_last", "cuda_graph")}
    unit, scale = flops_unit(result)
    gpu = unit == "TFLOP/s"  # a CPU result has no bandwidth, memory or CUDA graph to show
    model_rows, loader_rows = [], []
    for r in result["results"]:
        base, bs = r.get("seed_style"), batches(result, r)
        for b in bs:  # a run still going (or killed) has figures still None
            m = b.get("model_alone") or {}
            c = m.get("compile_seconds")
            estimate = num(m.get("compile_seconds_estimate"), 1, " (estimate)")  # schema 1
            compile_ = f"{c['cold']:.1f} / {c['warm']:.1f}" if c else estimate
            model_rows.append([r["depth"], b["batch_size"], num(r["params"]), f"{r['macs_per_image'] / 1e6:,.1f} M",
                               rate(m), tflops(m, scale), num(b.get("bytes_per_image") and b["bytes_per_image"] / 1e6, 2),
                               *([num(m.get("bandwidth_fraction") and 100 * m["bandwidth_fraction"], 0, "%")] if gpu
                                 else []), compile_,
                               *([num(m.get("peak_memory_bytes") and m["peak_memory_bytes"] / 2**30, 2)] if gpu else [])])
            for name, e in b["loaders"].items():
                speed = (base or {}).get("speedup_end_to_end", {}).get(name) if b is bs[0] else None
                rel = num(e.get("ratio_end_to_end_to_model"), 2, " (suspect)" if e.get("suspect") else "")
                loader_rows.append([r["depth"], b["batch_size"], name, rate(e.get("loader_alone"))
                                    if not e.get("error") else f"unavailable: {e['error']}"[:90],
                                    rate(e.get("end_to_end")), rel, tflops(e.get("end_to_end"), scale),
                                    num(speed, 1, "x")])
        if base:
            st, e2e = base["setting"], base["end_to_end"]
            loader_rows.append([r["depth"], st["batch_size"], f"seed-style (torchvision, {st['workers']} workers, "
                                f"fp32, NCHW, eager; model alone {rate(base['model_alone'])})", DASH, rate(e2e),
                                num(base.get("ratio_end_to_end_to_model"), 2), tflops(e2e, scale), "1.0x"])
    workers = f"{s['workers']} torchvision workers, " if "workers" in s else ""
    settings = (f"amp {cfg['amp']}, compile {on['compile']}, channels_last {on['channels_last']}, " +
                (f"CUDA graph {on['cuda_graph']}, " if gpu else "") + f"{workers}{s['data']} data")
    bandwidth = (f", against a peak bandwidth of {num(bw and bw / 1e12, 2, ' TB/s') if bw else 'unknown'}"
                 if gpu else "")
    return "\n".join([
        header(result, path), "", f"{settings}; median (min–max) images/s "
        f"over {s['repeats']} x {s['steps']} steps after {s['warmup']} warm-up steps (loader-fed: at least an epoch). "
        f"{unit} counts 3x the forward FLOPs; MB/image is an estimate (see the JSON's bytes_convention){bandwidth}. "
        "Compile: first step minus a typical one, cold / warm inductor cache; empty when off.", "",
        common.markdown_table(["depth", "batch", "params", "MACs/image", "model alone (img/s)", unit, "MB/image (est.)",
                               *(["of peak bandwidth"] if gpu else []), "compile (s)", *(["peak GiB"] if gpu else [])],
                              model_rows), "",
        common.markdown_table(["depth", "batch", "loader", "loader alone (img/s)", "end to end (img/s)",
                               "end to end / model alone", unit, "vs seed-style"], loader_rows)])


def throughput_bars(result: dict) -> list[tuple[str, list[tuple[str, dict, bool]]]]:
    """Per (depth, batch) panel: (title, [(bar label, images/s figure, suspect)]), model alone first;
    a loader that could not run has no bar."""
    panels = []
    for r in result["results"]:
        for b in batches(result, r):
            bars = [("model alone", b.get("model_alone"), False)] + [
                (f"{n}\nend to end", e.get("end_to_end"), bool(e.get("suspect"))) for n, e in b["loaders"].items()]
            bars = [(label, f, suspect) for label, f, suspect in bars if f and "images_per_s" in f]
            if bars:
                panels.append((f"ResNet-{r['depth']}, batch {b['batch_size']}", bars))
    return panels


def throughput_figure(result: dict):
    """One panel per depth and batch, on a LINEAR scale from 0 (bar heights in the ratio of the figures, which a
    log scale hides: a model-alone bar 3x another looked about as tall), each end-to-end bar labelled with its
    fraction of the model alone; a suspect figure (end to end faster than the model alone) is hatched and says so."""
    from matplotlib.figure import Figure  # no pyplot: no display, nothing global to close

    panels = throughput_bars(result)
    fig = Figure(figsize=(max(6.0, 3.2 * len(panels)), 4.5))
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    for ax, (title, bars) in zip(axes, panels):
        model = bars[0][1]["images_per_s"]["median"] if bars[0][0] == "model alone" else None
        for j, (label, f, suspect) in enumerate(bars):
            r = f["images_per_s"]
            ax.bar(j, r["median"], 0.7, yerr=[[r["median"] - r["min"]], [r["max"] - r["median"]]], color=f"C{j}",
                   hatch="//" if suspect else None, edgecolor="black" if suspect else None)
            note = f"{r['median'] / model:.2f}x" if model and j else ""
            note += ("\nSUSPECT" if suspect else "")
            if note:
                ax.annotate(note.strip(), (j, r["max"]), ha="center", va="bottom", fontsize=8,
                            color="red" if suspect else "black")
        ax.set_xticks(range(len(bars)), [label for label, _, _ in bars], fontsize=8)
        ax.set_ylim(0, 1.2 * max(f["images_per_s"]["max"] for _, f, _ in bars))
        ax.set(title=title, ylabel="images / s (median, min–max)", xlabel="above a bar: x model alone")
    fig.suptitle(f"Training throughput, {result['settings']['device_name']}")
    return fig


def throughput_plot(result: dict, path: Path) -> Path:
    return save(throughput_figure(result), path)


# ---- time to accuracy ------------------------------------------------------------------------------
def time_cell(block: dict | None, key: str = "wall_seconds") -> str:
    if block and block["status"] != "reached":
        return f"not reached (best mean final {block['best_mean_final_top1']:.2f}%)"
    return mean_std(block and block[key], 0, " s")


def time_to_accuracy_markdown(result: dict, path: Path | None = None) -> str:
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
    combined = (f" Combined from {len(result['combined_from'])} result files (seeds "
                f"{', '.join(map(str, s['seed_list']))}): {', '.join(result['combined_from'])}." if result.get("combined_from") else "")
    return "\n".join([header(result, path), "", f"Target {s['target']}% test top-1 on {s['data']}, {s['seeds']} seed(s) per "
                      f"recipe, {s['world_size']} process(es). Time to target: wall time of the fastest recipe whose "
                      "MEAN FINAL accuracy reaches it (mean ± std over seeds), with and without compile time "
                      f"(measured, cold cache each run).{combined}", "", common.markdown_table(
                          ["depth", "recipe", "seeds", "final top-1", f"time to {s['target']:g}%", "without compile",
                           "compile", "paper top-1", "time to paper top-1"], rows)])


# ---- run.py against the baseline on a CPU ---------------------------------------------------------
def cpu_side_by_side_markdown(result: dict, path: Path | None = None) -> str:
    s, rows = result["settings"], []

    def cell(fig: dict | None) -> str:
        if not fig or fig.get("median") is None:
            return f"error: {fig['errors'][0]}"[:90] if fig and fig.get("errors") else DASH
        return f"{num(fig['median'])} ({num(fig['min'])}–{num(fig['max'])})"

    for condition, by in result["figures"].items():
        row = [condition if condition == "idle" else "one competing CPU-bound process", cell(by.get("baseline"))]
        for name in s["loaders"]:
            verdict = result.get("verdicts", {}).get(f"{condition}/run.py {name}") or {}
            ratio = verdict.get("ratio_to_baseline")
            threads = sorted({x.get("torch_threads") for x in result["samples"][condition][f"run.py {name}"]
                              if x.get("torch_threads")})
            row += [cell(by.get(f"run.py {name}")), DASH if ratio is None else
                    f"{ratio:.2f}x" + ("" if ratio >= 1 else " (below the baseline)"),
                    ", ".join(map(str, threads)) or DASH]
        rows.append(row)
    headers = ["machine", "seed-style baseline (img/s)"]
    for name in s["loaders"]:
        headers += [f"run.py, {name} (img/s)", "vs baseline", "torch threads"]
    return "\n".join([header(result, path), "", f"ResNet-{s['depth']}, batch {s['batch_size']}, {s['images']:,} synthetic "
                      f"training images; median (min–max) of {s['repeats']} interleaved repeats, each a fresh process. "
                      f"run.py: the images/s of its one epoch, first step included; baseline: throughput.py's "
                      f"seed-style end to end (torchvision, {s['baseline_workers']} workers, fp32, NCHW, eager) over "
                      f"{s['baseline_steps']} steps after an epoch of warm-up.", "",
                      common.markdown_table(headers, rows)])


# ---- several runs on one GPU ---------------------------------------------------------------------------
def packing_markdown(result: dict, path: Path | None = None) -> str:
    from fastcifar.bench import packing

    s, best = result["settings"], result.get("best")
    overrides = f" with {' '.join(result['overrides'])}" if result.get("overrides") else ""
    verdict = (f" Most images/s: {best['n']} at once (`reproduce.py --parallel {best['n']}`)." if best
               else "") + (f" Stopped: {result['error']}" if result.get("error") else "")
    return "\n".join([header(result, path), "", f"`{result['recipe']}`{overrides}: N runs at once, stopped {s['seconds']:g} s "
                      f"after all of them were past {s['warmup_steps']} steps; total images/s while all of them "
                      f"train, median (min–max) of {s['windows']} equal parts of that window.{verdict}", "",
                      packing.markdown(result["counts"]) if result["counts"] else "No count measured."])


# ---- where the time goes ------------------------------------------------------------------------------
def profile_parts_markdown(parts: dict) -> str:
    def ms(v):
        return DASH if v is None else f"{v:.3f}"

    rows = [[name, ms(p["wall_ms_per_step"]), ms(p["device_busy_ms_per_step"]),
             DASH if p["device_idle_fraction"] is None else f"{100 * p['device_idle_fraction']:.0f}%",
             DASH if p["device_ops_per_step"] is None else f"{p['device_ops_per_step']:.0f}",
             ms(p["waiting_for_data_ms_per_step"])] for name, p in parts.items()]
    lines = [common.markdown_table(["part", "wall ms/step", "device busy ms/step", "device idle", "device ops/step",
                                    "next batch ms/step"], rows)]
    for name, p in parts.items():
        top = p["top_device"] or p["top_host"]
        where = "device" if p["top_device"] else "host"
        lines += ["", f"{name}: top {where} time", common.markdown_table(
            ["op", "calls/step", "ms/step"], [[t["op"][:80], f"{t['calls_per_step']:.1f}", f"{t['ms_per_step']:.3f}"]
                                               for t in top[:8]])]
    return "\n".join(lines)


def profile_markdown(result: dict, path: Path | None = None) -> str:
    s = result["settings"]
    rt = s["runtime"]
    return "\n".join([header(result, path), "", f"ResNet-{s['depth']}, batch {s['batch_size']}, {s['loader']} on "
                      f"{s['data']} data; amp {rt['amp_dtype']}, compile {rt['compile']} ({rt['compile_mode']}), "
                      f"CUDA graph {rt['cuda_graph']}; {s['steps']} profiled steps after {s['warmup']}. Device busy: "
                      "the sum of its kernels and copies; idle: the share of the step's wall time it was not.", "",
                      profile_parts_markdown(result["parts"])])


# ---- side by side with the speed peer ------------------------------------------------------------------
def airbench_markdown(result: dict, path: Path | None = None) -> str:
    from fastcifar.bench import airbench_side_by_side

    ratio = (result.get("comparison") or {}).get("fastcifar_seconds_over_airbench94")
    return "\n".join([header(result, path), "", "airbench94 and this project's time to "
                      f"{result['settings']['target']:g}% on the same GPU in one command; airbench's seconds cover "
                      "its published scope (whitening, training, test-time augmentation), ours the whole run "
                      "with compile." + (f" Ours / airbench's: {ratio:.1f}x." if ratio else ""), "",
                      airbench_side_by_side.markdown(result)])


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
def run_label(run_dir: Path) -> str:
    """The run's model (from its config.yaml), and the folder's name where that says more: 'resnet56 (seed1)'."""
    import yaml

    try:
        model = ((yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}).get("model") or {}).get("name")
    except (OSError, yaml.YAMLError, AttributeError):
        model = None
    name = Path(run_dir).name
    return name if not model or model == name else f"{model} ({name})"


def curves_figure(run_dirs: list[Path]):
    """Train loss and learning rate (every logged step) and test top-1 (evaluated epochs) of each run,
    each panel with its own legend naming the runs' models."""
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
                ax.plot(*zip(*pts), color=f"C{i}", marker="o" if ax is axes[2] else None, ms=3,
                        label=run_label(run_dir))
    for ax, what in zip(axes, ("train loss", "learning rate", "test top-1 (%)")):
        ax.set(xlabel="epoch", ylabel=what)
        if ax.get_lines():
            ax.legend(fontsize=8)
    return fig


def curves_plot(run_dirs: list[Path], path: Path) -> Path:
    return save(curves_figure(run_dirs), path)


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
    if kind == "time_to_accuracy":  # one seed per command on a GPU machine: their files make one result
        from fastcifar.bench.tta_records import combine

        results = combine(results)
    markdown = {"throughput": throughput_markdown, "time_to_accuracy": time_to_accuracy_markdown,
                "cpu_side_by_side": cpu_side_by_side_markdown, "packing": packing_markdown,
                "profile_step": profile_markdown, "airbench_side_by_side": airbench_markdown}[kind]
    parts = [markdown(data, path) + (
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
