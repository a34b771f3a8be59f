"""python benchmarks/export_weights.py ...: fastcifar/bench/export_weights.py, also `fastcifar bench export_weights` when installed."""

import sys

from fastcifar.cli import pipe_safe
from fastcifar.bench.export_weights import main

if __name__ == "__main__":
    sys.exit(pipe_safe(main))
