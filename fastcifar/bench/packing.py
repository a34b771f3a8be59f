"""Several training runs on one GPU: for each count N in --counts, N `fastcifar train RECIPE` processes
started at once (seeds 0..N-1), and their TOTAL images/s while all of them train. The count with the
highest total is the packing for `reproduce.py --parallel N`.

The runs train until every one of them is past --warmup-steps (start-up, compile and autotuning stay out),
then --seconds more, and are stopped with SIGTERM (each stops at its next step; --steps caps a run's steps
in case the stop never comes). The measurement comes from each run's metrics.jsonl step lines (step and
Unix time, train.log_every steps apart): the common window starts when the last run to get there is past
--warmup-steps and ends when the first run to end logs its last step line. A run's steps at any time in
between are interpolated linearly between its step lines; the window is split into --windows equal parts,
and each part's total images/s is the sum over the runs of their images in it (steps x batch size) over
its length. Reported: the median and min-max of the parts' totals, each run's median images/s and its
seconds from start to its first step line (start-up + compile). The runs do not evaluate before their last
step: a first evaluation compiles the eval model, seconds that would land in the window. --section.key=value
goes to every run. The JSON is written after every count; a failed run, no common window, --timeout or
SIGTERM stops the runs and the command, keeping what it measured.

Sizing: per count, start-up and compile (ResNet-20's cold compile took 20 s on an H100 in
benchmarks/results/ of 2026-11-23; the later counts find torch.compile's on-disk cache warm), the warm-up
steps, then --seconds (15): about 4 x 50 s for the default counts 1 2 4 8, whatever the GPU's speed.

    python benchmarks/packing.py --counts 1 2 4 8 --data-root data --out benchmarks/results/packing.json
"""

from __future__ import annotations

import bisect
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from fastcifar import config as config_lib
from fastcifar import rundir
from fastcifar.bench import common
from fastcifar.data import load_cifar
from fastcifar.distributed import DEVICE_CHOICES, resolve_device
from fastcifar.errors import FastcifarError
from fastcifar.training.stopping import STOPPED_EXIT

SCHEMA_VERSION = 1
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding this fastcifar: a clone, or site-packages
NO_EVAL = 1_000_000  # train.eval_every, in epochs: a run cut short by train.max_steps evaluates only at its end
# keys packing.py sets for every run, and the option that sets each (None: not to be changed)
RESERVED = {"train.max_steps": "--steps", "train.seed": None, "train.run_dir": "--runs-root",
            "train.progress": None, "train.checkpoint_minutes": None, "train.resume": None,
            "data.root": "--data-root", "data.download": None, "train.device": "--device"}


def log(*parts) -> None:
    print("packing.py:", *parts, file=sys.stderr, flush=True)  # sys.stderr at each call: a redirection applies


class Unmeasurable(Exception):
    """The runs' timelines give no figure (one line, for the user)."""


# ---- the arithmetic: pure functions of the runs' step lines -----------------------------------------
def step_lines(records: list[dict]) -> list[tuple[float, float]]:
    """(time, step) of a run's step lines, in order; epoch records ("train_loss") and events are not."""
    return [(r["time"], r["step"]) for r in records
            if "step" in r and "time" in r and "train_loss" not in r and "event" not in r]


def steps_at(timeline: list[tuple[float, float]], t: float) -> float:
    """The run's step count at time t, linear between its step lines; t within the timeline."""
    times = [time_ for time_, _ in timeline]
    if not times or not times[0] <= t <= times[-1]:
        raise ValueError(f"time {t} outside the run's step lines")
    i = min(bisect.bisect_right(times, t), len(times) - 1)  # times[i - 1] <= t <= times[i]
    (ta, sa), (tb, sb) = timeline[i - 1], timeline[i]
    return sb if tb == ta else sa + (sb - sa) * (t - ta) / (tb - ta)


