#!/usr/bin/env python
"""He et al. 2016's CIFAR-10 table, honestly: several seeds per depth, each run trained to its last
epoch with the seed recipe (configs/resnet<depth>.yml), and the FINAL epoch's test accuracy reported.
No epoch is picked on the test set; the best accuracy seen along the way is recorded, labelled as not
used for selection, only to compare with best-of-run figures published elsewhere.

Each (depth, seed) is one `python run.py` subprocess in <runs-dir>/resnet<depth>-seed<seed>, up to
--parallel at once, in the order of --depths, then --seeds, sharing the machine (list the deepest
first to pack long runs early; the shallowest first to finish the most runs before a hard end). Where commands may only run for a
while (e.g. 10 minutes), --deadline bridges long runs: at the deadline every run gets SIGTERM, saves a
checkpoint after its current epoch and stops; calling the same command again resumes each run from its
checkpoint, collects the ones that finished, and starts nothing that is done. Choose --deadline plus
--grace (plus a minute for start-up and collection) below the command's limit.

    python benchmarks/reproduce.py --depths 20 32 44 56 110 --seeds 0 1 2 --parallel 4 \\
        --deadline 480 --data-root data --runs-dir runs/paper --out benchmarks/results

Other arguments of the form --section.key=value are passed to every run (e.g. --loader.name=torch-gpu).
Writes one <date>_<gpu>_paper_resnet<depth>_seed<seed>.json per finished run (kind paper_run, read by
report.py), its final weights as <runs-dir>/resnet<depth>-seed<seed>.pt (for export_weights.py), and
<out>/reproduce_status.json with every run's state. Exit status: 0 when no run failed
(some may still be stopped or pending: call again), 1 when one failed, 2 on bad input.
"""

from __future__ import annotations

import time

_STARTED = time.monotonic()  # the deadline counts from here: start-up is part of the command's time

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed

import yaml  # noqa: E402

from benchmarks import common  # noqa: E402
from fastcifar.errors import FastcifarError  # noqa: E402
from fastcifar.training.stopping import STOPPED_EXIT  # noqa: E402

SCHEMA_VERSION = 1
SET_BY = {"model.name": "--depths", "train.seed": "--seeds", "train.run_dir": "--runs-dir",
          "data.root": "--data-root"}  # an override may repeat these values, not contradict them
LAUNCH = re.compile(r"^==> reproduce\.py \S+: (.*)$")  # the line written to log.txt before each segment
TAIL_LINES = 10
SELECTION = ("none: final_top1/final_top5 are the last epoch's test accuracy; best_top1_seen is the "
             "highest test top-1 of any evaluated epoch, NOT used for selection (choosing it would "
             "select on the test set), recorded only to compare with best-of-run figures")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reproduce.py", description=__doc__, allow_abbrev=False,
        epilog="Other arguments of the form --section.key=value are passed to every run.",
        formatter_class=common.HelpFormatter)
    p.add_argument("--depths", type=common.depth, nargs="+", default=list(common.PAPER_TABLE_DEPTHS),
                   help="ResNet depths (6n+2)")
    p.add_argument("--seeds", type=common.non_negative_int, nargs="+", default=[0, 1, 2],
                   help="train.seed of each run")
    p.add_argument("--parallel", type=common.positive_int, default=1, help="runs at once")
    p.add_argument("--deadline", type=common.non_negative_seconds, default=None,
                   help="seconds after start at which running runs are stopped (default: none)")
    p.add_argument("--min-start", type=common.non_negative_seconds, default=60.0,
                   help="start no run with less than this many seconds left before the deadline")
    p.add_argument("--grace", type=common.non_negative_seconds, default=90.0,
                   help="seconds a run has after SIGTERM to finish its epoch before SIGKILL")
    p.add_argument("--config-dir", type=Path, default=common.REPO / "configs",
                   help="where resnet<depth>.yml are")
    p.add_argument("--data-root", default="data", help="data.root of every run")
    p.add_argument("--runs-dir", type=Path, default=Path("runs/paper"),
                   help="run directories go under it, one per (depth, seed)")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR,
                   help="folder for the result files and reproduce_status.json")
    return p


@dataclasses.dataclass
class Run:
    depth: int
    seed: int
    run_dir: Path
    epochs: int  # as configured
    command: list[str]  # the fresh start; a resume adds --resume
    state: str = "pending"  # finished | stopped | failed | pending
    started: bool = False  # in this call
    signalled: bool = False  # by this driver
    returncode: int | None = None
    error: str | None = None
    error_tail: list[str] = dataclasses.field(default_factory=list)
    result: Path | None = None
    proc: subprocess.Popen | None = None
    log_offset: int = 0


