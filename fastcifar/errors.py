"""User-facing errors: run.py prints these as one line instead of a traceback."""

import sys


class FastcifarError(Exception):
    """Base class for errors caused by the user's input (config, data, checkpoints)."""


class ConfigError(FastcifarError):
    pass


class DataError(FastcifarError):
    pass


class CheckpointError(FastcifarError):
    pass


class Diverged(FastcifarError):
    """A non-finite training or test loss (or weights): the run stopped, keeping its last good
    checkpoint. Too high a learning rate, or too short a warm-up, is the usual cause."""


def stderr_line(text: str) -> None:
    """Writes one line to stderr in a single write.

    Under torchrun every rank shares one stderr pipe, and print() writes the newline
    separately, so two ranks' lines could merge into one (seen in CI)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
