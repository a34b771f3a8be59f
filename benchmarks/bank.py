"""python benchmarks/bank.py ...: fastcifar/bench/bank.py, also `fastcifar bench bank` when installed."""

import sys

from fastcifar.cli import pipe_safe
from fastcifar.bench.bank import main

if __name__ == "__main__":
    sys.exit(pipe_safe(main))