def common_window(timelines: list[list[tuple[float, float]]], warmup_steps: int) -> tuple[float, float]:
    """(t0, t1): from the time the last run is past warmup_steps (its first step line at or beyond
    them) to the time the first run logs its last step line."""
    starts = []
    for i, timeline in enumerate(timelines):
        past = [t for t, step in timeline if step >= warmup_steps]
        if not past:
            raise Unmeasurable(f"run {i} has no step line at or past step {warmup_steps} (--warmup-steps); "
                               "raise --steps")
        starts.append(past[0])
    t0, t1 = max(starts), min(timeline[-1][0] for timeline in timelines)
    if t1 <= t0:
        raise Unmeasurable(f"no common window: a run finished {t0 - t1:.1f} s before the last one was past its "
                           f"{warmup_steps} warm-up steps; raise --steps")
    return t0, t1


def window_rates(timelines: list[list[tuple[float, float]]], batch_sizes: list[int], t0: float, t1: float,
                 windows: int) -> list[list[float]]:
    """rates[w][r]: run r's images/s in the w-th of `windows` equal parts of [t0, t1]."""
    edges = [t0 + (t1 - t0) * k / windows for k in range(windows)] + [t1]
    return [[(steps_at(tl, b) - steps_at(tl, a)) * batch / (b - a) for tl, batch in zip(timelines, batch_sizes)]
            for a, b in zip(edges, edges[1:])]


def summarize(rates: list[list[float]]) -> dict:
    """The totals over the windows (median, min, max, each window's) and each run's median."""
    totals = [sum(per_run) for per_run in rates]
    return {"total_images_per_s": {"median": statistics.median(totals), "min": min(totals), "max": max(totals),
                                   "values": totals},
            "run_medians": [statistics.median(column) for column in zip(*rates)]}


# ---- the runs ---------------------------------------------------------------------------------------
@dataclass
class Run:
    seed: int
    run_dir: Path
    command: list[str]
    proc: subprocess.Popen | None = None
    started: float = 0.0  # Unix time at the launch: lines up with the step lines' time
    ended: float | None = None

    @property
    def log_path(self) -> Path:
        return self.run_dir / "log.txt"


def parse_args(argv):
    p = common.parser("packing.py", __doc__)
    p.add_argument("--counts", type=common.positive_int, nargs="+", default=[1, 2, 4, 8],
                   help="runs at once, one measurement each")
    p.add_argument("--recipe", default="resnet20", help="the runs' config: a recipe name or a YAML file")
    p.add_argument("--steps", type=common.positive_int, default=100_000,
                   help="training steps per run at most (train.max_steps); --seconds normally ends the runs first")
    p.add_argument("--seconds", type=common.seconds, default=15.0,
                   help="seconds all runs train together past --warmup-steps; then they are stopped (SIGTERM)")
    p.add_argument("--warmup-steps", type=common.non_negative_int, default=200,
                   help="steps of each run left out (compile and autotuning land in the first ones)")
    p.add_argument("--windows", type=common.positive_int, default=5, help="equal parts of the common window")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument("--data-root", default="data", help="the data set's folder (nothing is downloaded)")
    p.add_argument("--runs-root", type=Path, default=Path("runs/packing"),
                   help="run directories: <runs-root>/n<N>/run<i>, replaced by each call")
    p.add_argument("--timeout", type=common.seconds, default=1800, help="seconds one count's runs may take")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "packing.json")
    args = common.parse_with_overrides(p, argv)
    args.counts = list(dict.fromkeys(args.counts))
    if args.warmup_steps >= args.steps:
        p.error(f"--warmup-steps {args.warmup_steps} must be below --steps {args.steps}")
    for override in args.overrides:
        key = override[2:].partition("=")[0]
        if key in RESERVED:
            p.error(f"{override}: packing.py sets {key} for every run"
                    + (f" (use {RESERVED[key]})" if RESERVED[key] else ""))
    try:  # a bad recipe, override or device fails now, before any run starts
        args.resolved = resolve_device(args.device, key="--device")
        cfg = config_lib.load(args.recipe, run_overrides(args, 0, args.runs_root / "check"))
    except FastcifarError as e:
        p.error(str(e))
    if args.steps - args.warmup_steps < cfg.train.log_every:
        p.error(f"--steps {args.steps} leaves fewer than train.log_every={cfg.train.log_every} steps after "
                f"--warmup-steps {args.warmup_steps}: no step line to measure")
    try:  # not a usage error: one line, no usage text
        load_cifar(cfg.data.dataset, args.data_root, "train", download=False)
    except FastcifarError as e:
        p.exit(2, f"packing.py: error: --data-root: {e}\n")
    return args


