"""python benchmarks/report.py ...: fastcifar/bench/report.py, also `fastcifar bench report` when installed."""

import sys

from fastcifar.bench.report import main

if __name__ == "__main__":
    sys.exit(main())
