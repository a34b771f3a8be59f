"""python benchmarks/profile_step.py ...: fastcifar/bench/profile_step.py, also `fastcifar bench profile_step` when installed."""

import sys

from fastcifar.cli import pipe_safe
from fastcifar.bench.profile_step import main

if __name__ == "__main__":
    sys.exit(pipe_safe(main))
