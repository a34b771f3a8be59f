"""He et al. 2016's CIFAR-10 table: each (depth, seed) one `fastcifar train` process with configs/resnet<depth>.yml in
<runs-dir>/resnet<depth>-seed<seed>, --parallel at once, its FINAL test accuracy reported. At --deadline (or
SIGTERM, Ctrl-C) the runs checkpoint and stop; the same command again resumes them. --section.key=value goes
to every run. Writes <out>/<date>_<gpu>_paper_resnet<depth>_seed<seed>.json per finished run, its weights as
<runs-dir>/resnet<depth>-seed<seed>.pt and <out>/reproduce_status.json. Exit status 1 when a run failed.

    python benchmarks/reproduce.py --depths 20 32 44 56 110 --seeds 0 1 2 --parallel 4 --deadline 480
"""

import time

_STARTED = time.monotonic()  # the deadline counts from here: start-up is part of the command's time

import dataclasses  # noqa: E402
import datetime as dt  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

from fastcifar.bench import common  # noqa: E402
from fastcifar import config as config_lib  # noqa: E402
from fastcifar import rundir  # noqa: E402
from fastcifar.errors import ConfigError, FastcifarError  # noqa: E402
from fastcifar.training import checkpoint as ckpt  # noqa: E402
from fastcifar.training.stopping import STOPPED_EXIT, GracefulStop  # noqa: E402

SCHEMA_VERSION = 1
log = functools.partial(print, "reproduce.py:", file=sys.stderr, flush=True)
LAUNCH = "==> reproduce.py "  # starts the line written to log.txt before each segment
SELECTION = ("none: final_top1/final_top5 are the last epoch's test accuracy; best_top1_seen is the highest "
             "test top-1 of any evaluated epoch, NOT used for selection, only to compare with best-of-run figures")


@dataclasses.dataclass
class Run:
    depth: int
    seed: int
    run_dir: Path
    epochs: int
    command: list[str]  # the fresh start (-u: log.txt shows progress live); a resume adds --resume
    state: str  # finished | stopped | failed | pending
    returncode = error = result = proc = None  # returncode: of this call's training process, if it started one
    error_tail: tuple = ()

    @property
    def name(self) -> str:
        return f"resnet{self.depth} seed {self.seed}"

    @property
    def weights(self) -> Path:  # the final weights, for export_weights.py
        return self.run_dir.parent / f"{self.run_dir.name}.pt"


def parse_args(argv):
    p = common.parser("reproduce.py", __doc__)
    p.add_argument("--depths", type=common.depth, nargs="+", default=list(common.PAPER_TABLE_DEPTHS))
    p.add_argument("--seeds", type=common.non_negative_int, nargs="+", default=[0, 1, 2])
    p.add_argument("--parallel", type=common.positive_int, default=1, help="runs at once")
    p.add_argument("--deadline", type=common.seconds, help="seconds after start to stop the runs")
    p.add_argument("--min-start", type=common.seconds, default=60.0, help="start no run with less time left")
    p.add_argument("--grace", type=common.seconds, default=90.0, help="seconds from SIGTERM to SIGKILL")
    p.add_argument("--config-dir", type=Path, default=config_lib.RECIPES, help="where resnet<depth>.yml are")
    p.add_argument("--data-root", default="data")
    p.add_argument("--runs-dir", type=Path, default=Path("runs/paper"))
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR, help="folder for results and status")
    args = common.parse_with_overrides(p, argv)
    args.depths, args.seeds = list(dict.fromkeys(args.depths)), list(dict.fromkeys(args.seeds))
    try:
        args.runs = [plan(args, depth, seed) for depth in args.depths for seed in args.seeds]
    except FastcifarError as e:
        p.error(str(e))
    return args


