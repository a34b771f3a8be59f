"""The `fastcifar` command: train a recipe, evaluate weights or a run, run a benchmark.

    fastcifar train resnet56 [--section.key=value ...] [--resume[=auto]]
    fastcifar evaluate --model cifar10_resnet56 --pretrained --data.root DIR
    fastcifar bench throughput|time_to_accuracy|reproduce|report|export_weights|convert_weights|cpu_side_by_side|gpu_suite|packing|paper_bundle|bank|profile_step|airbench_side_by_side [...]
    fastcifar recipes

`python run.py CONFIG` in a clone is `fastcifar train CONFIG`.
"""

from __future__ import annotations

import importlib
import os
import sys

TRAIN_USAGE = """usage: {prog} CONFIG [--section.key=value ...] [--resume[=auto]]

Trains the model that CONFIG describes: a YAML file, or a shipped recipe by name (resnet56,
fast/resnet56; `fastcifar recipes` lists them). Each --section.key=value overrides one key.
--resume continues train.run_dir from its newest readable checkpoint, mid-epoch ones included,
exactly where it stopped; --resume=auto does so when there is one and else starts afresh (a
requeued job re-running its command).
--train.max_steps=N cuts the run short after N optimizer steps (a smoke test), with a checkpoint.
SIGTERM or Ctrl-C stops the run at the next step (under torchrun within train.log_every steps),
with a checkpoint of that state; train.checkpoint_minutes writes a recovery checkpoint within
an epoch against a kill -9. A second Ctrl-C stops at once. Exit status: 0 finished (or cut short by train.max_steps), 2 bad input,
3 stopped by a signal (resume it), 4 diverged (NaN or infinite loss), 130 a second Ctrl-C.
train.run_dir/summary.json says how a run ended ("status": finished, cut_short, stopped or
diverged) and is absent while it runs or after a crash; under torchrun, which exits 1 when it
is signalled whatever its workers did, that file is the test.

Keys, with their values (a CONFIG's, after overrides, else the built-in defaults):
"""

BENCHES = ("throughput", "time_to_accuracy", "reproduce", "report", "export_weights", "convert_weights",
           "cpu_side_by_side", "gpu_suite", "packing", "paper_bundle", "bank", "profile_step", "airbench_side_by_side")


def train(argv: list[str], prog: str = "fastcifar train") -> int:
    from fastcifar import config, distributed
    from fastcifar.errors import Diverged, FastcifarError, stderr_line
    from fastcifar.training.stopping import DIVERGED_EXIT, INTERRUPTED_EXIT, STOPPED_EXIT

    if not argv or "--help" in argv or "-h" in argv:
        shown = None  # with a CONFIG, its values (and overrides) are the ones listed
        if argv and not argv[0].startswith("-"):
            try:
                shown = config.load(argv[0], [a for a in argv[1:] if a.startswith("--") and "=" in a])
            except FastcifarError as e:
                stderr_line(f"{prog}: error: {e}")
                return 2
        print(TRAIN_USAGE.format(prog=prog) + config.help_text(shown))
        return 0 if argv else 2
    path, rest = argv[0], argv[1:]
    overrides = ["--train.resume=true" if a == "--resume" else
                 "--train.resume=" + a.partition("=")[2] if a.startswith("--resume=") else a for a in rest]
    try:
        cfg = config.load(path, overrides, world_size=distributed.world_size_from_env())
        from fastcifar.training import Trainer

        trainer = Trainer(cfg)
        summary = trainer.fit()
        distributed.cleanup(finished=True)
        if summary["status"] == "stopped":
            if distributed.rank_from_env() == 0:
                stderr_line(f"{prog}: {stopped_line(summary, cfg.train.epochs, trainer.stop_signalled_at)} "
                            f"with a checkpoint in {cfg.train.run_dir}; continue with --resume")
            return STOPPED_EXIT
    except Diverged as e:
        if distributed.rank_from_env() == 0:  # every rank stops at the same step: one says so
            stderr_line(f"{prog}: diverged: {e}")
        return DIVERGED_EXIT
    except FastcifarError as e:
        stderr_line(f"{prog}: error: {e}")
        return 2
    except KeyboardInterrupt:  # the second Ctrl-C, or the first one before training began
        stderr_line(f"{prog}: interrupted; the newest checkpoint, if any, is intact (--resume)")
        return INTERRUPTED_EXIT
    finally:
        distributed.cleanup()
    return 0


def pipe_safe(command, *args) -> int:
    """command(*args)'s exit status, and no BrokenPipeError traceback when stdout's reader has gone
    (`fastcifar train --help | head`): stdout is flushed here, where that error can be caught, and
    then pointed at /dev/null so that the interpreter's own flush at exit stays quiet."""
    try:
        try:
            status = command(*args)
        except SystemExit as e:  # argparse's --help and usage errors
            status = e.code
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0  # the reader took what it wanted


def stopped_line(summary: dict, epochs: int, signalled_at: float | None) -> str:
    """Where a stopped run stopped, and the seconds from the signal to here (the exit)."""
    import time

    where = (f"stopped in epoch {summary['epochs'] + 1}/{epochs} at its step {summary['epoch_step']}"
             if summary["epoch_step"] else f"stopped after epoch {summary['epochs']}/{epochs}")
    if signalled_at is None:  # another rank was signalled
        return f"{where} (step {summary['steps']}), as another rank was signalled,"
    return f"{where} (step {summary['steps']}), {time.monotonic() - signalled_at:.1f} s after the signal,"


def main(argv: list[str] | None = None) -> int:
    return pipe_safe(_dispatch, sys.argv[1:] if argv is None else argv)


def _dispatch(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("--help", [])
    if command == "train":
        return train(rest)
    if command == "evaluate":
        from fastcifar import evaluate

        return evaluate.main(rest)
    if command == "bench" and rest and rest[0] in BENCHES:
        return importlib.import_module(f"fastcifar.bench.{rest[0]}").main(rest[1:])
    if command == "recipes":
        from fastcifar.config import recipes

        print("\n".join(recipes()))
        return 0
    if command in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    known = "train, evaluate, bench {" + ", ".join(BENCHES) + "}, recipes"
    print(f"fastcifar: error: unknown command {' '.join(argv[:2])!r} (one of: {known})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
