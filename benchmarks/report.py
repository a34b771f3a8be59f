"""python benchmarks/report.py ...: fastcifar/bench/report.py, also `fastcifar bench report` when installed."""

import sys

from fastcifar.cli import pipe_safe
from fastcifar.bench.report import main

if __name__ == "__main__":
    sys.exit(pipe_safe(main))
