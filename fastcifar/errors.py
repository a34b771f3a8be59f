"""User-facing errors: run.py prints these as one line instead of a traceback."""


class FastcifarError(Exception):
    """Base class for errors caused by the user's input (config, data, checkpoints)."""


class ConfigError(FastcifarError):
    pass


class DataError(FastcifarError):
    pass


class CheckpointError(FastcifarError):
    pass
