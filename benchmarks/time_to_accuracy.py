"""python benchmarks/time_to_accuracy.py ...: fastcifar/bench/time_to_accuracy.py, also `fastcifar bench time_to_accuracy` when installed."""

import sys

from fastcifar.cli import pipe_safe
from fastcifar.bench.time_to_accuracy import main

if __name__ == "__main__":
    sys.exit(pipe_safe(main))