def run_overrides(args, seed: int, run_dir: Path) -> list[str]:
    device = [f"--train.device={args.device}"] if args.device != "auto" else []
    return [f"--train.max_steps={args.steps}", f"--train.seed={seed}", f"--train.run_dir={run_dir}",
            "--train.progress=false", "--train.checkpoint_minutes=0", f"--data.root={args.data_root}",
            "--data.download=false", f"--train.eval_every={NO_EVAL}", *device, *args.overrides]


def plan(args, n: int) -> list[Run]:
    """N runs in <runs-root>/n<N>, which this call empties first: a fresh run appends to metrics.jsonl."""
    folder = args.runs_root / f"n{n}"
    if folder.exists():
        strangers = [p.name for p in folder.iterdir() if not re.fullmatch(r"run\d+", p.name)]
        if strangers:
            raise Unmeasurable(f"{folder} holds {strangers[0]}, which packing.py did not write; "
                               "move it or choose another --runs-root")
        shutil.rmtree(folder)
    return [Run(i, folder / f"run{i}", [sys.executable, "-u", "-m", "fastcifar", "train", args.recipe,
                                        *run_overrides(args, i, folder / f"run{i}")]) for i in range(n)]


def launch(runs: list[Run]) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))}
    for run in runs:
        run.run_dir.mkdir(parents=True)
        with open(run.log_path, "w") as f:
            f.write(shlex.join([Path(run.command[0]).name, *run.command[1:]]) + "\n")
            f.flush()  # before the run's own output
            run.started = time.time()
            run.proc = subprocess.Popen(run.command, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env)


def failure(run: Run, n: int) -> str:
    """One line: which run failed, why (its last error line) and where its log is."""
    lines = [line for line in run.log_path.read_text(errors="replace").splitlines()[1:] if line.strip()]
    errors = [line for line in lines if line.startswith("fastcifar train: ")]
    why = errors[-1] if errors else lines[-1] if lines else "no output"
    return f"N={n}: run {run.seed} failed (exit status {run.proc.returncode}: {why}); its log: {run.log_path}"


def past(run: Run, steps: int) -> bool:
    """Whether the run has logged a step line at or past `steps`."""
    lines = step_lines(rundir.records(run.run_dir))
    return bool(lines) and lines[-1][1] >= steps


def wait(runs: list[Run], n: int, args) -> None:
    """Until every run has ended: by its --steps, or by the SIGTERM sent --seconds after every run is past
    --warmup-steps (a stop at its next step, exit STOPPED_EXIT). The first failure or --timeout ends the wait."""
    deadline, stop_at, signalled = time.monotonic() + args.timeout, None, False
    while any(r.ended is None for r in runs):
        for r in runs:
            if r.ended is None and r.proc.poll() is not None:
                r.ended = time.time()
                if r.proc.returncode != 0 and not (signalled and r.proc.returncode == STOPPED_EXIT):
                    raise Unmeasurable(failure(r, n))
        if stop_at is None and all(r.ended is not None or past(r, args.warmup_steps) for r in runs):
            stop_at = time.monotonic() + args.seconds  # every run trains from here: measure this long
        if stop_at is not None and not signalled and time.monotonic() >= stop_at:
            signalled = True
            for r in runs:
                if r.ended is None:
                    r.proc.send_signal(signal.SIGTERM)
        if time.monotonic() > deadline:
            left = [str(r.seed) for r in runs if r.ended is None]
            raise Unmeasurable(f"N={n}: run(s) {', '.join(left)} still running after --timeout {args.timeout:g} s; "
                               f"their logs: {runs[0].run_dir.parent}/run*/log.txt")
        time.sleep(0.25)


def kill(runs: list[Run]) -> None:
    for r in runs:
        if r.proc is not None and r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()


