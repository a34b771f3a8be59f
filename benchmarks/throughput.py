"""python benchmarks/throughput.py ...: fastcifar/bench/throughput.py, also `fastcifar bench throughput` when installed."""

import sys

from fastcifar.cli import pipe_safe
from fastcifar.bench.throughput import main

if __name__ == "__main__":
    sys.exit(pipe_safe(main))
