"""python benchmarks/paper_bundle.py ...: fastcifar/bench/paper_bundle.py, also `fastcifar bench paper_bundle` when installed."""

import sys

from fastcifar.cli import pipe_safe
from fastcifar.bench.paper_bundle import main

if __name__ == "__main__":
    sys.exit(pipe_safe(main))