def measure(args, n: int) -> dict:
    runs = plan(args, n)
    log(f"N={n}: starting {n} run(s) of {args.steps} steps in {args.runs_root / f'n{n}'}")
    began = time.monotonic()
    try:
        launch(runs)
        wait(runs, n, args)
    finally:  # a failure, the timeout, a signal or Ctrl-C: leave no run behind
        kill(runs)
    wall = time.monotonic() - began
    timelines = [step_lines(rundir.records(r.run_dir)) for r in runs]
    batches = [yaml.safe_load((r.run_dir / "config.yaml").read_text())["train"]["batch_size"] for r in runs]
    t0, t1 = common_window(timelines, args.warmup_steps)
    figures = summarize(window_rates(timelines, batches, t0, t1, args.windows))
    per_run = [{"seed": r.seed, "run_dir": str(r.run_dir), "log": str(r.log_path), "batch_size": batch,
                "images_per_s_median": median, "seconds_to_first_step_line": tl[0][0] - r.started,
                "seconds": r.ended - r.started, "steps": tl[-1][1]}
               for r, tl, batch, median in zip(runs, timelines, batches, figures["run_medians"])]
    total = figures["total_images_per_s"]
    log(f"N={n}: {total['median']:,.0f} images/s in all ({total['min']:,.0f}-{total['max']:,.0f}) "
        f"over {t1 - t0:.1f} s in common")
    return {"n": n, "total_images_per_s": total, "per_run": per_run, "window_seconds": (t1 - t0) / args.windows,
            "common_seconds": t1 - t0, "common_from_seconds": t0 - min(r.started for r in runs),
            "wall_seconds": wall, "commands": [shlex.join([Path(r.command[0]).name, *r.command[1:]]) for r in runs]}


def best(counts: list[dict]) -> dict | None:
    top = max(counts, key=lambda c: c["total_images_per_s"]["median"], default=None)
    return top and {"n": top["n"], "total_images_per_s": top["total_images_per_s"]["median"]}


def markdown(counts: list[dict]) -> str:
    one = next((c["total_images_per_s"]["median"] for c in counts if c["n"] == 1), None)
    rows = []
    for c in counts:
        t = c["total_images_per_s"]
        rows.append([c["n"], f"{t['median']:,.0f} ({t['min']:,.0f}–{t['max']:,.0f})", f"{t['median'] / c['n']:,.0f}",
                     f"{t['median'] / one:.2f}x" if one else "—"])
    return common.markdown_table(["N", "total img/s median (min–max)", "per run", "vs N=1"], rows)


def stop_on_sigterm(signum, frame):
    """A SIGTERM (a time limit's) ends the count in progress, whose runs measure() kills (they may have had
    the signal too, when it went to the process group), and main keeps the counts measured so far."""
    raise Unmeasurable(f"stopped by {signal.Signals(signum).name}; the runs were killed")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    previous = signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        return measure_all(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def measure_all(args) -> int:
    settings = {k: getattr(args, k) for k in ("recipe", "steps", "seconds", "warmup_steps", "windows", "device",
                                              "data_root", "timeout")}
    out = common.result("packing", SCHEMA_VERSION, cpu=args.resolved.type == "cpu", complete=False,
                        recipe=args.recipe, overrides=args.overrides,
                        settings={**settings, "runs_root": str(args.runs_root), "counts": args.counts},
                        method=" ".join(__doc__.split("\n\n")[1].split()), counts=[], best=None, error=None)
    out["command"] = out["environment"]["command"]
    try:
        for n in args.counts:
            out["counts"].append(measure(args, n))
            out["best"] = best(out["counts"])
            common.write_json(args.out, out)
    except Unmeasurable as e:
        out["error"] = str(e)
        common.write_json(args.out, out)
        log(f"wrote {args.out} ({len(out['counts'])} of {len(args.counts)} counts measured)")
        log(f"error: {e}")
        return 1
    out["complete"] = True
    common.write_json(args.out, out)
    log(f"wrote {args.out}; the most images/s: {out['best']['n']} at once (reproduce.py --parallel {out['best']['n']})")
    print(markdown(out["counts"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