def plan(args, depth: int, seed: int) -> Run:
    """A run's config, built and checked before the first run starts (hours may follow)."""
    config = args.config_dir / f"resnet{depth}.yml"
    if not config.is_file():
        raise ConfigError(f"--config-dir {args.config_dir}: no resnet{depth}.yml for depth {depth}")
    run_dir = args.runs_dir / f"resnet{depth}-seed{seed}"
    overrides = [f"--train.seed={seed}", f"--train.run_dir={run_dir}", f"--data.root={args.data_root}",
                 "--train.progress=false", "--train.keep_checkpoints=2", *args.overrides]
    cfg = config_lib.load(config, overrides)
    for key, value, option in (("model.name", f"resnet{depth}", "--depths"), ("train.seed", seed, "--seeds"),
                               ("train.run_dir", run_dir, "--runs-dir"), ("data.root", args.data_root, "--data-root")):
        actual = getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1])
        if str(actual) != str(value):  # an override may repeat these values, not contradict them
            raise ConfigError(f"{key} is {actual!r} (from {config} or an override), "
                              f"but {option} makes it {str(value)!r}")
    if cfg.train.resume != "false":
        raise ConfigError("train.resume: reproduce.py resumes runs from their checkpoints itself")
    saved = run_dir / "config.yaml"  # a run of an earlier call: it must be this recipe
    if change := config_lib.saved_recipe_change(saved, cfg):
        raise ConfigError(f"{run_dir} holds a run of another recipe ({change}); call with its settings "
                          "again, or choose another --runs-dir")
    command = [sys.executable, "-u", "-m", "fastcifar", "train", str(config), *overrides]
    state = "finished" if rundir.is_finished(run_dir) else "pending"
    return Run(depth, seed, run_dir, cfg.train.epochs, command, state)


def display(command: list[str]) -> str:
    return shlex.join([Path(command[0]).name, *command[1:]])


def collect(run: Run, out: Path) -> None:
    """The finished run's result file and weights: written when this call ran the run or the file is
    missing; an earlier call's file stays as it was."""
    try:
        summary_path = run.run_dir / "summary.json"
        summary = json.loads(summary_path.read_text())
        finished = dt.datetime.fromtimestamp(summary_path.stat().st_mtime, dt.timezone.utc)
        finished = finished.isoformat(timespec="seconds")
        path = out / f"{finished[:10]}_{common.slug(summary['device'])}_paper_resnet{run.depth}_seed{run.seed}.json"
        run.result = path
        if path.is_file() and run.returncode is None:
            return
        points = rundir.curve(run.run_dir)
        best = max(points, key=lambda p: p["top1"], default=None)
        log_path = run.run_dir / "log.txt"
        log_text = log_path.read_text(errors="replace") if log_path.is_file() else ""
        source, weights = ckpt.checkpoint_path(run.run_dir, summary["epochs"]), run.weights
        if source.is_file() and (not weights.is_file() or weights.stat().st_mtime < source.stat().st_mtime):
            ckpt.save_checkpoint(weights, ckpt.load_checkpoint(source)["model"])  # what export_weights.py ships
        copied = ("model", "dataset", "final_top1", "final_top5", "epochs", "train_seconds", "loader", "world_size",
                  "device", "amp", "compile", "channels_last", "torch")
        common.write_json(path, common.result(
            "paper_run", SCHEMA_VERSION, **{k: summary.get(k) for k in copied}, depth=run.depth, seed=run.seed,
            selection=SELECTION, best_top1_seen=best and best["top1"], best_top1_seen_epoch=best and best["epoch"],
            curve=points, segments=1 + sum(r.get("event") == "resume" for r in rundir.records(run.run_dir)),
            finished_at=finished, run_dir=str(run.run_dir), command=display(run.command),
            commands=[line.split(": ", 1)[1] for line in log_text.splitlines() if line.startswith(LAUNCH)],
            config=yaml.safe_load((run.run_dir / "config.yaml").read_text()),
            weights=str(weights) if weights.is_file() else None))
    except (FastcifarError, OSError, ValueError, KeyError) as e:  # e.g. a damaged final checkpoint
        run.state, run.result = "failed", None
        run.error = f"collecting {run.name} from {run.run_dir}: {type(e).__name__}: {e}"
        log(run.error)


def launch(run: Run) -> None:
    resume = ckpt.latest_epoch(run.run_dir)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    metrics = run.run_dir / "metrics.jsonl"
    if resume is None and metrics.is_file():  # a fresh start after a kill before any checkpoint
        metrics.rename(run.run_dir / f"metrics.discarded-{len(list(run.run_dir.glob('metrics.discarded-*')))}.jsonl")
    command = run.command + (["--resume"] if resume is not None else [])
    with open(run.run_dir / "log.txt", "a") as f:
        f.write(f"{LAUNCH}{dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}: {display(command)}\n")
        f.flush()  # before the run's own output
        run.proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log(f"started {run.name}" + (f", resuming after epoch {resume}" if resume else ""))


