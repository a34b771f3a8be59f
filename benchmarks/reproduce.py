"""python benchmarks/reproduce.py ...: fastcifar/bench/reproduce.py, also `fastcifar bench reproduce` when installed."""

import sys

from fastcifar.cli import pipe_safe
from fastcifar.bench.reproduce import main

if __name__ == "__main__":
    sys.exit(pipe_safe(main))