def parse_args(argv: list[str] | None):
    parser = build_parser()
    args = common.parse_with_overrides(parser, argv)
    args.depths = list(dict.fromkeys(args.depths))
    args.seeds = list(dict.fromkeys(args.seeds))
    args.runs = plan(args, parser)
    return args


def run_py() -> str:
    """run.py as the children are started: relative when run from the repository, as usual."""
    path = common.REPO / "run.py"
    return "run.py" if Path.cwd().resolve() == common.REPO else str(path)


def plan(args, parser) -> list[Run]:
    """Every run's config is built and checked before the first one starts (hours may follow)."""
    runs = []
    for depth in args.depths:
        config = args.config_dir / f"resnet{depth}.yml"
        if not config.is_file():
            parser.error(f"--config-dir {args.config_dir}: no resnet{depth}.yml for depth {depth}")
        for seed in args.seeds:
            run_dir = args.runs_dir / f"resnet{depth}-seed{seed}"
            overrides = [f"--train.seed={seed}", f"--train.run_dir={run_dir}", f"--data.root={args.data_root}",
                         "--train.progress=false", "--train.keep_checkpoints=2", *args.overrides]
            try:
                cfg = common.load_config(config, overrides)
            except FastcifarError as e:
                parser.error(str(e))
            expected = {"model.name": f"resnet{depth}", "train.seed": seed, "train.run_dir": str(run_dir),
                        "data.root": args.data_root}
            for key, value in expected.items():
                section, name = key.split(".")
                actual = getattr(getattr(cfg, section), name)
                if str(actual) != str(value):
                    parser.error(f"{key} is {actual!r} (from {config} or an override), but {SET_BY[key]} "
                                 f"makes it {value!r} for this run")
            if cfg.train.resume:
                parser.error("train.resume: reproduce.py resumes runs from their checkpoints itself")
            saved = run_dir / "config.yaml"
            if saved.is_file():  # a run of an earlier call, finished or not: it must be this recipe
                from fastcifar import config as config_lib

                change = config_lib.recipe_change(yaml.safe_load(saved.read_text()) or {}, cfg)
                if change is not None:
                    parser.error(f"{run_dir} holds a run of another recipe ({change}); call with its "
                                 "settings again, or choose another --runs-dir")
            command = [sys.executable, run_py(), str(config), *overrides]
            runs.append(Run(depth, seed, run_dir, cfg.train.epochs, command))
    return runs


# ---- a run's files ---------------------------------------------------------------------------------
def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: the epoch is redone after the resume
            pass
    return records


def is_finished(run_dir: Path) -> bool:
    return bool((read_json(run_dir / "summary.json") or {}).get("finished"))


def checkpoint_epoch(run_dir: Path) -> int | None:
    from fastcifar.training.checkpoint import checkpoints

    found = checkpoints(run_dir)
    return found[-1][0] if found else None


def curve(records: list[dict]) -> list[dict]:
    """Evaluated epochs in order; after a resume an epoch trained twice counts as its last record."""
    by_epoch = {}
    for r in records:
        if "event" not in r and "train_loss" in r and isinstance(r.get("epoch"), int):
            by_epoch[r["epoch"]] = r
    return [{"epoch": e, "top1": r["top1"], "top5": r.get("top5"), "train_loss": r["train_loss"]}
            for e, r in sorted(by_epoch.items()) if r.get("top1") is not None]


def result_record(run: Run, environment: dict) -> dict:
    summary_path = run.run_dir / "summary.json"
    summary = json.loads(summary_path.read_text())
    records = read_jsonl(run.run_dir / "metrics.jsonl")
    points = curve(records)
    best = max(points, key=lambda p: p["top1"], default=None)  # the first epoch of the maximum
    log = run.run_dir / "log.txt"
    commands = [m.group(1) for line in (log.read_text(errors="replace").splitlines() if log.is_file() else [])
                if (m := LAUNCH.match(line))]
    finished_at = dt.datetime.fromtimestamp(summary_path.stat().st_mtime, dt.timezone.utc)
    return {
        "kind": "paper_run", "schema_version": SCHEMA_VERSION,
        "model": summary["model"], "depth": run.depth, "seed": run.seed, "dataset": summary["dataset"],
        "final_top1": summary["final_top1"], "final_top5": summary["final_top5"],
        "selection": SELECTION,
        "best_top1_seen": best["top1"] if best else None,
        "best_top1_seen_epoch": best["epoch"] if best else None,
        "curve": points,
        "epochs": summary["epochs"], "train_seconds": summary["train_seconds"],
        "segments": 1 + sum(r.get("event") == "resume" for r in records),
        "finished_at": finished_at.isoformat(timespec="seconds"),
        "run_dir": str(run.run_dir),
        "command": display_command(run.command),
        "commands": commands,  # every segment's, as launched by this script
        "config": yaml.safe_load((run.run_dir / "config.yaml").read_text()),
        **{k: summary.get(k) for k in ("loader", "world_size", "device", "amp", "compile", "channels_last",
                                       "torch")},
        "environment": environment,  # of the call that collected the run
    }


