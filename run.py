"""Train a CIFAR ResNet: python run.py CONFIG [--section.key=value ...] [--resume]

Under several GPUs or nodes: torchrun --nproc_per_node=8 run.py configs/resnet1202.yml
"""

import sys

USAGE = """usage: run.py CONFIG.yml [--section.key=value ...] [--resume]

Trains the model that CONFIG.yml describes; each --section.key=value overrides one key.
--resume continues train.run_dir from its latest checkpoint.
SIGTERM or Ctrl-C stops the run after the current epoch, with a checkpoint saved, and exits
with status 3 (2: bad input). A second Ctrl-C stops at once.

Keys, with their values (a CONFIG's, after overrides, else the built-in defaults):
"""


def main(argv: list[str]) -> int:
    from fastcifar import config, distributed
    from fastcifar.errors import FastcifarError, stderr_line
    from fastcifar.training.stopping import STOPPED_EXIT

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
        if not summary["finished"]:
            if distributed.rank_from_env() == 0:
                stderr_line(f"run.py: stopped after epoch {summary['epochs']}/{cfg.train.epochs} with a "
                            f"checkpoint in {cfg.train.run_dir}; continue with --resume")
            return STOPPED_EXIT
    except FastcifarError as e:
        stderr_line(f"run.py: error: {e}")
        return 2
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
