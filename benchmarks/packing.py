"""python benchmarks/packing.py ...: fastcifar/bench/packing.py, also `fastcifar bench packing` when installed."""

import sys

from fastcifar.cli import pipe_safe
from fastcifar.bench.packing import main

if __name__ == "__main__":
    sys.exit(pipe_safe(main))