def settle(run: Run, returncode: int, signalled: bool) -> None:
    run.returncode, run.proc = returncode, None
    if returncode == 0 and rundir.is_finished(run.run_dir):
        run.state = "finished"
    elif returncode == STOPPED_EXIT or (signalled and returncode < 0):
        run.state = "stopped"  # resumable; our SIGTERM may come before run.py handles it
    else:
        run.state = "failed"
        segment = (run.run_dir / "log.txt").read_text(errors="replace").split(LAUNCH)[-1]
        lines = [line for line in segment.splitlines()[1:] if line.strip()]  # after the launch line
        run.error_tail = lines[-10:]
        errors = [line for line in lines if line.startswith(("fastcifar train: error:", "fastcifar train: diverged:"))]
        run.error = (errors[-1] if errors else f"killed by {signal.Signals(-returncode).name}" if returncode < 0
                     else f"exit status {returncode}" + (f": {lines[-1]}" if lines else ""))
    log(f"{run.name}: {run.state}" + (f" ({run.error})" if run.error else ""))


def drive(args) -> str | None:
    """Run what is not finished until done, the deadline or a stop request; returns why it stopped."""
    queue = [r for r in args.runs if r.state == "pending"]
    running: list[Run] = []
    term_at, reason = None, None
    deadline = float("inf") if args.deadline is None else args.deadline
    try:
        with GracefulStop(announce=False) as stop:  # a second Ctrl-C raises KeyboardInterrupt: kill below
            while queue or running:
                now = time.monotonic() - _STARTED
                left = deadline - now
                if term_at is None and (stop.signal_name or left <= 0):
                    reason, term_at = (f"signal {stop.signal_name}" if stop.signal_name else "deadline"), now
                    log(f"stopping {len(running)} run(s) ({reason}); they save a checkpoint at their next step")
                    for r in running:
                        r.proc.send_signal(signal.SIGTERM)
                if term_at is not None and now >= term_at + args.grace:
                    for r in running:  # while the stop handlers still hold; settled below
                        r.proc.kill()
                    break
                while term_at is None and queue and len(running) < args.parallel and left >= args.min_start:
                    running.append(queue.pop(0))
                    launch(running[-1])
                for r in [r for r in running if r.proc.poll() is not None]:
                    running.remove(r)
                    settle(r, r.proc.returncode, signalled=term_at is not None)
                if not running and (term_at is not None or left < args.min_start):
                    break
                time.sleep(0.2)
    except KeyboardInterrupt:
        reason = "a second Ctrl-C: runs killed"
    finally:
        for r in list(running):  # after the grace, a second Ctrl-C or an unexpected error: leave no orphans
            r.proc.kill()
            settle(r, r.proc.wait(), signalled=True)
    return reason or ("deadline (less than --min-start left)" if queue else None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reason = drive(args)
    for r in args.runs:
        if r.state == "finished":
            collect(r, args.out)
    runs = [{"depth": r.depth, "seed": r.seed, "run_dir": str(r.run_dir), "state": r.state,
             "started": r.returncode is not None, "epochs": r.epochs, "result": r.result and str(r.result),
             "epochs_done": r.epochs if r.state == "finished" else ckpt.latest_epoch(r.run_dir) or 0,
             "weights": str(r.weights) if r.result and r.weights.is_file() else None,
             "returncode": r.returncode, "error": r.error, "error_tail": r.error_tail} for r in args.runs]
    counts = {s: sum(r["state"] == s for r in runs) for s in ("finished", "stopped", "failed", "pending")}
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                if k not in ("runs", "out")}  # the options and overrides
    common.write_json(args.out / "reproduce_status.json", common.result(
        "paper_status", SCHEMA_VERSION, settings=settings, stopped_by=reason, counts=counts, runs=runs,
        elapsed_seconds=round(time.monotonic() - _STARTED, 1)))
    print(common.markdown_table(["depth", "seed", "state", "epochs", "result / error"], [
        [r["depth"], r["seed"], r["state"], f"{r['epochs_done']}/{r['epochs']}",
         Path(r["result"]).name if r["result"] else r["error"] or "call again to continue"] for r in runs]))
    log(", ".join(f"{n} {s}" for s, n in counts.items()) + (f" (stopped by {reason})" if reason else "")
        + f"; status in {args.out / 'reproduce_status.json'}")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
