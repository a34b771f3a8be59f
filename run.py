"""Train a CIFAR ResNet: python run.py CONFIG [--section.key=value ...] [--resume]

Under several GPUs or nodes: torchrun --nproc_per_node=8 run.py configs/resnet1202.yml
"""

import sys

USAGE = """usage: run.py CONFIG.yml [--section.key=value ...] [--resume]

Trains the model that CONFIG.yml describes; each --section.key=value overrides one key.
--resume continues train.run_dir from its newest readable checkpoint.
--train.max_steps=N cuts the run short after N optimizer steps (a smoke test).
SIGTERM or Ctrl-C stops the run after the current epoch, with a checkpoint saved. A second
Ctrl-C stops at once. Exit status: 0 finished (or cut short by train.max_steps), 2 bad input,
3 stopped by a signal (resume it), 4 diverged (NaN or infinite loss), 130 a second Ctrl-C.
train.run_dir/summary.json says how a run ended ("status": finished, cut_short, stopped or
diverged) and is absent while it runs or after a crash; under torchrun, which exits 1 when it
is signalled whatever its workers did, that file is the test.

Keys, with their values (a CONFIG's, after overrides, else the built-in defaults):
"""


def main(argv: list[str]) -> int:
    from fastcifar import config, distributed
    from fastcifar.errors import Diverged, FastcifarError, stderr_line
    from fastcifar.training.stopping import DIVERGED_EXIT, INTERRUPTED_EXIT, STOPPED_EXIT

    if not argv or "--help" in argv or "-h" in argv:
        shown = None  # with a CONFIG, its values (and overrides) are the ones listed
        if argv and not argv[0].startswith("-"):
            try:
                shown = config.load(argv[0], [a for a in argv[1:] if a.startswith("--") and "=" in a])
            except FastcifarError as e:
                stderr_line(f"run.py: error: {e}")
                return 2
        print(USAGE + config.help_text(shown))
        return 0 if argv else 2
    path, rest = argv[0], argv[1:]
    overrides = ["--train.resume=true" if a == "--resume" else a for a in rest]
    try:
        cfg = config.load(path, overrides, world_size=distributed.world_size_from_env())
        from fastcifar.training import Trainer

        summary = Trainer(cfg).fit()
        distributed.cleanup(finished=True)
        if summary["status"] == "stopped":
            if distributed.rank_from_env() == 0:
                stderr_line(f"run.py: stopped after epoch {summary['epochs']}/{cfg.train.epochs} with a "
                            f"checkpoint in {cfg.train.run_dir}; continue with --resume")
            return STOPPED_EXIT
    except Diverged as e:
        if distributed.rank_from_env() == 0:  # every rank stops at the same step: one says so
            stderr_line(f"run.py: diverged: {e}")
        return DIVERGED_EXIT
    except FastcifarError as e:
        stderr_line(f"run.py: error: {e}")
        return 2
    except KeyboardInterrupt:  # the second Ctrl-C, or the first one before training began
        stderr_line("run.py: interrupted; the newest checkpoint, if any, is intact (--resume)")
        return INTERRUPTED_EXIT
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
