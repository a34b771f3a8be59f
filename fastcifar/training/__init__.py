"""Training: the loop (trainer.py), its pieces (engine.py), schedules, checkpoints and stopping.

Trainer is imported on first use, so that e.g. fastcifar.hub can use checkpoint.py without pulling in
the loaders and their dependencies."""

__all__ = ["Trainer"]


def __getattr__(name):
    if name == "Trainer":
        from fastcifar.training.trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'fastcifar.training' has no attribute {name!r}")
