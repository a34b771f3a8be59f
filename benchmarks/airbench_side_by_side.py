"""python benchmarks/airbench_side_by_side.py ...: fastcifar/bench/airbench_side_by_side.py, also `fastcifar bench airbench_side_by_side` when installed."""

import sys

from fastcifar.cli import pipe_safe
from fastcifar.bench.airbench_side_by_side import main

if __name__ == "__main__":
    sys.exit(pipe_safe(main))