def weights_path(run: Run) -> Path:
    return run.run_dir.parent / f"{run.run_dir.name}.pt"


def save_weights(run: Run) -> Path | None:
    """The final checkpoint's model, a plain state dict beside the run directory: the file
    benchmarks/export_weights.py ships (--weights-from <runs-dir>)."""
    from fastcifar.training import checkpoint as ckpt

    epochs = json.loads((run.run_dir / "summary.json").read_text())["epochs"]
    source, dest = ckpt.checkpoint_path(run.run_dir, epochs), weights_path(run)
    if not source.is_file():
        if dest.is_file():  # written by an earlier call, before the checkpoint was removed
            return dest
        log(f"resnet{run.depth} seed {run.seed}: no {source.name}, so no {dest.name}")
        return None
    if not dest.is_file() or dest.stat().st_mtime < source.stat().st_mtime:
        ckpt.save_checkpoint(dest, ckpt.load_checkpoint(source)["model"])
    return dest


def collect(run: Run, out: Path, environment: dict) -> None:
    """The finished run's result file and weights. Written when this call ran the run or the file
    is missing; an earlier call's file stays as it was, with the environment that collected it."""
    try:
        record = result_record(run, environment)
        date = record["finished_at"][:10]
        path = out / f"{date}_{common.slug(record['device'])}_paper_resnet{run.depth}_seed{run.seed}.json"
        if run.started or not path.is_file():
            weights = save_weights(run)
            record["weights"] = str(weights) if weights else None
            common.write_json(path, record)
        run.result = path
    except (FastcifarError, OSError, ValueError, KeyError) as e:  # e.g. a damaged final checkpoint
        run.state = "failed"
        run.error = f"collecting resnet{run.depth} seed {run.seed} from {run.run_dir}: {type(e).__name__}: {e}"
        log(run.error)


def display_command(command: list[str]) -> str:
    return shlex.join([Path(command[0]).name, *command[1:]])


# ---- running ---------------------------------------------------------------------------------------
def log(message: str) -> None:
    print(f"reproduce.py: {message}", file=sys.stderr, flush=True)


def launch(run: Run) -> None:
    resume = checkpoint_epoch(run.run_dir)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    metrics = run.run_dir / "metrics.jsonl"
    if resume is None and metrics.is_file():
        # a fresh start after a kill that left no checkpoint: its records must not mix into the curve
        n = len(list(run.run_dir.glob("metrics.discarded-*.jsonl")))
        metrics.rename(run.run_dir / f"metrics.discarded-{n + 1}.jsonl")
    command = run.command + (["--resume"] if resume is not None else [])
    with open(run.run_dir / "log.txt", "a") as f:
        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        f.write(f"==> reproduce.py {stamp}: {display_command(command)}\n")
        f.flush()
        run.log_offset = f.tell()
        run.proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
    run.started = True
    log(f"started resnet{run.depth} seed {run.seed}" + (f", resuming after epoch {resume}" if resume else ""))


def settle(run: Run, returncode: int) -> None:
    """The state of a run whose process has exited."""
    run.returncode, run.proc = returncode, None
    if returncode == 0 and is_finished(run.run_dir):
        run.state = "finished"
    elif returncode == STOPPED_EXIT or (run.signalled and returncode < 0):
        # exit 3: stopped with a checkpoint; killed by our own signal (before its handler was
        # installed, or after the grace): resumable from whatever checkpoint it has
        run.state = "stopped"
    else:
        run.state = "failed"
        text = (run.run_dir / "log.txt").read_bytes()[run.log_offset:].decode(errors="replace")
        lines = [line for line in text.splitlines() if line.strip()]
        run.error_tail = lines[-TAIL_LINES:]
        errors = [line for line in lines if line.startswith("run.py: error:")]
        if errors:
            run.error = errors[-1]
        elif returncode < 0:
            run.error = f"killed by {signal.Signals(-returncode).name}"
        else:
            run.error = f"exit status {returncode}" + (f": {lines[-1]}" if lines else "")
    log(f"resnet{run.depth} seed {run.seed}: {run.state}" + (f" ({run.error})" if run.error else ""))


class StopRequest:
    """SIGTERM or Ctrl-C to this script: stop the runs as the deadline would; a second one kills."""

    def __init__(self):
        self.count, self.name, self._previous = 0, None, {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.count += 1
        self.name = signal.Signals(signum).name


def drive(args) -> str | None:
    """Run what is not finished until done, the deadline or a stop request; returns why it stopped."""
    queue = [r for r in args.runs if r.state == "pending"]
    running: list[Run] = []
    term_at, reason = None, None
    with StopRequest() as stop:
        try:
            while queue or running:
                now = time.monotonic() - _STARTED
                if term_at is None and (stop.count or (args.deadline is not None and now >= args.deadline)):
                    reason = f"signal {stop.name}" if stop.count else "deadline"
                    term_at = now
                    log(f"stopping {len(running)} run(s) ({reason}); they save a checkpoint after the epoch")
                    for r in running:
                        r.signalled = True
                        r.proc.send_signal(signal.SIGTERM)
                if term_at is not None and running and (now >= term_at + args.grace or stop.count > 1):
                    for r in running:
                        r.proc.kill()
                left = None if args.deadline is None else args.deadline - now
                while term_at is None and queue and len(running) < args.parallel and (
                        left is None or left >= args.min_start):
                    running.append(queue.pop(0))
                    launch(running[-1])
                for r in list(running):
                    if (rc := r.proc.poll()) is not None:
                        running.remove(r)
                        settle(r, rc)
                if not running and (term_at is not None or (left is not None and left < args.min_start)):
                    break
                time.sleep(0.2)
        finally:
            for r in running:  # only after an unexpected error in this loop: leave no orphans
                r.proc.kill()
                r.proc.wait()
    if queue and reason is None:
        reason = "deadline (less than --min-start left)"
    return reason


# ---- status ----------------------------------------------------------------------------------------
def status_record(args, reason: str | None, environment: dict) -> dict:
    runs = []
    for r in args.runs:
        if r.state == "finished":
            done = read_json(r.run_dir / "summary.json")["epochs"]
        else:
            done = checkpoint_epoch(r.run_dir) or 0  # what a resume keeps
        runs.append({"depth": r.depth, "seed": r.seed, "run_dir": str(r.run_dir), "state": r.state,
                     "started": r.started, "epochs_done": done, "epochs": r.epochs,
                     "result": str(r.result) if r.result else None,
                     "weights": str(weights_path(r)) if r.result and weights_path(r).is_file() else None,
                     "returncode": r.returncode,
                     "error": r.error, "error_tail": r.error_tail})
    counts = {s: sum(r["state"] == s for r in runs) for s in ("finished", "stopped", "failed", "pending")}
    return {"kind": "paper_status", "schema_version": SCHEMA_VERSION,
            "environment": environment,
            "settings": {"depths": args.depths, "seeds": args.seeds, "parallel": args.parallel,
                         "deadline": args.deadline, "min_start": args.min_start, "grace": args.grace,
                         "config_dir": str(args.config_dir), "runs_dir": str(args.runs_dir),
                         "data_root": args.data_root, "overrides": args.overrides},
            "elapsed_seconds": round(time.monotonic() - _STARTED, 1), "stopped_by": reason,
            "counts": counts, "runs": runs}


def status_table(status: dict) -> str:
    rows = []
    for r in status["runs"]:
        if r["state"] == "finished":
            note = Path(r["result"]).name
        elif r["state"] == "failed":
            note = r["error"].replace("|", "/")
        else:
            note = "call again to continue"
        rows.append([r["depth"], r["seed"], r["state"], f"{r['epochs_done']}/{r['epochs']}", note])
    return common.markdown_table(["depth", "seed", "state", "epochs", "result / error"], rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for r in args.runs:
        if is_finished(r.run_dir):
            r.state = "finished"
    reason = drive(args)
    environment = common.environment()
    for r in args.runs:
        if r.state == "finished":
            collect(r, args.out, environment)
    status = status_record(args, reason, environment)
    common.write_json(args.out / "reproduce_status.json", status)
    print(status_table(status))
    c = status["counts"]
    log(f"{c['finished']} finished, {c['stopped']} stopped, {c['failed']} failed, {c['pending']} pending"
        + (f" (stopped by {reason})" if reason else "") + f"; status in {args.out / 'reproduce_status.json'}")
    return 1 if c["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
